"""`plexus` command line: run [target], migrate, admin."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

# litellm reads these at import: no network at import time, no HF hub (see offline notes).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

from shared.logs import configure_logging
from shared.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    for name in ("host", "port", "data_dir"):
        val = getattr(args, name, None)
        if val is not None:
            overrides[name] = val
    return Settings(**overrides)


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises a caught SIGTERM/SIGINT once it has shut down, which ends the process before the
        stack stops (index workers, live runs, the NATS drain). Here the signals only ask the server to
        exit; ``_serve`` then stops the stack and returns normally (exit 0), as an orchestrator expects."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.handle_exit, sig, None)
            try:
                yield
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)

    return Server


async def _serve(settings: Settings, target: str) -> None:
    import uvicorn

    from services.stack import Stack

    stack = Stack(settings, target)
    app = await stack.start()
    try:
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            lifespan="off",
            access_log=False,
            log_level="warning",
            http="auto",
            timeout_keep_alive=settings.keep_alive_seconds,
            timeout_graceful_shutdown=5,
        )
        server = _server_class()(config)
        if target == "all":
            await _first_start_hint(stack, settings)
        print(f"plexus {target} listening on http://{settings.host}:{settings.port}", flush=True)
        await server.serve()
    finally:
        await stack.stop()


async def _first_start_hint(stack, settings: Settings) -> None:
    from services.console.service import is_setup_done

    if not await is_setup_done(stack.ctx.db):
        base = f"http://{settings.host}:{settings.port}"
        init = ""
        if settings.auth.init_password is not None:  # the setup call must first prove it (cookie jar: -b/-c)
            init = (f"  curl -c jar -X POST {base}/console/api/init -H 'Content-Type: application/json' \\\n"
                    "       -d '{\"password\":\"<PLEXUS_AUTH__INIT_PASSWORD>\"}'\n")
        jar = "-b jar " if init else ""
        print(
            "No admin yet. Create the first account and workspace with:\n"
            f"{init}"
            f"  curl {jar}-X POST {base}/console/api/setup -H 'Content-Type: application/json' \\\n"
            "       -d '{\"email\":\"you@example.com\",\"name\":\"You\",\"password\":\"a-strong-password\"}'\n"
            "or: plexus admin setup --email you@example.com --name You --password ...",
            flush=True,
        )


async def _admin_setup(settings: Settings, email: str, name: str, password: str) -> None:
    from services.console.service import setup_account
    from shared.db import Database
    from shared.migrate import upgrade_async

    if not settings.database_url:
        settings.ensure_secrets()
    await upgrade_async(settings.effective_database_url)
    db = Database(settings.effective_database_url)
    try:
        await setup_account(db, email=email, name=name, password=password, plan=settings.default_plan)
    finally:
        await db.close()
    print(f"created admin {email}")


def _raise_open_files() -> None:
    """Every open stream holds a client socket and a model connection: take the whole hard limit of open
    files (often 1,024 soft against 1,048,576 hard), as Go and nginx servers do, rather than refuse
    connections at ~500 streams."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plexus", description="Dify-compatible LLM app backend")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run all services (default) or one target")
    run.add_argument("target", nargs="?", default="all",
                     choices=["all", "gateway", "console", "runtime", "indexer", "tools"])
    run.add_argument("--host")
    run.add_argument("--port", type=int)
    run.add_argument("--data-dir", type=Path)
    mig = sub.add_parser("migrate", help="apply database migrations")
    mig.add_argument("--data-dir", type=Path)
    adm = sub.add_parser("admin", help="administration")
    adm_sub = adm.add_subparsers(dest="admin_cmd", required=True)
    setup = adm_sub.add_parser("setup", help="create the first account and workspace")
    setup.add_argument("--email", required=True)
    setup.add_argument("--name", required=True)
    setup.add_argument("--password", required=True)
    setup.add_argument("--data-dir", type=Path)
    args = parser.parse_args(argv)

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_json)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.cmd == "run":
        _raise_open_files()
        try:
            asyncio.run(_serve(settings, args.target))
        except KeyboardInterrupt:
            pass
        return 0
    if args.cmd == "migrate":
        from shared.migrate import upgrade

        if not settings.database_url:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(settings.effective_database_url)
        print("migrations applied")
        return 0
    if args.cmd == "admin" and args.admin_cmd == "setup":
        from shared.errors import ApiError

        try:
            asyncio.run(_admin_setup(settings, args.email, args.name, args.password))
        except ApiError as e:
            print(f"plexus admin setup: {e.message}", file=sys.stderr)
            return 1
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())

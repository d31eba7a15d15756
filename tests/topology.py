"""Split mode on one machine: every service as its own `plexus run <target>` process on loopback.

    python -m tests.topology [--gateways 3] [--runtimes 2] [--tools 2] [--llm-tokens 10] [--llm-delay 0.02]

Default shape: 3 gateways behind a round-robin TCP load balancer (test-only, the "front"), 2 runtimes
behind another (as a Kubernetes Service would put them), 1 console, 1 indexer (it owns the embedded
vector engine: without a Qdrant server there can be only one), 2 tools processes (reached over a NATS
queue group), one nats-server, Redis and Postgres. Each process gets the same secrets, database, NATS
and Redis; gateways find the others through PLEXUS_GATEWAY__<SERVICE>_URL.

Dependencies:

* NATS: a real nats-server (the binary shared.natsd runs), restartable on the same port and store dir.
* Redis: our own ``redis-server`` (append-only file on) when the binary exists, restartable for real;
  otherwise the shared Redis behind a fault-injecting TCP proxy.
* Postgres: a fresh database ``plexus_topo_<random>`` on the machine's server (dropped at the end),
  reached through a fault-injecting TCP proxy: ``sever`` resets every connection and refuses new ones
  for N seconds. From the clients' side that is a server restart; the server itself keeps running.
* The model: the scripted OpenAI-compatible server (bench.llm_proc) unless a base URL is given.

The balancers and fault proxies run in one child process (``net``), controlled over a line protocol on
a loopback port. Every child is in its own session, dies with this process (PR_SET_PDEATHSIG) and is
stopped on exit, Ctrl-C or SIGTERM: no orphans.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from shared.natsd import find_binary, free_port
from tests.procs import ROOT, Proc, python_env

HOST = "127.0.0.1"
PG_ADMIN_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_DEFAULT = "redis://127.0.0.1:6379/0"


# ---- the net process: round-robin TCP balancers and fault proxies ------------------------------------


class _Pipe(asyncio.Protocol):
    """One side of a proxied connection; forwards bytes to its peer with back-pressure."""

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def eof_received(self) -> bool:
        self.link.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Link:
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.client = _Pipe(self)
        self.upstream = _Pipe(self)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.closed = False

    def close(self, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy.links.discard(self)
        for side in (self.client, self.upstream):
            if side.transport is not None:
                side.transport.abort() if abort else side.transport.close()


class Proxy:
    """Listens on ``port``; each new connection goes to the next backend that accepts (round robin, per
    connection, like a Kubernetes Service). Streams pass through unbuffered."""

    def __init__(self, name: str, port: int, backends: list[int]) -> None:
        self.name, self.port, self.backends = name, port, backends
        self.rr = itertools.count()
        self.links: set[_Link] = set()
        self.counts: dict[int, int] = {b: 0 for b in backends}
        self.server: asyncio.AbstractServer | None = None
        self._reopen: asyncio.TimerHandle | None = None

    async def listen(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._accept, HOST, self.port, reuse_address=True, backlog=4096)

    def _accept(self) -> _Pipe:
        link = _Link(self)
        self.links.add(link)
        asyncio.get_running_loop().create_task(self._connect(link))
        return link.client

    async def _connect(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        n = len(self.backends)
        start = next(self.rr)
        for i in range(n):
            port = self.backends[(start + i) % n]
            try:
                await loop.create_connection(lambda: link.upstream, HOST, port)
            except OSError:
                continue  # a dead backend: the next one takes the connection
            if link.closed:
                link.upstream.transport.close()
                return
            self.counts[port] = self.counts.get(port, 0) + 1
            for data in link.client.pending:
                link.upstream.transport.write(data)
            link.client.pending.clear()
            return
        link.close(abort=True)

    async def sever(self, seconds: float) -> None:
        """Reset every connection and refuse new ones for ``seconds`` (then listen again)."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for link in list(self.links):
            link.close(abort=True)
        await asyncio.sleep(seconds)
        await self.listen()


async def _net_main(spec: dict[str, Any], control_port: int) -> None:
    proxies = {name: Proxy(name, p["port"], p["backends"]) for name, p in spec.items()}
    for p in proxies.values():
        await p.listen()

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while line := await reader.readline():
                cmd, *args = line.decode().split()
                if cmd == "sever":
                    await proxies[args[0]].sever(float(args[1]))
                    reply: Any = "ok"
                elif cmd == "backends":
                    p = proxies[args[0]]
                    p.backends = [int(x) for x in args[1].split(",") if x]
                    reply = "ok"
                elif cmd == "stats":
                    reply = {n: {str(k): v for k, v in p.counts.items()} for n, p in proxies.items()}
                else:
                    reply = f"unknown command {cmd}"
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(control, HOST, control_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("net ready", flush=True)
    await stop.wait()
    server.close()
    for p in proxies.values():
        if p.server is not None:
            p.server.close()
        for link in list(p.links):
            link.close(abort=True)


# ---- Postgres and Redis --------------------------------------------------------------------------------


def _pg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def pg_admin_url() -> str:
    """The server to create the topology's database on (never the database itself)."""
    return os.environ.get("PLEXUS_TOPOLOGY_POSTGRES_URL") or PG_ADMIN_DEFAULT


def redis_url_fallback() -> str:
    return os.environ.get("PLEXUS_TEST_REDIS_URL") or REDIS_DEFAULT


def _host_port(url: str, default: int) -> tuple[str, int]:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    return u.hostname or HOST, u.port or default


def reachable(url: str, default_port: int) -> bool:
    host, port = _host_port(url, default_port)
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def missing_dependencies() -> str | None:
    """Why the topology cannot start here (None: it can)."""
    if not reachable(pg_admin_url(), 5432):
        return f"Postgres not reachable at {pg_admin_url()} (set PLEXUS_TOPOLOGY_POSTGRES_URL)"
    if not shutil.which("redis-server") and not reachable(redis_url_fallback(), 6379):
        return f"no redis-server binary and no Redis at {redis_url_fallback()} (set PLEXUS_TEST_REDIS_URL)"
    return None


async def _pg_exec(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_pg_dsn(pg_admin_url()), timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# ---- the topology -------------------------------------------------------------------------------------


@dataclass
class Shape:
    gateways: int = 3
    runtimes: int = 2
    consoles: int = 1
    indexers: int = 1
    tools: int = 2


@dataclass
class Topology:
    shape: Shape = field(default_factory=Shape)
    llm_base: str | None = None  # None: start bench.llm_proc
    llm_tokens: int = 10
    llm_delay: float = 0.02
    env: dict[str, str] = field(default_factory=dict)  # extra PLEXUS_* settings for every service
    work: Path | None = None

    def __post_init__(self) -> None:
        self.procs: dict[str, Proc] = {}
        self.ports: dict[str, int] = {}
        self.nats: Proc | None = None
        self.redis: Proc | None = None
        self.net: Proc | None = None
        self.llm: Proc | None = None
        self.db_name = f"plexus_topo_{secrets.token_hex(4)}"
        self.db_created = False
        self.secret_key = secrets.token_urlsafe(48)
        self.internal_secret = secrets.token_urlsafe(48)
        self._own_work = self.work is None
        self.work = Path(self.work or tempfile.mkdtemp(prefix="plexus-topology-"))
        self.control_port = free_port()
        self.lb: dict[str, int] = {}  # balancer name -> listen port

    # -- names and URLs ----------------------------------------------------------------------------
    def names(self, target: str) -> list[str]:
        return [f"{target}-{i + 1}" for i in range(getattr(self.shape, target if target == "tools" else target + "s"))]

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.ports[name]}"

    @property
    def front(self) -> str:
        """The gateways' load balancer: where clients go."""
        return f"http://{HOST}:{self.lb['front']}"

    @property
    def gateway_urls(self) -> list[str]:
        return [self.url(n) for n in self.names("gateway")]

    @property
    def runtime_urls(self) -> list[str]:
        return [self.url(n) for n in self.names("runtime")]

    @property
    def nats_url(self) -> str:
        return f"nats://{HOST}:{self.ports['nats']}"

    @property
    def database_url(self) -> str:
        return f"postgresql+asyncpg://{self._pg_userinfo()}{HOST}:{self.lb['postgres']}/{self.db_name}"

    def _pg_userinfo(self) -> str:
        from urllib.parse import urlsplit

        u = urlsplit(pg_admin_url())
        if not u.username:
            return ""
        return u.username + (f":{u.password}" if u.password else "") + "@"

    # -- start / stop ------------------------------------------------------------------------------
    def start(self) -> Topology:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _net_spec(self, proxy_redis: bool) -> dict[str, Any]:
        """Ports for the balancers and fault proxies (``self.lb``) and what each forwards to."""
        spec: dict[str, Any] = {}
        for lb, target in (("front", "gateway"), ("runtime", "runtime"), ("console", "console"),
                           ("indexer", "indexer"), ("tools", "tools")):
            self.lb[lb] = free_port()
            spec[lb] = {"port": self.lb[lb], "backends": [self.ports[n] for n in self.names(target)]}
        self.lb["postgres"] = free_port()
        spec["postgres"] = {"port": self.lb["postgres"], "backends": [_host_port(pg_admin_url(), 5432)[1]]}
        if proxy_redis:  # the shared Redis, behind a fault proxy (keys are per app id: no collisions)
            self.lb["redis"] = free_port()
            spec["redis"] = {"port": self.lb["redis"], "backends": [_host_port(redis_url_fallback(), 6379)[1]]}
        return spec

    def _start(self) -> None:
        work = self.work
        for target in ("gateway", "runtime", "console", "indexer", "tools"):
            for name in self.names(target):
                self.ports[name] = free_port()
        # the balancers and proxies
        own_redis = shutil.which("redis-server")
        if own_redis:
            self.ports["redis"] = free_port()
            self.redis_url = f"redis://{HOST}:{self.ports['redis']}/0"
        for attempt in range(3):
            spec = self._net_spec(own_redis is None)
            self.net = Proc("net", [sys.executable, "-m", "tests.topology", "net", "--control",
                                    str(self.control_port), "--spec", json.dumps(spec)],
                            env=python_env(), log_dir=work, cwd=work).start()
            try:
                self._wait_port(self.control_port, self.net)
                break
            except RuntimeError as e:
                # a port free_port() handed out was taken before the balancer bound it (another process's
                # outgoing connection, say): nothing depends on these ports yet, so pick new ones
                if "address already in use" not in str(e) or attempt == 2:
                    raise
                self.net.stop()
                self.control_port = free_port()
        if not own_redis:
            self.redis_url = f"redis://{HOST}:{self.lb['redis']}/0"

        # the nats-server binary shared.natsd runs, but in a session of its own like every child here, so a
        # Ctrl-C in the terminal reaches only us and we stop the services before their NATS
        self.ports["nats"] = free_port()
        self.nats = Proc("nats", [find_binary(), "-js", "-sd", str(work / "nats"), "-a", HOST, "-p",
                                  str(self.ports["nats"])], env=python_env(), log_dir=work, cwd=work).start()
        self._wait_port(self.ports["nats"], self.nats)
        if own_redis:
            (work / "redis").mkdir(exist_ok=True)
            self.redis = Proc("redis", [own_redis, "--port", str(self.ports["redis"]), "--bind", HOST, "--save", "",
                                        "--appendonly", "yes", "--dir", str(work / "redis"), "--protected-mode", "no"],
                              env=python_env(), log_dir=work, cwd=work).start()
            self._wait_port(self.ports["redis"], self.redis)
        if self.llm_base is None:
            port = free_port()
            self.llm = Proc("llm", [sys.executable, "-m", "bench.llm_proc", "--port", str(port), "--tokens",
                                    str(self.llm_tokens), "--delay", str(self.llm_delay)], env=python_env(),
                            log_dir=work, cwd=ROOT, ready_url=f"http://{HOST}:{port}/v1/models").start()
            self.llm_base = f"http://{HOST}:{port}/v1"

        asyncio.run(_pg_exec(f'CREATE DATABASE "{self.db_name}"'))
        self.db_created = True
        base = self.base_env()
        mig = subprocess.run([sys.executable, "-m", "services.cli", "migrate"], env=base, cwd=work,
                             capture_output=True, text=True, timeout=180, check=False)
        if mig.returncode != 0:
            raise RuntimeError(f"plexus migrate failed:\n{mig.stdout}\n{mig.stderr}")
        # everything at once (the imports dominate start-up), gateways included: they only need URLs
        for target in ("console", "runtime", "indexer", "tools", "gateway"):
            for name in self.names(target):
                self._spawn(name)
        for name in self.procs:
            self.procs[name].wait_ready()
        if self.llm is not None:
            self.llm.wait_ready()

    def base_env(self) -> dict[str, str]:
        lb = self.lb
        env = python_env(
            PLEXUS_DATABASE_URL=self.database_url,
            PLEXUS_NATS_URL=self.nats_url,
            PLEXUS_REDIS_URL=self.redis_url,
            PLEXUS_SECRET_KEY=self.secret_key,
            PLEXUS_INTERNAL_SECRET=self.internal_secret,
            PLEXUS_GATEWAY__CONSOLE_URL=f"http://{HOST}:{lb['console']}",
            PLEXUS_GATEWAY__RUNTIME_URL=f"http://{HOST}:{lb['runtime']}",
            PLEXUS_GATEWAY__INDEXER_URL=f"http://{HOST}:{lb['indexer']}",
            PLEXUS_GATEWAY__TOOLS_URL=f"http://{HOST}:{lb['tools']}",
            # ten processes share one Postgres (max_connections is often 100)
            PLEXUS_DATABASE_POOL_SIZE="3",
            PLEXUS_DATABASE_MAX_OVERFLOW="5",
            PLEXUS_LOG_LEVEL="WARNING",
        )
        env.update(self.env)
        return env

    def _spawn(self, name: str) -> Proc:
        target = name.rsplit("-", 1)[0]
        data = self.work / "data" / name  # per process: the indexer's embedded vector engine lives here
        data.mkdir(parents=True, exist_ok=True)
        env = self.base_env()
        if target == "runtime" and "PLEXUS_DATABASE_POOL_SIZE" not in self.env:  # the busiest users
            env["PLEXUS_DATABASE_POOL_SIZE"], env["PLEXUS_DATABASE_MAX_OVERFLOW"] = "5", "10"
        argv = [sys.executable, "-m", "services.cli", "run", target, "--host", HOST, "--port",
                str(self.ports[name]), "--data-dir", str(data)]
        proc = Proc(name, argv, env=env, log_dir=self.work, cwd=self.work,
                    ready_url=f"{self.url(name)}/readyz").start()
        self.procs[name] = proc
        return proc

    @staticmethod
    def _wait_port(port: int, proc: Proc, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive:
                raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
            try:
                with socket.create_connection((HOST, port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{proc.name} did not listen on {port}")

    def stop(self) -> None:
        # all services at once (each drains its own runs), then what they depend on
        procs = [p for p in self.procs.values() if p.alive]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.proc.send_signal(signal.SIGINT)
        for p in list(self.procs.values()):
            with contextlib.suppress(Exception):
                p.stop()
        self.procs.clear()
        for p in (self.llm, self.redis, self.net, self.nats):
            if p is not None:
                with contextlib.suppress(Exception):
                    p.stop(grace=5)
        self.llm = self.redis = self.net = self.nats = None
        if self.db_created:
            with contextlib.suppress(Exception):
                asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
            self.db_created = False
        if self._own_work and os.environ.get("PLEXUS_TOPOLOGY_KEEP") != "1":
            shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------------------------------
    def control(self, line: str) -> Any:
        with socket.create_connection((HOST, self.control_port), timeout=60) as s:
            s.sendall(line.encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return json.loads(buf)

    def lb_stats(self) -> dict[str, dict[str, int]]:
        return self.control("stats")

    def kill(self, name: str) -> None:
        self.procs[name].kill()

    def restart(self, name: str, wait: bool = True) -> Proc:
        self.procs[name].stop()
        proc = self._spawn(name)
        if wait:
            proc.wait_ready()
        return proc

    def restart_nats(self) -> None:
        """A real restart: the same port and JetStream store."""
        assert self.nats is not None
        self.nats.stop()
        self.nats.start()
        self._wait_port(self.ports["nats"], self.nats)

    def restart_redis(self, down: float = 0.0) -> None:
        if self.redis is not None:
            self.redis.stop()  # SIGINT: redis writes its append-only file and exits
            time.sleep(down)
            self.redis.start()
            self._wait_port(self.ports["redis"], self.redis)
        else:
            self.control(f"sever redis {max(down, 0.5)}")

    def sever_postgres(self, down: float) -> None:
        """Reset every database connection and refuse new ones for ``down`` seconds."""
        self.control(f"sever postgres {down}")

    def admin_hint(self) -> str:
        base = self.front
        return ("Create the first account and workspace with:\n"
                f"  curl -X POST {base}/console/api/setup -H 'Content-Type: application/json' \\\n"
                "       -d '{\"email\":\"you@example.com\",\"name\":\"You\",\"password\":\"a-strong-password\"}'\n"
                f"The scripted model is an OpenAI-compatible provider at {self.llm_base}\n"
                "(POST /console/api/workspaces/current/model-providers/openai-compatible/credentials with "
                f"{{\"credentials\": {{\"api_key\": \"sk-any\", \"api_base\": \"{self.llm_base}\"}}}}).")


# ---- CLI ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.topology", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    net = sub.add_parser("net", help="(internal) run the balancers and fault proxies")
    net.add_argument("--control", type=int, required=True)
    net.add_argument("--spec", required=True)
    for name, default in (("gateways", 3), ("runtimes", 2), ("tools", 2)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--llm-tokens", type=int, default=10)
    p.add_argument("--llm-delay", type=float, default=0.02, help="seconds before each scripted token")
    a = p.parse_args(argv)
    if a.cmd == "net":
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
        asyncio.run(_net_main(json.loads(a.spec), a.control))
        return 0

    why = missing_dependencies()
    if why:
        print(f"cannot start the topology: {why}", file=sys.stderr)
        return 1
    stopping = False

    def _term(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    # also when started in the background by a shell, which would leave SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    topo = Topology(Shape(gateways=a.gateways, runtimes=a.runtimes, tools=a.tools), llm_tokens=a.llm_tokens,
                    llm_delay=a.llm_delay)
    try:
        print(f"starting the split topology (logs in {topo.work}) ...", flush=True)
        topo.start()
        print(f"\nplexus split topology ready: gateway (round-robin over {a.gateways}) at {topo.front}")
        for name, proc in topo.procs.items():
            print(f"  {name:<10} {topo.url(name)}  pid {proc.proc.pid}")
        print(f"  nats       {topo.nats_url}\n  redis      {topo.redis_url}\n  postgres   database {topo.db_name}")
        print("\n" + topo.admin_hint() + "\n\nCtrl-C stops everything.", flush=True)
        while True:
            time.sleep(1)
            dead = [n for n, pr in topo.procs.items() if not pr.alive]
            if dead:
                print(f"exited: {', '.join(dead)}; stopping", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        topo.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())

"""Shared fixtures: a real nats-server per session, SQLite always, Postgres/Redis when the CI URLs are
set (PLEXUS_TEST_DATABASE_URL, PLEXUS_TEST_REDIS_URL), and the whole stack on a real uvicorn port."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

import httpx
import pytest

from shared.migrate import upgrade_async
from shared.natsd import EmbeddedNats, free_port
from shared.settings import Settings
from tests.support import Served, serve

pytest_plugins = [
    "tests.llm_server",  # the scripted OpenAI-compatible server: fixture `llm`
    "tests.xdist_schedule",  # how `make test` (pytest -n) spreads the suite over its workers
]

# Under `pytest -n N` (pytest-xdist, what `make test` uses) each worker is its own process: "gw0", "gw1"...
WORKER = os.environ.get("PYTEST_XDIST_WORKER")


def _worker_database(url: str | None) -> str | None:
    """The Postgres database this process tests on: the given one, or under xdist one per worker on the
    same server (``test_gw0``...), because tests reset the schema they use."""
    if not url or not WORKER:
        return url
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return u.set(database=f"{u.database}_{WORKER}").render_as_string(hide_password=False)


PG_BASE_URL = os.environ.get("PLEXUS_TEST_DATABASE_URL")
PG_URL = _worker_database(PG_BASE_URL)
# Redis needs no split: every test keys its data by a random prefix or app id.
REDIS_URL = os.environ.get("PLEXUS_TEST_REDIS_URL")

needs_postgres = pytest.mark.skipif(not PG_URL, reason="PLEXUS_TEST_DATABASE_URL not set (no Postgres)")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="PLEXUS_TEST_REDIS_URL not set (no Redis)")


async def _create_worker_database() -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    name = make_url(PG_URL).database
    base = make_url(PG_BASE_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(base, timeout=10)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def pytest_configure(config: pytest.Config) -> None:
    if PG_URL and PG_URL != PG_BASE_URL:
        import asyncio

        asyncio.run(_create_worker_database())  # kept afterwards: the next run resets and reuses it


def db_params() -> list:
    """SQLite always; Postgres too when CI provides it."""
    params = [pytest.param("sqlite", id="sqlite")]
    params.append(pytest.param("postgres", id="postgres", marks=needs_postgres))
    return params


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    url = server.start()
    yield url
    server.stop()


async def reset_postgres(url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await engine.dispose()


def database_url(kind: str, tmp: Path) -> str:
    if kind == "postgres":
        assert PG_URL
        return PG_URL
    return f"sqlite+aiosqlite:///{tmp / 'plexus.db'}"


async def fresh_database(kind: str, tmp: Path) -> str:
    """The URL of an empty, migrated database of ``kind`` (a ``db_params`` id)."""
    url = database_url(kind, tmp)
    if kind == "postgres":
        await reset_postgres(url)
    await upgrade_async(url)
    return url


def make_settings(tmp: Path, db_url: str, nats: str, redis: str | None = None, **overrides) -> Settings:
    return Settings(
        data_dir=tmp, database_url=db_url, nats_url=nats, redis_url=redis, port=free_port(),
        log_json=True, log_level="WARNING", _env_file=None, **overrides,
    )


@dataclass
class LiveServer:
    """One Stack served by uvicorn inside the test's event loop."""

    stack: object
    served: Served
    base_url: str

    @property
    def ctx(self):
        return self.stack.ctx

    async def stop(self) -> None:
        await self.served.stop()
        await self.stack.stop()


async def start_live(settings: Settings, target: str = "all") -> LiveServer:
    from services.stack import Stack

    if settings.database_url and settings.database_url.startswith("postgresql") and target == "all":
        await reset_postgres(settings.database_url)
    stack = Stack(settings, target)
    app = await stack.start()
    served = await serve(app, settings.port)
    return LiveServer(stack, served, served.url)


def live_fixture(label: str, name: str = "live", **overrides: Any) -> Any:
    """A module-scoped fixture ``name``: the whole stack (`all` target) on SQLite and, in CI, on Postgres, with
    ``overrides`` for its Settings (a module that needs other limits or allowlists defines its own)."""

    @pytest.fixture(scope="module", params=db_params(), name=name)
    async def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, nats_url: str
                    ) -> AsyncIterator[LiveServer]:
        tmp = tmp_path_factory.mktemp(label)
        srv = await start_live(make_settings(tmp, database_url(request.param, tmp), nats_url, **overrides))
        yield srv
        await srv.stop()

    return stack


live = live_fixture("live")


@pytest.fixture
async def client(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as c:
        yield c

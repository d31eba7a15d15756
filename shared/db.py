"""Async engine and sessions (SQLite via aiosqlite by default, Postgres via asyncpg)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import orjson
from sqlalchemy import Engine, Executable, create_engine, event, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

# One statement of a Database.write: Core statement and its parameters (a list of them: executemany).
Step = tuple[Executable, Mapping[str, Any] | Sequence[Mapping[str, Any]]]


class Database:
    def __init__(self, url: str, echo: bool = False, pool_size: int = 10, max_overflow: int = 30,
                 pool_timeout: float = 120.0) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        # A burst of runs waits for a connection rather than failing: under CPU saturation a session
        # is held longer than usual, and an accepted request must not turn into a 500.
        kwargs: dict = {"echo": echo, "pool_size": pool_size, "max_overflow": max_overflow,
                        "pool_timeout": pool_timeout, "json_serializer": json_text}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        # SQLite writes of the hot paths (Database.write): aiosqlite pays a thread hop for every cursor,
        # execute, close and commit (8 for two inserts, ~1.8 ms on a quiet machine); the same transaction on
        # the sync driver in a worker thread is one hop (~0.7 ms). One thread: SQLite has one writer, and
        # this process's writes queue here instead of sleeping in SQLite's busy handler against each other.
        self._sync: Engine | None = None
        self._writer: ThreadPoolExecutor | None = None
        database = self.engine.url.database or ""
        if self.is_sqlite and database not in ("", ":memory:") and "mode=memory" not in str(self.engine.url):
            self._sync = create_engine(self.engine.url.set(drivername="sqlite"), echo=echo, pool_size=1,
                                       max_overflow=0, json_serializer=json_text, connect_args={"timeout": 30})
            event.listen(self._sync, "connect", _sqlite_pragmas)
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plexus-sqlite-write")

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as s:
            yield s

    async def write(self, *steps: Step) -> None:
        """Run Core statements in one transaction and commit it: the cheapest write there is, for the rows
        written on every request (messages, workflow runs). No ORM session; on a SQLite file one hop to the
        writer thread for the whole transaction, elsewhere the async engine's connection."""
        if self._sync is not None and self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._write_sync, steps)
            return
        async with self.engine.begin() as conn:
            for statement, params in steps:
                await conn.execute(statement, params)

    def _write_sync(self, steps: tuple[Step, ...]) -> None:
        assert self._sync is not None
        with self._sync.begin() as conn:
            for statement, params in steps:
                conn.execute(statement, params)

    async def ping(self) -> None:
        from sqlalchemy import text

        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.to_thread(self._writer.shutdown)  # a write in flight finishes first
        if self._sync is not None:
            self._sync.dispose()
        await self.engine.dispose()


async def lock_rows(session: AsyncSession, model: Any, where: tuple[Any, ...], noop: Any) -> None:
    """Lock the rows of ``model`` matching ``where`` until the session's transaction ends, so that changes which
    read them and write back run one after another, each seeing the last. Call it first in the session.

    Postgres: SELECT ... FOR UPDATE. SQLite drops FOR UPDATE, and its driver begins the transaction only at the
    first write: a no-op write (``noop``, a column set to itself) takes the database's write lock first (another
    writer waits, busy_timeout), and the reads that follow see every change committed before."""
    if session.bind.dialect.name == "sqlite":
        await session.exec(update(model).where(*where).values({noop.key: noop})
                           .execution_options(synchronize_session=False))
    else:
        await session.exec(select(noop).where(*where).with_for_update())


def json_text(value: Any) -> str:
    """A JSON column's text: UTF-8, not the stdlib's ``\\uXXXX`` escapes, so a keyword search (LIKE on the
    text, shared/workflow/logs.py) finds non-ASCII words. The columns are SQLite TEXT and Postgres ``json`` (kept
    verbatim), read back with json.loads either way. What orjson refuses (integers beyond 64 bits, lone
    surrogates) keeps the stdlib's escaped form, as before."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets readers run while the runtime writes messages; foreign keys for cascades.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()

"""Async engine and sessions (SQLite via aiosqlite by default, Postgres via asyncpg)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from sqlalchemy import event, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession


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

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as s:
            yield s

    async def ping(self) -> None:
        from sqlalchemy import text

        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
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

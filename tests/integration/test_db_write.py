"""Database.write: the one-transaction Core write of the hot paths (messages, workflow runs), on SQLite (the
writer thread's sync driver) and Postgres (the async engine)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import JSON, Column, DateTime, Integer, MetaData, String, Table, bindparam, insert, select
from sqlalchemy import update as sql_update
from sqlalchemy.exc import IntegrityError

from shared.db import Database
from tests.conftest import database_url, db_params, reset_postgres

META = MetaData()
PROBE = Table(
    "write_probe", META,
    Column("id", Integer, primary_key=True),
    Column("note", String(64), nullable=False),
    Column("data", JSON, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)
INSERT = insert(PROBE)
SET_NOTE = sql_update(PROBE).where(PROBE.c.id == bindparam("b_id"))


@pytest.fixture(params=db_params())
async def db(request: pytest.FixtureRequest, tmp_path: Path):
    url = database_url(request.param, tmp_path)
    if request.param == "postgres":
        await reset_postgres(url)
    database = Database(url)
    async with database.engine.begin() as conn:
        await conn.run_sync(META.create_all)
    yield database
    await database.close()


async def rows(db: Database) -> dict[int, tuple]:
    async with db.engine.connect() as conn:
        return {r.id: (r.note, r.data, r.at) for r in await conn.execute(select(PROBE))}


async def test_steps_commit_together_and_read_back(db: Database) -> None:
    at = datetime(2026, 12, 1, 22, 30, 5, 123456, tzinfo=UTC)
    data = {"名字": "数据", "n": [1, 2.5, None], "nested": {"ok": True}}
    await db.write(
        (INSERT, {"id": 1, "note": "one", "data": data, "at": at}),
        (INSERT, [{"id": i, "note": f"n{i}", "data": {"i": i}, "at": at} for i in (2, 3, 4)]),  # executemany
        (SET_NOTE, {"b_id": 3, "note": "three"}),
    )
    got = await rows(db)  # read through the async engine: the write is committed and visible at once
    assert sorted(got) == [1, 2, 3, 4]
    note, stored, when = got[1]
    assert (note, stored) == ("one", data)
    assert when.replace(tzinfo=UTC) == at  # SQLite keeps naive datetimes; the instant is the same
    assert got[3][0] == "three" and got[4] == ("n4", {"i": 4}, got[4][2])


async def test_a_failing_step_rolls_back_the_whole_write(db: Database) -> None:
    at = datetime.now(UTC)
    await db.write((INSERT, {"id": 1, "note": "kept", "data": {}, "at": at}))
    with pytest.raises(IntegrityError):
        await db.write(
            (INSERT, {"id": 2, "note": "lost", "data": {}, "at": at}),
            (SET_NOTE, {"b_id": 1, "note": "changed"}),
            (INSERT, {"id": 1, "note": "duplicate key", "data": {}, "at": at}),
        )
    assert {k: v[0] for k, v in (await rows(db)).items()} == {1: "kept"}
    await db.write((INSERT, {"id": 2, "note": "after", "data": {}, "at": at}))  # the writer is usable again
    assert sorted(await rows(db)) == [1, 2]


async def test_concurrent_writes_all_land_beside_session_writes(db: Database) -> None:
    """Many writes at once, mixed with ORM-session writes on the async engine's own connections (on SQLite
    two pools on one file): every row lands, none waits out the busy timeout."""
    at = datetime.now(UTC)

    async def through_session(i: int) -> None:
        async with db.session() as s:
            await s.execute(INSERT, params={"id": i, "note": "session", "data": {"i": i}, "at": at})
            await s.commit()

    writes = [db.write((INSERT, {"id": i, "note": "write", "data": {"i": i}, "at": at})) for i in range(200)]
    sessions = [through_session(i) for i in range(200, 240)]
    await asyncio.wait_for(asyncio.gather(*writes, *sessions), timeout=60)
    got = await rows(db)
    assert sorted(got) == list(range(240))
    assert sum(1 for v in got.values() if v[0] == "session") == 40

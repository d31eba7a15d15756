"""Every error a service can produce leaves in Dify's envelope, never FastAPI's 422 shape."""

import httpx
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from shared.errors import INTERNAL, INVALID_JSON, UNAVAILABLE, ApiError
from shared.http import create_base_app
from shared.natsd import free_port


class Body(BaseModel):
    name: str
    count: int = 0


@pytest.fixture
async def client():
    app = create_base_app("unit")

    @app.post("/things")
    async def things(body: Body) -> dict:
        if body.name == "teapot":
            raise ApiError(409, "conflict_teapot", "Already brewing.")
        if body.name == "value":
            raise ValueError("name must not be value")
        if body.name == "boom":
            raise RuntimeError("secret internals")
        if body.name == "db-down":  # a real connection to a Postgres port nobody listens on
            engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x")
            try:
                async with engine.connect():
                    pass
            finally:
                await engine.dispose()
        if body.name == "redis-down":
            r = aioredis.Redis(port=free_port(), socket_connect_timeout=1)
            try:
                await r.ping()
            finally:
                await r.aclose()
        if body.name == "sql-bug":  # a database error that is not an outage stays a 500
            engine = create_async_engine("sqlite+aiosqlite://")
            try:
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT * FROM no_such_table"))
            finally:
                await engine.dispose()
        return {"ok": body.count}

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


async def test_malformed_json_is_400_bad_request(client) -> None:
    r = await client.post("/things", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json() == {"code": "bad_request", "message": INVALID_JSON, "status": 400}


async def test_empty_body_is_400_bad_request(client) -> None:
    r = await client.post("/things", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "bad_request"


async def test_non_json_content_type_is_415(client) -> None:
    r = await client.post("/things", content=b'{"name": "x"}', headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type"


async def test_missing_and_mistyped_fields_are_invalid_param(client) -> None:
    r = await client.post("/things", json={})
    assert r.status_code == 400
    assert r.json() == {"code": "invalid_param", "message": "name is required", "params": "name", "status": 400}
    r = await client.post("/things", json={"name": "x", "count": "many"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_param" and r.json()["params"] == "count"


async def test_api_error_value_error_and_crash(client) -> None:
    r = await client.post("/things", json={"name": "teapot"})
    assert (r.status_code, r.json()) == (409, {"code": "conflict_teapot", "message": "Already brewing.", "status": 409})
    r = await client.post("/things", json={"name": "value"})
    assert r.status_code == 400 and r.json()["message"] == "name must not be value"
    r = await client.post("/things", json={"name": "boom"})
    assert r.status_code == 500 and r.json() == {"code": "internal_server_error", "message": INTERNAL, "status": 500}
    assert "secret" not in r.text


async def test_a_dependency_that_is_down_is_503_not_500(client) -> None:
    # refused requests the client may retry: the database or Redis is down or restarting
    for name in ("db-down", "redis-down"):
        r = await client.post("/things", json={"name": name})
        assert (r.status_code, r.json()) == (503, {"code": "service_unavailable", "message": UNAVAILABLE,
                                                    "status": 503}), name
        assert r.headers["retry-after"] == "1"
    r = await client.post("/things", json={"name": "sql-bug"})
    assert r.status_code == 500 and r.json()["code"] == "internal_server_error"


async def test_unknown_route_and_method(client) -> None:
    r = await client.get("/nope")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = await client.get("/things")
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"


async def test_request_id_and_health(client) -> None:
    r = await client.get("/healthz", headers={"x-request-id": "abc"})
    assert r.json() == {"status": "ok"} and r.headers["x-request-id"] == "abc"
    assert "plexus_http_requests_total" in (await client.get("/metrics")).text


def test_asyncpg_client_errors_are_bugs_but_a_closed_connection_is_an_outage() -> None:
    import asyncpg.exceptions as pg
    from asyncpg.exceptions._base import (
        DataError as ArgumentError,  # asyncpg raises it for a wrong argument type
    )

    from shared.errors import dependency_down

    closed = pg.InterfaceError("cannot perform operation: connection is closed")
    wrong_argument = ArgumentError("invalid input for query argument $1: 'x' (an integer is required)")
    busy = pg.InterfaceError("cannot perform operation: another operation is in progress")
    assert isinstance(wrong_argument, pg.InterfaceError)  # why the class alone cannot decide
    assert dependency_down(closed)
    assert not dependency_down(wrong_argument)
    assert not dependency_down(busy)
    # as SQLAlchemy raises them: the driver error is the cause
    try:
        raise RuntimeError("wrapped") from closed
    except RuntimeError as e:
        assert dependency_down(e)

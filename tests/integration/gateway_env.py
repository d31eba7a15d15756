"""Building blocks for the gateway tests: a Context built by hand on real SQLite + NATS (+ Redis),
seeded key rows, small downstream ASGI apps standing in for the services, and uvicorn servers."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from shared.bus import Bus
from shared.context import Context
from shared.crypto import generate_api_key, hash_token, token_hint
from shared.db import Database
from shared.identity import IDENTITY_HEADERS
from shared.migrate import upgrade_async
from shared.models import ApiToken, App, Tenant
from shared.settings import GatewaySettings, RuntimeSettings, Settings

SECRET = "test-internal-secret"


async def make_context(tmp: Path, nats_url: str, *, db_url: str | None = None, migrate: bool = True,
                       redis_url: str | None = None, mode: str = "all", run_timeout: float = 600.0,
                       **gateway: Any) -> Context:
    db_url = db_url or f"sqlite+aiosqlite:///{tmp / 'plexus.db'}"
    if migrate:
        await upgrade_async(db_url)
    settings = Settings(
        data_dir=tmp, database_url=db_url, nats_url=nats_url, redis_url=redis_url,
        internal_secret=SECRET, secret_key="test-secret-key", log_level="WARNING", _env_file=None,
        gateway=GatewaySettings(**gateway), runtime=RuntimeSettings(run_timeout=run_timeout),
    )
    redis = None
    if redis_url:
        import redis.asyncio as aioredis

        redis = aioredis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    bus = await Bus.connect(nats_url, name="plexus-gateway-test")
    return Context(settings=settings, db=Database(db_url), bus=bus, redis=redis, mode=mode)


async def close_context(ctx: Context) -> None:
    await ctx.bus.close()
    if ctx.redis is not None:
        await ctx.redis.aclose()
    await ctx.db.close()


@dataclass
class Seeded:
    tenant_id: str
    app_id: str | None
    key: str
    key_id: str


async def seed_app(db: Database, *, rpm: int = 0, rph: int = 0, max_active: int | None = None,
                   enable_api: bool = True, status: str = "normal", tenant_status: str = "normal",
                   tenant_id: str | None = None) -> Seeded:
    async with db.session() as s:
        if tenant_id is None:
            tenant = Tenant(name=f"ws-{uuid.uuid4().hex[:8]}", status=tenant_status)
            s.add(tenant)
            await s.flush()
            tenant_id = tenant.id
        app = App(tenant_id=tenant_id, name=f"app-{uuid.uuid4().hex[:8]}", mode="chat", enable_api=enable_api,
                  status=status, api_rpm=rpm, api_rph=rph, max_active_requests=max_active)
        s.add(app)
        await s.flush()
        key = generate_api_key("app")
        tok = ApiToken(tenant_id=tenant_id, app_id=app.id, type="app", token_hash=hash_token(key),
                       token_hint=token_hint(key))
        s.add(tok)
        await s.commit()
        return Seeded(tenant_id, app.id, key, tok.id)


async def seed_key(db: Database, tenant_id: str, *, type_: str = "dataset", app_id: str | None = None
                   ) -> Seeded:
    key = generate_api_key("dataset" if type_ == "dataset" else "app")
    async with db.session() as s:
        tok = ApiToken(tenant_id=tenant_id, app_id=app_id, type=type_, token_hash=hash_token(key),
                       token_hint=token_hint(key))
        s.add(tok)
        await s.commit()
        return Seeded(tenant_id, app_id, key, tok.id)


async def seed_tenant(db: Database, status: str = "normal") -> str:
    async with db.session() as s:
        t = Tenant(name=f"ws-{uuid.uuid4().hex[:8]}", status=status)
        s.add(t)
        await s.commit()
        return t.id


# --- stand-in services ----------------------------------------------------------------------------

@dataclass
class Probe:
    """What the stand-in services saw (shared by the test and the app)."""

    streams_started: int = 0
    streams_finished: int = 0  # ran to the end
    streams_cancelled: int = 0  # stopped because the client went away
    last_headers: dict[str, str] = field(default_factory=dict)


def service_app(name: str, probe: Probe | None = None) -> Starlette:
    """Echoes what arrived (identity headers included), streams SSE, sleeps on demand."""
    probe = probe or Probe()

    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        headers = dict(request.headers)
        probe.last_headers = headers
        return JSONResponse({
            "service": name,
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "body_len": len(body),
            "headers": headers,
        })

    async def sse(request: Request) -> StreamingResponse:
        n = int(request.query_params.get("n", "3"))
        interval = float(request.query_params.get("interval", "0.05"))
        first = float(request.query_params.get("first", "0"))

        async def events():
            probe.streams_started += 1
            try:
                await asyncio.sleep(first)
                for i in range(n):
                    yield f"data: {json.dumps({'event': 'message', 'i': i})}\n\n"
                    await asyncio.sleep(interval)
                probe.streams_finished += 1
            except BaseException:
                probe.streams_cancelled += 1
                raise

        return StreamingResponse(events(), media_type="text/event-stream")

    async def slow(request: Request) -> JSONResponse:
        await asyncio.sleep(float(request.query_params.get("delay", "1")))
        return JSONResponse({"slow": True})

    app = Starlette(routes=[
        Route("/v1/sse", sse, methods=["GET", "POST"]),
        Route("/v1/slow", slow, methods=["GET", "POST"]),
        Route("/{path:path}", echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ])
    app.state.probe = probe
    return app


def deaf_stream_app(probe: Probe, n: int = 100, interval: float = 0.05):
    """A raw ASGI SSE stream that never reads ``receive``: only the gateway can see a disconnect."""

    async def app(scope, receive, send):
        probe.streams_started += 1
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(n):
            chunk = b"data: {\"i\": %d}\n\n" % i
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await asyncio.sleep(interval)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        probe.streams_finished += 1

    return app


def identity_seen(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k in IDENTITY_HEADERS}


@dataclass
class RawResponse:
    status_code: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def raw_get(url: str, path: str, headers: dict[str, str]) -> RawResponse:
    """One HTTP/1.1 GET on its own socket. httpx with a pool of hundreds of connections is too slow
    to put 500 requests in flight at once; this is what a burst of independent clients looks like."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{head}\r\n".encode())
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    parsed = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        parsed[k.strip().lower()] = v.strip()
    return RawResponse(status, parsed, body)


async def eventually(check, timeout: float = 1.0, interval: float = 0.02):
    """Poll an async check until it returns truthy; returns (value, seconds taken)."""
    start = time.monotonic()
    while True:
        value = await check()
        elapsed = time.monotonic() - start
        if value or elapsed > timeout:
            return value, elapsed
        await asyncio.sleep(interval)

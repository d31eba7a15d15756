"""The gateway against real SQLite, NATS and stand-in services, in `all` mode (in-process dispatch)
and split mode (HTTP to an upstream uvicorn), the gateway itself always served by uvicorn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import httpx
import pytest
from sqlalchemy import delete, event, select, update

import services.gateway as gateway_module
from services.gateway.api import Gateway, server_version
from shared.crypto import hash_token
from shared.models import ApiToken, App, Tenant
from shared.natsd import free_port
from shared.subjects import config_changed
from tests.integration.gateway_env import (
    SECRET,
    Probe,
    close_context,
    deaf_stream_app,
    eventually,
    identity_seen,
    make_context,
    seed_app,
    seed_key,
    seed_tenant,
    service_app,
)
from tests.support import Served, serve

MAX_BODY = 4096
MISSING = "Authorization header must be provided and start with 'Bearer'"
SCHEME = "Authorization scheme must be 'Bearer'"
INVALID = "Access token is invalid"


@dataclass
class Env:
    ctx: object
    gw: Gateway
    served: Served
    client: httpx.AsyncClient
    probe: Probe
    deaf_probe: Probe


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory, nats_url: str) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("gw")
    ctx = await make_context(tmp, nats_url, max_body_bytes=MAX_BODY, key_cache_seconds=60)
    probe, deaf = Probe(), Probe()
    runtime = service_app("runtime", probe)
    ctx.local_apps.update({"console": service_app("console"), "runtime": runtime,
                           "indexer": service_app("indexer"), "tools": service_app("tools")})
    gw = gateway_module.create_app(ctx)
    gw.maintenance_interval = 0.2
    await gateway_module.start(ctx, gw)
    # a route whose service never listens for disconnects (only the gateway's own reader can)
    deaf_app = deaf_stream_app(deaf)

    async def runtime_with_deaf(scope, receive, send):
        if scope["path"] == "/v1/deaf":
            return await deaf_app(scope, receive, send)
        if scope["path"] == "/v1/boom":
            raise RuntimeError("service bug")
        return await runtime(scope, receive, send)

    ctx.local_apps["runtime"] = runtime_with_deaf
    served = await serve(gw)
    client = httpx.AsyncClient(base_url=served.url, timeout=10)
    yield Env(ctx, gw, served, client, probe, deaf)
    await client.aclose()
    await served.stop()
    await gateway_module.stop(ctx, gw)
    await close_context(ctx)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def open_streams(client: httpx.AsyncClient) -> float:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith('plexus_active_streams{service="gateway"}'):
            return float(line.split()[-1])
    return 0.0


# --- plain routes ----------------------------------------------------------------------------------

async def test_welcome_needs_no_key(env: Env) -> None:
    for path in ("/v1/", "/v1"):
        r = await env.client.get(path)
        assert r.status_code == 200
        assert r.json() == {"welcome": "Dify OpenAPI", "api_version": "v1",
                            "server_version": server_version()}
    assert server_version() != "0.0.0"
    r = await env.client.post("/v1/")
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"


async def test_unknown_path_is_404_envelope(env: Env) -> None:
    for path in ("/nope", "/v1x", "/console/apix", "/"):
        r = await env.client.get(path)
        assert r.status_code == 404
        assert r.json() == {"code": "not_found", "message": "The requested URL was not found on the server.",
                            "status": 404}
        assert r.headers["x-request-id"]


async def test_service_crash_before_response_is_500_envelope(env: Env) -> None:
    seeded = await seed_app(env.ctx.db, max_active=1)
    r = await env.client.get("/v1/boom", headers=bearer(seeded.key))
    assert r.status_code == 500
    assert r.json()["code"] == "internal_server_error"
    assert env.gw.limiter.active(seeded.app_id) == 0


async def test_health_ready_metrics(env: Env) -> None:
    assert (await env.client.get("/healthz")).json() == {"status": "ok"}
    r = await env.client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"database": "ok", "nats": "ok"}
    seeded = await seed_app(env.ctx.db)
    assert (await env.client.get("/v1/info", headers=bearer(seeded.key))).status_code == 200
    text = (await env.client.get("/metrics")).text
    assert 'plexus_http_requests_total{method="GET",route="runtime",service="gateway",status="200"}' in text
    assert 'plexus_http_request_seconds_count{route="runtime",service="gateway"}' in text


# --- auth ------------------------------------------------------------------------------------------

async def test_auth_messages_match_dify(env: Env) -> None:
    app_key = await seed_app(env.ctx.db)
    ds_key = await seed_key(env.ctx.db, app_key.tenant_id)
    cases = [
        ("/v1/chat-messages", {}, MISSING),
        ("/v1/chat-messages", {"Authorization": "Bearer"}, MISSING),
        ("/v1/chat-messages", {"Authorization": "Basic abc"}, SCHEME),
        ("/v1/chat-messages", {"Authorization": "Token " + app_key.key}, SCHEME),
        ("/v1/chat-messages", bearer("app-unknownunknownunknown"), INVALID),
        ("/v1/chat-messages", bearer(ds_key.key), INVALID),  # dataset key on an app route
        ("/v1/datasets", bearer(app_key.key), INVALID),  # app key on a dataset route
        ("/v1/workspaces/current/models/model-types/text-embedding", bearer(app_key.key), INVALID),
    ]
    for path, headers, message in cases:
        r = await env.client.post(path, headers=headers, json={})
        assert r.status_code == 401, (path, headers)
        assert r.json() == {"code": "unauthorized", "message": message, "status": 401}, (path, headers)
        assert r.headers["www-authenticate"] == 'Bearer realm="api"'

    # the scheme is case-insensitive and extra whitespace after it is fine
    for header in (f"bearer {app_key.key}", f"BEARER  {app_key.key}"):
        r = await env.client.post("/v1/chat-messages", headers={"Authorization": header}, json={})
        assert r.status_code == 200 and r.json()["service"] == "runtime"
    r = await env.client.get("/v1/datasets", headers=bearer(ds_key.key))
    assert r.status_code == 200 and r.json()["service"] == "indexer"
    r = await env.client.get("/v1/workspaces/current/models/model-types/text-embedding",
                             headers=bearer(ds_key.key))
    assert r.status_code == 200 and r.json()["service"] == "indexer"


async def test_forbidden_app_states(env: Env) -> None:
    db = env.ctx.db
    abnormal = await seed_app(db, status="banned")
    disabled = await seed_app(db, enable_api=False)
    archived = await seed_app(db, tenant_status="archived")
    tenant = await seed_tenant(db)
    orphan = await seed_key(db, tenant, type_="app", app_id=None)  # an app key whose app is gone
    cases = [
        (orphan, "The app no longer exists."),
        (abnormal, "The app's status is abnormal."),
        (disabled, "The app's API service has been disabled."),
        (archived, "The workspace's status is archived."),
    ]
    for seeded, message in cases:
        r = await env.client.post("/v1/chat-messages", headers=bearer(seeded.key), json={})
        assert r.status_code == 403
        assert r.json() == {"code": "forbidden", "message": message, "status": 403}


async def test_identity_headers_added_and_spoofs_stripped(env: Env) -> None:
    seeded = await seed_app(env.ctx.db)
    spoof = {
        "X-Plexus-Internal": "guessed", "X-Plexus-Tenant-Id": "evil-tenant", "X-Plexus-App-Id": "evil-app",
        "X-Plexus-Key-Id": "evil-key", "X-Plexus-Key-Type": "dataset",
    }
    r = await env.client.post("/v1/chat-messages?x=1", headers={**bearer(seeded.key), **spoof,
                                                               "X-Request-Id": "req-123"}, json={"a": 1})
    assert r.status_code == 200
    got = r.json()
    assert got["path"] == "/v1/chat-messages" and got["query"] == "x=1" and got["body_len"] == 7
    assert identity_seen(got["headers"]) == {
        "x-plexus-internal": SECRET, "x-plexus-tenant-id": seeded.tenant_id, "x-plexus-app-id": seeded.app_id,
        "x-plexus-key-id": seeded.key_id, "x-plexus-key-type": "app",
    }
    assert "authorization" not in got["headers"]  # the key is not passed on to the services
    assert got["headers"]["x-request-id"] == "req-123"
    assert r.headers["x-request-id"] == "req-123"

    # without one, the gateway makes a request id and both the service and client see it
    r = await env.client.get("/v1/parameters", headers=bearer(seeded.key))
    rid = r.headers["x-request-id"]
    assert len(rid) == 32 and r.json()["headers"]["x-request-id"] == rid
    # Dify's X-Trace-Id serves as the request id when there is no X-Request-ID (and still reaches the service)
    r = await env.client.get("/v1/parameters", headers={**bearer(seeded.key), "X-Trace-Id": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42" and r.json()["headers"]["x-request-id"] == "trace-42"
    assert r.json()["headers"]["x-trace-id"] == "trace-42"
    r = await env.client.get("/v1/parameters", headers={**bearer(seeded.key), "X-Trace-Id": "t", "X-Request-Id": "r"})
    assert r.headers["x-request-id"] == "r"


async def test_console_needs_no_key_but_is_scrubbed(env: Env) -> None:
    r = await env.client.post("/console/api/apps", headers={"Authorization": "Bearer some-jwt",
                                                             "X-Plexus-Tenant-Id": "evil"}, json={})
    assert r.status_code == 200
    got = r.json()
    assert got["service"] == "console" and got["path"] == "/console/api/apps"
    assert identity_seen(got["headers"]) == {}
    assert got["headers"]["authorization"] == "Bearer some-jwt"  # the console checks its own JWT


# --- body limit ------------------------------------------------------------------------------------

async def test_body_limit_by_content_length(env: Env) -> None:
    seeded = await seed_app(env.ctx.db)
    for path, headers in (("/v1/chat-messages", bearer(seeded.key)), ("/console/api/apps", {})):
        r = await env.client.post(path, headers=headers, content=b"x" * (MAX_BODY + 1))
        assert r.status_code == 413
        body = r.json()
        assert body["code"] == "request_entity_too_large" and body["status"] == 413
        r = await env.client.post(path, headers=headers, content=b"x" * MAX_BODY)
        assert r.status_code == 200 and r.json()["body_len"] == MAX_BODY


async def _chunks(n: int, size: int = 512):
    for _ in range(n):
        yield b"y" * size
        await asyncio.sleep(0)


async def test_body_limit_while_streaming_chunked(env: Env) -> None:
    seeded = await seed_app(env.ctx.db, max_active=5)
    r = await env.client.post("/v1/chat-messages", headers=bearer(seeded.key), content=_chunks(20))
    assert r.status_code == 413 and r.json()["code"] == "request_entity_too_large"
    assert env.gw.limiter.active(seeded.app_id) == 0  # the slot of the refused upload is free again
    r = await env.client.post("/v1/chat-messages", headers=bearer(seeded.key), content=_chunks(8))
    assert r.status_code == 200 and r.json()["body_len"] == 8 * 512
    r = await env.client.post("/console/api/files", content=_chunks(20))
    assert r.status_code == 413


# --- cache and invalidation ------------------------------------------------------------------------

async def test_deleted_key_rejected_within_a_second_over_nats(env: Env) -> None:
    seeded = await seed_app(env.ctx.db)
    h = bearer(seeded.key)
    assert (await env.client.get("/v1/info", headers=h)).status_code == 200
    async with env.ctx.db.session() as s:
        await s.execute(delete(ApiToken).where(ApiToken.id == seeded.key_id))
        await s.commit()
    # still cached: the TTL alone would keep it alive for a minute
    assert (await env.client.get("/v1/info", headers=h)).status_code == 200
    await env.ctx.bus.publish_json(config_changed("apikey", seeded.key_id),
                                   {"kind": "apikey", "id": seeded.key_id,
                                    "token_hash": hash_token(seeded.key)})

    async def rejected() -> bool:
        r = await env.client.get("/v1/info", headers=h)
        return r.status_code == 401 and r.json()["message"] == INVALID

    ok, took = await eventually(rejected, timeout=1.0)
    assert ok, "deleted key still accepted after 1 s"
    assert took < 1.0


async def test_app_and_tenant_changes_apply_at_once(env: Env) -> None:
    db = env.ctx.db
    seeded = await seed_app(db)
    h = bearer(seeded.key)
    assert (await env.client.get("/v1/info", headers=h)).status_code == 200

    async with db.session() as s:
        await s.execute(update(App).where(App.id == seeded.app_id).values(api_rpm=1))
        await s.commit()
    await env.ctx.bus.publish_json(config_changed("app", seeded.app_id), {"kind": "app", "id": seeded.app_id})

    async def limited() -> bool:
        r = await env.client.get("/v1/info", headers=h)
        return r.status_code == 429

    ok, _ = await eventually(limited, timeout=1.0)
    assert ok, "new api_rpm not applied"

    async with db.session() as s:
        await s.execute(update(App).where(App.id == seeded.app_id).values(api_rpm=0, enable_api=False))
        await s.commit()
    await env.ctx.bus.publish_json(config_changed("app", seeded.app_id), {"kind": "app", "id": seeded.app_id})

    async def disabled() -> bool:
        r = await env.client.get("/v1/info", headers=h)
        return r.status_code == 403 and r.json()["message"] == "The app's API service has been disabled."

    assert (await eventually(disabled, timeout=1.0))[0]

    other = await seed_app(db)
    assert (await env.client.get("/v1/info", headers=bearer(other.key))).status_code == 200
    async with db.session() as s:
        await s.execute(update(Tenant).where(Tenant.id == other.tenant_id).values(status="archived"))
        await s.commit()
    await env.ctx.bus.publish_json(config_changed("tenant", other.tenant_id),
                                   {"kind": "tenant", "id": other.tenant_id})

    async def archived() -> bool:
        r = await env.client.get("/v1/info", headers=bearer(other.key))
        return r.status_code == 403 and r.json()["message"] == "The workspace's status is archived."

    assert (await eventually(archived, timeout=1.0))[0]


async def test_cold_burst_does_one_query(env: Env) -> None:
    seeded = await seed_app(env.ctx.db)
    queries: list[str] = []

    def count(conn, cursor, statement, params, context, executemany):
        if "FROM api_tokens" in statement and statement.lstrip().upper().startswith("SELECT"):
            queries.append(statement)

    engine = env.ctx.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        rs = await asyncio.gather(*[env.client.get("/v1/info", headers=bearer(seeded.key))
                                    for _ in range(50)])
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert [r.status_code for r in rs] == [200] * 50
    assert len(queries) == 1


async def test_unknown_keys_cached_briefly_and_new_key_announced(env: Env) -> None:
    tenant = await seed_tenant(env.ctx.db)
    from shared.crypto import generate_api_key, token_hint

    key = generate_api_key("app")
    loads = env.gw.keys.loads
    for _ in range(3):
        assert (await env.client.get("/v1/info", headers=bearer(key))).status_code == 401
    assert env.gw.keys.loads == loads + 1  # the negative answer was cached
    async with env.ctx.db.session() as s:
        app = App(tenant_id=tenant, name="late", mode="chat")
        s.add(app)
        await s.flush()
        tok = ApiToken(tenant_id=tenant, app_id=app.id, type="app", token_hash=hash_token(key),
                       token_hint=token_hint(key))
        s.add(tok)
        await s.commit()
    await env.ctx.bus.publish_json(config_changed("apikey", tok.id),
                                   {"kind": "apikey", "id": tok.id, "token_hash": hash_token(key)})

    async def accepted() -> bool:
        return (await env.client.get("/v1/info", headers=bearer(key))).status_code == 200

    assert (await eventually(accepted, timeout=1.0))[0]


async def test_last_used_at_written_in_batches(env: Env) -> None:
    seeded = await seed_app(env.ctx.db)

    async def last_used() -> datetime | None:
        async with env.ctx.db.session() as s:
            q = select(ApiToken.last_used_at).where(ApiToken.id == seeded.key_id)
            return (await s.execute(q)).scalar_one()

    assert await last_used() is None
    assert (await env.client.get("/v1/info", headers=bearer(seeded.key))).status_code == 200
    first, _ = await eventually(last_used, timeout=3.0)
    assert first is not None
    for _ in range(5):
        assert (await env.client.get("/v1/info", headers=bearer(seeded.key))).status_code == 200
    await asyncio.sleep(3 * env.gw.maintenance_interval)
    assert await last_used() == first  # at most once a minute per key


# --- limits through the gateway ----------------------------------------------------------------------

async def test_rpm_refusal_envelope_and_headers(env: Env) -> None:
    seeded = await seed_app(env.ctx.db, rpm=2, rph=100)
    h = bearer(seeded.key)
    r1 = await env.client.get("/v1/info", headers=h)
    assert r1.status_code == 200
    assert r1.headers["x-ratelimit-limit"] == "2" and r1.headers["x-ratelimit-remaining"] == "1"
    assert r1.headers["ratelimit-policy"] == '"rpm";q=2;w=60, "rph";q=100;w=3600'
    assert r1.headers["ratelimit"].startswith('"rpm";r=1;t=')
    assert (await env.client.get("/v1/info", headers=h)).status_code == 200
    r3 = await env.client.get("/v1/info", headers=h)
    assert r3.status_code == 429
    body = r3.json()
    assert body["code"] == "too_many_requests" and body["status"] == 429
    assert "2 API requests per minute" in body["message"]
    assert 1 <= int(r3.headers["retry-after"]) <= 60
    assert r3.headers["x-ratelimit-remaining"] == "0" and r3.headers["x-ratelimit-limit"] == "2"
    assert r3.headers["x-ratelimit-reset"] == r3.headers["retry-after"]
    text = (await env.client.get("/metrics")).text
    assert 'plexus_rate_limited_total{limit="rpm"}' in text


async def test_rate_limit_headers_arrive_before_first_sse_byte(env: Env) -> None:
    seeded = await seed_app(env.ctx.db, rpm=100)
    t0 = time.monotonic()
    async with env.client.stream("POST", "/v1/sse?n=2&first=1.0", headers=bearer(seeded.key)) as r:
        headers_at = time.monotonic() - t0
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-ratelimit-limit"] == "100" and r.headers["x-ratelimit-remaining"] == "99"
        assert r.headers["ratelimit-policy"] == '"rpm";q=100;w=60'
        assert r.headers["x-accel-buffering"] == "no" and r.headers["cache-control"] == "no-cache"
        assert headers_at < 0.8, "headers waited for the first event"
        events = [line async for line in r.aiter_lines() if line.startswith("data:")]
    assert len(events) == 2 and time.monotonic() - t0 >= 1.0


async def test_concurrency_slot_held_by_stream_and_freed_at_its_end(env: Env) -> None:
    seeded = await seed_app(env.ctx.db, max_active=1)
    h = bearer(seeded.key)
    before = await open_streams(env.client)
    async with env.client.stream("GET", "/v1/sse?n=4&interval=0.1", headers=h) as r:
        assert r.status_code == 200
        assert await open_streams(env.client) == before + 1
        assert r.headers["ratelimit-policy"] == '"concurrency";q=1;qu="concurrent-requests"'
        busy = await env.client.get("/v1/info", headers=h)
        assert busy.status_code == 429
        assert busy.json()["message"] == (
            "Too many requests. Please try again later. "
            "The current maximum concurrent requests allowed is 1.")
        assert busy.headers["retry-after"] == "1"
        async for _ in r.aiter_bytes():
            pass

    async def free() -> bool:
        return (await env.client.get("/v1/info", headers=h)).status_code == 200

    assert (await eventually(free, timeout=1.0))[0]
    assert env.gw.limiter.active(seeded.app_id) == 0
    assert await open_streams(env.client) == before


@pytest.mark.parametrize("path", ["/v1/sse?n=200&interval=0.05", "/v1/deaf"], ids=["listening", "deaf"])
async def test_concurrency_slot_freed_on_client_disconnect(env: Env, path: str) -> None:
    seeded = await seed_app(env.ctx.db, max_active=1)
    h = bearer(seeded.key)
    before = await open_streams(env.client)
    async with httpx.AsyncClient(base_url=env.served.url, timeout=10) as c, \
            c.stream("GET", path, headers=h) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                break
        assert (await env.client.get("/v1/info", headers=h)).status_code == 429
    # the stream would run ~5 s more; closing the connection must free the slot now

    async def free() -> bool:
        return (await env.client.get("/v1/info", headers=h)).status_code == 200

    ok, _ = await eventually(free, timeout=1.5)
    assert ok, "slot still held after the client went away"
    assert env.gw.limiter.active(seeded.app_id) == 0
    assert await open_streams(env.client) == before


# --- split mode: the gateway in front of real upstream servers ---------------------------------------

@dataclass
class Split:
    ctx: object
    gw: Gateway
    served: Served
    upstream: Served
    probe: Probe
    client: httpx.AsyncClient


@pytest.fixture(scope="module")
async def split(tmp_path_factory: pytest.TempPathFactory, nats_url: str) -> AsyncIterator[Split]:
    tmp = tmp_path_factory.mktemp("gw-split")
    probe = Probe()
    upstream = await serve(service_app("runtime", probe))
    console = await serve(service_app("console"))
    ctx = await make_context(tmp, nats_url, mode="split", max_body_bytes=MAX_BODY, upstream_timeout=2.0,
                             runtime_url=upstream.url + "/", console_url=console.url,
                             indexer_url=f"http://127.0.0.1:{free_port()}")
    gw = gateway_module.create_app(ctx)
    await gateway_module.start(ctx, gw)
    served = await serve(gw)
    client = httpx.AsyncClient(base_url=served.url, timeout=10)
    yield Split(ctx, gw, served, upstream, probe, client)
    await client.aclose()
    await served.stop()
    await gateway_module.stop(ctx, gw)
    await upstream.stop()
    await console.stop()
    await close_context(ctx)


async def test_split_forwards_identity_and_streams_bodies(split: Split) -> None:
    seeded = await seed_app(split.ctx.db, rpm=10)
    r = await split.client.post("/v1/chat-messages?q=1",
                                headers={**bearer(seeded.key), "X-Plexus-Tenant-Id": "evil"},
                                content=_chunks(6))
    assert r.status_code == 200
    got = r.json()
    assert got["path"] == "/v1/chat-messages" and got["query"] == "q=1" and got["body_len"] == 6 * 512
    assert identity_seen(got["headers"]) == {
        "x-plexus-internal": SECRET, "x-plexus-tenant-id": seeded.tenant_id, "x-plexus-app-id": seeded.app_id,
        "x-plexus-key-id": seeded.key_id, "x-plexus-key-type": "app",
    }
    assert got["headers"]["x-request-id"] == r.headers["x-request-id"]
    assert r.headers["x-ratelimit-limit"] == "10" and r.headers["x-ratelimit-remaining"] == "9"
    assert r.headers.get_list("server") == ["uvicorn"]  # upstream's own server/date are not duplicated

    r = await split.client.get("/console/api/setup")
    assert r.status_code == 200 and r.json()["service"] == "console"


async def test_split_sse_passthrough_is_unbuffered(split: Split) -> None:
    seeded = await seed_app(split.ctx.db, rpm=10)
    t0 = time.monotonic()
    arrivals = []
    path = "/v1/sse?n=3&interval=0.3&first=1.0"
    async with split.client.stream("GET", path, headers=bearer(seeded.key)) as r:
        headers_at = time.monotonic() - t0
        assert r.headers["x-ratelimit-limit"] == "10"
        assert r.headers["x-accel-buffering"] == "no" and r.headers["cache-control"] == "no-cache"
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic() - t0)
    assert headers_at < 0.8, "headers waited for the first event"
    assert len(arrivals) == 3
    assert arrivals[0] >= 1.0 and arrivals[2] - arrivals[0] >= 0.5  # events arrive as they are made


async def test_split_upstream_errors(split: Split) -> None:
    app_key = await seed_app(split.ctx.db)
    ds = await seed_key(split.ctx.db, app_key.tenant_id)
    r = await split.client.get("/v1/datasets", headers=bearer(ds.key))
    assert r.status_code == 502 and r.json()["code"] == "bad_gateway"
    r = await split.client.get("/v1/slow?delay=4", headers=bearer(app_key.key))
    assert r.status_code == 504 and r.json()["code"] == "gateway_timeout"


async def test_split_body_limits(split: Split) -> None:
    seeded = await seed_app(split.ctx.db)
    r = await split.client.post("/v1/chat-messages", headers=bearer(seeded.key),
                                content=b"x" * (MAX_BODY + 1))
    assert r.status_code == 413
    r = await split.client.post("/v1/chat-messages", headers=bearer(seeded.key), content=_chunks(20))
    assert r.status_code == 413 and r.json()["code"] == "request_entity_too_large"


async def test_split_disconnect_frees_slot_and_reaches_upstream(split: Split) -> None:
    seeded = await seed_app(split.ctx.db, max_active=1)
    h = bearer(seeded.key)
    cancelled = split.probe.streams_cancelled
    async with httpx.AsyncClient(base_url=split.served.url, timeout=10) as c, \
            c.stream("GET", "/v1/sse?n=200&interval=0.05", headers=h) as r:
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                break
        assert (await split.client.get("/v1/info", headers=h)).status_code == 429

    async def free() -> bool:
        return (await split.client.get("/v1/info", headers=h)).status_code == 200

    assert (await eventually(free, timeout=1.5))[0]

    async def upstream_stopped() -> bool:
        return split.probe.streams_cancelled > cancelled

    assert (await eventually(upstream_stopped, timeout=2.0))[0], "upstream kept streaming to nobody"

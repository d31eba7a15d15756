"""Limits are exact under load: 500 concurrent requests against api_rpm=50 admit exactly 50, with one
in-memory gateway and with two gateways sharing Redis. Redis failure follows the configured policy."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import structlog

import services.gateway as gateway_module
from shared.limiter import MemoryLimiter, RedisLimiter, build_limiter
from shared.natsd import free_port
from tests.conftest import REDIS_URL, needs_redis
from tests.integration.gateway_env import (
    RawResponse,
    close_context,
    eventually,
    make_context,
    raw_get,
    seed_app,
    service_app,
)
from tests.support import Served, serve

N = 500
RPM = 50


@dataclass
class Node:
    ctx: object
    gw: object
    served: Served

    async def close(self) -> None:
        await self.served.stop()
        await gateway_module.stop(self.ctx, self.gw)
        await close_context(self.ctx)


async def start_node(tmp, nats_url: str, *, migrate: bool = True, prefix: str | None = None, **kw) -> Node:
    ctx = await make_context(tmp, nats_url, migrate=migrate, **kw)
    ctx.local_apps["runtime"] = service_app("runtime")
    limiter = build_limiter(ctx, prefix=prefix) if prefix else None
    gw = gateway_module.create_app(ctx, limiter=limiter)
    await gateway_module.start(ctx, gw)
    return Node(ctx, gw, await serve(gw))


async def burst(urls: list[str], key: str, n: int = N, path: str = "/v1/info") -> list[RawResponse]:
    """n requests on n sockets at once, spread over the given gateways."""
    return await asyncio.gather(*[
        raw_get(urls[i % len(urls)], path, {"Authorization": f"Bearer {key}"})
        for i in range(n)
    ])


def check_exact(responses: list[RawResponse], quota: int) -> None:
    codes = [r.status_code for r in responses]
    assert codes.count(200) == quota, f"admitted {codes.count(200)} of {len(codes)} with quota {quota}"
    assert codes.count(429) == len(codes) - quota
    # every admission saw a different count: 49 … 0 left, each exactly once
    remaining = sorted(int(r.headers["x-ratelimit-remaining"]) for r in responses if r.status_code == 200)
    assert remaining == list(range(quota))
    for r in responses:
        if r.status_code == 429:
            assert r.json()["code"] == "too_many_requests"
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert r.headers["x-ratelimit-remaining"] == "0"


async def test_memory_limiter_admits_exactly_the_quota(tmp_path, nats_url: str) -> None:
    node = await start_node(tmp_path, nats_url)
    try:
        assert isinstance(node.gw.limiter, MemoryLimiter)
        seeded = await seed_app(node.ctx.db, rpm=RPM)
        check_exact(await burst([node.served.url], seeded.key), RPM)
    finally:
        await node.close()


# --- Redis: two gateway replicas share the limits ----------------------------------------------------

@pytest.fixture
async def redis_pair(tmp_path, nats_url: str) -> AsyncIterator[tuple[Node, Node, str]]:
    prefix = f"plexus-test:{uuid.uuid4().hex}"
    a = await start_node(tmp_path, nats_url, redis_url=REDIS_URL, prefix=prefix, run_timeout=2.0)
    b = await start_node(tmp_path, nats_url, migrate=False, redis_url=REDIS_URL, prefix=prefix,
                         run_timeout=2.0)
    yield a, b, prefix
    async for k in a.ctx.redis.scan_iter(match=f"{prefix}:*"):
        await a.ctx.redis.delete(k)
    await a.close()
    await b.close()


@needs_redis
async def test_redis_two_gateways_admit_exactly_the_quota(redis_pair) -> None:
    a, b, _ = redis_pair
    assert isinstance(a.gw.limiter, RedisLimiter) and isinstance(b.gw.limiter, RedisLimiter)
    seeded = await seed_app(a.ctx.db, rpm=RPM)
    responses = await burst([a.served.url, b.served.url], seeded.key)
    check_exact(responses, RPM)
    # both replicas hit the shared limit (per-replica limits would have admitted up to 2 × 50)
    by_gateway = {a.served.url: [0, 0], b.served.url: [0, 0]}
    for r, url in zip(responses, [a.served.url, b.served.url] * N, strict=False):
        by_gateway[url][r.status_code == 200] += 1
    assert all(refused > 0 for refused, _ in by_gateway.values()), by_gateway


@needs_redis
async def test_redis_rph_is_exact_across_gateways(redis_pair) -> None:
    a, b, _ = redis_pair
    seeded = await seed_app(a.ctx.db, rph=30)
    responses = await burst([a.served.url, b.served.url], seeded.key, n=120)
    assert [r.status_code for r in responses].count(200) == 30
    refused = [r for r in responses if r.status_code == 429]
    assert "30 API requests per hour" in refused[0].json()["message"]
    assert 3500 <= int(refused[0].headers["retry-after"]) <= 3600
    assert refused[0].headers["ratelimit-policy"] == '"rph";q=30;w=3600'


@needs_redis
async def test_redis_concurrency_across_gateways_and_release(redis_pair) -> None:
    a, b, _ = redis_pair
    seeded = await seed_app(a.ctx.db, max_active=3)
    h = {"Authorization": f"Bearer {seeded.key}"}

    async def stream(url: str) -> tuple[int, str | None]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c, \
                c.stream("GET", "/v1/sse?n=5&interval=0.1", headers=h) as r:
            async for _ in r.aiter_bytes():
                pass
            return r.status_code, r.headers.get("ratelimit")

    results = await asyncio.gather(*[stream(u) for u in [a.served.url, b.served.url] * 10])
    assert [s for s, _ in results].count(200) == 3
    assert all(s == 429 for s, _ in results if s != 200)
    limiter: RedisLimiter = a.gw.limiter

    async def drained() -> bool:
        return await limiter.active(seeded.app_id) == 0

    assert (await eventually(drained, timeout=1.0))[0], "slots not released with HDEL"
    async with httpx.AsyncClient(base_url=b.served.url) as c:
        assert (await c.get("/v1/info", headers=h)).status_code == 200


@needs_redis
async def test_redis_stale_slots_are_purged(redis_pair) -> None:
    a, _, _ = redis_pair
    seeded = await seed_app(a.ctx.db, max_active=1)
    limiter: RedisLimiter = a.gw.limiter
    active_key = limiter.keys(seeded.app_id)[2]
    seconds, micros = await a.ctx.redis.time()
    now_us = seconds * 1_000_000 + micros
    # a slot left by a crashed replica just now, and one older than run_timeout (2 s in this fixture)
    await a.ctx.redis.hset(active_key, "crashed-recently", str(now_us))
    h = {"Authorization": f"Bearer {seeded.key}"}
    async with httpx.AsyncClient(base_url=a.served.url) as c:
        assert (await c.get("/v1/info", headers=h)).status_code == 429
        await a.ctx.redis.hset(active_key, "crashed-recently", str(now_us - 3_000_000))
        assert (await c.get("/v1/info", headers=h)).status_code == 200
    assert await limiter.active(seeded.app_id) == 0


# --- Redis unreachable -------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["closed", "open"])
async def test_redis_down_follows_policy(tmp_path, nats_url: str, policy: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    node = await start_node(tmp_path, nats_url, redis_url=dead, redis_failure_policy=policy)
    try:
        assert isinstance(node.gw.limiter, RedisLimiter)
        limited = await seed_app(node.ctx.db, rpm=5, max_active=2)
        free = await seed_app(node.ctx.db)
        async with httpx.AsyncClient(base_url=node.served.url, timeout=10) as c:
            with structlog.testing.capture_logs() as logs:
                r = await c.get("/v1/info", headers={"Authorization": f"Bearer {limited.key}"})
            if policy == "closed":
                assert r.status_code == 503
                assert r.json() == {"code": "service_unavailable", "message": "Rate limiter unavailable",
                                    "status": 503}
            else:
                assert r.status_code == 200 and r.json()["service"] == "runtime"
                assert "x-ratelimit-limit" not in r.headers
            warnings = [e for e in logs if e["event"] == "rate_limiter_unavailable"]
            assert warnings and warnings[0]["log_level"] == "warning" and warnings[0]["error"]
            # an app without limits never needs Redis
            r = await c.get("/v1/info", headers={"Authorization": f"Bearer {free.key}"})
            assert r.status_code == 200
            # readiness reports the missing Redis
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.json()["checks"]["redis"].startswith("error")
    finally:
        await node.close()

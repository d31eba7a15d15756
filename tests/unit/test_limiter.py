"""The limiters are exact: sliding windows at their boundaries (the day window on both backends, with an
injected clock), concurrency, headers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.identity import AUTH_INVALID, AUTH_MISSING, AUTH_SCHEME, AuthError, bearer_token
from shared.limiter import AppLimits, MemoryLimiter, RedisLimiter
from tests.conftest import REDIS_URL, needs_redis


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def hdr(decision, name: str) -> str | None:
    for k, v in decision.headers:
        if k == name.encode():
            return v.decode()
    return None


def test_rpm_window_boundaries_are_exact() -> None:
    clock = Clock(1000.0)
    lim = MemoryLimiter(clock)
    rpm = AppLimits(rpm=3)
    for at in (1000.0, 1010.0, 1020.0):
        clock.t = at
        assert lim.acquire_now("a", rpm, f"s{at}").admitted
    clock.t = 1030.0
    d = lim.acquire_now("a", rpm, "x")
    assert not d.admitted and d.kind == "rpm" and d.limit == 3
    assert d.retry_after == 30  # the request at 1000 leaves the window at 1060
    clock.t = 1059.999
    assert not lim.acquire_now("a", rpm, "x").admitted
    assert lim.acquire_now("a", rpm, "x").retry_after == 1  # never 0
    clock.t = 1060.0  # window is (now-60, now]: the entry at exactly now-60 is out
    assert lim.acquire_now("a", rpm, "y").admitted
    assert not lim.acquire_now("a", rpm, "z").admitted  # 1010, 1020, 1060 fill it again
    clock.t = 1070.0
    assert lim.acquire_now("a", rpm, "z").admitted
    # other apps are independent
    assert lim.acquire_now("b", rpm, "b1").admitted


def test_refused_requests_are_not_counted() -> None:
    clock = Clock()
    lim = MemoryLimiter(clock)
    rpm = AppLimits(rpm=2)
    assert lim.acquire_now("a", rpm, "1").admitted
    assert lim.acquire_now("a", rpm, "2").admitted
    for _ in range(100):
        assert not lim.acquire_now("a", rpm, "n").admitted
    clock.t += 60
    assert lim.acquire_now("a", rpm, "3").admitted
    assert lim.acquire_now("a", rpm, "4").admitted
    assert not lim.acquire_now("a", rpm, "5").admitted


def test_rph_and_rpm_together() -> None:
    clock = Clock(0.0)
    lim = MemoryLimiter(clock)
    limits = AppLimits(rpm=2, rph=3)
    assert lim.acquire_now("a", limits, "1").admitted  # t=0
    assert lim.acquire_now("a", limits, "2").admitted  # t=0
    d = lim.acquire_now("a", limits, "3")
    assert not d.admitted and d.kind == "rpm" and d.retry_after == 60
    clock.t = 60.0
    assert lim.acquire_now("a", limits, "4").admitted  # third in the hour
    clock.t = 120.0
    d = lim.acquire_now("a", limits, "5")
    assert not d.admitted and d.kind == "rph" and d.limit == 3
    assert d.retry_after == 3600 - 120  # the two at t=0 leave the hour at 3600
    assert "3 API requests per hour" in d.message
    clock.t = 3599.0
    assert not lim.acquire_now("a", limits, "6").admitted
    clock.t = 3600.0  # the two at t=0 leave the hour
    assert lim.acquire_now("a", limits, "7").admitted


def test_when_both_windows_refuse_the_longer_wait_is_reported() -> None:
    clock = Clock(0.0)
    lim = MemoryLimiter(clock)
    limits = AppLimits(rpm=2, rph=3)
    for at in (0.0, 100.0, 110.0):
        clock.t = at
        assert lim.acquire_now("a", limits, str(at)).admitted
    clock.t = 120.0  # rpm holds 100, 110 (free at 160); rph holds 0, 100, 110 (free at 3600)
    d = lim.acquire_now("a", limits, "x")
    assert not d.admitted and d.kind == "rph" and d.retry_after == 3480
    assert hdr(d, "ratelimit") == '"rpm";r=0;t=40, "rph";r=0;t=3480'


def test_lowered_quota_waits_for_enough_entries_to_expire() -> None:
    clock = Clock(0.0)
    lim = MemoryLimiter(clock)
    for i in range(5):
        clock.t = float(i * 10)  # entries at 0, 10, 20, 30, 40
        assert lim.acquire_now("a", AppLimits(rpm=5), str(i)).admitted
    clock.t = 45.0
    d = lim.acquire_now("a", AppLimits(rpm=2), "x")
    assert not d.admitted
    assert d.retry_after == 45  # four must go (the one at 30 leaves at 90) before a quota of 2 admits
    clock.t = 89.9
    assert not lim.acquire_now("a", AppLimits(rpm=2), "y").admitted
    clock.t = 90.0
    assert lim.acquire_now("a", AppLimits(rpm=2), "y").admitted


def test_zero_means_unlimited_and_records_nothing() -> None:
    clock = Clock()
    lim = MemoryLimiter(clock)
    for i in range(1000):
        d = lim.acquire_now("a", AppLimits(rpm=0, rph=0, max_active=0), str(i))
        assert d.admitted and d.slot is None
    assert lim._logs == {} and lim.active("a") == 0
    # turning rpm on later starts from an empty log
    assert lim.acquire_now("a", AppLimits(rpm=1), "z").admitted
    assert not lim.acquire_now("a", AppLimits(rpm=1), "z2").admitted


def test_concurrency_slots() -> None:
    clock = Clock()
    lim = MemoryLimiter(clock, stale_after=600)
    two = AppLimits(max_active=2)
    a = lim.acquire_now("a", two, "s1")
    b = lim.acquire_now("a", two, "s2")
    assert a.admitted and b.admitted and a.slot == "s1"
    d = lim.acquire_now("a", two, "s3")
    assert not d.admitted and d.kind == "concurrency" and d.retry_after == 1
    assert d.message == ("Too many requests. Please try again later. "
                         "The current maximum concurrent requests allowed is 2.")
    lim.release_now("a", "s1")
    lim.release_now("a", "s1")  # twice is harmless
    assert lim.acquire_now("a", two, "s4").admitted
    assert lim.active("a") == 2
    # a slot never released (crash) counts until it is older than the run timeout
    clock.t += 599
    assert not lim.acquire_now("a", two, "s5").admitted
    clock.t += 1
    assert lim.acquire_now("a", two, "s6").admitted


def test_admitted_headers() -> None:
    clock = Clock(100.0)
    lim = MemoryLimiter(clock)
    limits = AppLimits(rpm=50, rph=1000, max_active=4)
    d = lim.acquire_now("a", limits, "1")
    assert hdr(d, "ratelimit-policy") == ('"rpm";q=50;w=60, "rph";q=1000;w=3600, '
                                          '"concurrency";q=4;qu="concurrent-requests"')
    assert hdr(d, "ratelimit") == '"rpm";r=49;t=60, "rph";r=999;t=3600, "concurrency";r=3'
    assert (hdr(d, "x-ratelimit-limit"), hdr(d, "x-ratelimit-remaining"), hdr(d, "x-ratelimit-reset")) == \
        ("50", "49", "60")
    assert hdr(d, "retry-after") is None
    clock.t = 130.0
    d = lim.acquire_now("a", limits, "2")
    assert hdr(d, "ratelimit") == '"rpm";r=48;t=30, "rph";r=998;t=3570, "concurrency";r=2'
    # the binding limit is the one with the least left
    lim2 = MemoryLimiter(clock)
    tight = AppLimits(rpm=100, rph=2)
    d = lim2.acquire_now("b", tight, "1")
    assert (hdr(d, "x-ratelimit-limit"), hdr(d, "x-ratelimit-remaining")) == ("2", "1")


def test_refusal_headers() -> None:
    clock = Clock(0.0)
    lim = MemoryLimiter(clock)
    limits = AppLimits(rpm=1)
    lim.acquire_now("a", limits, "1")
    clock.t = 12.5
    d = lim.acquire_now("a", limits, "2")
    assert not d.admitted
    assert hdr(d, "retry-after") == "48"  # ceil(47.5)
    assert hdr(d, "x-ratelimit-limit") == "1" and hdr(d, "x-ratelimit-remaining") == "0"
    assert hdr(d, "x-ratelimit-reset") == "48"
    assert hdr(d, "ratelimit") == '"rpm";r=0;t=48'


async def test_concurrent_acquires_on_the_loop_are_exact() -> None:
    lim = MemoryLimiter()
    limits = AppLimits(rpm=50)

    async def one(i: int) -> bool:
        await asyncio.sleep(0)
        return (await lim.acquire("a", limits, str(i))).admitted

    results = await asyncio.gather(*[one(i) for i in range(500)])
    assert sum(results) == 50


# --- the day window (RPD): both backends, with an injected clock ------------------------------------

T0 = 1_780_000_000.0  # a realistic epoch: Redis scores are microseconds


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
async def clocked(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Clock, Any]]:
    """A limiter of each backend on a clock the test moves (hours ahead, no sleeping)."""
    clock = Clock(T0)
    if request.param == "memory":
        yield clock, MemoryLimiter(clock)
        return
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    prefix = f"plexus-test:rpd:{uuid.uuid4().hex}"  # nothing else uses these keys
    try:
        yield clock, RedisLimiter(client, prefix=prefix, clock=clock)
    finally:
        async for k in client.scan_iter(match=f"{prefix}:*"):
            await client.delete(k)
        await client.aclose()


async def test_rpd_window_is_exact(clocked) -> None:
    clock, lim = clocked
    day = AppLimits(rpd=3)
    for hours in (0, 1, 2):  # three requests in the first two hours
        clock.t = T0 + hours * 3600
        assert (await lim.acquire("a", day, f"s{hours}")).admitted
    clock.t = T0 + 10 * 3600
    d = await lim.acquire("a", day, "x")
    assert not d.admitted and d.kind == "rpd" and d.limit == 3
    assert d.retry_after == 86400 - 10 * 3600  # the request at T0 leaves the day at T0 + 24 h
    assert d.message == ("Rate limit exceeded: this app allows 3 API requests per day. "
                         "Please try again in 50400 seconds.")
    assert hdr(d, "retry-after") == "50400" and hdr(d, "x-ratelimit-remaining") == "0"
    assert hdr(d, "ratelimit-policy") == '"rpd";q=3;w=86400'
    assert hdr(d, "ratelimit") == '"rpd";r=0;t=50400'
    clock.t = T0 + 86400 - 0.5
    d = await lim.acquire("a", day, "y")
    assert not d.admitted and d.retry_after == 1  # never 0
    clock.t = T0 + 86400  # the window is (now - 24 h, now]: the entry at exactly now - 24 h is out
    d = await lim.acquire("a", day, "z")
    assert d.admitted
    # full again (1 h, 2 h, 24 h); the next slot frees when the 1 h entry leaves, 1 h from now
    assert (hdr(d, "x-ratelimit-limit"), hdr(d, "x-ratelimit-remaining"), hdr(d, "x-ratelimit-reset")) == \
        ("3", "0", "3600")
    clock.t = T0 + 86400 + 1
    d = await lim.acquire("a", day, "w")
    assert not d.admitted and d.retry_after == 3599
    # refused requests were not recorded: once the 1 h and 2 h entries are gone, two more fit
    clock.t = T0 + 86400 + 7200
    assert (await lim.acquire("a", day, "u1")).admitted
    assert (await lim.acquire("a", day, "u2")).admitted
    assert not (await lim.acquire("a", day, "u3")).admitted
    assert (await lim.acquire("other", day, "o")).admitted  # per app


async def test_rpd_with_rpm_and_rph_reports_the_tightest_window(clocked) -> None:
    clock, lim = clocked
    limits = AppLimits(rpm=60, rph=1000, rpd=5)
    d = await lim.acquire("a", limits, "1")
    assert hdr(d, "ratelimit-policy") == '"rpm";q=60;w=60, "rph";q=1000;w=3600, "rpd";q=5;w=86400'
    assert hdr(d, "ratelimit") == '"rpm";r=59;t=60, "rph";r=999;t=3600, "rpd";r=4;t=86400'
    # X-RateLimit-* follow the window with the least left: the day
    assert (hdr(d, "x-ratelimit-limit"), hdr(d, "x-ratelimit-remaining"), hdr(d, "x-ratelimit-reset")) == \
        ("5", "4", "86400")
    for i in range(4):
        clock.t += 600  # ten minutes apart: the minute and hour windows never fill
        assert (await lim.acquire("a", limits, f"n{i}")).admitted
    clock.t += 600
    d = await lim.acquire("a", limits, "over")
    assert not d.admitted and d.kind == "rpd" and "5 API requests per day" in d.message
    assert d.retry_after == 86400 - 3000  # the first request (50 min ago) leaves the day
    # the minute refuses alone while the day still has room
    e = await lim.acquire("b", AppLimits(rpm=1, rpd=5), "b1")
    f = await lim.acquire("b", AppLimits(rpm=1, rpd=5), "b2")
    assert e.admitted and not f.admitted and f.kind == "rpm" and f.retry_after == 60
    assert hdr(f, "ratelimit") == '"rpm";r=0;t=60, "rpd";r=4;t=86400'


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, AUTH_MISSING),
        (b"Bearer", AUTH_MISSING),
        (b"Bearer\tapp-x", AUTH_MISSING),  # Dify looks for a space
        (b"Basic app-x", AUTH_SCHEME),
        (b"Bearer ", AUTH_INVALID),
    ],
)
def test_bearer_parsing(header: bytes | None, message: str) -> None:
    with pytest.raises(AuthError) as e:
        bearer_token(header)
    assert e.value.status == 401 and e.value.message == message


def test_bearer_token_ok() -> None:
    assert bearer_token(b"Bearer app-abc") == b"app-abc"
    assert bearer_token(b"bEaReR   app-abc ") == b"app-abc"

"""The in-memory limiter is exact: sliding windows at their boundaries, concurrency, headers."""

from __future__ import annotations

import asyncio

import pytest

from shared.identity import AUTH_INVALID, AUTH_MISSING, AUTH_SCHEME, AuthError, bearer_token
from shared.limiter import AppLimits, MemoryLimiter


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

"""Per-app limits: requests per minute, hour and day (exact rolling windows) and concurrent requests.

Semantics (both backends):

* ``rpm`` / ``rph`` / ``rpd`` (the effective values of ``api_rpm`` / ``api_rph`` / ``api_rpd``, see
  shared/plans.py): a sliding log per app and window (60 s, 3600 s, 86400 s). A request at time
  ``t`` counts in every window ``(now - w, now]``; only admitted requests are recorded, so N
  concurrent requests against a quota of Q admit exactly ``min(N, Q)``. ``0`` = unlimited (nothing
  is recorded). The day window keeps up to ``rpd`` timestamps per app (~10 MB in memory, ~30 MB in
  Redis at 300,000).
* ``max_active_requests``: a counting semaphore (Dify's ``RateLimit``). ``None`` or ``<= 0`` =
  unlimited. The slot is held until the response body is finished or the client goes away; a slot
  older than ``settings.runtime.run_timeout`` is treated as leaked (crashed replica) and purged.

Backends:

* ``MemoryLimiter`` — one process (`all` mode). Each decision runs without an ``await`` between
  check and record, so it is atomic on the event loop.
* ``RedisLimiter`` — every gateway replica shares the state. One Lua script per admission checks
  rpm, rph, rpd and concurrency together and records atomically, using Redis' own clock so replicas
  with skewed clocks still agree (tests may inject a clock instead). Sorted sets with unique members
  hold the windows, a hash of slot id → start time holds the active requests; release is one
  ``HDEL``. Keys carry a hash tag (``{app_id}``) so one app's keys share a Redis Cluster slot.

Redis failure policy (``settings.gateway.redis_failure_policy``): when Redis cannot be reached or
the script fails, ``closed`` (default) refuses the request with 503 ``service_unavailable``
"Rate limiter unavailable"; ``open`` admits it without limits and without rate-limit headers.
Either way a structlog warning with the error is written (at most one every few seconds, with a
count of the suppressed ones), and a failed release is logged and left to the stale purge.

Selection (``build_limiter``): ``limiter=memory`` → memory; ``redis`` → Redis (requires
``PLEXUS_REDIS_URL``); ``auto`` → Redis when a Redis client is configured, else memory.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import structlog

log = structlog.get_logger("plexus.limiter")

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
DEFAULT_PREFIX = "plexus:limits"


@dataclass(frozen=True, slots=True)
class AppLimits:
    rpm: int = 0
    rph: int = 0
    max_active: int = 0  # <= 0 = unlimited
    rpd: int = 0

    @property
    def any(self) -> bool:
        return self.rpm > 0 or self.rph > 0 or self.rpd > 0 or self.max_active > 0

    def windows(self) -> tuple[tuple[str, int, int], ...]:
        """(kind, quota, width in seconds) of each rolling window, shortest first."""
        return (("rpm", self.rpm, 60), ("rph", self.rph, 3600), ("rpd", self.rpd, 86400))


@dataclass(slots=True)
class Decision:
    admitted: bool
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    kind: str | None = None  # the refusing limit: rpm | rph | rpd | concurrency
    limit: int = 0
    retry_after: int = 0
    slot: str | None = None  # concurrency slot to release, when one was taken

    @property
    def message(self) -> str:
        if self.kind == "concurrency":
            return (
                "Too many requests. Please try again later. "
                f"The current maximum concurrent requests allowed is {self.limit}."
            )
        per = _PER.get(self.kind or "", "minute")
        return (
            f"Rate limit exceeded: this app allows {self.limit} API requests per {per}. "
            f"Please try again in {self.retry_after} seconds."
        )


_PER = {"rpm": "minute", "rph": "hour", "rpd": "day"}


class LimiterUnavailable(Exception):
    """The shared limiter cannot decide (Redis down) and the policy is ``closed``."""


class Limiter(Protocol):
    async def acquire(self, app_id: str, limits: AppLimits, slot: str) -> Decision: ...

    async def release(self, app_id: str, slot: str) -> None: ...


# --- the decision → headers mapping shared by both backends ---------------------------------------

# A window as a backend saw it: (kind, quota, width_s, count before this request, seconds until the
# window next frees a slot — see _next_index). Plain tuples: this runs on every limited request.
_Window = tuple[str, int, int, int, float]


def _next_index(after: int, quota: int) -> int:
    """Which log entry (oldest first) must expire before the window admits again.

    ``after`` is the count once this request is recorded (or not). With ``after < quota`` it is the
    oldest entry (when remaining grows); with ``after >= quota`` the (after-quota)-th, which also
    covers a quota lowered below the current count.
    """
    return max(0, after - quota)


def _ceil(seconds: float) -> int:
    return max(0, math.ceil(seconds - 1e-9))


@lru_cache(maxsize=4096)
def _policy(limits: AppLimits) -> bytes:
    parts = []
    if limits.rpm > 0:
        parts.append(b'"rpm";q=%d;w=60' % limits.rpm)
    if limits.rph > 0:
        parts.append(b'"rph";q=%d;w=3600' % limits.rph)
    if limits.rpd > 0:
        parts.append(b'"rpd";q=%d;w=86400' % limits.rpd)
    if limits.max_active > 0:
        parts.append(b'"concurrency";q=%d;qu="concurrent-requests"' % limits.max_active)
    return b", ".join(parts)


def _outcome(admitted: bool, limits: AppLimits, windows: list[_Window], active: int, slot: str | None
             ) -> Decision:
    """Build the decision and its headers from what a backend observed (and recorded)."""
    states: list[bytes] = []
    refusal: tuple[int, str, int] | None = None  # (retry, kind, quota): the longest wait wins
    b_limit = b_remaining = -1  # the binding limit (least left) for X-RateLimit-*
    b_reset: int | None = None
    step = 1 if admitted else 0
    for kind, quota, _width, count, next_s in windows:
        remaining = max(0, quota - count - step)
        reset = _ceil(next_s)
        states.append(b'"%s";r=%d;t=%d' % (kind.encode(), remaining, reset))
        if not admitted and count >= quota and (refusal is None or max(1, reset) > refusal[0]):
            refusal = (max(1, reset), kind, quota)
        if b_limit < 0 or remaining < b_remaining:
            b_limit, b_remaining, b_reset = quota, remaining, reset
    max_active = limits.max_active
    if max_active > 0:
        remaining = max(0, max_active - active - step)
        states.append(b'"concurrency";r=%d' % remaining)
        if not admitted and active >= max_active and refusal is None:
            # nobody knows when a running request ends: ask for a retry in a second
            refusal = (1, "concurrency", max_active)
        if b_limit < 0:
            b_limit, b_remaining = max_active, remaining

    headers = [(b"ratelimit-policy", _policy(limits)), (b"ratelimit", b", ".join(states))]
    if admitted:
        if b_limit >= 0:
            headers.append((b"x-ratelimit-limit", b"%d" % b_limit))
            headers.append((b"x-ratelimit-remaining", b"%d" % b_remaining))
            if b_reset is not None:
                headers.append((b"x-ratelimit-reset", b"%d" % b_reset))
        return Decision(True, headers, slot=slot if max_active > 0 else None)

    retry, kind, quota = refusal or (1, "rpm", 0)
    headers += [
        (b"retry-after", b"%d" % retry),
        (b"x-ratelimit-limit", b"%d" % quota),
        (b"x-ratelimit-remaining", b"0"),
        (b"x-ratelimit-reset", b"%d" % retry),
    ]
    return Decision(False, headers, kind=kind, limit=quota, retry_after=retry)


# --- in-memory --------------------------------------------------------------------------------

class MemoryLimiter:
    """Exact sliding logs per app in this process. ``clock`` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, stale_after: float = 600.0) -> None:
        self.clock = clock
        self.stale_after = stale_after
        self._logs: dict[tuple[str, int], deque[float]] = {}
        self._active: dict[str, dict[str, float]] = {}

    async def acquire(self, app_id: str, limits: AppLimits, slot: str) -> Decision:
        return self.acquire_now(app_id, limits, slot)

    async def release(self, app_id: str, slot: str) -> None:
        self.release_now(app_id, slot)

    def acquire_now(self, app_id: str, limits: AppLimits, slot: str) -> Decision:
        # no await in here: check and record are one step on the event loop
        now = self.clock()
        logs: list[tuple[deque[float], str, int, int, int]] = []
        admitted = True
        for kind, quota, width in limits.windows():
            if quota <= 0:
                continue
            log_ = self._logs.get((app_id, width))
            if log_ is None:
                log_ = self._logs[(app_id, width)] = deque()
            edge = now - width
            while log_ and log_[0] <= edge:
                log_.popleft()
            n = len(log_)
            if n >= quota:
                admitted = False
            logs.append((log_, kind, quota, width, n))
        active = 0
        if limits.max_active > 0:
            slots = self._active.get(app_id)
            if slots is None:
                slots = self._active[app_id] = {}
            if len(slots) >= limits.max_active:
                self._purge_stale(slots, now)
            active = len(slots)
            if active >= limits.max_active:
                admitted = False
        windows: list[_Window] = []
        for log_, kind, quota, width, n in logs:
            if admitted:
                log_.append(now)
            after = n + 1 if admitted else n
            next_s = (log_[_next_index(after, quota)] + width - now) if after else 0.0
            windows.append((kind, quota, width, n, next_s))
        if admitted and limits.max_active > 0:
            self._active[app_id][slot] = now
        return _outcome(admitted, limits, windows, active, slot)

    def release_now(self, app_id: str, slot: str) -> None:
        slots = self._active.get(app_id)
        if slots is not None:
            slots.pop(slot, None)
            if not slots:
                del self._active[app_id]

    def active(self, app_id: str) -> int:
        return len(self._active.get(app_id, ()))

    def _purge_stale(self, slots: dict[str, float], now: float) -> None:
        edge = now - self.stale_after
        for k in [k for k, started in slots.items() if started <= edge]:
            del slots[k]


# --- Redis ------------------------------------------------------------------------------------

# KEYS: rpm zset, rph zset, active hash, rpd zset.
# ARGV: rpm, rph, max_active, slot, stale_us, hash_ttl_ms, rpd, now_us ('' = Redis TIME).
# Returns {admitted, active, rpm_count, rpm_next_us, rph_count, rph_next_us, rpd_count, rpd_next_us}.
# Times are integer microseconds from Redis TIME (or the injected clock); numbers sent back to Redis
# go through string.format('%.0f') because Lua's tostring would round them to 14 digits.
_LUA = """
local now
if ARGV[8] ~= '' then
  now = tonumber(ARGV[8])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function s(x) return string.format('%.0f', x) end
local quota = {tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[7])}
local width = {60000000, 3600000000, 86400000000}
local wkey = {KEYS[1], KEYS[2], KEYS[4]}
local maxc = tonumber(ARGV[3])
local slot = ARGV[4]
local ok = 1
local n = {0, 0, 0}
for i = 1, 3 do
  if quota[i] > 0 then
    redis.call('ZREMRANGEBYSCORE', wkey[i], '-inf', s(now - width[i]))
    n[i] = redis.call('ZCARD', wkey[i])
    if n[i] >= quota[i] then ok = 0 end
  end
end
local active = 0
if maxc > 0 then
  active = redis.call('HLEN', KEYS[3])
  if active >= maxc then
    local cutoff = now - tonumber(ARGV[5])
    local all = redis.call('HGETALL', KEYS[3])
    for j = 1, #all, 2 do
      if tonumber(all[j + 1]) <= cutoff then
        redis.call('HDEL', KEYS[3], all[j])
        active = active - 1
      end
    end
  end
  if active >= maxc then ok = 0 end
end
local out = {ok, active, 0, 0, 0, 0, 0, 0}
for i = 1, 3 do
  if quota[i] > 0 then
    local after = n[i]
    if ok == 1 then
      redis.call('ZADD', wkey[i], s(now), slot)
      redis.call('PEXPIRE', wkey[i], width[i] / 1000 + 1000)
      after = after + 1
    end
    local nxt = 0
    if after > 0 then
      local idx = after - quota[i]
      if idx < 0 then idx = 0 end
      local e = redis.call('ZRANGE', wkey[i], idx, idx, 'WITHSCORES')
      nxt = tonumber(e[2]) + width[i] - now
    end
    out[2 * i + 1] = n[i]
    out[2 * i + 2] = nxt
  end
end
if ok == 1 and maxc > 0 then
  redis.call('HSET', KEYS[3], slot, s(now))
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
end
return out
"""


class RedisLimiter:
    """``clock`` (seconds, tests only) replaces Redis' TIME, so a test can move a day ahead."""

    def __init__(self, redis: Any, *, prefix: str = DEFAULT_PREFIX, stale_after: float = 600.0,
                 failure_policy: str = "closed", clock: Callable[[], float] | None = None) -> None:
        self.redis = redis
        self.clock = clock
        self.prefix = prefix
        self.stale_us = int(stale_after * 1_000_000)
        self.hash_ttl_ms = int(max(stale_after * 2, 3600) * 1000)
        self.fail_open = failure_policy == "open"
        self._script = redis.register_script(_LUA)
        # redis-py's async pool raises once all its connections are busy (100 by default); a burst
        # bigger than that must queue for a connection, not be refused as "Redis down"
        pool_size = getattr(getattr(redis, "connection_pool", None), "max_connections", 100) or 100
        self._gate = asyncio.Semaphore(max(1, min(64, pool_size - 8)))
        self._last_warn = 0.0
        self._suppressed = 0

    def keys(self, app_id: str) -> list[str]:
        base = f"{self.prefix}:{{{app_id}}}"
        return [f"{base}:rpm", f"{base}:rph", f"{base}:active", f"{base}:rpd"]

    async def acquire(self, app_id: str, limits: AppLimits, slot: str) -> Decision:
        now_us = "" if self.clock is None else str(round(self.clock() * 1_000_000))
        try:
            async with self._gate:
                r = await self._script(
                    keys=self.keys(app_id),
                    args=[limits.rpm, limits.rph, limits.max_active, slot, self.stale_us, self.hash_ttl_ms,
                          limits.rpd, now_us],
                )
        except Exception as e:
            self._warn("rate_limiter_unavailable", e)
            if self.fail_open:
                return Decision(True)
            raise LimiterUnavailable(str(e)) from e
        admitted = int(r[0]) == 1
        windows: list[_Window] = []
        if limits.rpm > 0:
            windows.append(("rpm", limits.rpm, 60, int(r[2]), int(r[3]) / 1e6))
        if limits.rph > 0:
            windows.append(("rph", limits.rph, 3600, int(r[4]), int(r[5]) / 1e6))
        if limits.rpd > 0:
            windows.append(("rpd", limits.rpd, 86400, int(r[6]), int(r[7]) / 1e6))
        return _outcome(admitted, limits, windows, int(r[1]), slot)

    async def release(self, app_id: str, slot: str) -> None:
        try:
            async with self._gate:
                await self.redis.hdel(self.keys(app_id)[2], slot)
        except Exception as e:  # noqa: BLE001 - the stale purge reclaims the slot later
            self._warn("rate_limiter_release_failed", e)

    async def active(self, app_id: str) -> int:
        return int(await self.redis.hlen(self.keys(app_id)[2]))

    def _warn(self, event: str, err: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warn < 5.0:
            self._suppressed += 1
            return
        log.warning(event, error=repr(err), policy="open" if self.fail_open else "closed",
                    suppressed=self._suppressed)
        self._last_warn = now
        self._suppressed = 0


def build_limiter(ctx: Any, *, prefix: str = DEFAULT_PREFIX) -> Limiter:
    gs = ctx.settings.gateway
    stale = ctx.settings.runtime.run_timeout
    use_redis = gs.limiter == "redis" or (gs.limiter == "auto" and ctx.redis is not None)
    if use_redis:
        if ctx.redis is None:
            raise SystemExit("PLEXUS_GATEWAY__LIMITER=redis needs PLEXUS_REDIS_URL")
        return RedisLimiter(ctx.redis, prefix=prefix, stale_after=stale,
                            failure_policy=gs.redis_failure_policy)
    if ctx.mode != "all":
        log.warning("memory_limiter_in_split_mode",
                    hint="limits are per gateway replica; set PLEXUS_REDIS_URL to share them")
    return MemoryLimiter(stale_after=stale)

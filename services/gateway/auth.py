"""API key → caller, with Dify's wire behaviour (reference §1.1) and an in-memory cache.

The key is looked up by its SHA-256 hash in ``api_tokens`` joined with its app and tenant; the
outcome (caller, 403 reason, limits — or "unknown key") is cached per hash for
``settings.gateway.key_cache_seconds`` (unknown keys for at most ``NEGATIVE_TTL``). Concurrent misses
for one hash share one query (single flight). Config changes arrive over NATS (handlers.py) and drop
entries at once; loads that were in flight while a change arrived are answered but not cached.
``last_used_at`` is written in batches by the gateway's maintenance loop, at most once a minute
per key, never on the request path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import bindparam, select, update

from shared.crypto import hash_token
from shared.db import Database
from shared.identity import Caller, identity_headers
from shared.limiter import AppLimits
from shared.models import ApiToken, App, Tenant, utcnow
from shared.plans import effective_limits, plan_limits

log = structlog.get_logger("plexus.gateway.auth")

APP_GONE = "The app no longer exists."
APP_ABNORMAL = "The app's status is abnormal."
APP_API_DISABLED = "The app's API service has been disabled."
WORKSPACE_ARCHIVED = "The workspace's status is archived."

NEGATIVE_TTL = 5.0
TOUCH_INTERVAL = 60.0
_ARCHIVED = ("archived", "archive")  # our model says "archived"; Dify's enum value is "archive"


@dataclass(slots=True)
class KeyEntry:
    hash: str
    expires: float
    key_id: str | None = None
    key_type: str | None = None  # None: no such key
    tenant_id: str | None = None
    app_id: str | None = None
    denied: str | None = None  # 403 message
    headers: list[tuple[bytes, bytes]] | None = None  # identity headers for the services
    limits: AppLimits | None = None  # None: nothing to limit
    permissions: frozenset[str] | None = None  # None: every permission (see required_permission)
    not_after: float | None = None  # Unix time the key stops working (rotated): checked on every request


_LOOKUP = (
    select(
        ApiToken.id, ApiToken.type, ApiToken.tenant_id, ApiToken.app_id,
        App.id, App.status, App.enable_api, App.api_rpm, App.api_rph, App.max_active_requests,
        Tenant.status,
        # the plan side of the limits (shared/plans.py), read by label
        App.api_rpd.label("lim_rpd"), Tenant.plan.label("lim_plan"), Tenant.custom_limits.label("lim_custom"),
        ApiToken.permissions.label("key_permissions"), ApiToken.expires_at.label("key_expires_at"),
    )
    .select_from(ApiToken)
    .outerjoin(App, App.id == ApiToken.app_id)
    .outerjoin(Tenant, Tenant.id == ApiToken.tenant_id)
    .where(ApiToken.token_hash == bindparam("h"))
    .limit(1)
)
_TOKENS = ApiToken.__table__
_TOUCH = (
    update(_TOKENS).where(_TOKENS.c.id == bindparam("kid")).values(last_used_at=bindparam("used"))
)


class KeyCache:
    def __init__(self, db: Database, secret: str, ttl: float, *, negative_ttl: float = NEGATIVE_TTL,
                 max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.secret = secret
        self.ttl = ttl
        self.negative_ttl = min(negative_ttl, ttl)
        self.max_entries = max_entries
        self.clock = clock
        self.touch_interval = TOUCH_INTERVAL
        self.loads = 0  # DB lookups done (observability and tests)
        self._entries: dict[str, KeyEntry] = {}
        self._inflight: dict[str, asyncio.Future[KeyEntry]] = {}
        self._gen = 0  # bumped by every invalidation: in-flight loads must not be cached
        self._by_key: dict[str, str] = {}
        self._by_app: dict[str, set[str]] = {}
        self._by_tenant: dict[str, set[str]] = {}
        self._touched: dict[str, float] = {}
        self._pending: dict[str, datetime] = {}

    # --- lookup ---------------------------------------------------------------------------------

    async def lookup(self, token: bytes) -> KeyEntry:
        h = hash_token(token.decode("latin-1"))
        e = self._entries.get(h)
        if e is not None and e.expires > self.clock():
            return e
        fut = self._inflight.get(h)
        if fut is None:
            # a task of its own: one client going away must not cancel the others' lookup
            fut = asyncio.ensure_future(self._load(h, self._gen))
            self._inflight[h] = fut
            fut.add_done_callback(lambda f, h=h: self._load_done(h, f))
        return await asyncio.shield(fut)

    def _load_done(self, h: str, fut: asyncio.Future) -> None:
        if self._inflight.get(h) is fut:
            del self._inflight[h]
        if not fut.cancelled():
            fut.exception()  # retrieved here, so an error with no waiters left is not logged as lost

    async def _load(self, h: str, gen: int) -> KeyEntry:
        self.loads += 1
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(_LOOKUP, {"h": h})).first()
        entry = self._entry(h, row)
        if gen == self._gen:
            self._store(entry)
        return entry

    def _entry(self, h: str, row: Any) -> KeyEntry:
        now = self.clock()
        if row is None:
            return KeyEntry(h, now + self.negative_ttl)
        key_id, key_type, tenant_id, app_id, app_row, app_status, enable_api, rpm, rph, active, t_status = row[:11]
        if t_status is None:  # no tenant row: the key is as good as unknown
            return KeyEntry(h, now + self.negative_ttl)
        denied = None
        limits = None
        if key_type == "app":
            if app_row is None:
                denied = APP_GONE
            elif app_status != "normal":
                denied = APP_ABNORMAL
            elif not enable_api:
                denied = APP_API_DISABLED
            elif t_status in _ARCHIVED:
                denied = WORKSPACE_ARCHIVED
            else:
                m = row._mapping
                defaults = plan_limits(m["lim_plan"], m["lim_custom"])
                lim = effective_limits(defaults, rpm, rph, m["lim_rpd"], active)
                limits = lim if lim.any else None
        elif t_status in _ARCHIVED:
            denied = WORKSPACE_ARCHIVED
        caller = Caller(tenant_id=tenant_id, app_id=app_id, key_id=key_id, key_type=key_type)
        return KeyEntry(h, now + self.ttl, key_id, key_type, tenant_id, app_id, denied,
                        identity_headers(self.secret, caller), limits, **_key_scope(row._mapping))

    def _store(self, e: KeyEntry) -> None:
        if len(self._entries) >= self.max_entries:
            self._evict()
        self._entries[e.hash] = e
        if e.key_id:
            self._by_key[e.key_id] = e.hash
        if e.app_id:
            self._by_app.setdefault(e.app_id, set()).add(e.hash)
        if e.tenant_id:
            self._by_tenant.setdefault(e.tenant_id, set()).add(e.hash)

    def _evict(self) -> None:
        now = self.clock()
        live = {h: e for h, e in self._entries.items() if e.expires > now}
        if len(live) >= self.max_entries * 0.9:
            # still full: keep the newer half (dicts keep insertion order)
            live = dict(list(live.items())[len(live) // 2:])
        self._entries = live
        self._by_key, self._by_app, self._by_tenant = {}, {}, {}
        for e in live.values():
            self._store(e)

    # --- invalidation ---------------------------------------------------------------------------

    def invalidate(self, kind: str, ident: str, payload: dict[str, Any]) -> int:
        """Drop what a config change makes stale; returns how many entries went."""
        before = len(self._entries)
        if kind == "apikey":
            self._gen += 1
            if payload.get("token_hash"):
                self._drop(payload["token_hash"])
            h = self._by_key.pop(payload.get("id") or ident, None)
            if h:
                self._drop(h)
        elif kind == "app":
            self._gen += 1
            for h in self._by_app.pop(payload.get("id") or ident, ()):
                self._drop(h)
        elif kind == "tenant":
            self._gen += 1
            for h in self._by_tenant.pop(payload.get("id") or ident, ()):
                self._drop(h)
        return before - len(self._entries)

    def clear(self) -> None:
        self._gen += 1
        self._entries.clear()
        self._inflight.clear()
        self._by_key.clear()
        self._by_app.clear()
        self._by_tenant.clear()

    def _drop(self, h: str) -> None:
        self._entries.pop(h, None)
        self._inflight.pop(h, None)  # later requests query again; current waiters keep their answer

    def __len__(self) -> int:
        return len(self._entries)

    # --- last_used_at ---------------------------------------------------------------------------

    def touch(self, e: KeyEntry) -> None:
        now = self.clock()
        last = self._touched.get(e.key_id)  # type: ignore[arg-type]
        if last is None or now - last >= self.touch_interval:
            self._touched[e.key_id] = now  # type: ignore[index]
            self._pending[e.key_id] = utcnow()  # type: ignore[index]

    async def flush_last_used(self) -> int:
        if not self._pending:
            return 0
        pending, self._pending = self._pending, {}
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(_TOUCH, [{"kid": k, "used": v} for k, v in pending.items()])
        except Exception as e:  # noqa: BLE001 - bookkeeping only; try again with the next batch
            log.warning("last_used_flush_failed", error=repr(e), keys=len(pending))
            for k, v in pending.items():
                self._pending.setdefault(k, v)
            return 0
        edge = self.clock() - self.touch_interval
        self._touched = {k: t for k, t in self._touched.items() if t > edge}
        return len(pending)


# --- scoped app keys (docs/access.md) -------------------------------------------------------------

UNSCOPED_ONLY = "*"  # a route with no permission of its own: only keys without limits may call it


def _key_scope(m: Any) -> dict[str, Any]:
    """KeyEntry's permissions and not_after from the lookup row."""
    perms, expires = m["key_permissions"], m["key_expires_at"]
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return {"permissions": frozenset(perms) if perms is not None else None,
            "not_after": expires.timestamp() if expires is not None else None}


def required_permission(method: str, path: str) -> str | None:
    """The app-key permission a public route needs (``path`` after /v1), None when any key of the app may call
    it (the app's own description), UNSCOPED_ONLY for a route no permission names."""
    parts = path.split("/")  # ["", first, ...]
    first = parts[1] if len(parts) > 1 else ""
    if first == "chat-messages":
        return "chat"
    if first == "completion-messages":
        return "completion"
    if first == "workflows":
        return "history" if path == "/workflows/logs" else "workflow"
    if first == "workflow":  # GET /workflow/{task_id}/events, Dify's newest resume path
        return "workflow"
    if first == "files":
        return "files"
    if first == "messages":
        if len(parts) == 4 and parts[3] == "feedbacks":
            return "feedback"
        if len(parts) == 4 and parts[3] == "suggested":
            return "chat"
        return "history" if method in ("GET", "HEAD") else UNSCOPED_ONLY
    if first == "conversations":
        # reading is history; renaming, deleting and setting variables belong to the chat client
        return "history" if method in ("GET", "HEAD") else "chat"
    if first in ("audio-to-text", "text-to-audio"):
        return "chat"
    if first == "app" and path == "/app/feedbacks":  # the app's feedback, read like history
        return "history"
    if first == "end-users":  # who an id in the history is
        return "history"
    if first in ("parameters", "info", "meta", "site"):
        return None
    return UNSCOPED_ONLY


def permission_denied(e: KeyEntry, method: str, path: str) -> str | None:
    """The 403 message when the key's permissions do not cover this route; None when they do."""
    if e.permissions is None:
        return None
    need = required_permission(method, path)
    if need is None or need in e.permissions:
        return None
    held = ", ".join(sorted(e.permissions))
    if need == UNSCOPED_ONLY:
        return f"This API key is limited to [{held}]; {method} {path} needs a key without permission limits."
    return f"This API key lacks the '{need}' permission required for {method} {path} (it has: {held})."

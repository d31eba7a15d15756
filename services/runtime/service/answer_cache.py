"""Answer cache (Plexus extension, opt-in per app with ``answer_cache: {enabled, ttl_seconds}``;
docs/moderation.md).

A request is eligible when it carries no conversation memory: a chat message that starts a new
conversation, or a completion message; never agent-chat (tools act on the world) nor advanced-chat.
The key is a hash of: the app id; the config version (a digest of the app's stored model config and the
model binding, so saving a changed config changes every key); the endpoint; the normalised query (NFKC,
casefolded, whitespace collapsed); the canonical inputs; and the final system prompt, which holds the
rendered inputs and, for apps with knowledge, the retrieved context (so a changed knowledge base misses
instead of serving a stale answer; retrieval still runs on a hit). Only answers that finished normally
and were not replaced by moderation are stored. The answer text is shared by the app's users only for
these memory-less requests, which is what the app opted into.

Backend: Redis (``plexus:answers:<app>:<digest>``, TTL per app) in split mode so every replica shares it;
an in-memory LRU with per-entry expiry in `all` mode. Backend failures count as misses.
"""

from __future__ import annotations

import hashlib
import time
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from shared.lru import Lru

if TYPE_CHECKING:
    from services.runtime.service.cache import AppEntry
    from shared.context import Context

log = structlog.get_logger("plexus.runtime.answer_cache")

KEY_VERSION = 1  # bump when the key recipe changes
REDIS_PREFIX = "plexus:answers:"
MAX_VERSIONS = 4096  # config versions whose digest is kept (least recently used dropped)


def normalise_query(query: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", query).casefold().split())


def config_version(app: AppEntry) -> str:
    """The served config version (its app_model_config id) and a digest of what decides an answer besides
    the request (the stored config and the model binding), in case a version is ever edited in place."""
    assert app.config is not None
    b = app.binding
    model = [b.provider, b.model, b.params] if b is not None else None
    raw = orjson.dumps([app.config.to_wire(), model], option=orjson.OPT_SORT_KEYS)
    return f"{app.config_id or '-'}.{hashlib.sha256(raw).hexdigest()[:16]}"


class MemoryBackend:
    def __init__(self, max_entries: int) -> None:
        self._items: Lru[str, tuple[float, bytes]] = Lru(max(max_entries, 1))  # (expires at, answer)

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= time.monotonic():
            self._items.pop(key)
            return None
        return item[1]

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        self._items.put(key, (time.monotonic() + ttl, value))

    async def forget_app(self, app_id: str) -> None:
        prefix = f"{app_id}:"
        self._items.pop_where(lambda k: k.startswith(prefix))


class RedisBackend:
    def __init__(self, redis: Any) -> None:
        self.redis = redis

    async def get(self, key: str) -> bytes | None:
        return await self.redis.get(REDIS_PREFIX + key)

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        await self.redis.set(REDIS_PREFIX + key, value, ex=ttl)

    async def forget_app(self, app_id: str) -> None:
        keys = [k async for k in self.redis.scan_iter(match=f"{REDIS_PREFIX}{app_id}:*", count=500)]
        if keys:
            await self.redis.delete(*keys)


@dataclass(slots=True)
class Lookup:
    """An eligible request: its key, and the cached answer on a hit."""

    cache: AnswerCache
    key: str
    ttl: int
    answer: str | None = None
    source_message_id: str | None = None

    async def store(self, answer: str, message_id: str) -> None:
        await self.cache.put(self, answer, message_id)


class AnswerCache:
    def __init__(self, ctx: Context) -> None:
        redis = ctx.redis if ctx.mode == "split" else None
        self.backend: MemoryBackend | RedisBackend = (
            RedisBackend(redis) if redis is not None
            else MemoryBackend(ctx.settings.runtime.answer_cache_max_entries))
        # (app id, config id) → (the parsed config it was computed for, version): recomputed only when the
        # app cache loads the app again; the least recently used beyond MAX_VERSIONS are dropped
        self._versions: Lru[tuple[str, str | None], tuple[Any, str]] = Lru(MAX_VERSIONS)

    def _version(self, app: AppEntry) -> str:
        key = (app.id, app.config_id)
        hit = self._versions.get(key)
        if hit is not None and hit[0] is app.config:
            return hit[1]
        v = config_version(app)
        self._versions.put(key, (app.config, v))
        return v

    async def lookup(self, app: AppEntry, *, endpoint: str, new_conversation: bool, query: str,
                     inputs: dict[str, Any], system: str) -> Lookup | None:
        """None when the app did not opt in or the request is not eligible; else the key and any hit."""
        cfg = app.config
        if cfg is None or not cfg.answer_cache.enabled or not new_conversation or app.agent is not None \
                or app.mode not in ("chat", "completion"):
            return None
        parts = [KEY_VERSION, endpoint, normalise_query(query), inputs,
                 hashlib.sha256(system.encode()).hexdigest()]
        try:
            digest = hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()
        except TypeError:  # an input orjson cannot encode: not cacheable
            return None
        found = Lookup(self, f"{app.id}:{self._version(app)}:{digest}", cfg.answer_cache.ttl_seconds)
        try:
            raw = await self.backend.get(found.key)
        except Exception:
            log.warning("answer_cache_get_failed", exc_info=True)
            return found
        if raw:
            value = orjson.loads(raw)
            found.answer, found.source_message_id = value["a"], value.get("m")
        return found

    async def put(self, found: Lookup, answer: str, message_id: str) -> None:
        try:
            await self.backend.set(found.key, orjson.dumps({"a": answer, "m": message_id}), found.ttl)
        except Exception:
            log.warning("answer_cache_set_failed", exc_info=True)

    async def forget_app(self, app_id: str) -> None:
        """The app was deleted (core.Runtime.on_config): its answers and versions go."""
        self._versions.pop_where(lambda k: k[0] == app_id)
        try:
            await self.backend.forget_app(app_id)
        except Exception:
            log.warning("answer_cache_forget_failed", exc_info=True)

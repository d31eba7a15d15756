"""In-memory caches that keep the database off the per-request path.

- ``AppCache``: App + parsed model config + decrypted credentials (as a ready ``ModelBinding``) per app
  id, for ``app_cache_seconds``, dropped at once by NATS config messages (kind "app" → that app,
  "provider"/"tenant"/"tool_provider" → every app of that tenant). Loads are single-flight per app.
- ``EndUsers``: (app, session id) → end-user id; end users are never deleted while their app lives.

An entry also carries the canary candidate of a running rollout (docs/versions.md); ``AppEntry.serving``
picks the version one conversation (or completion message) is served with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.runtime.llm import ModelBinding, bind_model
from services.runtime.service.agent import AgentPlan
from services.runtime.service.annotations import AnnotationReply, load_reply
from services.runtime.service.errors import CHAT_MODES, DEFAULT_USER
from shared.app_config import ModelConfig, load_model_config
from shared.credentials import provider_credentials
from shared.db import Database
from shared.errors import forbidden
from shared.lru import Lru
from shared.models import Account, App, AppModelConfig, EndUser, new_id, utcnow
from shared.settings import Settings
from shared.site import site_view
from shared.tool_catalog import resolve_agent_tools

log = structlog.get_logger("plexus.runtime.cache")


@dataclass(frozen=True, slots=True)
class Variant:
    """A model-config version ready to serve."""

    config_id: str
    config: ModelConfig | None
    binding: ModelBinding | None
    agent: AgentPlan | None


def in_canary(candidate_id: str, key: str, percentage: float) -> bool:
    """Deterministic: the same key (conversation id, or message id for completions) always lands on the same
    side of a given rollout, and raising the percentage only moves keys towards the candidate."""
    bucket = int.from_bytes(hashlib.sha256(f"{candidate_id}:{key}".encode()).digest()[:8], "big") % 10_000
    return bucket < round(percentage * 100)


@dataclass(frozen=True, slots=True)
class AppEntry:
    id: str
    tenant_id: str
    name: str
    description: str
    mode: str
    author_name: str
    config: ModelConfig | None  # None: no (valid) model config → app_unavailable
    binding: ModelBinding | None  # None: the provider has no usable credentials → provider_not_initialize
    loaded_at: float
    agent: AgentPlan | None = None  # agent-chat apps: strategy and the tools that resolved
    workflow_id: str | None = None  # graph apps: the published version
    config_id: str | None = None  # the model-config version ``config`` is
    candidate: Variant | None = None  # a rollout's candidate version, served to ``rollout_percentage`` %
    rollout_percentage: float = 0.0
    annotation: AnnotationReply | None = None  # annotation reply, when enabled (annotations.py)
    site: dict[str, Any] | None = None  # GET /v1/site's body (shared/site.py), computed once per load

    def serving(self, pinned: str | None, key: str) -> AppEntry:
        """This entry as served to one conversation: the version it is pinned to while that version is still
        served (current or candidate), else the candidate for the rollout's share of keys, else the current."""
        c = self.candidate
        if c is None:
            return self
        if pinned == self.config_id or (pinned != c.config_id and not in_canary(c.config_id, key,
                                                                                self.rollout_percentage)):
            return dataclasses.replace(self, candidate=None)
        return dataclasses.replace(self, config=c.config, binding=c.binding, agent=c.agent,
                                   config_id=c.config_id, candidate=None)


class AppCache:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.secret_key = settings.secret_key
        self.ttl = settings.runtime.app_cache_seconds
        self._entries: dict[str, AppEntry] = {}
        self._loading: dict[str, asyncio.Future[AppEntry]] = {}
        self._generation = 0  # bumped by every invalidation: a load that raced one is not stored

    async def get(self, tenant_id: str, app_id: str) -> AppEntry:
        entry = self._entries.get(app_id)
        if entry is None or time.monotonic() - entry.loaded_at > self.ttl:
            entry = await self._load_once(app_id)
        if entry.tenant_id != tenant_id:
            raise forbidden("The app no longer exists.")
        return entry

    def invalidate_app(self, app_id: str) -> None:
        self._generation += 1
        self._entries.pop(app_id, None)

    def invalidate_tenant(self, tenant_id: str) -> None:
        self._generation += 1
        for app_id in [k for k, e in self._entries.items() if e.tenant_id == tenant_id]:
            self._entries.pop(app_id, None)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()

    async def _load_once(self, app_id: str) -> AppEntry:
        fut = self._loading.get(app_id)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._loading[app_id] = fut
        generation = self._generation
        try:
            entry = await self._load(app_id)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters (if any) re-raise it themselves
            raise
        finally:
            self._loading.pop(app_id, None)
        if generation == self._generation:
            self._entries[app_id] = entry
        fut.set_result(entry)
        return entry

    async def _load(self, app_id: str) -> AppEntry:
        async with self.db.session() as s:
            app = (await s.exec(select(App).where(App.id == app_id))).first()
            if app is None:
                raise forbidden("The app no longer exists.")
            q = select(AppModelConfig.id, AppModelConfig.config)
            if app.app_model_config_id:
                q = q.where(AppModelConfig.id == app.app_model_config_id)
            else:  # never a draft: it is served only once published
                q = (
                    q.where(AppModelConfig.app_id == app.id, AppModelConfig.status == "published")
                    .order_by(AppModelConfig.created_at.desc())
                    .limit(1)
                )
            row = (await s.exec(q)).first()
            author = ""
            if app.created_by:
                author = (
                    await s.exec(select(Account.name).where(Account.id == app.created_by))
                ).first() or ""
            current = await self._variant(s, app, *row) if row else None
            candidate = None
            # loaded even at 0 %: conversations already on the candidate stay on it until promote/rollback
            if current is not None and app.rollout_config_id:
                found = (await s.exec(select(AppModelConfig.id, AppModelConfig.config).where(
                    AppModelConfig.id == app.rollout_config_id, AppModelConfig.app_id == app.id))).first()
                candidate = await self._variant(s, app, *found) if found else None
            annotation = await load_reply(s, app.id) if app.mode in CHAT_MODES else None
        return AppEntry(
            id=app.id,
            tenant_id=app.tenant_id,
            name=app.name,
            description=app.description or "",
            mode=app.mode,
            author_name=author,
            config=current.config if current else None,
            binding=current.binding if current else None,
            loaded_at=time.monotonic(),
            agent=current.agent if current else None,
            workflow_id=app.workflow_id,
            config_id=current.config_id if current else None,
            candidate=candidate,
            rollout_percentage=app.rollout_percentage if candidate else 0.0,
            annotation=annotation,
            site=site_view(app),
        )

    async def _variant(self, s: AsyncSession, app: App, config_id: str, raw: dict | None) -> Variant:
        config: ModelConfig | None = None
        if raw:
            try:
                config, ignored = load_model_config(raw)
            except ValueError as e:
                log.warning("app_config_invalid", app_id=app.id, config_id=config_id, error=str(e))
            else:
                for why in ignored:  # served without that setting rather than refused (shared/app_config.py)
                    log.warning("app_config_setting_ignored", app_id=app.id, config_id=config_id, error=why)
        binding = agent = None
        if config is not None:
            binding = await self._bind(s, app.tenant_id, config)
            if app.mode == "agent-chat":
                tools = await resolve_agent_tools(s, app.tenant_id, config.agent_mode.get("tools") or [],
                                                  self.settings.tools, strict=False)
                agent = AgentPlan.build(config.agent_mode, tools, self.settings.runtime.agent_max_iterations)
        return Variant(config_id, config, binding, agent)

    async def _bind(self, s: AsyncSession, tenant_id: str, config: ModelConfig) -> ModelBinding | None:
        credentials = await provider_credentials(s, self.secret_key, tenant_id, config.model.provider,
                                                 config.model.name)
        if credentials is None:
            return None
        return bind_model(config.model.provider, config.model.name, credentials, config.model.completion_params)


class EndUsers:
    """(app id, session id) → end-user id, upserted like Dify's EndUser(type="service_api")."""

    def __init__(self, db: Database, max_entries: int = 100_000) -> None:
        self.db = db
        self._ids: Lru[tuple[str, str], str] = Lru(max_entries)

    async def get(self, tenant_id: str, app_id: str, session_id: str, create: bool = True) -> str | None:
        key = (app_id, session_id)
        found = self._ids.get(key)
        if found is not None:
            return found
        found = await self._select(app_id, session_id)
        if found is None and create:
            found = new_id()
            try:
                async with self.db.session() as s:
                    await s.exec(
                        insert(EndUser).values(
                            id=found,
                            tenant_id=tenant_id,
                            app_id=app_id,
                            type="service_api",
                            session_id=session_id,
                            is_anonymous=session_id == DEFAULT_USER,
                            created_at=utcnow(),
                        )
                    )
                    await s.commit()
            except IntegrityError:  # another request or replica created it first
                found = await self._select(app_id, session_id)
        if found is not None:
            self._ids.put(key, found)
        return found

    async def _select(self, app_id: str, session_id: str) -> str | None:
        async with self.db.session() as s:
            return (
                await s.exec(
                    select(EndUser.id).where(EndUser.app_id == app_id, EndUser.session_id == session_id)
                )
            ).first()

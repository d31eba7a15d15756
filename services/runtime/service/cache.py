"""In-memory caches that keep the database off the per-request path.

- ``AppCache``: App + parsed model config + decrypted credentials (as a ready ``ModelBinding``) per app
  id, for ``app_cache_seconds``, dropped at once by NATS config messages (kind "app" → that app,
  "provider"/"tenant"/"tool_provider" → every app of that tenant). Loads are single-flight per app.
- ``EndUsers``: (app, session id) → end-user id; end users are never deleted while their app lives.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass

import structlog
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.runtime.llm import ModelBinding, bind_model
from services.runtime.service.agent import AgentPlan
from services.runtime.service.errors import DEFAULT_USER
from shared.app_config import ModelConfig, parse_model_config
from shared.credentials import provider_credentials
from shared.db import Database
from shared.errors import forbidden
from shared.models import Account, App, AppModelConfig, EndUser, new_id, utcnow
from shared.settings import Settings
from shared.tool_catalog import resolve_agent_tools

log = structlog.get_logger("plexus.runtime.cache")


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
            q = select(AppModelConfig.config)
            if app.app_model_config_id:
                q = q.where(AppModelConfig.id == app.app_model_config_id)
            else:
                q = (
                    q.where(AppModelConfig.app_id == app.id)
                    .order_by(AppModelConfig.created_at.desc())
                    .limit(1)
                )
            raw = (await s.exec(q)).first()
            author = ""
            if app.created_by:
                author = (
                    await s.exec(select(Account.name).where(Account.id == app.created_by))
                ).first() or ""
            config: ModelConfig | None = None
            if raw:
                try:
                    config = parse_model_config(raw)
                except ValueError as e:
                    log.warning("app_config_invalid", app_id=app_id, error=str(e))
            binding = agent = None
            if config is not None:
                binding = await self._bind(s, app.tenant_id, config)
                if app.mode == "agent-chat":
                    tools = await resolve_agent_tools(s, app.tenant_id, config.agent_mode.get("tools") or [],
                                                      self.settings.tools, strict=False)
                    agent = AgentPlan.build(config.agent_mode, tools, self.settings.runtime.agent_max_iterations)
        return AppEntry(
            id=app.id,
            tenant_id=app.tenant_id,
            name=app.name,
            description=app.description or "",
            mode=app.mode,
            author_name=author,
            config=config,
            binding=binding,
            loaded_at=time.monotonic(),
            agent=agent,
            workflow_id=app.workflow_id,
        )

    async def _bind(self, s: AsyncSession, tenant_id: str, config: ModelConfig) -> ModelBinding | None:
        credentials = await provider_credentials(s, self.secret_key, tenant_id, config.model.provider)
        if credentials is None:
            return None
        return bind_model(config.model.provider, config.model.name, credentials, config.model.completion_params)


class EndUsers:
    """(app id, session id) → end-user id, upserted like Dify's EndUser(type="service_api")."""

    def __init__(self, db: Database, max_entries: int = 100_000) -> None:
        self.db = db
        self.max_entries = max_entries
        self._ids: OrderedDict[tuple[str, str], str] = OrderedDict()

    async def get(self, tenant_id: str, app_id: str, session_id: str, create: bool = True) -> str | None:
        key = (app_id, session_id)
        found = self._ids.get(key)
        if found is not None:
            self._ids.move_to_end(key)
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
            self._ids[key] = found
            if len(self._ids) > self.max_entries:
                self._ids.popitem(last=False)
        return found

    async def _select(self, app_id: str, session_id: str) -> str | None:
        async with self.db.session() as s:
            return (
                await s.exec(
                    select(EndUser.id).where(EndUser.app_id == app_id, EndUser.session_id == session_id)
                )
            ).first()

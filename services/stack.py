"""The module graph: which services a target runs and how they are wired (cf. Mimir's modules.go).

``all`` runs every service in one process behind the gateway on embedded defaults; a single target
runs one service on production settings. `plexus run` and the test suite both build a ``Stack``.
"""

from __future__ import annotations

import importlib
from typing import Any

import structlog

from shared.bus import Bus
from shared.context import Context
from shared.db import Database
from shared.llm import configure as configure_llm
from shared.migrate import upgrade_async
from shared.natsd import EmbeddedNats
from shared.settings import Settings

log = structlog.get_logger("plexus.stack")

SERVICES = ("console", "runtime", "indexer", "tools", "gateway")  # gateway last: it dispatches to the rest
TARGETS = ("all", *SERVICES)


class Stack:
    def __init__(self, settings: Settings, target: str = "all") -> None:
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
        self.settings = settings
        self.target = target
        self.services = list(SERVICES) if target == "all" else [target]
        self.nats: EmbeddedNats | None = None
        self.ctx: Context | None = None
        self.app: Any = None
        self._modules: list[Any] = []

    async def start(self) -> Any:
        s = self.settings
        configure_llm(s.runtime.llm_max_connections)
        embedded = self.target == "all"
        if embedded:
            s.ensure_secrets()
        else:
            required = ["database_url", "nats_url", "secret_key", "internal_secret"]
            if self.target == "gateway" and s.gateway.limiter != "memory":
                # limits must hold across gateway replicas; a lone replica may opt out explicitly
                required.append("redis_url")
            s.require(*required)
        nats_url = s.nats_url
        if not nats_url:
            self.nats = EmbeddedNats(s.data_dir / "nats")
            nats_url = await self.nats.astart()
            log.info("embedded_nats_started", url=nats_url)
        try:
            db_url = s.effective_database_url
            if embedded:
                await upgrade_async(db_url)
            db = Database(db_url, pool_size=s.database_pool_size, max_overflow=s.database_max_overflow,
                          pool_timeout=s.database_pool_timeout)
            bus = await Bus.connect(nats_url, name=f"plexus-{self.target}")
            redis = None
            if s.redis_url:
                import redis.asyncio as aioredis

                redis = aioredis.from_url(s.redis_url, socket_timeout=2, socket_connect_timeout=2)
            self.ctx = Context(settings=s, db=db, bus=bus, redis=redis, mode="all" if embedded else "split")
            for name in self.services:
                mod = importlib.import_module(f"services.{name}")
                self._modules.append(mod)
                app = mod.create_app(self.ctx)
                self.ctx.local_apps[name] = app
                await mod.start(self.ctx, app)
            self.app = self.ctx.local_apps[self.services[-1]]
            return self.app
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for mod in reversed(self._modules):
            try:
                await mod.stop(self.ctx, self.ctx.local_apps.get(mod.__name__.rsplit(".", 1)[-1]))
            except Exception:
                log.exception("service_stop_failed", service=mod.__name__)
        self._modules.clear()
        if self.ctx:
            await self.ctx.bus.close()
            if self.ctx.redis is not None:
                await self.ctx.redis.aclose()
            await self.ctx.db.close()
            self.ctx = None
        if self.nats:
            self.nats.stop()
            self.nats = None
        log.info("stack_stopped", target=self.target)

"""The runtime service object: caches, the run registry and the services built on them, plus the
lifecycle (start-up sweep, periodic sweep, shutdown)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import update

from services.runtime.service.cache import AppCache, AppEntry, EndUsers
from services.runtime.service.chat import ChatService
from services.runtime.service.queries import HistoryService
from services.runtime.service.resume import Resumer
from services.runtime.service.runs import RunRegistry
from services.runtime.workflow.chatflow import ChatflowService
from services.runtime.workflow.service import WorkflowService
from shared.context import Context
from shared.errors import unauthorized
from shared.identity import AUTH_INVALID, Caller
from shared.models import Message, WorkflowRun, utcnow
from shared.subjects import parse_config_subject, task_of

log = structlog.get_logger("plexus.runtime")


class Runtime:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.settings = ctx.settings.runtime
        self.db = ctx.db
        self.bus = ctx.bus
        self.apps = AppCache(ctx.db, ctx.settings)
        self.end_users = EndUsers(ctx.db)
        self.runs = RunRegistry(ctx)
        self.chat = ChatService(self)
        self.history = HistoryService(self)
        self.workflows = WorkflowService(self)
        self.chatflow = ChatflowService(self)
        self.resume = Resumer(self)
        self._sweeper: asyncio.Task | None = None

    async def app_for(self, caller: Caller) -> AppEntry:
        if not caller.app_id or caller.key_type != "app":
            raise unauthorized(AUTH_INVALID)
        return await self.apps.get(caller.tenant_id, caller.app_id)

    # -- NATS ---------------------------------------------------------------------------------------
    def on_stop(self, subject: str, payload: dict[str, Any]) -> None:
        task_id = task_of(subject)
        user = payload.get("user")
        if isinstance(user, str) and not self.runs.stop(task_id, user, payload.get("app_id")):
            self.workflows.stop_local(task_id, user, payload.get("app_id"))

    def on_config(self, subject: str, payload: dict[str, Any]) -> None:
        kind, ident = parse_config_subject(subject)
        if kind == "app":
            self.apps.invalidate_app(ident)
        elif kind in ("provider", "tenant"):
            self.apps.invalidate_tenant(ident)
        elif kind == "tool_provider" and isinstance(payload.get("tenant_id"), str):
            self.apps.invalidate_tenant(payload["tenant_id"])

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        from shared.llm import litellm

        litellm()  # pay the import (~5 s) at start-up, not on the first chat
        swept = await self.sweep()
        if swept:
            log.warning("interrupted_runs_recorded", count=swept)
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="runtime-sweeper")

    async def shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
            self._sweeper = None
        await self.runs.shutdown()
        await self.workflows.close()

    async def sweep(self) -> int:
        """Messages and workflow runs left "running" past their time limit belong to a replica that died:
        record them as interrupted."""
        cutoff = utcnow() - timedelta(seconds=self.settings.run_timeout)
        # a workflow run (and an advanced-chat message, which is one) may take up to its own time limit
        wf_cutoff = utcnow() - timedelta(seconds=max(self.settings.run_timeout,
                                                     self.ctx.settings.workflow.max_execution_time) + 60)
        stmt = update(Message).where(
            Message.status == "running",
            ((Message.workflow_run_id.is_(None)) & (Message.updated_at < cutoff))
            | ((Message.workflow_run_id.is_not(None)) & (Message.updated_at < wf_cutoff)))
        local = list(self.runs.runs) + list(self.workflows.tasks)
        if local:
            stmt = stmt.where(Message.task_id.not_in(local))
        wf = update(WorkflowRun).where(WorkflowRun.status == "running", WorkflowRun.updated_at < wf_cutoff)
        if self.workflows.tasks:
            wf = wf.where(WorkflowRun.task_id.not_in(list(self.workflows.tasks)))
        async with self.db.session() as s:
            result = await s.exec(stmt.values(status="error", error="interrupted", updated_at=utcnow()))
            wf_result = await s.exec(wf.values(status="failed", error="interrupted: the replica running it stopped",
                                                updated_at=utcnow(), finished_at=utcnow()))
            await s.commit()
        return (result.rowcount or 0) + (wf_result.rowcount or 0)

    async def _sweep_forever(self) -> None:
        interval = max(min(self.settings.run_timeout / 2, 300.0), 1.0)
        while True:
            await asyncio.sleep(interval)
            try:
                swept = await self.sweep()
                if swept:
                    log.warning("interrupted_runs_recorded", count=swept)
            except Exception:  # try again next round
                log.exception("sweep_failed")

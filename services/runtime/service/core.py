"""The runtime service object: caches, the run registry and the services built on them, plus the
lifecycle (start-up sweep, periodic sweep, shutdown)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import orjson
import structlog
from sqlalchemy import update
from sqlmodel import select

from services.runtime.service.annotations import AnnotationService
from services.runtime.service.app_extras import AppExtras
from services.runtime.service.audio import AudioService
from services.runtime.service.cache import AppCache, AppEntry, EndUsers
from services.runtime.service.chat import ChatService
from services.runtime.service.external_data import ExternalData
from services.runtime.service.files import FileService
from services.runtime.service.helper_model import HelperModel
from services.runtime.service.queries import HistoryService
from services.runtime.service.resume import Resumer
from services.runtime.service.runs import RunRegistry
from services.runtime.workflow.chatflow import ChatflowService
from services.runtime.workflow.service import WorkflowService
from shared.context import Context
from shared.egress import Egress, EgressPolicy
from shared.errors import unauthorized
from shared.identity import AUTH_INVALID, Caller
from shared.models import App, Message, WorkflowRun, ts, utcnow
from shared.subjects import parse_config_subject, task_events, task_of

log = structlog.get_logger("plexus.runtime")


class Runtime:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.settings = ctx.settings.runtime
        self.db = ctx.db
        self.bus = ctx.bus
        # the one guarded client for user-configured URLs (HTTP nodes, API-based extensions), tools' allowlist
        self.egress = Egress(EgressPolicy.from_allowlist(ctx.settings.tools.egress_allowlist))
        self.apps = AppCache(ctx.db, ctx.settings)
        self.end_users = EndUsers(ctx.db)
        self.runs = RunRegistry(ctx)
        self.helper = HelperModel(self)  # titles and suggested questions: the model they ask
        self.external_data = ExternalData(self)  # external data tools of model-config apps
        self.chat = ChatService(self)
        self.history = HistoryService(self)
        self.workflows = WorkflowService(self)
        self.chatflow = ChatflowService(self)
        self.resume = Resumer(self)
        self.files = FileService(self)
        self.annotations = AnnotationService(self)  # annotations and annotation reply
        self.audio = AudioService(self)  # /audio-to-text, /text-to-audio
        self.extras = AppExtras(self)  # suggested questions, the app's feedback list, site
        self._sweeper: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()  # keeps fire-and-forget tasks referenced

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
            if payload.get("deleted"):  # its moderators and cached answers can no longer be reached: free them now
                self.chat.moderation.forget_app(ident)
                task = asyncio.get_running_loop().create_task(self.chat.answers.forget_app(ident))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
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
        await self.helper.close()
        await self.workflows.close()
        await self.files.close()
        await self.egress.close()

    async def sweep(self) -> int:
        """Messages and workflow runs still "running" that no live replica refreshes belong to a replica that
        died: record them as interrupted, and end their event logs with an ``error`` event so a client that
        resumes (or is following) the stream on any replica gets a terminal event."""
        now = utcnow()
        # live runs are refreshed every third of the lease (``heartbeat``): older ones have no owner left
        cutoff = now - timedelta(seconds=min(self.settings.run_lease, self.settings.run_timeout))
        # a workflow run (and an advanced-chat message, which is one) may take up to its own time limit
        wf_cutoff = now - timedelta(seconds=max(self.settings.run_timeout,
                                                self.ctx.settings.workflow.max_execution_time) + 60)
        stmt = update(Message).where(
            Message.status == "running",
            ((Message.workflow_run_id.is_(None)) & (Message.updated_at < cutoff))
            | ((Message.workflow_run_id.is_not(None)) & (Message.updated_at < wf_cutoff)))
        local = list(self.runs.runs) + list(self.workflows.tasks)
        if local:
            stmt = stmt.where(Message.task_id.not_in(local))
        stmt = stmt.values(status="error", error="interrupted", updated_at=now).returning(
            Message.id, Message.task_id, Message.conversation_id, Message.created_at, Message.app_id)
        wf = update(WorkflowRun).where(WorkflowRun.status == "running", WorkflowRun.updated_at < wf_cutoff)
        if self.workflows.tasks:
            wf = wf.where(WorkflowRun.task_id.not_in(list(self.workflows.tasks)))
        async with self.db.session() as s:
            swept = (await s.exec(stmt)).all()
            modes = {}
            if swept:
                app_ids = {row[4] for row in swept}
                modes = dict((await s.exec(select(App.id, App.mode).where(App.id.in_(app_ids)))).all())
            wf_result = await s.exec(wf.values(status="failed", error="interrupted: the replica running it stopped",
                                                updated_at=now, finished_at=now))
            await s.commit()
        for msg_id, task_id, conv_id, created_at, app_id in swept:
            env: dict[str, Any] = {"event": "error", "task_id": task_id}
            if modes.get(app_id) != "completion":
                env["conversation_id"] = conv_id
            env.update(message_id=msg_id, created_at=ts(created_at) or 0, code="completion_request_error",
                       message="interrupted: the replica running it stopped", status=400)
            try:
                await self.bus.nc.publish(task_events(task_id), orjson.dumps(env))
            except Exception:  # noqa: BLE001 - the message is marked; the event log is best effort
                log.warning("sweep_event_publish_failed", task_id=task_id)
        return len(swept) + (wf_result.rowcount or 0)

    async def heartbeat(self) -> int:
        """Refresh this replica's live chat runs, so other replicas' sweeps leave them alone."""
        live = list(self.runs.runs)
        if not live:
            return 0
        async with self.db.session() as s:
            result = await s.exec(update(Message).where(Message.task_id.in_(live), Message.status == "running")
                                  .values(updated_at=utcnow()))
            await s.commit()
        return result.rowcount or 0

    async def _sweep_forever(self) -> None:
        lease = min(self.settings.run_lease, self.settings.run_timeout)
        interval = max(lease / 3, 0.5)
        health = DatabaseStreak()
        while True:
            await asyncio.sleep(interval)
            try:
                await self.heartbeat()
            except Exception:  # try again next round (the database may be restarting)
                health.failed()
                log.exception("heartbeat_failed")
                continue
            health.succeeded(time.monotonic())
            # After an outage no replica could refresh its runs: sweep only once the others have had a whole
            # lease to do so again, or their live runs would be marked interrupted under them.
            if not health.settled(time.monotonic(), lease):
                continue
            try:
                swept = await self.sweep()
                if swept:
                    log.warning("interrupted_runs_recorded", count=swept)
            except Exception:
                log.exception("sweep_failed")


class DatabaseStreak:
    """Since when this replica's database calls have succeeded without a failure in between."""

    def __init__(self) -> None:
        self.ok_since: float | None = None

    def succeeded(self, now: float) -> None:
        if self.ok_since is None:
            self.ok_since = now

    def failed(self) -> None:
        self.ok_since = None

    def settled(self, now: float, period: float) -> bool:
        return self.ok_since is not None and now - self.ok_since >= period

"""Resumable streams (beyond Dify): replay a run's events from its JetStream event log and follow it live,
on any runtime replica. SSE ids are positions in the run's log (1-based, the ``id:`` of the live stream),
so ``Last-Event-ID: n`` continues with event n + 1, each remaining event exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import orjson
from nats.js.api import DeliverPolicy
from sqlmodel import select

from services.runtime.service.errors import parse_uuid, require_user
from services.runtime.service.runs import PING, frame
from shared.errors import invalid_param, not_found
from shared.identity import Caller
from shared.models import Message, WorkflowRun
from shared.subjects import TASK_EVENTS_STREAM, task_events

if TYPE_CHECKING:
    from services.runtime.service.core import Runtime

DRAIN_AFTER_END = 0.3  # seconds to wait for events that follow a terminal one (workflow_finished → error)


def last_event_id(header: str | None, query: str | None) -> int:
    raw = query if query is not None else header
    if raw is None or raw == "":
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise invalid_param("Last-Event-ID must be the integer id of an event of this stream") from None
    if value < 0:
        raise invalid_param("Last-Event-ID must not be negative")
    return value


def _terminal(data: bytes, chat_workflow: bool) -> bool:
    event = orjson.loads(data).get("event")
    if event in ("error", "workflow_finished"):
        return True
    return event == "message_end" and not chat_workflow  # advanced-chat ends with workflow_finished


class Resumer:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def chat_task(self, caller: Caller, task_id: str, user: str | None) -> tuple[str, bool, bool]:
        """(task id, finished?, advanced-chat?) of a chat/completion/agent message of this app and user."""
        session_id = require_user(user)
        app = await self.rt.app_for(caller)
        tid = parse_uuid(task_id, not_found("Task not found."))
        end_user_id = await self.rt.end_users.get(app.tenant_id, app.id, session_id, create=False)
        async with self.rt.db.session() as s:
            row = (await s.exec(select(Message.status, Message.end_user_id).where(
                Message.task_id == tid, Message.app_id == app.id))).first()
        if row is None or row[1] != end_user_id:
            raise not_found("Task not found.")
        return tid, row[0] != "running", app.mode == "advanced-chat"

    async def workflow_task(self, caller: Caller, run_id: str, user: str | None, *, by_task: bool = False
                            ) -> tuple[str, bool, bool]:
        """(task id, finished?, advanced-chat?) of a workflow run of this app and user, found by its run id or,
        with ``by_task``, by its task id."""
        session_id = require_user(user)
        app = await self.rt.app_for(caller)
        rid = parse_uuid(run_id, not_found("Workflow run not found."))
        end_user_id = await self.rt.end_users.get(app.tenant_id, app.id, session_id, create=False)
        key = WorkflowRun.task_id if by_task else WorkflowRun.id
        async with self.rt.db.session() as s:
            row = (await s.exec(select(WorkflowRun.task_id, WorkflowRun.status, WorkflowRun.created_by).where(
                key == rid, WorkflowRun.app_id == app.id))).first()
        if row is None or row[2] != end_user_id:
            raise not_found("Workflow run not found.")
        return row[0], row[1] != "running", app.mode == "advanced-chat"

    async def events(self, task_id: str, after: int, finished: bool, chat_workflow: bool) -> AsyncIterator[bytes]:
        """The log from event ``after + 1`` on, then live events until the run's last one."""
        ping = self.rt.settings.ping_interval
        sub = await self.rt.bus.js.subscribe(task_events(task_id), stream=TASK_EVENTS_STREAM, ordered_consumer=True,
                                             deliver_policy=DeliverPolicy.ALL)
        seq, ended = 0, False
        try:
            while True:
                # a finished run's log is complete: an idle moment means we have read all of it
                wait = DRAIN_AFTER_END if ended or finished else ping
                try:
                    msg = await sub.next_msg(timeout=wait)
                except TimeoutError:
                    if ended or finished:
                        return
                    yield PING
                    continue
                seq += 1
                if seq <= after:
                    continue
                yield frame(seq, msg.data)
                if _terminal(msg.data, chat_workflow):
                    ended = True
        finally:
            await sub.unsubscribe()

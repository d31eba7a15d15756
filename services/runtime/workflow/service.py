"""Workflow app runs (reference §2.15): start a run of the published (or a named) version, stream or
collect its events, stop it, read it back, list the logs.

A run is a task owned by this replica, like a chat run: its events go to the SSE channel and to the
run's NATS subject (the JetStream event log); its row is written when it starts and when it ends,
with every node execution in one insert.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from sqlalchemy import bindparam, insert, update
from sqlmodel import select

from services.runtime.service.errors import app_unavailable, parse_uuid, require_user
from services.runtime.service.moderation import OUTPUT_REASON, text_leaves
from services.runtime.service.runs import Channel, frame
from services.runtime.workflow.engine import Engine, RunFailed, VariablePool, files_in
from services.runtime.workflow.files import WorkflowFiles
from services.runtime.workflow.nodes import IMPLS, RunServices
from shared.app_config import start_form, validate_form
from shared.db import Step
from shared.errors import ApiError, invalid_param, not_found
from shared.identity import Caller
from shared.lru import Lru
from shared.models import Workflow, WorkflowNodeExecution, WorkflowRun, new_id, ts, utcnow
from shared.subjects import task_events, task_stop
from shared.workflow import GRAPH_MODES, Graph, parse_graph
from shared.workflow.logs import WORKFLOW_LOG_MODES, workflow_logs

if TYPE_CHECKING:
    from services.runtime.service.cache import AppEntry
    from services.runtime.service.core import Runtime

log = structlog.get_logger("plexus.runtime.workflow")
RUN = WorkflowRun.__table__
# Core statements with values bound at execution: compiled once, no per-run cache-key work (it was ~7 % of a
# run's CPU with .values() per call)
INSERT_RUN = insert(RUN)
FINISH_RUN = update(RUN).where(RUN.c.id == bindparam("b_id"))
INSERT_EXECUTIONS = insert(WorkflowNodeExecution.__table__)


def not_workflow_app() -> ApiError:
    return ApiError(400, "not_workflow_app", "Please check if your app mode matches the right API route.")


@dataclass(eq=False)
class WorkflowTask:
    task_id: str
    run_id: str
    workflow: Workflow
    graph: Graph
    app_id: str
    tenant_id: str
    end_user_id: str
    session_id: str
    inputs: dict[str, Any]
    created_at: int
    channel: Channel | None
    status: str = "running"
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    elapsed: float = 0.0
    steps: int = 0
    tokens: int = 0
    finished_at: int | None = None
    stop_reason: str | None = None
    task: asyncio.Task | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    chat: Any = None  # advanced-chat: services.runtime.workflow.chatflow.ChatPart
    seq: int = 0  # events emitted so far (the SSE ids)
    files: list[dict[str, Any]] = field(default_factory=list)  # sys.files: the request's files as File values
    preset: str | None = None  # input moderation flagged the inputs: no node runs, this is the output text
    review: Any = None  # workflow apps: moderation.OutputReview of the text stream and outputs (advanced-chat: chat's)
    closing: bool = False  # the run's result is being stored and its last events sent: a stop ends only the audio

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None and not self.finished.is_set():
            self.stop_reason = reason
            speech = self.chat.speech if self.chat is not None else None
            if speech is not None and reason != "moderation":  # the audio stops too, also after the answer
                speech.abort()  # (a flagged answer's preset is still read)
            if self.task is not None and not self.closing:
                self.task.cancel()

    def data(self) -> dict[str, Any]:
        return {"id": self.run_id, "workflow_id": self.workflow.id, "status": self.status, "outputs": self.outputs,
                "error": self.error, "elapsed_time": round(self.elapsed, 6), "total_tokens": self.tokens,
                "total_steps": self.steps, "created_at": self.created_at, "finished_at": self.finished_at}


class WorkflowService:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.settings = rt.ctx.settings.workflow
        self.egress = rt.egress  # the runtime's guarded client (HTTP nodes, tools' webhooks)
        self.tasks: dict[str, WorkflowTask] = {}
        self._graphs: Lru[str, Graph] = Lru(256)  # published versions never change
        self._versions: Lru[str, Workflow] = Lru(256)
        self.files = WorkflowFiles(rt)  # file inputs, sys.files, and file bytes for nodes (files.py)

    async def close(self) -> None:
        for t in list(self.tasks.values()):
            t.request_stop("shutdown")
        pending = [t.task for t in self.tasks.values() if t.task is not None]
        if pending:
            await asyncio.wait(pending, timeout=10)

    # -- starting ------------------------------------------------------------------------------------
    async def run(self, caller: Caller, *, inputs: Any, user: str | None, streaming: bool,
                  workflow_id: str | None = None, files: Any = None) -> WorkflowTask:
        session_id = require_user(user)
        app = await self.rt.app_for(caller)
        if app.mode != "workflow":
            raise not_workflow_app()
        end_user_id = await self.rt.end_users.get(app.tenant_id, app.id, session_id)
        assert end_user_id is not None  # file inputs are checked against the end user's uploads
        workflow, graph, cleaned = await self.prepare(app, workflow_id, inputs, end_user_id=end_user_id)
        # sensitive-word moderation of the inputs (the version's features, moderation.py): a flagged run runs
        # no node and succeeds at once with the preset response as its text output
        mod = await self.rt.chat.moderation.for_app(app, workflow)
        preset, cleaned, _ = await mod.check_inputs(cleaned, "") if mod is not None else (None, cleaned, "")
        system_files, _rows = await self.files.system(app, workflow.features, files, end_user_id) \
            if preset is None else ([], [])
        task = self.new_task(app.tenant_id, app.id, workflow, graph, cleaned, end_user_id, session_id, streaming)
        task.files = system_files
        task.preset = preset
        # output moderation of what the run streams and returns; the review holds its moderator until the run ends
        task.review = mod.output_review() if mod is not None and preset is None else None
        try:
            await self.launch(task)
        except BaseException:
            if task.review is not None and task.task is None:  # the run never started
                task.review.close()
            raise
        return task

    async def prepare(self, app: AppEntry, workflow_id: str | None, inputs: Any, *, end_user_id: str
                      ) -> tuple[Workflow, Graph, dict]:
        """The version to run, its graph, and the inputs checked against its start node (file inputs
        resolved to File values from ``end_user_id``'s uploads or their URLs)."""
        if inputs is None:
            raise invalid_param("inputs is required")
        workflow, graph = await self.served(app, workflow_id)
        variables = graph.start_variables()
        try:
            cleaned = validate_form(start_form(variables), inputs)
        except ValueError as e:
            raise invalid_param(str(e)) from None
        return workflow, graph, await self.files.start_inputs(app, variables, cleaned, end_user_id)

    def new_task(self, tenant_id: str, app_id: str, workflow: Workflow, graph: Graph, inputs: dict[str, Any],
                 end_user_id: str, session_id: str, streaming: bool) -> WorkflowTask:
        return WorkflowTask(task_id=new_id(), run_id=new_id(), workflow=workflow, graph=graph, app_id=app_id,
                            tenant_id=tenant_id, end_user_id=end_user_id, session_id=session_id, inputs=inputs,
                            created_at=int(time.time()), channel=Channel() if streaming else None)

    async def launch(self, task: WorkflowTask, before: Sequence[Step] = ()) -> None:
        """Write the run row (after the rows of ``before``, in the same transaction), then start the run."""
        now = utcnow()
        chat = task.chat
        row = {
            "id": task.run_id, "tenant_id": task.tenant_id, "app_id": task.app_id, "workflow_id": task.workflow.id,
            "type": "chat" if chat else "workflow", "triggered_from": "app-run", "version": task.workflow.version,
            "task_id": task.task_id, "conversation_id": chat.conversation_id if chat else None,
            "message_id": chat.message_id if chat else None, "inputs": task.inputs, "status": "running",
            "outputs": {}, "error": None, "elapsed_time": 0.0, "total_tokens": 0, "total_steps": 0,
            "exceptions_count": 0, "created_by_role": "end_user", "created_by": task.end_user_id,
            "created_from": "service-api", "created_at": now, "updated_at": now, "finished_at": None}
        await self.rt.db.write(*before, (INSERT_RUN, row))
        self.tasks[task.task_id] = task
        task.task = asyncio.create_task(self._execute(task), name=f"workflow-{task.task_id}")

    async def version(self, app: AppEntry, workflow_id: str | None = None) -> Workflow:
        """The published version (or the one named); versions never change, so each is read once."""
        if workflow_id is None:
            if not app.workflow_id:
                raise invalid_param("Workflow not published")
            wid = app.workflow_id
        else:
            wid = parse_uuid(workflow_id, ApiError(400, "workflow_id_format_error", "Invalid workflow_id format."))
        found = self._versions.get(wid)
        if found is None:
            async with self.rt.db.session() as s:
                found = (await s.exec(select(Workflow).where(Workflow.id == wid))).first()
            if found is not None and found.version != "draft":
                self._versions.put(wid, found)
        if found is None or found.app_id != app.id:
            raise not_found("Workflow not found.")
        if found.version == "draft":
            raise ApiError(400, "draft_workflow_error", "Draft workflow cannot be run through the API; publish it.")
        return found

    async def served(self, app: AppEntry, workflow_id: str | None = None) -> tuple[Workflow, Graph]:
        """The version to run (the published one unless named) and its parsed graph, both cached."""
        workflow = await self.version(app, workflow_id)
        return workflow, self._graph(workflow)

    async def published(self, app: AppEntry) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The served version's start-node variables and features (/parameters, the audio and suggested-question
        feature checks of graph apps); 400 app_unavailable when nothing is published."""
        if not app.workflow_id:
            raise app_unavailable()
        workflow, graph = await self.served(app)
        return graph.start_variables(), workflow.features or {}

    def _graph(self, workflow: Workflow) -> Graph:
        graph = self._graphs.get(workflow.id)
        if graph is None:
            graph = parse_graph(workflow.graph)
            self._graphs.put(workflow.id, graph)
        return graph

    # -- the run -------------------------------------------------------------------------------------
    async def _execute(self, task: WorkflowTask) -> None:
        subject = task_events(task.task_id)
        nc = self.rt.bus.nc
        channel = task.channel
        started = time.perf_counter()

        chat = task.chat
        # chunk envelopes (reference §3.2): chat runs carry the conversation and message on every event
        envelope: dict[str, Any] = {"workflow_run_id": task.run_id, "task_id": task.task_id}
        if chat is not None:
            envelope = {"conversation_id": chat.conversation_id, "message_id": chat.message_id,
                        "created_at": task.created_at, **envelope}

        review = chat.review if chat is not None else task.review
        speech = chat.speech if chat is not None else None  # advanced-chat auto play (autoplay.py)

        async def put(data: bytes) -> None:
            """One event: into the SSE channel and onto the run's subject (the JetStream event log)."""
            task.seq += 1
            if channel is not None:
                channel.put(frame(task.seq, data))
            try:
                await nc.publish(subject, data)
            except Exception:  # noqa: BLE001, S110 - the event log is best effort; the run's result is in the DB
                pass

        async def emit(event: str, fields: dict[str, Any]) -> None:
            if event == "message":  # an answer delta: Dify's message chunk, id = the message id
                if review is not None and review.feed(fields["answer"]):
                    # output moderation flagged the answer: nothing more of it goes out; the run stops (its
                    # model calls closed) and ends with message_replace (below)
                    task.request_stop("moderation")
                    return
                if speech is not None:
                    speech.feed(fields["answer"])
                fields = {"id": chat.message_id, **fields}
            elif event == "message_file":  # a file an answer shows: kept with the message as the assistant's
                view = await self.files.answer_file(task.tenant_id, task.app_id, chat.message_id, task.end_user_id,
                                                    fields["file"])
                if view is None:
                    return
                fields = {"id": view["id"], "type": view["type"], "belongs_to": "assistant", "url": view["url"]}
            elif event == "text_chunk" and chat is None and review is not None \
                    and review.feed(fields["data"]["text"]):
                task.request_stop("moderation")  # as above; the stream ends with text_replace
                return
            await put(orjson.dumps({"event": event, **envelope, **fields}))

        env = {v["name"]: v.get("value") for v in task.workflow.environment_variables or []}
        system = {"user_id": task.session_id, "app_id": task.app_id, "workflow_id": task.workflow.id,
                  "workflow_run_id": task.run_id, "files": task.files}
        roots: dict[str, dict[str, Any]] = {"sys": system, "env": env, task.graph.start_id: dict(task.inputs)}
        services = RunServices(ctx=self.rt.ctx, tenant_id=task.tenant_id, app_id=task.app_id,
                               user_id=task.end_user_id, egress=self.egress, files=self.files)
        if chat is not None:
            system.update(query=chat.query, conversation_id=chat.conversation_id, dialogue_count=chat.dialogue_count)
            roots["conversation"] = chat.variables
            services.history = chat.history
            services.conversation_types = chat.types
        pool = VariablePool(roots)
        engine = Engine(task.graph, pool, mode="advanced-chat" if chat is not None else "workflow",
                        settings=self.settings, impls=IMPLS, emit=emit, services=services)
        await emit("workflow_started", {"data": {"id": task.run_id, "workflow_id": task.workflow.id,
                                                 "inputs": task.inputs, "created_at": task.created_at}})
        try:
            if speech is not None:
                speech.start(put)
            if task.preset is not None:  # input moderation: Dify's preset text instead of the graph
                await emit("text_chunk", {"data": {"text": task.preset, "from_variable_selector": None}})
                engine.outputs = {"text": task.preset}
            else:
                await engine.run()
            if task.stop_reason is not None:
                await asyncio.sleep(0)  # a stop asked for by the run's own last step lands here, as a stop
            if review is not None:
                await review.finish()  # the moderation model's last review (keywords saw every delta)
                if chat is None:  # a workflow's result is its outputs, streamed or not
                    await review.also(text_leaves(engine.outputs))
            task.status = "partial-succeeded" if engine.exceptions else "succeeded"
        except asyncio.CancelledError:
            task.status = "stopped"
            task.error = None if task.stop_reason in ("user", "moderation") else "interrupted"
            if task.stop_reason is not None:  # ours (stop, shutdown): carry on and record it
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
        except RunFailed as e:
            task.status, task.error = "failed", str(e)
        except Exception as e:
            log.exception("workflow_run_crashed")
            task.status, task.error = "failed", f"{type(e).__name__}: {e}"
        finally:
            task.closing = True
            task.outputs = engine.outputs if task.status in ("succeeded", "partial-succeeded") else {}
            if chat is None and review is not None and review.flagged:
                task.outputs = {"text": review.preset}  # as a flagged input's run: the preset is the result
            task.elapsed, task.steps, task.tokens = time.perf_counter() - started, engine.steps, engine.tokens
            task.finished_at = int(time.time())
            try:
                await asyncio.shield(self._store(task, engine))
                if chat is not None:
                    await asyncio.shield(chat.finish(task, engine))
            finally:
                try:  # the closing events; whatever happens in them, the run is over for its readers
                    if review is not None:
                        review.close()
                        if review.flagged and chat is not None:  # the answer as stored: the preset (chat.finish)
                            if speech is not None:
                                speech.replace(review.preset)
                            await emit("message_replace", {"id": chat.message_id, "answer": review.preset,
                                                           "reason": OUTPUT_REASON})
                        elif review.flagged:  # Dify's workflow event: the preset replaces the text streamed so far
                            await emit("text_replace", {"data": {"text": review.preset}})
                    if chat is not None and task.status != "failed":  # a failed chat run ends without message_end
                        await emit("message_end", {"id": chat.message_id, "metadata": chat.metadata(), "files": []})
                    await emit("workflow_finished", {"data": {
                        **task.data(), "created_by": {"id": task.end_user_id, "user": task.session_id},
                        "exceptions_count": engine.exceptions, "files": files_in(task.outputs)}})
                    if task.status == "failed":  # as Dify: the failure also as an error event, after the summary
                        await emit("error", {"code": "internal_server_error", "message": task.error, "status": 500})
                    if speech is not None:  # the rest of the audio, then tts_message_end (a stop: at once)
                        if task.status in ("succeeded", "partial-succeeded") or (review is not None
                                                                                 and review.flagged):
                            await speech.finish()  # a flagged answer's preset is read (replace, above)
                        else:
                            await speech.cancel(end=task.status == "stopped")
                finally:
                    if speech is not None:
                        speech.abort()
                    if channel is not None:
                        channel.close()
                    self.tasks.pop(task.task_id, None)
                    task.finished.set()

    async def _store(self, task: WorkflowTask, engine: Engine) -> None:
        now = utcnow()
        rows = []
        for ex in engine.executions:
            r = ex.result
            rows.append({
                "id": ex.id, "tenant_id": task.tenant_id, "app_id": task.app_id, "workflow_id": task.workflow.id,
                "workflow_run_id": task.run_id, "index": ex.index, "predecessor_node_id": ex.predecessor,
                "node_id": ex.node.id, "node_type": ex.node.type, "title": ex.node.title[:255],
                "inputs": r.inputs if r else {}, "process_data": r.process_data if r else {},
                "outputs": r.outputs if r else {}, "status": "stopped" if ex.status == "running" else ex.status,
                "error": ex.error, "elapsed_time": ex.elapsed, "execution_metadata": (r.metadata if r else {}) or {},
                "iteration_id": ex.iteration_id, "iteration_index": ex.iteration_index, "retry_index": ex.retry_index,
                "created_at": datetime.fromtimestamp(ex.created_at, tz=now.tzinfo),
                "finished_at": datetime.fromtimestamp(ex.finished_at, tz=now.tzinfo) if ex.finished_at else now})
        for attempt in range(5):
            try:
                await self.rt.db.write(*([(INSERT_EXECUTIONS, rows)] if rows else []), (FINISH_RUN, {
                    "b_id": task.run_id, "status": task.status, "outputs": task.outputs, "error": task.error,
                    "elapsed_time": task.elapsed, "total_tokens": task.tokens, "total_steps": task.steps,
                    "exceptions_count": engine.exceptions, "finished_at": now, "updated_at": now}))
                return
            except Exception:
                log.warning("workflow_store_retry", attempt=attempt, exc_info=True)
                await asyncio.sleep(0.25 * 2**attempt)
        log.error("workflow_store_failed", run_id=task.run_id)

    async def result(self, task: WorkflowTask) -> dict[str, Any]:
        await task.finished.wait()
        return {"task_id": task.task_id, "workflow_run_id": task.run_id, "data": task.data()}

    # -- control and history ---------------------------------------------------------------------------
    def stop_local(self, task_id: str, user: str, app_id: str | None) -> bool:
        task = self.tasks.get(task_id)
        if task is None or user not in (task.end_user_id, task.session_id):
            return False
        if app_id is not None and app_id != task.app_id:
            return False
        task.request_stop("user")
        return True

    async def stop(self, caller: Caller, task_id: str, user: str | None) -> None:
        session_id = require_user(user)
        app = await self.rt.app_for(caller)
        if app.mode != "workflow":
            raise not_workflow_app()
        try:
            task_id = str(uuid.UUID(task_id))
        except ValueError:
            return
        if not self.stop_local(task_id, session_id, app.id):
            await self.rt.bus.publish_json(task_stop(task_id), {"user": session_id, "app_id": app.id})

    async def get_run(self, caller: Caller, run_id: str) -> dict[str, Any]:
        app = await self.rt.app_for(caller)
        if app.mode not in GRAPH_MODES:
            raise not_workflow_app()
        rid = parse_uuid(run_id, not_found("Workflow run not found."))
        async with self.rt.db.session() as s:
            r = (await s.exec(select(WorkflowRun).where(WorkflowRun.id == rid, WorkflowRun.app_id == app.id))).first()
        if r is None:
            raise not_found("Workflow run not found.")
        return {"id": r.id, "workflow_id": r.workflow_id, "status": r.status, "inputs": r.inputs or {},
                "outputs": self.rt.files.resigned(r.outputs or {}), "error": r.error, "total_steps": r.total_steps,
                "total_tokens": r.total_tokens, "created_at": ts(r.created_at), "finished_at": ts(r.finished_at),
                "elapsed_time": r.elapsed_time}

    async def logs(self, caller: Caller, *, keyword: str | None, status: str | None, page: int, limit: int,
                   before: datetime | None, after: datetime | None, session_id: str | None,
                   account_email: str | None = None) -> dict[str, Any]:
        app = await self.rt.app_for(caller)
        if app.mode not in WORKFLOW_LOG_MODES:
            raise not_workflow_app()
        async with self.rt.db.session() as s:  # the query is shared with the console's workflow-app-logs
            return await workflow_logs(s, app.id, keyword=keyword, status=status, page=page, limit=limit,
                                       before=before, after=after, session_id=session_id,
                                       account_email=account_email)


"""advanced-chat (chatflow) apps: a conversation whose every message is a workflow run.

The user's query is ``sys.query``; answer nodes stream ``message`` events; the run ends with
``message_end`` and ``workflow_finished`` (a failed run: ``workflow_finished`` then ``error``). A
conversation keeps its inputs, its history (LLM nodes with memory see earlier turns) and its
conversation variables, which assigner nodes change and the API reads and updates (reference §2.8).
With annotation reply on, a close enough annotation answers instead of a run (docs/annotations.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, insert, update
from sqlmodel import col, select

from services.runtime import llm
from services.runtime.service.autoplay import auto_play, auto_player
from services.runtime.service.chat import INSERT_CONVERSATION, INSERT_MESSAGE, TOUCH_CONVERSATION
from services.runtime.service.errors import (
    completion_request_error,
    conversation_not_exists,
    parse_uuid,
    require_user,
)
from services.runtime.service.files import INSERT_MESSAGE_FILES
from services.runtime.service.prompt import default_name, memory_turns
from services.runtime.service.queries import users_conversations
from services.runtime.service.runs import Run
from services.runtime.workflow import logic
from services.runtime.workflow.engine import STREAMING, Engine
from services.runtime.workflow.service import WorkflowTask
from shared.db import Step
from shared.errors import ApiError, invalid_param, not_found
from shared.identity import Caller
from shared.models import Conversation, ConversationVariable, Message, new_id, ts, utcnow

if TYPE_CHECKING:
    from services.runtime.service.cache import AppEntry
    from services.runtime.service.core import Runtime

VARIABLE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
# an annotation reply calls no model: its zero usage is priced by no binding
NO_MODEL = llm.ModelBinding(provider="", model="", kwargs={})

# Core statements with values bound at execution (compiled once), as chat.py's
_VARS = ConversationVariable.__table__
INSERT_VARIABLES = insert(_VARS)
SET_VARIABLE = update(_VARS).where(_VARS.c.conversation_id == bindparam("b_conversation_id"),
                                   _VARS.c.id == bindparam("b_id"))
FINISH_MESSAGE = update(Message.__table__).where(Message.__table__.c.id == bindparam("b_id"))


@dataclass
class ChatPart:
    conversation_id: str
    message_id: str
    query: str
    dialogue_count: int
    variables: dict[str, Any]  # conversation variable name → value (the run's "conversation" root)
    types: dict[str, str]
    ids: dict[str, str]  # name → declared variable id
    history: list[tuple[str, str]] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    answer: str = ""
    rt: Any = None
    review: Any = None  # moderation.OutputReview of the answer stream (service.py feeds it every delta)
    speech: Any = None  # autoplay.AutoPlay: reads the streamed answer aloud (service.py feeds it too)

    def metadata(self) -> dict[str, Any]:
        return {"usage": self.usage, "retriever_resources": []}

    async def finish(self, task: WorkflowTask, engine: Engine) -> None:
        """Store the answer on the message and the conversation variables the run changed."""
        self.usage = _usage(engine, task.elapsed)
        self.answer = "".join(engine.answer_parts)
        status = {"succeeded": "normal", "partial-succeeded": "normal", "stopped": "stopped"}.get(task.status, "error")
        if self.review is not None and self.review.flagged:  # output moderation: the preset replaces it all
            self.answer, status = self.review.preset, "normal"  # a whole answer, as a moderated chat's
        now = utcnow()
        steps: list[Step] = [(FINISH_MESSAGE, {
            "b_id": self.message_id, "answer": self.answer, "status": status, "error": task.error,
            "usage": self.usage, "message_tokens": self.usage["prompt_tokens"],
            "answer_tokens": self.usage["completion_tokens"], "latency": task.elapsed, "updated_at": now})]
        if engine.conversation_changed:
            steps.append((SET_VARIABLE, [{"b_conversation_id": self.conversation_id, "b_id": self.ids[name],
                                          "value": value, "updated_at": now}
                                         for name, value in engine.conversation_changed.items()]))
        await self.rt.db.write(*steps)


def _usage(engine: Engine, elapsed: float) -> dict[str, Any]:
    """The run's LLM usage summed over its LLM and agent nodes, in the 12-key shape of reference §3.4."""
    prompt = completion = 0
    p_price = c_price = Decimal(0)
    unit: dict[str, Any] = {}
    for ex in engine.executions:
        u = (ex.result.outputs if ex.result else {}).get("usage") if ex.node.type in STREAMING else None
        if isinstance(u, dict):
            prompt += int(u.get("prompt_tokens") or 0)
            completion += int(u.get("completion_tokens") or 0)
            p_price += Decimal(str(u.get("prompt_price") or 0))
            c_price += Decimal(str(u.get("completion_price") or 0))
            unit = u
    return {"prompt_tokens": prompt, "prompt_unit_price": unit.get("prompt_unit_price", "0"),
            "prompt_price_unit": unit.get("prompt_price_unit", "0.000001"), "prompt_price": format(p_price, "f"),
            "completion_tokens": completion, "completion_unit_price": unit.get("completion_unit_price", "0"),
            "completion_price_unit": unit.get("completion_price_unit", "0.000001"),
            "completion_price": format(c_price, "f"), "total_tokens": prompt + completion,
            "total_price": format(p_price + c_price, "f"), "currency": "USD", "latency": round(elapsed, 3)}


class ChatflowService:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def create(self, app: AppEntry, *, session_id: str, inputs: Any, query: str,
                     conversation_id: str | None, streaming: bool, files: Any = None,
                     auto_name: bool = False, workflow_id: str | None = None) -> WorkflowTask | Run:
        """One message: a run of the published version (``workflow_id``: that one), or a direct answer."""
        started = time.perf_counter()
        wf = self.rt.workflows
        end_user_id = await self.rt.end_users.get(app.tenant_id, app.id, session_id)
        assert end_user_id is not None
        conv_id = parse_uuid(conversation_id, invalid_param("conversation_id must be a valid UUID")) \
            if conversation_id else None
        history: list[tuple[str, str]] = []
        stored: dict[str, Any] = {}
        parent_id = None
        if conv_id is not None:
            async with self.rt.db.session() as s:
                conv_inputs = (await s.exec(select(Conversation.inputs).where(
                    Conversation.id == conv_id, *users_conversations(app.id, end_user_id)))).first()
                if conv_inputs is None:
                    raise conversation_not_exists()
                rows = (await s.exec(select(Message.id, Message.query, Message.answer).where(
                    Message.conversation_id == conv_id, Message.status.in_(("normal", "stopped")))
                    .order_by(col(Message.created_at).desc(), col(Message.id).desc())
                    .limit(self.rt.settings.memory_turns))).all()
                stored = {v.id: v.value for v in (await s.exec(select(ConversationVariable).where(
                    ConversationVariable.conversation_id == conv_id))).all()}
            inputs = dict(conv_inputs)
            parent_id = rows[0][0] if rows else None
            history = memory_turns(rows)
        if conv_id is None:
            workflow, graph, cleaned = await wf.prepare(app, workflow_id, inputs, end_user_id=end_user_id)
        else:  # a conversation keeps the inputs it started with (checked and resolved then)
            workflow, graph = await wf.served(app, workflow_id)
            cleaned = inputs
        # sensitive-word moderation, from the version's features (moderation.py), before the annotation lookup
        # and the graph as chat.py orders it: a flagged request is answered with the preset, no run
        mod = await self.rt.chat.moderation.for_app(app, workflow)
        flagged, cleaned, query = await mod.check_inputs(cleaned, query) if mod is not None else (None, cleaned, query)
        system_files, file_rows = await wf.files.system(app, workflow.features, files, end_user_id) \
            if flagged is None else ([], [])  # a blocked request fetches nothing
        declared = workflow.conversation_variables or []
        variables = {v["name"]: stored.get(v["id"], v.get("value")) for v in declared}
        task = wf.new_task(app.tenant_id, app.id, workflow, graph, cleaned, end_user_id, session_id, streaming)
        task.files = system_files
        new_conversation = conv_id is None
        conv_id = conv_id or new_id()
        task.chat = ChatPart(conversation_id=conv_id, message_id=new_id(), query=query,
                             dialogue_count=len(history) + 1, variables=variables,
                             types={v["name"]: v.get("value_type", "string") for v in declared},
                             ids={v["name"]: v["id"] for v in declared}, history=history, rt=self.rt)
        # annotation reply, checked before the graph as Dify does: a hit is the answer, stored final at once,
        # and no workflow runs (no run row, no workflow events). No await while reply is off
        hit = await self.rt.annotations.match(app, query) \
            if flagged is None and app.annotation is not None else None
        direct: dict[str, Any] = {}
        if flagged is not None:
            direct = {"answer": flagged, "trace": {"moderation": {"inputs": "flagged"}}}
        elif hit is not None:
            direct = {"answer": hit.answer, "trace": {"annotation_reply": {"id": hit.id, "score": hit.score}}}
        if direct:
            usage = llm.dify_usage(NO_MODEL, 0, 0, time.perf_counter() - started)
            direct.update(status="normal", usage=usage, latency=usage["latency"], workflow_run_id=None)

        # the conversation (new, or touched), its variables and the message: one transaction with the run row
        now = utcnow()
        rows: list[Step] = []
        if new_conversation:
            rows.append((INSERT_CONVERSATION, {
                "id": conv_id, "app_id": app.id, "end_user_id": end_user_id, "mode": app.mode,
                "name": default_name(query), "inputs": cleaned, "introduction": "", "status": "normal",
                "from_source": "api", "is_deleted": False, "created_at": now, "updated_at": now}))
            if declared:
                rows.append((INSERT_VARIABLES, [{
                    "id": v["id"], "conversation_id": conv_id, "app_id": app.id, "name": v["name"],
                    "value_type": v.get("value_type", "string"), "value": v.get("value"),
                    "description": v.get("description") or "", "created_at": now, "updated_at": now}
                    for v in declared]))
        else:
            rows.append((TOUCH_CONVERSATION, {"b_id": conv_id, "updated_at": now}))
        rows.append((INSERT_MESSAGE, {
            "id": task.chat.message_id, "app_id": app.id, "conversation_id": conv_id,
            "end_user_id": end_user_id, "parent_message_id": parent_id, "task_id": task.task_id,
            "inputs": cleaned, "query": query, "answer": "", "status": "running", "error": None,
            "model_provider": None, "model_id": None, "message_tokens": 0, "answer_tokens": 0, "usage": {},
            "retriever_resources": [], "agent_thoughts": [], "trace": {}, "workflow_run_id": task.run_id,
            "latency": 0.0, "created_at": now, "updated_at": now, **direct}))
        if file_rows:  # the message's files, as chat keeps them (GET /messages, preview)
            rows.append((INSERT_MESSAGE_FILES,
                         [{**r, "id": new_id(), "message_id": task.chat.message_id} for r in file_rows]))

        tts = (workflow.features or {}).get("text_to_speech")
        speech = await auto_player(self.rt, app, tts, {
            "conversation_id": conv_id, "message_id": task.chat.message_id, "created_at": task.created_at},
            task.task_id) if streaming and auto_play(tts) else None
        if not direct:
            # the review is the run's from here: service.py feeds it every answer delta and closes it
            task.chat.review = mod.output_review() if mod is not None else None
            task.chat.speech = speech
            try:
                await wf.launch(task, before=rows)
            except BaseException:
                if task.chat.review is not None and task.task is None:  # the run never started
                    task.chat.review.close()
                raise
            if auto_name and new_conversation:  # a generated title, as chat.py names its conversations
                self.rt.helper.title_after(app, conv_id, query, task.finished,
                                           lambda: task.status in ("succeeded", "partial-succeeded", "stopped"))
            return task
        await self.rt.db.write(*rows)
        # answered like a basic chat's direct answer: `message` and `message_end`, the advanced-chat blocking body
        run = Run(task_id=task.task_id, message_id=task.chat.message_id, conversation_id=conv_id, app_id=app.id,
                  end_user_id=end_user_id, session_id=session_id, mode=app.mode, created_at=task.created_at,
                  binding=NO_MODEL, messages=[], channel=task.channel, tenant_id=app.tenant_id)
        run.usage = direct["usage"]
        if hit is not None:
            run.extra_metadata["annotation_reply"] = hit.metadata()
        run.speech = speech  # read aloud like a run's answer (autoplay.py)
        await self.rt.runs.answer_directly(run, direct["answer"])
        if auto_name and new_conversation and flagged is None:
            self.rt.helper.title_after(app, conv_id, query, run.finished, lambda: True)
        return run

    async def result(self, task: WorkflowTask) -> dict[str, Any]:
        await task.finished.wait()
        chat = task.chat
        if task.status == "failed":
            raise completion_request_error(task.error or "Workflow run failed.")
        return {"event": "message", "task_id": task.task_id, "id": chat.message_id, "message_id": chat.message_id,
                "conversation_id": chat.conversation_id, "mode": "advanced-chat",
                "answer": chat.answer, "metadata": chat.metadata(), "created_at": task.created_at}

    # -- conversation variables (reference §2.8) -------------------------------------------------------
    async def _conversation(self, caller: Caller, conversation_id: str, user: str | None) -> tuple[str, str]:
        session_id = require_user(user)
        app = await self.rt.app_for(caller)
        if app.mode != "advanced-chat":
            raise ApiError(400, "not_chat_app", "Please check if your app mode matches the right API route.")
        end_user_id = await self.rt.end_users.get(app.tenant_id, app.id, session_id, create=False)
        cid = parse_uuid(conversation_id, conversation_not_exists())
        async with self.rt.db.session() as s:
            found = end_user_id and (await s.exec(select(Conversation.id).where(
                Conversation.id == cid, *users_conversations(app.id, end_user_id)))).first()
        if not found:
            raise conversation_not_exists()
        return app.id, cid

    async def variables(self, caller: Caller, conversation_id: str, *, user: str | None, last_id: str | None,
                        limit: int, variable_name: str | None) -> dict[str, Any]:
        if not 1 <= limit <= 100:
            raise invalid_param("limit must be between 1 and 100")
        if variable_name is not None and not set(variable_name) <= VARIABLE_NAME_CHARS:
            raise invalid_param("variable_name may contain only letters, digits, '_', '.' and '-'")
        _, cid = await self._conversation(caller, conversation_id, user)
        q = select(ConversationVariable).where(ConversationVariable.conversation_id == cid)
        if variable_name:
            q = q.where(ConversationVariable.name == variable_name)
        async with self.rt.db.session() as s:
            rows = list((await s.exec(q.order_by(col(ConversationVariable.created_at),
                                                 col(ConversationVariable.id)))).all())
        if last_id:
            ids = [r.id for r in rows]
            if last_id not in ids:
                raise not_found("Last Conversation Variable Not Exists.")
            rows = rows[ids.index(last_id) + 1:]
        page = rows[:limit]
        return {"limit": limit, "has_more": len(rows) > limit, "data": [_variable_view(v) for v in page]}

    async def update_variable(self, caller: Caller, conversation_id: str, variable_id: str, *, value: Any,
                              user: str | None) -> dict[str, Any]:
        _, cid = await self._conversation(caller, conversation_id, user)
        async with self.rt.db.session() as s:
            row = (await s.exec(select(ConversationVariable).where(
                ConversationVariable.conversation_id == cid, ConversationVariable.id == variable_id))).first()
            if row is None:
                raise not_found("Conversation Variable Not Exists.")
            try:
                row.value = logic.coerce(value, row.value_type)
            except ValueError as e:
                raise ApiError(400, "bad_request", f"Type mismatch for {row.name!r} ({row.value_type}): {e}") from None
            row.updated_at = utcnow()
            await s.commit()
            await s.refresh(row)
            return _variable_view(row)


def _variable_view(v: ConversationVariable) -> dict[str, Any]:
    value = v.value if isinstance(v.value, str) else json.dumps(v.value, ensure_ascii=False)
    return {"id": v.id, "name": v.name, "value_type": v.value_type, "value": value, "description": v.description,
            "created_at": ts(v.created_at), "updated_at": ts(v.updated_at)}

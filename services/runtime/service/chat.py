"""Chat and completion messages: validate, resolve the conversation, build the prompt, start the run."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import bindparam, insert, update
from sqlmodel import select

from services.runtime import llm
from services.runtime.service import rag
from services.runtime.service.answer_cache import AnswerCache
from services.runtime.service.autoplay import auto_play, auto_player
from services.runtime.service.errors import (
    CHAT_MODES,
    app_unavailable,
    completion_request_error,
    conversation_not_exists,
    not_chat_app,
    parse_uuid,
    provider_not_initialize,
    require_user,
)
from services.runtime.service.moderation import ModerationService
from services.runtime.service.prompt import (
    chat_messages,
    completion_messages,
    context_budget,
    default_name,
    memory_turns,
)
from services.runtime.service.queries import users_conversations
from services.runtime.service.runs import Channel, Run
from shared.app_config import render_prompt, validate_inputs
from shared.db import Step
from shared.errors import invalid_param
from shared.identity import Caller
from shared.models import Conversation, Message, new_id, ts, utcnow
from shared.subjects import task_stop

if TYPE_CHECKING:
    from services.runtime.service.cache import AppEntry
    from services.runtime.service.core import Runtime
    from services.runtime.workflow.service import WorkflowTask

log = structlog.get_logger("plexus.runtime.chat")

# Core statements with values bound at execution: compiled once, no per-call ORM or cache-key work
_CONV = Conversation.__table__
INSERT_CONVERSATION = insert(_CONV)
TOUCH_CONVERSATION = update(_CONV).where(_CONV.c.id == bindparam("b_id"))  # SET from the params
INSERT_MESSAGE = insert(Message.__table__)


def gate(endpoint: str, mode: str, streaming: bool) -> None:
    """Mode gates of reference §2."""
    if endpoint == "completion":
        if mode != "completion":
            raise app_unavailable()
    elif mode == "agent-chat":
        if not streaming:
            raise invalid_param("Agent Chat App does not support blocking mode")
    elif mode not in ("chat", "advanced-chat"):
        raise not_chat_app()


class ChatService:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.moderation = ModerationService(rt.ctx, rt.egress)  # sensitive_word_avoidance (moderation.py)
        self.answers = AnswerCache(rt.ctx)  # the opt-in answer cache (answer_cache.py)

    async def create(
        self,
        caller: Caller,
        *,
        endpoint: str,
        user: str | None,
        inputs: Any,
        query: Any,
        conversation_id: str | None,
        streaming: bool,
        files: Any = None,
        auto_name: bool = False,
        workflow_id: str | None = None,
    ) -> Run | WorkflowTask:
        started = time.perf_counter()
        session_id = require_user(user)
        app = await self.rt.app_for(caller)
        gate(endpoint, app.mode, streaming)
        if inputs is None:
            raise invalid_param("inputs is required")
        if endpoint == "chat" and query is None:
            raise invalid_param("query is required")
        query = query or ""
        if app.mode == "advanced-chat":  # a workflow run per message; its files become sys.files
            return await self.rt.chatflow.create(app, session_id=session_id, inputs=inputs, query=query,
                                                 conversation_id=conversation_id, streaming=streaming,
                                                 files=files, auto_name=auto_name, workflow_id=workflow_id)
        config = app.config
        if config is None:
            raise app_unavailable()
        conv_id = None
        if endpoint == "chat" and conversation_id:
            conv_id = parse_uuid(conversation_id, invalid_param("conversation_id must be a valid UUID"))
        end_user_id = await self.rt.end_users.get(app.tenant_id, app.id, session_id)
        assert end_user_id is not None

        history: list[tuple[str, str]] = []
        parent_id = pinned = None
        message_id, task_id = new_id(), new_id()
        new_conversation = conv_id is None
        if conv_id:
            inputs, history, parent_id, pinned = await self._conversation(app, end_user_id, conv_id)
        else:
            conv_id = new_id()
        # the model-config version (a rollout's candidate or the current one), sticky per conversation
        app = app.serving(pinned, message_id if endpoint == "completion" else conv_id)
        config = app.config
        if config is None:
            raise app_unavailable()
        if new_conversation:
            inputs = validate_inputs(config, inputs)
        binding = app.binding
        if binding is None:
            raise provider_not_initialize()
        # moderation, resolved once per request: the input review now, the output review for the run
        mod = await self.moderation.for_app(app)
        # input moderation: a flagged request is answered with the preset response, without the model
        # (an api extension may rewrite the inputs and query instead: what follows uses its version)
        direct, inputs, query = await mod.check_inputs(inputs, query) if mod is not None else (None, inputs, query)
        # a generated title for a new conversation (helper_model.py); never from a flagged query
        titled = auto_name and new_conversation and endpoint == "chat" and direct is None
        # annotation reply (annotations.py): a curated answer to a close enough question, without the model
        # (checked here: a chat of an app without it costs not even an await)
        annotated = await self.rt.annotations.match(app, query) \
            if direct is None and app.annotation is not None else None
        if annotated is not None:
            direct = annotated.answer
        # taken before anything else awaits: it keeps the moderator (and its client) in use until the run ends
        review = mod.output_review() if mod is not None and direct is None else None
        try:
            direct_trace: dict[str, Any] = {"moderation": {"inputs": "flagged"}} if direct is not None else {}
            if annotated is not None:
                direct_trace = {"annotation_reply": {"id": annotated.id, "score": annotated.score}}
            # images and documents (files.py); a blocked request fetches nothing
            attached = await self.rt.files.attach(app, end_user_id, files) if direct is None else None
            prompt_query = attached.query(query) if attached else query

            prompt_inputs = inputs  # plus what the app's external data tools fetch (external_data.py)
            if direct is None and config.external_data_tools:
                prompt_inputs = await self.rt.external_data.fill(app, config.external_data_tools, inputs, query)
            system = render_prompt(config.pre_prompt, prompt_inputs)
            retrieved = rag.Retrieved()
            dc = rag.dataset_configs(config)
            if dc is not None and direct is None:
                retrieved = await rag.retrieve(self.rt.bus, app.tenant_id, dc,
                                               rag.retrieval_query(endpoint, config, inputs, query),
                                               self.rt.ctx.settings.knowledge.retrieve_timeout)
            system = rag.with_context(system, retrieved.context)
            if endpoint == "chat":
                context = binding.context_tokens or self.rt.settings.default_context_tokens
                budget = context_budget(context, binding.max_tokens)
                messages = chat_messages(system, history, prompt_query, budget)
            else:
                messages = completion_messages(system, prompt_query)
            if attached:
                messages = attached.apply(messages)
            cached = None  # the answer cache: memory-less requests of apps that opted in (answer_cache.py)
            if direct is None and not attached:
                cached = await self.answers.lookup(app, endpoint=endpoint, new_conversation=new_conversation,
                                                   query=query, inputs=inputs, system=system)
                if cached is not None and cached.answer is not None:
                    direct = cached.answer
                    direct_trace = {"answer_cache": {"hit": True, "source_message_id": cached.source_message_id}}
            direct_row: dict[str, Any] = {}
            if direct is not None:  # the message is stored final at once
                usage = llm.dify_usage(binding, 0, 0, time.perf_counter() - started)
                direct_row = {"answer": direct, "status": "normal", "usage": usage, "latency": usage["latency"],
                              "trace": {**retrieved.trace, **direct_trace}}

            now = utcnow()
            if new_conversation:
                first: Step = (INSERT_CONVERSATION, {
                    "id": conv_id, "app_id": app.id, "end_user_id": end_user_id, "mode": app.mode,
                    "name": default_name(query) if endpoint == "chat" else "", "inputs": inputs,
                    "introduction": "", "status": "normal", "from_source": "api", "is_deleted": False,
                    "model_config_id": app.config_id, "created_at": now, "updated_at": now})
            else:
                first = (TOUCH_CONVERSATION, {"b_id": conv_id, "updated_at": now})
            steps = [first, (INSERT_MESSAGE, {
                "id": message_id, "app_id": app.id, "conversation_id": conv_id, "end_user_id": end_user_id,
                "parent_message_id": parent_id, "task_id": task_id, "inputs": inputs, "query": query,
                "answer": "", "status": "running", "error": None, "model_provider": binding.provider,
                "model_id": binding.model, "message_tokens": 0, "answer_tokens": 0, "usage": {},
                "retriever_resources": retrieved.resources, "agent_thoughts": [], "trace": retrieved.trace,
                "model_config_id": app.config_id, "latency": 0.0, "created_at": now, "updated_at": now,
                **direct_row})]
            if attached and attached.rows:  # the message_files rows, committed with the message
                steps.append(attached.record(message_id))
            await self.rt.db.write(*steps)

            run = Run(
                task_id=task_id,
                message_id=message_id,
                conversation_id=conv_id,
                app_id=app.id,
                end_user_id=end_user_id,
                session_id=session_id,
                mode=app.mode,
                created_at=ts(now) or 0,
                binding=binding,
                messages=messages,
                channel=Channel() if streaming else None,
                # shown to the client only when the app's retriever_resource feature is on (Dify's default)
                retriever_resources=retrieved.resources if config.retriever_resource.enabled else [],
                tenant_id=app.tenant_id,
                agent=app.agent,
                tool_files=self.rt.files.tool_files if app.agent is not None else None,
                trace=retrieved.trace,
            )
            tts = config.text_to_speech  # auto play: a streamed answer is read aloud (autoplay.py)
            if streaming and tts.enabled and auto_play(feature := tts.model_dump()):
                run.speech = await auto_player(self.rt, app, feature, run.envelope("tts_message"), run.task_id)
            if direct is not None:
                run.usage = direct_row["usage"]
                if cached is not None:
                    run.extra_metadata["cache_hit"] = True
                if annotated is not None:
                    run.extra_metadata["annotation_reply"] = annotated.metadata()
                if review is not None:  # an answer-cache hit: no model, nothing to review
                    review.close()
                await self.rt.runs.answer_directly(run, direct)
            else:
                run.cache = cached
                run.review = review
                self.rt.runs.start(run)
            if titled:
                self.rt.helper.title_after(app, conv_id, query, run.finished,
                                           lambda: run.status in ("normal", "stopped"))
            return run
        except BaseException:
            if review is not None:
                review.close()
            raise

    async def _conversation(
        self, app: AppEntry, end_user_id: str, conv_id: str
    ) -> tuple[dict[str, Any], list[tuple[str, str]], str | None, str | None]:
        """The stored inputs, the memory turns (oldest first), the newest message id and the model-config
        version of a conversation."""
        async with self.rt.db.session() as s:
            found = (
                await s.exec(
                    select(Conversation.inputs, Conversation.model_config_id).where(
                        Conversation.id == conv_id, *users_conversations(app.id, end_user_id)
                    )
                )
            ).first()
            if found is None:
                raise conversation_not_exists()
            inputs, pinned = found
            rows = (
                await s.exec(
                    select(Message.id, Message.query, Message.answer)
                    .where(Message.conversation_id == conv_id, Message.status.in_(("normal", "stopped")))
                    .order_by(Message.created_at.desc(), Message.id.desc())
                    .limit(self.rt.settings.memory_turns)
                )
            ).all()
        parent_id = rows[0][0] if rows else None
        history = memory_turns(rows)
        return dict(inputs or {}), history, parent_id, pinned

    async def result(self, run: Run) -> dict[str, Any]:
        """Blocking mode: the same run, collected. A client that goes away does not stop the run."""
        await run.finished.wait()
        if run.status == "error":
            raise completion_request_error(run.error or "Completion request failed.")
        return run.blocking_body()

    async def stop(self, caller: Caller, *, endpoint: str, task_id: str, user: str | None) -> None:
        """Stop a run wherever it runs; unknown tasks and other users' tasks are silently ignored."""
        session_id = require_user(user)
        app = await self.rt.app_for(caller)
        if endpoint == "completion":
            if app.mode != "completion":
                raise app_unavailable()
        elif app.mode not in CHAT_MODES:
            raise not_chat_app()
        try:
            task_id = str(uuid.UUID(task_id))
        except ValueError:
            return  # never a task of ours, and not safe to put into a subject
        if not self.rt.runs.stop(task_id, session_id, app.id) and \
                not self.rt.workflows.stop_local(task_id, session_id, app.id):
            # not ours (or not this user's): the owning replica decides
            await self.rt.bus.publish_json(task_stop(task_id), {"user": session_id, "app_id": app.id})

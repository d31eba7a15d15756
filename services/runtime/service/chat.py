"""Chat and completion messages: validate, resolve the conversation, build the prompt, start the run."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, insert, update
from sqlmodel import select

from services.runtime.service import rag
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
from services.runtime.service.prompt import chat_messages, completion_messages, context_budget, default_name
from services.runtime.service.queries import users_conversations
from services.runtime.service.runs import Channel, Run
from shared.app_config import render_prompt, validate_inputs
from shared.errors import invalid_param
from shared.identity import Caller
from shared.models import Conversation, Message, new_id, ts, utcnow
from shared.subjects import task_stop

if TYPE_CHECKING:
    from services.runtime.service.cache import AppEntry
    from services.runtime.service.core import Runtime
    from services.runtime.workflow.service import WorkflowTask

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
    ) -> Run | WorkflowTask:
        session_id = require_user(user)
        app = await self.rt.app_for(caller)
        gate(endpoint, app.mode, streaming)
        if inputs is None:
            raise invalid_param("inputs is required")
        if endpoint == "chat" and query is None:
            raise invalid_param("query is required")
        query = query or ""
        if app.mode == "advanced-chat":  # a workflow run per message
            return await self.rt.chatflow.create(app, session_id=session_id, inputs=inputs, query=query,
                                                 conversation_id=conversation_id, streaming=streaming)
        config = app.config
        if config is None:
            raise app_unavailable()
        conv_id = None
        if endpoint == "chat" and conversation_id:
            conv_id = parse_uuid(conversation_id, invalid_param("conversation_id must be a valid UUID"))
        end_user_id = await self.rt.end_users.get(app.tenant_id, app.id, session_id)
        assert end_user_id is not None

        history: list[tuple[str, str]] = []
        parent_id = None
        if conv_id:
            inputs, history, parent_id = await self._conversation(app, end_user_id, conv_id)
        else:
            inputs = validate_inputs(config, inputs)
        binding = app.binding
        if binding is None:
            raise provider_not_initialize()

        system = render_prompt(config.pre_prompt, inputs)
        retrieved = rag.Retrieved()
        dc = rag.dataset_configs(config)
        if dc is not None:
            retrieved = await rag.retrieve(self.rt.bus, app.tenant_id, dc,
                                           rag.retrieval_query(endpoint, config, inputs, query),
                                           self.rt.ctx.settings.knowledge.retrieve_timeout)
        system = rag.with_context(system, retrieved.context)
        if endpoint == "chat":
            context = binding.context_tokens or self.rt.settings.default_context_tokens
            messages = chat_messages(system, history, query, context_budget(context, binding.max_tokens))
        else:
            messages = completion_messages(system, query)

        now = utcnow()
        message_id, task_id = new_id(), new_id()
        async with self.rt.db.session() as s:
            if conv_id is None:
                conv_id = new_id()
                await s.exec(
                    INSERT_CONVERSATION,
                    params={
                        "id": conv_id,
                        "app_id": app.id,
                        "end_user_id": end_user_id,
                        "mode": app.mode,
                        "name": default_name(query) if endpoint == "chat" else "",
                        "inputs": inputs,
                        "introduction": "",
                        "status": "normal",
                        "from_source": "api",
                        "is_deleted": False,
                        "created_at": now,
                        "updated_at": now,
                    },
                )
            else:
                await s.exec(TOUCH_CONVERSATION, params={"b_id": conv_id, "updated_at": now})
            await s.exec(
                INSERT_MESSAGE,
                params={
                    "id": message_id,
                    "app_id": app.id,
                    "conversation_id": conv_id,
                    "end_user_id": end_user_id,
                    "parent_message_id": parent_id,
                    "task_id": task_id,
                    "inputs": inputs,
                    "query": query,
                    "answer": "",
                    "status": "running",
                    "error": None,
                    "model_provider": binding.provider,
                    "model_id": binding.model,
                    "message_tokens": 0,
                    "answer_tokens": 0,
                    "usage": {},
                    "retriever_resources": retrieved.resources,
                    "agent_thoughts": [],
                    "trace": retrieved.trace,
                    "latency": 0.0,
                    "created_at": now,
                    "updated_at": now,
                },
            )
            await s.commit()

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
            trace=retrieved.trace,
        )
        self.rt.runs.start(run)
        return run

    async def _conversation(
        self, app: AppEntry, end_user_id: str, conv_id: str
    ) -> tuple[dict[str, Any], list[tuple[str, str]], str | None]:
        """The stored inputs, the memory turns (oldest first) and the newest message id of a conversation."""
        async with self.rt.db.session() as s:
            inputs = (
                await s.exec(
                    select(Conversation.inputs).where(
                        Conversation.id == conv_id, *users_conversations(app.id, end_user_id)
                    )
                )
            ).first()
            if inputs is None:
                raise conversation_not_exists()
            rows = (
                await s.exec(
                    select(Message.id, Message.query, Message.answer)
                    .where(Message.conversation_id == conv_id, Message.status.in_(("normal", "stopped")))
                    .order_by(Message.created_at.desc(), Message.id.desc())
                    .limit(self.rt.settings.memory_turns)
                )
            ).all()
        parent_id = rows[0][0] if rows else None
        history = [(q, a) for _, q, a in reversed(rows) if a]
        return dict(inputs), history, parent_id

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

"""Conversations, messages and feedback of one (app, end user), plus the app's public views."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import and_, delete, insert, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from services.runtime.service.errors import (
    CHAT_MODES,
    DEFAULT_USER,
    app_unavailable,
    conversation_not_exists,
    message_not_exists,
    not_chat_app,
    parse_uuid,
    require_user,
)
from shared.app_config import graph_parameters_view, parameters_view
from shared.errors import invalid_param, not_found
from shared.identity import Caller
from shared.models import Conversation, Message, MessageFeedback, new_id, ts, utcnow
from shared.tags import tag_names
from shared.workflow import GRAPH_MODES

if TYPE_CHECKING:
    from services.runtime.service.cache import AppEntry
    from services.runtime.service.core import Runtime

log = structlog.get_logger("plexus.runtime.queries")

SORT_FIELDS = {"created_at": Conversation.created_at, "updated_at": Conversation.updated_at}
RATINGS = ("like", "dislike")


def _limit(limit: int) -> int:
    if not 1 <= limit <= 100:
        raise invalid_param("limit must be between 1 and 100")
    return limit


def conversation_view(c: Any) -> dict[str, Any]:
    return {
        "id": c.id,
        "name": c.name,
        "inputs": c.inputs or {},
        "status": "normal",
        "introduction": c.introduction or "",
        "created_at": ts(c.created_at),
        "updated_at": ts(c.updated_at),
    }


def message_view(m: Message, rating: str | None) -> dict[str, Any]:
    return {
        "id": m.id,
        "conversation_id": m.conversation_id,
        "parent_message_id": m.parent_message_id,
        "inputs": m.inputs or {},
        "query": m.query,
        "answer": m.answer,
        "message_files": [],
        "feedback": {"rating": rating} if rating else None,
        "retriever_resources": m.retriever_resources or [],
        "agent_thoughts": m.agent_thoughts or [],
        "created_at": ts(m.created_at),
        "status": "error" if m.status == "error" else "normal",  # stopped (and a live run) show as normal
        "error": m.error,
    }



def users_conversations(app_id: str, end_user_id: str) -> tuple:
    """The filter every conversation lookup uses: this app's, this end user's, not deleted."""
    return (
        Conversation.app_id == app_id,
        Conversation.end_user_id == end_user_id,
        Conversation.is_deleted.is_(False),
    )

class HistoryService:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def _chat_app(self, caller: Caller) -> AppEntry:
        app = await self.rt.app_for(caller)
        if app.mode not in CHAT_MODES:
            raise not_chat_app()
        return app

    async def _user(self, app: AppEntry, user: str | None, create: bool = False) -> str | None:
        return await self.rt.end_users.get(app.tenant_id, app.id, user or DEFAULT_USER, create=create)

    async def _conversation(
        self, s: Any, app: AppEntry, end_user_id: str | None, conversation_id: str
    ) -> Conversation:
        conv_id = parse_uuid(conversation_id, conversation_not_exists())
        conv = None
        if end_user_id is not None:
            conv = (
                await s.exec(
                    select(Conversation).where(
                        Conversation.id == conv_id, *users_conversations(app.id, end_user_id)
                    )
                )
            ).first()
        if conv is None:
            raise conversation_not_exists()
        return conv

    # -- messages ---------------------------------------------------------------------------------
    async def messages(
        self,
        caller: Caller,
        *,
        user: str | None,
        conversation_id: str | None,
        first_id: str | None,
        limit: int,
    ) -> dict[str, Any]:
        app = await self._chat_app(caller)
        if not conversation_id:
            raise invalid_param("conversation_id is required")
        _limit(limit)
        end_user_id = await self._user(app, user)
        async with self.rt.db.session() as s:
            conv = await self._conversation(s, app, end_user_id, conversation_id)
            q = select(Message).where(Message.conversation_id == conv.id)
            if first_id:
                first = None
                fid = parse_uuid(first_id, not_found("First Message Not Exists."))
                first = (
                    await s.exec(
                        select(Message.created_at, Message.id).where(
                            Message.id == fid, Message.conversation_id == conv.id
                        )
                    )
                ).first()
                if first is None:
                    raise not_found("First Message Not Exists.")
                q = q.where(
                    or_(
                        Message.created_at < first[0],
                        and_(Message.created_at == first[0], Message.id < first[1]),
                    )
                )
            rows = list(
                (
                    await s.exec(q.order_by(Message.created_at.desc(), Message.id.desc()).limit(limit + 1))
                ).all()
            )
            has_more = len(rows) > limit
            rows = rows[:limit]
            ratings: dict[str, str] = {}
            files = await self.rt.files.message_files(s, [m.id for m in rows])
            if rows:
                ratings = dict(
                    (
                        await s.exec(
                            select(MessageFeedback.message_id, MessageFeedback.rating).where(
                                MessageFeedback.message_id.in_([m.id for m in rows]),
                                MessageFeedback.from_end_user_id == end_user_id,
                            )
                        )
                    ).all()
                )
        rows.reverse()  # newest page first, oldest → newest inside it
        return {
            "limit": limit,
            "has_more": has_more,
            "data": [{**message_view(m, ratings.get(m.id)), "message_files": files.get(m.id, [])}
                     for m in rows],
        }

    async def feedback(
        self, caller: Caller, message_id: str, *, rating: str | None, user: str | None, content: str | None
    ) -> None:
        session_id = require_user(user)
        if rating is not None and rating not in RATINGS:
            raise invalid_param("rating must be one of like, dislike or null")
        app = await self.rt.app_for(caller)
        end_user_id = await self._user(app, session_id)
        mid = parse_uuid(message_id, message_not_exists())
        async with self.rt.db.session() as s:
            msg = None
            if end_user_id is not None:
                msg = (
                    await s.exec(
                        select(Message.id, Message.conversation_id).where(
                            Message.id == mid, Message.app_id == app.id, Message.end_user_id == end_user_id
                        )
                    )
                ).first()
            if msg is None:
                raise message_not_exists()
            where = (MessageFeedback.message_id == mid, MessageFeedback.from_end_user_id == end_user_id)
            existing = (await s.exec(select(MessageFeedback.id).where(*where))).first()
            now = utcnow()
            if rating is None:
                if existing is None:
                    raise invalid_param("rating cannot be None when feedback not exists")
                await s.exec(delete(MessageFeedback).where(MessageFeedback.id == existing))
            elif existing is None:
                try:
                    await s.exec(
                        insert(MessageFeedback).values(
                            id=new_id(),
                            app_id=app.id,
                            conversation_id=msg[1],
                            message_id=mid,
                            rating=rating,
                            content=content,
                            from_source="api",
                            from_end_user_id=end_user_id,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                    await s.commit()
                    return
                except IntegrityError:  # a concurrent first feedback won: update it instead
                    await s.rollback()
                    await s.exec(
                        update(MessageFeedback)
                        .where(*where)
                        .values(rating=rating, content=content, updated_at=now)
                    )
            else:
                await s.exec(
                    update(MessageFeedback)
                    .where(MessageFeedback.id == existing)
                    .values(rating=rating, content=content, updated_at=now)
                )
            await s.commit()

    # -- conversations ----------------------------------------------------------------------------
    async def conversations(
        self, caller: Caller, *, user: str | None, last_id: str | None, limit: int, sort_by: str
    ) -> dict[str, Any]:
        app = await self._chat_app(caller)
        _limit(limit)
        desc = sort_by.startswith("-")
        column = SORT_FIELDS.get(sort_by.lstrip("-"))
        if column is None or sort_by.count("-") > 1:
            raise invalid_param("sort_by must be one of created_at, -created_at, updated_at, -updated_at")
        end_user_id = await self._user(app, user)
        if end_user_id is None:
            if last_id:
                raise not_found("Last Conversation Not Exists.")
            return {"limit": limit, "has_more": False, "data": []}
        scope = (*users_conversations(app.id, end_user_id), Conversation.from_source == "api")
        async with self.rt.db.session() as s:
            q = select(Conversation).where(*scope)
            if last_id:
                lid = parse_uuid(last_id, not_found("Last Conversation Not Exists."))
                last = (
                    await s.exec(select(column, Conversation.id).where(Conversation.id == lid, *scope))
                ).first()
                if last is None:
                    raise not_found("Last Conversation Not Exists.")
                if desc:
                    q = q.where(or_(column < last[0], and_(column == last[0], Conversation.id < last[1])))
                else:
                    q = q.where(or_(column > last[0], and_(column == last[0], Conversation.id > last[1])))
            order = (column.desc(), Conversation.id.desc()) if desc else (column.asc(), Conversation.id.asc())
            rows = list((await s.exec(q.order_by(*order).limit(limit + 1))).all())
        has_more = len(rows) > limit
        return {"limit": limit, "has_more": has_more, "data": [conversation_view(c) for c in rows[:limit]]}

    async def delete_conversation(self, caller: Caller, conversation_id: str, *, user: str | None) -> None:
        app = await self._chat_app(caller)
        end_user_id = await self._user(app, user)
        async with self.rt.db.session() as s:
            conv = await self._conversation(s, app, end_user_id, conversation_id)
            # soft delete: its messages stay for the operator's logs
            await s.exec(
                update(Conversation)
                .where(Conversation.id == conv.id)
                .values(is_deleted=True, updated_at=utcnow())
            )
            await s.commit()

    async def rename_conversation(
        self, caller: Caller, conversation_id: str, *, name: str | None, auto_generate: bool, user: str | None
    ) -> dict[str, Any]:
        app = await self._chat_app(caller)
        if not auto_generate and (name is None or not name.strip()):
            raise invalid_param("name is required when auto_generate is false")
        end_user_id = await self._user(app, user)
        async with self.rt.db.session() as s:
            conv = await self._conversation(s, app, end_user_id, conversation_id)
            if auto_generate:
                first_query = (
                    await s.exec(
                        select(Message.query)
                        .where(Message.conversation_id == conv.id)
                        .order_by(Message.created_at.asc())
                        .limit(1)
                    )
                ).first()
                new_name = await self.rt.helper.title(app, first_query) if first_query else conv.name
            else:
                new_name = name.strip()[:255]  # type: ignore[union-attr]
            conv.name = new_name
            conv.updated_at = utcnow()
            await s.commit()
            return conversation_view(conv)

    # -- app views --------------------------------------------------------------------------------
    async def parameters(self, caller: Caller) -> dict[str, Any]:
        app = await self.rt.app_for(caller)
        if app.mode in GRAPH_MODES:  # the start node's form and the published workflow's features
            variables, features = await self.rt.workflows.published(app)
            view = graph_parameters_view(variables, features, self.rt.files.system_parameters())
        elif app.config is None:
            raise app_unavailable()
        else:
            view = parameters_view(app.config, self.rt.files.system_parameters())
        # the app's annotation reply setting (annotations.py), not the model config, says whether it is on
        view["annotation_reply"] = {"enabled": app.annotation is not None}
        return view

    async def info(self, caller: Caller) -> dict[str, Any]:
        app = await self.rt.app_for(caller)
        # The app's tag names, read per request (one indexed query) rather than kept in the app cache: a tag
        # change then needs no invalidation (a rename or delete touches every app carrying the tag), and this
        # route is no hot path.
        async with self.rt.db.session() as s:
            names = await tag_names(s, app.tenant_id, "app", app.id)
        return {
            "name": app.name,
            "description": app.description,
            "tags": names,
            "mode": app.mode,
            "author_name": app.author_name,
        }

    async def meta(self, caller: Caller) -> dict[str, Any]:
        app = await self.rt.app_for(caller)
        tools = app.agent.tools if app.agent is not None else ()
        return {"tool_icons": {t.tool_name: t.icon for t in tools}}

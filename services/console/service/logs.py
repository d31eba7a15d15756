"""An app's logs for its operators (Dify's console log pages): conversations with their summary, message count
and feedback, a conversation's messages in full (tokens, latency, the model-config version that answered), and
workflow runs. The runtime writes these tables; the console only reads them through the shared models.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.console.service.common import Principal, get_app
from shared.db import Database
from shared.errors import ApiError, invalid_param, not_found, parse_uuid
from shared.files import file_view
from shared.models import App, Conversation, EndUser, Message, MessageFeedback, MessageFile, ts
from shared.workflow.logs import WORKFLOW_LOG_MODES, contains, workflow_logs

CHAT_MODES = ("chat", "agent-chat", "advanced-chat")
SORT_FIELDS = {"created_at": Conversation.created_at, "updated_at": Conversation.updated_at}
TIME_FORMAT = "%Y-%m-%d %H:%M"  # Dify's start / end filters


def _wrong_mode(code: str) -> ApiError:
    # the service API's codes for a route that does not fit the app mode (reference §1.2)
    return ApiError(400, code, "Please check if your app mode matches the right API route.")


async def _app(s: AsyncSession, p: Principal, app_id: str, modes: tuple[str, ...], code: str) -> App:
    app = await get_app(s, p.tenant_id, app_id)
    if app.mode not in modes:
        raise _wrong_mode(code)
    return app


def _minute(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.strptime(value.strip(), TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise invalid_param(f"{name} must be formatted as YYYY-MM-DD HH:MM", params=name) from None


def _after(minute: datetime | None) -> datetime | None:
    """The instant after ``minute`` ends (the end minute counts whole); None for 9999-12-31 23:59, the last
    minute a datetime holds: nothing is later, so no bound (as Dify, which takes it)."""
    try:
        return minute + timedelta(minutes=1) if minute is not None else None
    except OverflowError:
        return None


# ---- conversations ------------------------------------------------------------------------------------


async def conversations(db: Database, p: Principal, app_id: str, *, completion: bool, page: int, limit: int,
                        keyword: str | None, start: str | None, end: str | None, sort_by: str) -> dict[str, Any]:
    """A page of the app's conversations (deleted ones excluded, as Dify). ``keyword`` matches the name, the end
    user's session id, or any message's query or answer; ``start``/``end`` are whole minutes in UTC, inclusive,
    on the column ``sort_by`` names (as Dify)."""
    desc = sort_by.startswith("-")
    column = SORT_FIELDS.get(sort_by.removeprefix("-"))
    if column is None:
        raise invalid_param("sort_by must be one of created_at, -created_at, updated_at, -updated_at",
                            params="sort_by")
    since, before = _minute(start, "start"), _after(_minute(end, "end"))
    async with db.session() as s:
        if completion:
            app = await _app(s, p, app_id, ("completion",), "not_completion_app")
        else:
            app = await _app(s, p, app_id, CHAT_MODES, "not_chat_app")
        where: list[Any] = [Conversation.app_id == app.id, col(Conversation.is_deleted).is_(False)]
        if since is not None:
            where.append(column >= since)
        if before is not None:
            where.append(column < before)
        if keyword:
            matching = select(Message.conversation_id).where(
                Message.app_id == app.id, or_(contains(Message.query, keyword), contains(Message.answer, keyword)))
            where.append(or_(contains(Conversation.name, keyword), contains(EndUser.session_id, keyword),
                             col(Conversation.id).in_(matching)))
        q = (select(Conversation, EndUser.session_id)
             .join(EndUser, EndUser.id == Conversation.end_user_id, isouter=True).where(*where))
        total = (await s.exec(select(func.count()).select_from(q.subquery()))).one()
        order = (column.desc(), col(Conversation.id).desc()) if desc else (column.asc(), col(Conversation.id).asc())
        rows = (await s.exec(q.order_by(*order).offset((page - 1) * limit).limit(limit))).all()
        ids = [c.id for c, _ in rows]
        counts, stats, firsts = await _conversation_facts(s, app.id, ids)
    data = []
    for c, session_id in rows:
        first = firsts.get(c.id)
        item = {
            "id": c.id, "status": c.status, "from_source": c.from_source, "from_end_user_id": c.end_user_id,
            "from_end_user_session_id": session_id, "from_account_id": None, "from_account_name": None,
            "name": c.name, "summary": first.query if first else "", "read_at": None,
            "message_count": counts.get(c.id, 0),
            "user_feedback_stats": stats.get(c.id, {"like": 0, "dislike": 0}),
            "admin_feedback_stats": {"like": 0, "dislike": 0},  # the console gives no feedback (yet)
            "annotated": False, "model_config_id": c.model_config_id,
            "created_at": ts(c.created_at), "updated_at": ts(c.updated_at),
        }
        if completion:  # Dify's completion log rows carry their (single) message
            item["message"] = ({"id": first.id, "inputs": first.inputs or {}, "query": first.query,
                                "answer": first.answer} if first else None)
        data.append(item)
    return {"page": page, "limit": limit, "total": total, "has_more": page * limit < total, "data": data}


async def _conversation_facts(s: AsyncSession, app_id: str, ids: list[str]) -> tuple[dict, dict, dict]:
    """Per conversation (of app ``app_id``): its message count, the end users' feedback counts, and its first
    message."""
    if not ids:
        return {}, {}, {}
    counts = dict((await s.exec(select(Message.conversation_id, func.count())
                                .where(col(Message.conversation_id).in_(ids))
                                .group_by(Message.conversation_id))).all())
    stats: dict[str, dict[str, int]] = {}
    for conv_id, rating, n in (await s.exec(
            select(MessageFeedback.conversation_id, MessageFeedback.rating, func.count())
            .where(MessageFeedback.app_id == app_id, col(MessageFeedback.conversation_id).in_(ids),
                   col(MessageFeedback.from_end_user_id).isnot(None))
            .group_by(MessageFeedback.conversation_id, MessageFeedback.rating))).all():
        if rating in ("like", "dislike"):
            stats.setdefault(conv_id, {"like": 0, "dislike": 0})[rating] = n
    # the first message of each: one row per conversation, not all of its messages
    rank = func.row_number().over(partition_by=Message.conversation_id,
                                  order_by=(col(Message.created_at).asc(), col(Message.id).asc())).label("rank")
    ranked = select(Message.id, rank).where(col(Message.conversation_id).in_(ids)).subquery()
    firsts = {m.conversation_id: m for m in (await s.exec(
        select(Message).join(ranked, ranked.c.id == Message.id).where(ranked.c.rank == 1))).all()}
    return counts, stats, firsts


# ---- messages -----------------------------------------------------------------------------------------


def message_view(m: Message, feedbacks: list[dict[str, Any]], files: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": m.id, "conversation_id": m.conversation_id, "parent_message_id": m.parent_message_id,
        "inputs": m.inputs or {}, "query": m.query, "answer": m.answer,
        "status": "error" if m.status == "error" else "normal",  # as GET /v1/messages: stopped shows as normal
        "error": m.error, "message_tokens": m.message_tokens, "answer_tokens": m.answer_tokens,
        "latency": m.latency, "provider_response_latency": m.latency,  # Dify's console name for it
        "model_provider": m.model_provider, "model_id": m.model_id, "model_config_id": m.model_config_id,
        "from_source": "api", "from_end_user_id": m.end_user_id, "from_account_id": None,
        "feedbacks": feedbacks, "annotation": None, "retriever_resources": m.retriever_resources or [],
        "agent_thoughts": m.agent_thoughts or [], "message_files": files, "workflow_run_id": m.workflow_run_id,
        "created_at": ts(m.created_at),
    }


async def messages(db: Database, p: Principal, app_id: str, *, conversation_id: str | None, first_id: str | None,
                   limit: int, files_base: str) -> dict[str, Any]:
    """A conversation's messages, Dify's paging: the newest ``limit`` before ``first_id`` (or the newest),
    oldest first within the page."""
    if not conversation_id:
        raise invalid_param("conversation_id is required", params="conversation_id")
    gone = not_found("Conversation Not Exists.")
    conv_id = parse_uuid(conversation_id, gone)
    async with db.session() as s:
        app = await _app(s, p, app_id, CHAT_MODES, "not_chat_app")
        conv = (await s.exec(select(Conversation.id).where(Conversation.id == conv_id,
                                                           Conversation.app_id == app.id))).first()
        if conv is None:
            raise gone
        q = select(Message).where(Message.conversation_id == conv_id)
        if first_id:
            missing = not_found("First Message Not Exists.")
            first = (await s.exec(select(Message.created_at, Message.id).where(
                Message.id == parse_uuid(first_id, missing), Message.conversation_id == conv_id))).first()
            if first is None:
                raise missing
            q = q.where(or_(col(Message.created_at) < first[0],
                            and_(col(Message.created_at) == first[0], col(Message.id) < first[1])))
        rows = list((await s.exec(q.order_by(col(Message.created_at).desc(), col(Message.id).desc())
                                  .limit(limit + 1))).all())
        has_more = len(rows) > limit
        rows = rows[:limit]
        ids = [m.id for m in rows]
        feedbacks: dict[str, list[dict[str, Any]]] = {}
        files: dict[str, list[dict[str, Any]]] = {}
        if ids:
            for f in (await s.exec(select(MessageFeedback).where(col(MessageFeedback.message_id).in_(ids))
                                   .order_by(col(MessageFeedback.created_at)))).all():
                feedbacks.setdefault(f.message_id, []).append(
                    {"rating": f.rating, "content": f.content, "from_source": f.from_source,
                     "from_end_user_id": f.from_end_user_id, "from_account": None})
            for f in (await s.exec(select(MessageFile).where(col(MessageFile.message_id).in_(ids))
                                   .order_by(col(MessageFile.created_at), col(MessageFile.id)))).all():
                files.setdefault(f.message_id, []).append(file_view(f, files_base))
    rows.reverse()
    return {"limit": limit, "has_more": has_more,
            "data": [message_view(m, feedbacks.get(m.id, []), files.get(m.id, [])) for m in rows]}


# ---- workflow runs --------------------------------------------------------------------------------------


async def workflow_app_logs(db: Database, p: Principal, app_id: str, **filters: Any) -> dict[str, Any]:
    """The same page as the public GET /v1/workflows/logs (shared/workflow/logs.py)."""
    async with db.session() as s:
        app = await _app(s, p, app_id, WORKFLOW_LOG_MODES, "not_workflow_app")
        return await workflow_logs(s, app.id, **filters)

"""The app's smaller service-API views: suggested follow-up questions (reference §2.7), the app's feedback
list (§2.6 ``GET /app/feedbacks``), its web-app site settings (§2.12) and one of its end users (Dify's newest
``GET /end-users/{id}``, §2.15)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from sqlmodel import col, select

from services.runtime import llm
from services.runtime.service.errors import (
    CHAT_MODES,
    app_unavailable,
    completion_request_error,
    message_not_exists,
    not_chat_app,
    parse_uuid,
    provider_not_initialize,
    require_user,
)
from services.runtime.thinking import without_thinking
from shared.errors import ApiError, forbidden, invalid_param, not_found
from shared.identity import Caller
from shared.models import EndUser, Message, MessageFeedback

if TYPE_CHECKING:
    from services.runtime.service.cache import AppEntry
    from services.runtime.service.core import Runtime

log = structlog.get_logger("plexus.runtime.app_extras")

# Dify's instruction (LLMGenerator.generate_suggested_questions_after_answer), asking for the conversation's
# language explicitly: the model otherwise tends to answer in the language of the instruction.
SUGGESTED_QUESTIONS_PROMPT = (
    "Please help me predict the three most likely questions that the human would ask next, "
    "keeping each question short (under 20 words).\n"
    "MAKE SURE your output is in the SAME language as the conversation above, in particular as the "
    "Assistant's latest response (if it is written in Chinese, your questions must be in Chinese).\n"
    "The output must be a JSON array of strings following this schema, and nothing else:\n"
    '["question1","question2","question3"]\n'
)
SUGGESTED_TURNS = 3  # the conversation's last messages (up to and including the one asked about) shown
SUGGESTED_CHARS = 2000  # per query or answer: a long answer would cost tokens without helping much
SUGGESTED_MAX_TOKENS = 256
SUGGESTED_COUNT = 3
FEEDBACKS_MAX_LIMIT = 101  # Dify's int_range(1, 101)
FEEDBACKS_MAX_PAGE = 1_000_000  # keeps the offset inside a 64-bit integer

_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")


def suggested_disabled() -> ApiError:
    # Dify 1.x's answer, the one the SDKs expect (newer Dify: 403 app_suggested_questions_after_answer_disabled)
    return ApiError(400, "bad_request", "Suggested Questions Is Disabled.")


def parse_questions(text: str) -> list[str]:
    """The questions in a model's reply: the first JSON array of strings anywhere in it, else its non-empty
    lines without bullets, numbering, quotes or code fences; stripped, at most three."""
    decoder = json.JSONDecoder()
    found: list[str] | None = None
    for m in re.finditer(r"\[", text):
        try:
            value, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            continue
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            found = value
            if any(v.strip() for v in value):
                break  # else keep looking: an empty array is the answer only if no other comes
    if found is None:
        found = []
        for line in text.splitlines():
            line = _BULLET.sub("", line.strip()).strip().strip('"“”\'').strip().rstrip(",").strip().strip('"')
            if not line or line.startswith("```") or line in ("[", "]"):
                continue
            found.append(line)
    return [q for q in (v.strip() for v in found) if q][:SUGGESTED_COUNT]


def suggested_messages(turns: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """One user message: the conversation (oldest first) as Human/Assistant lines, then the instruction."""
    lines = []
    for query, answer in turns:
        lines.append(f"Human: {query[:SUGGESTED_CHARS]}")
        lines.append(f"Assistant: {answer[:SUGGESTED_CHARS]}")
    return [{"role": "user", "content": "\n".join(lines) + "\n\n" + SUGGESTED_QUESTIONS_PROMPT}]


def iso(dt: datetime) -> str:
    """Dify's ``isoformat()`` of its naive UTC timestamps."""
    return (dt.astimezone(UTC) if dt.tzinfo else dt).replace(tzinfo=None).isoformat()


def feedback_view(f: MessageFeedback) -> dict[str, Any]:
    return {
        "id": f.id,
        "app_id": f.app_id,
        "conversation_id": f.conversation_id,
        "message_id": f.message_id,
        "rating": f.rating,
        "content": f.content,
        "from_source": f.from_source,
        "from_end_user_id": f.from_end_user_id,
        "from_account_id": None,  # feedback comes from end users only here (no console feedback)
        "created_at": iso(f.created_at),
        "updated_at": iso(f.updated_at),
    }


def iso_z(dt: datetime) -> str:
    """A UTC timestamp as Dify's newer response models write it: ``2024-01-16T12:00:29Z``."""
    return (dt.astimezone(UTC) if dt.tzinfo else dt).strftime("%Y-%m-%dT%H:%M:%SZ")


def end_user_not_found() -> ApiError:
    return not_found("End user not found.")


class AppExtras:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    # -- suggested questions ---------------------------------------------------------------------------
    async def suggested(self, caller: Caller, message_id: str, *, user: str | None) -> list[str]:
        session_id = require_user(user)
        app = await self.rt.app_for(caller)
        if app.mode not in CHAT_MODES:
            raise not_chat_app()
        end_user_id = await self.rt.end_users.get(app.tenant_id, app.id, session_id, create=False)
        mid = parse_uuid(message_id, message_not_exists())
        if end_user_id is None:
            raise message_not_exists()
        async with self.rt.db.session() as s:
            msg = (await s.exec(select(Message.conversation_id, Message.created_at).where(
                Message.id == mid, Message.app_id == app.id, Message.end_user_id == end_user_id))).first()
        if msg is None:
            raise message_not_exists()
        enabled, binding = await self._suggest_settings(app)
        if not enabled:
            raise suggested_disabled()
        async with self.rt.db.session() as s:
            rows = (await s.exec(
                select(Message.query, Message.answer)
                .where(Message.conversation_id == msg[0], Message.created_at <= msg[1])
                .order_by(col(Message.created_at).desc(), col(Message.id).desc())
                .limit(SUGGESTED_TURNS))).all()
        if binding is None:
            raise provider_not_initialize()
        turns = [(q or "", without_thinking(a or "")) for q, a in reversed(rows)]
        try:
            text = await llm.complete_text(binding, suggested_messages(turns), timeout=self.rt.settings.llm_timeout,
                                           max_tokens=SUGGESTED_MAX_TOKENS)
        except Exception as e:  # noqa: BLE001 - any provider failure is the client's 400, as for a blocking chat
            message = llm.error_message(e, binding.provider)
            log.warning("suggested_questions_failed", app_id=app.id, error=message)
            raise completion_request_error(message) from None
        return parse_questions(text)

    async def _suggest_settings(self, app: AppEntry) -> tuple[bool, llm.ModelBinding | None]:
        """Whether the feature is on (the model config's, where /parameters reads it, or for advanced-chat
        the published workflow's), and the model to ask (helper_model.py)."""
        if app.config is not None:
            enabled = app.config.suggested_questions_after_answer.enabled
        elif app.mode == "advanced-chat" and app.workflow_id:
            workflow = await self.rt.workflows.version(app)  # cached per version
            feature = (workflow.features or {}).get("suggested_questions_after_answer")
            enabled = isinstance(feature, dict) and bool(feature.get("enabled"))
        else:
            raise app_unavailable()
        return enabled, (await self.rt.helper.binding(app) if enabled else None)

    # -- end users ------------------------------------------------------------------------------------------
    async def end_user(self, caller: Caller, end_user_id: str) -> dict[str, Any]:
        """One end user of this app (another app's is a 404, like a missing one), as Dify's EndUserDetail."""
        app = await self.rt.app_for(caller)
        eid = parse_uuid(end_user_id, end_user_not_found())
        async with self.rt.db.session() as s:
            u = (await s.exec(select(EndUser).where(EndUser.id == eid, EndUser.app_id == app.id))).first()
        if u is None:
            raise end_user_not_found()
        created = iso_z(u.created_at)
        # the service API's end users are the `user` a request named (external id = session id), never renamed
        return {"id": u.id, "tenant_id": u.tenant_id, "app_id": u.app_id, "type": u.type,
                "external_user_id": u.session_id, "name": None, "is_anonymous": u.is_anonymous,
                "session_id": u.session_id, "created_at": created, "updated_at": created}

    # -- the app's feedback -------------------------------------------------------------------------------
    async def feedbacks(self, caller: Caller, *, page: int, limit: int) -> dict[str, Any]:
        if not 1 <= page <= FEEDBACKS_MAX_PAGE:
            raise invalid_param(f"page must be between 1 and {FEEDBACKS_MAX_PAGE}", params="page")
        if not 1 <= limit <= FEEDBACKS_MAX_LIMIT:
            raise invalid_param(f"limit must be between 1 and {FEEDBACKS_MAX_LIMIT}", params="limit")
        app = await self.rt.app_for(caller)
        async with self.rt.db.session() as s:
            rows = (await s.exec(
                select(MessageFeedback).where(MessageFeedback.app_id == app.id)
                .order_by(col(MessageFeedback.created_at).desc(), col(MessageFeedback.id).desc())
                .offset((page - 1) * limit).limit(limit))).all()
        return {"data": [feedback_view(f) for f in rows]}

    # -- site ---------------------------------------------------------------------------------------------
    async def site(self, caller: Caller) -> dict[str, Any]:
        app = await self.rt.app_for(caller)  # the app cache: no query per call
        # Dify refuses only an app without a site row (or an archived workspace); enable_site is the web app's
        if app.site is None:
            raise forbidden("Site not found for this application.")
        return dict(app.site)

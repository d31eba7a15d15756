"""Annotations and annotation reply (reference §2.16, docs/annotations.md).

An annotation is a curated question and answer of a chat app. With annotation reply enabled, a chat query whose
embedding is close enough (cosine ≥ the app's ``score_threshold``) to an annotation's question is answered with
that annotation's answer, without the model. The runtime owns the rows; the vectors live with the indexer (the
vector store's only client), reached over NATS request/reply (``ANNOTATION_*`` in shared/subjects.py).

Enabling or disabling is a job: the call records it (``app_annotation_settings``: one row per app holding the
setting and its latest job) and returns at once; a background task embeds every annotation (or removes their
vectors) and marks the job completed or error. The setting reaches the chat path through the app cache entry
(``AppEntry.annotation``), dropped on every change like any other app change.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from sqlalchemy import func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from services.runtime.service.errors import CHAT_MODES, not_chat_app, parse_uuid
from shared.errors import ApiError, invalid_param, not_found
from shared.identity import Caller
from shared.knowledge.models import LOCAL_EMBEDDING_PROVIDER
from shared.models import Account, AppAnnotationSetting, MessageAnnotation, new_id, ts, utcnow
from shared.subjects import ANNOTATION_DELETE, ANNOTATION_SEARCH, ANNOTATION_UPSERT, config_changed
from shared.workflow.logs import contains

if TYPE_CHECKING:
    from services.runtime.service.cache import AppEntry
    from services.runtime.service.core import Runtime

log = structlog.get_logger("plexus.runtime.annotations")

ACTIONS = ("enable", "disable")
JOB_RUNNING = ("waiting", "processing")
JOB_STALE = timedelta(minutes=10)  # a running job not touched for this long died with its replica
EMBED_BATCH = 32  # annotations per upsert request (NATS payloads stay well under 1 MB)
WRITE_TIMEOUT = 120.0  # seconds per upsert/delete request (the first use of a model loads it)
SEARCH_TOP_K = 3  # a hit whose row was deleted meanwhile is skipped for the next


@dataclass(frozen=True, slots=True)
class AnnotationReply:
    """An app's annotation reply while enabled, as cached in its AppEntry."""

    score_threshold: float
    provider: str | None  # None: the built-in embedding model
    model: str | None

    def target(self, tenant_id: str, app_id: str) -> dict[str, Any]:
        return {"tenant_id": tenant_id, "app_id": app_id, "provider": self.provider, "model": self.model}


@dataclass(frozen=True, slots=True)
class AnnotationHit:
    id: str
    answer: str
    score: float
    account: dict[str, Any]

    def metadata(self) -> dict[str, Any]:
        """``metadata.annotation_reply`` of the answer, in Dify's shape."""
        return {"id": self.id, "account": self.account}


async def load_reply(s: Any, app_id: str) -> AnnotationReply | None:
    """The app's enabled annotation reply, for the app cache (one query per app load, none per message)."""
    row = (await s.exec(select(AppAnnotationSetting.score_threshold, AppAnnotationSetting.embedding_provider,
                               AppAnnotationSetting.embedding_model).where(
        AppAnnotationSetting.app_id == app_id, AppAnnotationSetting.enabled == True))).first()
    return AnnotationReply(float(row[0]), row[1], row[2]) if row else None


def annotation_view(a: MessageAnnotation) -> dict[str, Any]:
    return {"id": a.id, "question": a.question, "answer": a.answer, "hit_count": a.hit_count,
            "created_at": ts(a.created_at)}


def annotation_not_found() -> ApiError:
    return not_found("Annotation not found")


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid_param(f"{name} is required and must be a non-empty string")
    return value


def _model_name(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise invalid_param(f"{name} must be a string")
    return value


class VectorsUnavailable(Exception):
    """The indexer did not answer an annotation vector request, or answered with an error."""


class AnnotationService:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._jobs: set[asyncio.Task] = set()  # keeps the background jobs referenced

    async def _app(self, caller: Caller) -> AppEntry:
        app = await self.rt.app_for(caller)
        if app.mode not in CHAT_MODES:
            raise not_chat_app()
        return app

    # -- CRUD ---------------------------------------------------------------------------------------------
    async def list_annotations(self, caller: Caller, *, page: int, limit: int, keyword: str | None) -> dict[str, Any]:
        app = await self._app(caller)
        if not 1 <= page <= 99999 or not 1 <= limit <= 100:
            raise invalid_param("page must be 1-99999 and limit 1-100")
        where = [MessageAnnotation.app_id == app.id]
        if keyword:
            where.append(or_(contains(MessageAnnotation.question, keyword),
                             contains(MessageAnnotation.answer, keyword)))
        async with self.rt.db.session() as s:
            total = (await s.exec(select(func.count()).select_from(MessageAnnotation).where(*where))).one()
            rows = (await s.exec(select(MessageAnnotation).where(*where)
                                 .order_by(MessageAnnotation.created_at.desc(), MessageAnnotation.id.desc())
                                 .offset((page - 1) * limit).limit(limit))).all()
        return {"data": [annotation_view(a) for a in rows], "has_more": page * limit < total, "limit": limit,
                "total": total, "page": page}

    async def create(self, caller: Caller, *, question: Any, answer: Any) -> dict[str, Any]:
        app = await self._app(caller)
        a = MessageAnnotation(app_id=app.id, question=_text(question, "question"), answer=_text(answer, "answer"))
        async with self.rt.db.session() as s:
            s.add(a)
            await s.commit()
            await s.refresh(a)
        await self._index(app, [a])
        return annotation_view(a)

    async def update(self, caller: Caller, annotation_id: str, *, question: Any, answer: Any) -> dict[str, Any]:
        app = await self._app(caller)
        annotation_id = parse_uuid(annotation_id, annotation_not_found())
        question, answer = _text(question, "question"), _text(answer, "answer")
        async with self.rt.db.session() as s:
            a = (await s.exec(select(MessageAnnotation).where(MessageAnnotation.id == annotation_id,
                                                              MessageAnnotation.app_id == app.id))).first()
            if a is None:
                raise annotation_not_found()
            re_embed = a.question != question
            a.question, a.answer, a.updated_at = question, answer, utcnow()
            s.add(a)
            await s.commit()
            await s.refresh(a)
        if re_embed:  # the answer is read from the row at reply time: only a new question needs a new vector
            await self._index(app, [a])
        return annotation_view(a)

    async def delete(self, caller: Caller, annotation_id: str) -> None:
        app = await self._app(caller)
        annotation_id = parse_uuid(annotation_id, annotation_not_found())
        async with self.rt.db.session() as s:
            a = (await s.exec(select(MessageAnnotation).where(MessageAnnotation.id == annotation_id,
                                                              MessageAnnotation.app_id == app.id))).first()
            if a is None:
                raise annotation_not_found()
            await s.delete(a)
            await s.commit()
        reply = app.annotation
        if reply is not None:
            try:
                await self._request(ANNOTATION_DELETE, {**reply.target(app.tenant_id, app.id),
                                                        "ids": [annotation_id]},
                                    WRITE_TIMEOUT)
            except VectorsUnavailable as e:  # harmless: a hit whose row is gone is skipped
                log.warning("annotation_vector_delete_failed", app_id=app.id, error=str(e))

    async def _index(self, app: AppEntry, rows: list[MessageAnnotation]) -> None:
        """Embed new or changed questions while reply is on. The row is saved either way: a vector that could
        not be written now is written by the next enable."""
        reply = app.annotation
        if reply is None:
            return
        try:
            await self._request(ANNOTATION_UPSERT, {**reply.target(app.tenant_id, app.id),
                                                    "items": [{"id": a.id, "question": a.question} for a in rows]},
                                WRITE_TIMEOUT)
        except VectorsUnavailable as e:
            log.warning("annotation_vector_upsert_failed", app_id=app.id, error=str(e))

    # -- annotation reply: enable / disable jobs ------------------------------------------------------
    async def action(self, caller: Caller, action: str, body: dict[str, Any]) -> dict[str, Any]:
        if action not in ACTIONS:
            raise invalid_param("Unsupported annotation reply action")
        app = await self._app(caller)
        target: AnnotationReply | None = None
        if action == "enable":
            threshold = body.get("score_threshold")
            if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
                raise invalid_param("score_threshold is required and must be a number between 0 and 1")
            provider = _model_name(body.get("embedding_provider_name"), "embedding_provider_name")
            model = _model_name(body.get("embedding_model_name"), "embedding_model_name")
            if provider == LOCAL_EMBEDDING_PROVIDER:
                provider = model = None  # the built-in model, however it is named
            elif (provider is None) != (model is None):
                raise invalid_param("embedding_provider_name and embedding_model_name go together "
                                    "(name neither for the built-in embedding model)")
            target = AnnotationReply(float(threshold), provider, model)
        job_id = new_id()
        now = utcnow()
        for _ in range(2):  # a concurrent first job may insert the app's row between our read and insert
            async with self.rt.db.session() as s:
                row = (await s.exec(select(AppAnnotationSetting).where(
                    AppAnnotationSetting.app_id == app.id))).first()
                if row is not None and row.job_action == action and row.job_status in JOB_RUNNING \
                        and _aware(row.updated_at) > now - JOB_STALE:
                    return {"job_id": row.job_id, "job_status": "processing"}  # Dify: the job in flight
                if row is None:
                    row = AppAnnotationSetting(app_id=app.id)
                previous = AnnotationReply(row.score_threshold, row.embedding_provider, row.embedding_model) \
                    if row.enabled else None
                row.job_id, row.job_action, row.job_status, row.job_error, row.updated_at = \
                    job_id, action, "waiting", None, now
                s.add(row)
                try:
                    await s.commit()
                except IntegrityError:
                    continue
            break
        else:
            raise ApiError(409, "conflict", "Another annotation reply job was started at the same time; retry.")
        task = asyncio.get_running_loop().create_task(
            self._run_job(app.tenant_id, app.id, job_id, action, target, previous), name=f"annotation-{job_id}")
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
        return {"job_id": job_id, "job_status": "waiting"}

    async def status(self, caller: Caller, action: str, job_id: str) -> dict[str, Any]:
        if action not in ACTIONS:
            raise invalid_param("Unsupported annotation reply action")
        app = await self._app(caller)
        async with self.rt.db.session() as s:
            row = (await s.exec(select(AppAnnotationSetting.job_status, AppAnnotationSetting.job_error).where(
                AppAnnotationSetting.app_id == app.id, AppAnnotationSetting.job_id == job_id,
                AppAnnotationSetting.job_action == action))).first()
        if row is None:
            raise invalid_param("The job does not exist.")
        status, error = row
        return {"job_id": job_id, "job_status": status, "error_msg": (error or "") if status == "error" else ""}

    async def _run_job(self, tenant_id: str, app_id: str, job_id: str, action: str, target: AnnotationReply | None,
                       previous: AnnotationReply | None) -> None:
        try:
            await self._job_update(app_id, job_id, job_status="processing")
            if target is not None:  # enable
                await self._embed_all(tenant_id, app_id, target)
                current = await self._job_update(app_id, job_id, enabled=True, score_threshold=target.score_threshold,
                                                 embedding_provider=target.provider, embedding_model=target.model)
                await self._announce(app_id)
                if current and previous is not None \
                        and (previous.provider, previous.model) != (target.provider, target.model):
                    # the old model's vectors are never read again. Removed only once the new ones serve: a
                    # failed enable leaves the reply in force answering from them
                    try:
                        await self._request(ANNOTATION_DELETE, previous.target(tenant_id, app_id), WRITE_TIMEOUT)
                    except VectorsUnavailable as e:
                        log.warning("annotation_old_vectors_kept", app_id=app_id, error=str(e))
            else:
                if previous is not None:
                    await self._request(ANNOTATION_DELETE, previous.target(tenant_id, app_id), WRITE_TIMEOUT)
                await self._job_update(app_id, job_id, enabled=False)
                await self._announce(app_id)
            # last: a client that reads "completed" finds the new setting in force on this replica
            await self._job_update(app_id, job_id, job_status="completed")
            log.info("annotation_reply_job_completed", app_id=app_id, action=action)
        except Exception as e:  # noqa: BLE001 - a job's failure is its status, read by the client
            log.warning("annotation_reply_job_failed", app_id=app_id, action=action, error=str(e))
            try:
                await self._job_update(app_id, job_id, job_status="error", job_error=str(e) or type(e).__name__)
            except Exception:
                log.exception("annotation_reply_job_status_lost", app_id=app_id)

    async def _announce(self, app_id: str) -> None:
        """Every replica serves the app's setting as now saved from its next message on."""
        self.rt.apps.invalidate_app(app_id)
        try:
            await self.rt.bus.publish_json(config_changed("app", app_id), {"kind": "app", "id": app_id})
        except Exception:  # noqa: BLE001 - the other replicas' cache TTL bounds the staleness
            log.warning("annotation_config_publish_failed", app_id=app_id)

    async def _embed_all(self, tenant_id: str, app_id: str, target: AnnotationReply) -> None:
        last: tuple[Any, str] | None = None
        payload = target.target(tenant_id, app_id)
        while True:  # keyset pages: annotations added meanwhile do not shift the pages
            q = select(MessageAnnotation.created_at, MessageAnnotation.id, MessageAnnotation.question).where(
                MessageAnnotation.app_id == app_id)
            if last is not None:
                q = q.where(or_(MessageAnnotation.created_at > last[0],
                                (MessageAnnotation.created_at == last[0]) & (MessageAnnotation.id > last[1])))
            async with self.rt.db.session() as s:
                rows = (await s.exec(q.order_by(MessageAnnotation.created_at, MessageAnnotation.id)
                                     .limit(EMBED_BATCH))).all()
            if not rows:
                return
            await self._request(ANNOTATION_UPSERT, {**payload, "items": [{"id": i, "question": qn}
                                                                         for _, i, qn in rows]}, WRITE_TIMEOUT)
            last = (rows[-1][0], rows[-1][1])

    async def _job_update(self, app_id: str, job_id: str, **values: Any) -> bool:
        """Only while ``job_id`` is still the app's latest job (a newer one has the last word): whether it was."""
        async with self.rt.db.session() as s:
            result = await s.exec(update(AppAnnotationSetting).where(AppAnnotationSetting.app_id == app_id,
                                                                     AppAnnotationSetting.job_id == job_id)
                                  .values(updated_at=utcnow(), **values))
            await s.commit()
        return result.rowcount > 0

    async def _request(self, subject: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        try:
            msg = await self.rt.bus.nc.request(subject, orjson.dumps(payload), timeout=timeout)
            reply = orjson.loads(msg.data)
        except Exception as e:  # no responders, timeout, a closed connection
            raise VectorsUnavailable(f"the indexer did not answer ({type(e).__name__})") from e
        err = reply.get("error") if isinstance(reply, dict) else {"message": "malformed reply"}
        if err:
            raise VectorsUnavailable(err.get("message") if isinstance(err, dict) else str(err))
        return reply

    # -- the chat path ----------------------------------------------------------------------------------
    async def match(self, app: AppEntry, query: str) -> AnnotationHit | None:
        """The annotation that answers ``query``, if reply is on and one is close enough. A failed search is
        logged and answered by the model: annotation reply never fails a chat."""
        reply = app.annotation
        if reply is None or not query.strip():
            return None
        try:
            found = await self._request(ANNOTATION_SEARCH, {
                **reply.target(app.tenant_id, app.id), "query": query, "score_threshold": reply.score_threshold,
                "top_k": SEARCH_TOP_K}, self.rt.ctx.settings.knowledge.retrieve_timeout)
        except VectorsUnavailable as e:
            log.warning("annotation_search_failed", app_id=app.id, error=str(e))
            return None
        hits = [h for h in found.get("hits") or [] if isinstance(h, dict) and isinstance(h.get("id"), str)
                and float(h.get("score") or 0.0) >= reply.score_threshold]
        if not hits:
            return None
        async with self.rt.db.session() as s:
            rows = {r[0]: r for r in (await s.exec(select(
                MessageAnnotation.id, MessageAnnotation.answer, MessageAnnotation.account_id).where(
                MessageAnnotation.app_id == app.id, MessageAnnotation.id.in_([h["id"] for h in hits])))).all()}
            best = next((h for h in hits if h["id"] in rows), None)
            if best is None:
                return None
            ann_id, answer, account_id = rows[best["id"]]
            t = MessageAnnotation.__table__
            await s.exec(update(t).where(t.c.id == ann_id).values(hit_count=t.c.hit_count + 1))
            # Dify's: always an object, named "Dify user" when no console account wrote it (an app key's)
            name = (await s.exec(select(Account.name).where(Account.id == account_id))).first() \
                if account_id else None
            account = {"id": account_id, "name": name or "Dify user"}
            await s.commit()
        return AnnotationHit(ann_id, answer, float(best["score"]), account)


def _aware(dt: Any) -> Any:
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt

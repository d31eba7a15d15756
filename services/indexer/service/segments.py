"""Segments (chunks) of a document (reference §4.4). Adding or editing a segment embeds it at once, so
the call returns with the segment searchable; enabling or disabling flips it in the vector store."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.indexer.pipeline.split import count_tokens
from services.indexer.service.common import (
    archived_immutable,
    content_hash,
    dataset_space,
    get_dataset,
    get_document,
    invalid,
    parse_id,
    segment_not_found,
)
from services.indexer.service.core import Knowledge
from services.indexer.service.indexing import embed_points
from shared.errors import ApiError, not_found
from shared.knowledge.sparse import encode_document, keywords
from shared.models import Dataset, Document, DocumentSegment, new_id, ts, utcnow

MAX_SEGMENT_CHARS = 100_000


def segment_json(g: DocumentSegment) -> dict[str, Any]:
    return {"id": g.id, "position": g.position, "document_id": g.document_id, "content": g.content,
            "sign_content": g.content, "answer": g.answer, "word_count": g.word_count, "tokens": g.tokens,
            "keywords": g.keywords or [], "index_node_id": g.id, "index_node_hash": g.index_node_hash,
            "hit_count": g.hit_count, "enabled": g.enabled, "disabled_at": ts(g.disabled_at),
            "disabled_by": g.disabled_by, "status": g.status, "created_by": g.created_by,
            "created_at": ts(g.created_at), "updated_at": ts(g.updated_at), "indexing_at": ts(g.indexing_at),
            "completed_at": ts(g.completed_at), "error": g.error, "stopped_at": None, "child_chunks": []}


def _content(item: Any, doc_form: str) -> tuple[str, str | None, list[str] | None]:
    if not isinstance(item, dict):
        raise invalid("each segment must be an object")
    content = item.get("content")
    if not isinstance(content, str) or not content.strip():
        raise invalid("content is required")
    if len(content) > MAX_SEGMENT_CHARS:
        raise invalid(f"content must be at most {MAX_SEGMENT_CHARS} characters")
    answer = item.get("answer")
    if doc_form == "qa_model" and not (isinstance(answer, str) and answer.strip()):
        raise invalid("answer is required")
    kws = item.get("keywords")
    if kws is not None and not (isinstance(kws, list) and all(isinstance(k, str) for k in kws)):
        raise invalid("keywords must be a list of strings")
    return content, answer if isinstance(answer, str) else None, kws


class SegmentService:
    def __init__(self, kn: Knowledge) -> None:
        self.kn = kn

    async def _doc(self, s: AsyncSession, tenant_id: str, dataset_id: str, document_id: str
                   ) -> tuple[Dataset, Document]:
        ds = await get_dataset(s, tenant_id, dataset_id)
        return ds, await get_document(s, ds, document_id)

    async def _index(self, ds: Dataset, doc: Document, segs: list[DocumentSegment]) -> None:
        """Embed and upsert these segments now (a failing provider is the caller's 400)."""
        embedder = None
        if ds.indexing_technique == "high_quality":
            async with self.kn.db.session() as s:
                embedder = await self.kn.embedder(s, ds.tenant_id, ds.embedding_model_provider, ds.embedding_model)
        sparse = await asyncio.to_thread(lambda: [encode_document(g.content) for g in segs])
        items = [(g.id, g.content, sv, g.enabled and doc.enabled and not doc.archived)
                 for g, sv in zip(segs, sparse, strict=True)]
        try:
            space, points = await embed_points(self.kn, ds, doc, items, embedder)
        except ApiError:
            raise
        except Exception as e:
            raise ApiError(400, "invalid_param", f"Embedding failed: {e}") from e
        await self.kn.vectors.upsert(space, points)

    async def add(self, tenant_id: str, dataset_id: str, document_id: str, items: Any) -> dict[str, Any]:
        if not isinstance(items, list) or not items:
            raise invalid("segments is required")
        async with self.kn.db.session() as s:
            ds, doc = await self._doc(s, tenant_id, dataset_id, document_id)
            if doc.indexing_status != "completed":
                raise not_found("Document is not completed.")
            if not doc.enabled:
                raise not_found("Document is disabled.")
            parsed = [_content(i, doc.doc_form) for i in items]
            pos = (await s.exec(select(func.coalesce(func.max(DocumentSegment.position), 0))
                                .where(DocumentSegment.document_id == doc.id))).one()
            now = utcnow()
            segs = [DocumentSegment(
                id=new_id(), tenant_id=tenant_id, dataset_id=ds.id, document_id=doc.id, position=pos + i + 1,
                content=c, answer=a, word_count=len(c) + len(a or ""), tokens=count_tokens(c),
                keywords=k if k is not None else keywords(c, 10), index_node_hash=content_hash(c),
                status="indexing", indexing_at=now) for i, (c, a, k) in enumerate(parsed)]
        # vectors first: a segment row never claims to be searchable before its point exists
        await self._index(ds, doc, segs)
        async with self.kn.db.session() as s:
            for g in segs:
                g.status, g.completed_at = "completed", utcnow()
                s.add(g)
            await s.exec(_bump_document(doc.id, segs))
            await s.commit()
        return {"data": [segment_json(g) for g in segs], "doc_form": doc.doc_form}

    async def list(self, tenant_id: str, dataset_id: str, document_id: str, *, keyword: str | None,
                   status: str | None, page: int, limit: int) -> dict[str, Any]:
        async with self.kn.db.session() as s:
            _, doc = await self._doc(s, tenant_id, dataset_id, document_id)
            where = [DocumentSegment.document_id == doc.id]
            if keyword:
                where.append(col(DocumentSegment.content).icontains(keyword, autoescape=True))
            if status:
                where.append(DocumentSegment.status == status)
            total = (await s.exec(select(func.count()).select_from(DocumentSegment).where(*where))).one()
            rows = list(await s.exec(select(DocumentSegment).where(*where).order_by(col(DocumentSegment.position))
                                     .offset((page - 1) * limit).limit(limit)))
        return {"data": [segment_json(g) for g in rows], "doc_form": doc.doc_form, "total": total,
                "has_more": page * limit < total, "limit": limit, "page": page}

    async def _segment(self, s: AsyncSession, doc: Document, segment_id: str) -> DocumentSegment:
        g = (await s.exec(select(DocumentSegment).where(
            DocumentSegment.id == parse_id(segment_id, segment_not_found()),
            DocumentSegment.document_id == doc.id))).first()
        if g is None:
            raise segment_not_found()
        return g

    async def get(self, tenant_id: str, dataset_id: str, document_id: str, segment_id: str) -> dict[str, Any]:
        async with self.kn.db.session() as s:
            _, doc = await self._doc(s, tenant_id, dataset_id, document_id)
            return {"data": segment_json(await self._segment(s, doc, segment_id)), "doc_form": doc.doc_form}

    async def update(self, tenant_id: str, dataset_id: str, document_id: str, segment_id: str, body: Any
                     ) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise invalid("segment is required")
        async with self.kn.db.session() as s:
            ds, doc = await self._doc(s, tenant_id, dataset_id, document_id)
            if doc.archived:
                raise archived_immutable()
            g = await self._segment(s, doc, segment_id)
            enabled = body.get("enabled")
            if enabled is not None and not isinstance(enabled, bool):
                raise invalid("enabled must be a boolean")
            reembed = False
            if body.get("content") is not None or body.get("answer") is not None:
                content, answer, kws = _content({"content": body.get("content", g.content),
                                                 "answer": body.get("answer", g.answer),
                                                 "keywords": body.get("keywords")}, doc.doc_form)
                reembed = content != g.content or answer != g.answer
                g.content, g.answer = content, answer
                g.word_count, g.tokens = len(content) + len(answer or ""), count_tokens(content)
                g.index_node_hash = content_hash(content)
                g.keywords = kws if kws is not None else keywords(content, 10)
            if enabled is not None:
                g.enabled = enabled
                g.disabled_at = None if enabled else utcnow()
            g.updated_at = utcnow()
            if reembed:
                await self._index(ds, doc, [g])
            await s.commit()
        if not reembed and enabled is not None:
            await self.kn.vectors.set_enabled(dataset_space(ds), bool(g.enabled and doc.enabled and not doc.archived),
                                              ids=[g.id])
        return {"data": segment_json(g), "doc_form": doc.doc_form}

    async def delete(self, tenant_id: str, dataset_id: str, document_id: str, segment_id: str) -> None:
        async with self.kn.db.session() as s:
            ds, doc = await self._doc(s, tenant_id, dataset_id, document_id)
            g = await self._segment(s, doc, segment_id)
            await s.delete(g)
            await s.exec(_bump_document(doc.id, [g], sign=-1))
            await s.commit()
        await self.kn.vectors.delete_ids(dataset_space(ds), [g.id])



def _bump_document(doc_id: str, segs: list[DocumentSegment], sign: int = 1) -> Any:
    """Keep the document's totals in step with manual segment edits (one UPDATE, no read)."""
    t = Document.__table__
    return update(t).where(t.c.id == doc_id).values(
        total_segments=t.c.total_segments + sign * len(segs),
        word_count=t.c.word_count + sign * sum(g.word_count for g in segs),
        tokens=t.c.tokens + sign * sum(g.tokens for g in segs), updated_at=utcnow())

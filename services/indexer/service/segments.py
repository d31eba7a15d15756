"""Segments (chunks) of a document and the child chunks of parent-child documents (reference §4.4).
Adding or editing a segment or child chunk embeds it at once, so the call returns with it searchable;
enabling or disabling a segment flips it in the vector store.

A parent-child (``hierarchical_model``) document's segments are its parents: they are not embedded
themselves, their child chunks are (split from the parent by the document's subchunk rule), and retrieval
answers with the parent of the children that matched."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func, update
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.indexer.pipeline.split import (
    Chunk,
    child_segmentation,
    count_tokens,
    split_children,
    validate_process_rule,
)
from services.indexer.service.common import (
    archived_immutable,
    child_chunk_id,
    child_chunk_not_found,
    content_hash,
    created_by,
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
from shared.models import ChildChunk, Dataset, Document, DocumentSegment, new_id, ts, utcnow

MAX_SEGMENT_CHARS = 100_000
PARENT_CHILD = "hierarchical_model"


def child_json(c: ChildChunk) -> dict[str, Any]:
    return {"id": c.id, "segment_id": c.segment_id, "content": c.content, "position": c.position,
            "word_count": c.word_count, "tokens": c.tokens, "index_node_id": c.id,
            "index_node_hash": c.index_node_hash, "type": c.type, "status": c.status, "created_by": c.created_by,
            "created_at": ts(c.created_at), "updated_at": ts(c.updated_at), "indexing_at": ts(c.indexing_at),
            "completed_at": ts(c.completed_at), "error": None, "stopped_at": None}


async def children_of(s: AsyncSession, segment_ids: list[str]) -> dict[str, list[ChildChunk]]:
    """The child chunks of these segments, in order (one query)."""
    out: dict[str, list[ChildChunk]] = {}
    if segment_ids:
        for c in await s.exec(select(ChildChunk).where(col(ChildChunk.segment_id).in_(segment_ids))
                              .order_by(col(ChildChunk.segment_id), col(ChildChunk.position))):
            out.setdefault(c.segment_id, []).append(c)
    return out


def segment_json(g: DocumentSegment, children: list[ChildChunk] | None = None) -> dict[str, Any]:
    return {"id": g.id, "position": g.position, "document_id": g.document_id, "content": g.content,
            "sign_content": g.content, "answer": g.answer, "word_count": g.word_count, "tokens": g.tokens,
            "keywords": g.keywords or [], "index_node_id": g.id, "index_node_hash": g.index_node_hash,
            "hit_count": g.hit_count, "enabled": g.enabled, "disabled_at": ts(g.disabled_at),
            "disabled_by": g.disabled_by, "status": g.status, "created_by": g.created_by,
            "created_at": ts(g.created_at), "updated_at": ts(g.updated_at), "indexing_at": ts(g.indexing_at),
            "completed_at": ts(g.completed_at), "error": g.error, "stopped_at": None,
            "child_chunks": [child_json(c) for c in children or ()]}


def parse_segment(item: Any, doc_form: str) -> tuple[str, str | None, list[str] | None]:
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


def _children_for(doc: Document, seg: DocumentSegment, now: Any) -> list[ChildChunk]:
    """A parent's child chunks split from its content by the document's subchunk rule."""
    rule = validate_process_rule(doc.process_rule, required=True)
    chunks: list[Chunk] = split_children(seg.content, child_segmentation(rule))
    return [ChildChunk(id=child_chunk_id(seg.id, c.position), tenant_id=seg.tenant_id, dataset_id=seg.dataset_id,
                       document_id=doc.id, segment_id=seg.id, position=c.position, content=c.content,
                       word_count=len(c.content), tokens=c.tokens, index_node_hash=content_hash(c.content),
                       created_by=created_by(), created_at=now, updated_at=now, indexing_at=now, completed_at=now)
            for c in chunks]


def check_open(doc: Document) -> None:
    """Segments are added to a finished, enabled document only (Dify's 404s)."""
    if doc.indexing_status != "completed":
        raise not_found("Document is not completed.")
    if not doc.enabled:
        raise not_found("Document is disabled.")


def _child_content(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid("content is required")
    if len(value) > MAX_SEGMENT_CHARS:
        raise invalid(f"content must be at most {MAX_SEGMENT_CHARS} characters")
    return value


def _searchable(doc: Document, seg: DocumentSegment) -> bool:
    return bool(seg.enabled and doc.enabled and not doc.archived)


class SegmentService:
    def __init__(self, kn: Knowledge) -> None:
        self.kn = kn

    async def _doc(self, s: AsyncSession, tenant_id: str, dataset_id: str, document_id: str
                   ) -> tuple[Dataset, Document]:
        ds = await get_dataset(s, tenant_id, dataset_id)
        return ds, await get_document(s, ds, document_id)

    async def _index(self, ds: Dataset, doc: Document, items: list[tuple[str, str, bool]]) -> None:
        """Embed and upsert (point id, text, enabled) now (a failing provider is the caller's 400)."""
        if not items:
            return
        embedder = None
        if ds.indexing_technique == "high_quality":
            async with self.kn.db.session() as s:
                embedder = await self.kn.embedder(s, ds.tenant_id, ds.embedding_model_provider, ds.embedding_model)
        sparse = await asyncio.to_thread(lambda: [encode_document(text) for _, text, _ in items])
        try:
            space, points = await embed_points(self.kn, ds, doc, [
                (pid, text, sv, enabled) for (pid, text, enabled), sv in zip(items, sparse, strict=True)], embedder)
        except ApiError:
            raise
        except Exception as e:
            raise ApiError(400, "invalid_param", f"Embedding failed: {e}") from e
        await self.kn.vectors.upsert(space, points)

    async def _point_ids(self, s: AsyncSession, doc: Document, seg_ids: list[str]) -> list[str]:
        """The vector points of these segments: their child chunks' in a parent-child document (a segment
        without children, indexed before Plexus made them, is its own point)."""
        if doc.doc_form != PARENT_CHILD:
            return seg_ids
        rows = (await s.exec(select(ChildChunk.id, ChildChunk.segment_id)
                             .where(col(ChildChunk.segment_id).in_(seg_ids)))).all()
        parents = {sid for _, sid in rows}
        return [cid for cid, _ in rows] + [sid for sid in seg_ids if sid not in parents]

    async def add(self, tenant_id: str, dataset_id: str, document_id: str, items: Any) -> dict[str, Any]:
        if not isinstance(items, list) or not items:
            raise invalid("segments is required")
        async with self.kn.db.session() as s:
            ds, doc = await self._doc(s, tenant_id, dataset_id, document_id)
            check_open(doc)
            parsed = [parse_segment(i, doc.doc_form) for i in items]
        segs, children = await self.create(ds, doc, parsed, [new_id() for _ in parsed], created_by())
        return {"data": [segment_json(g, children.get(g.id)) for g in segs], "doc_form": doc.doc_form}

    async def create(self, ds: Dataset, doc: Document, parsed: list[tuple[str, str | None, list[str] | None]],
                     ids: list[str], author: str | None
                     ) -> tuple[list[DocumentSegment], dict[str, list[ChildChunk]]]:
        """New segments (content, answer, keywords) with these ids after the document's last one: embedded
        first (with their child chunks in a parent-child document), then stored with the document's totals."""
        async with self.kn.db.session() as s:
            pos = (await s.exec(select(func.coalesce(func.max(DocumentSegment.position), 0))
                                .where(DocumentSegment.document_id == doc.id))).one()
        now = utcnow()
        segs = [DocumentSegment(
            id=sid, tenant_id=ds.tenant_id, dataset_id=ds.id, document_id=doc.id, position=pos + i + 1,
            content=c, answer=a, word_count=len(c) + len(a or ""), tokens=count_tokens(c),
            keywords=k if k is not None else keywords(c, 10), index_node_hash=content_hash(c),
            status="indexing", indexing_at=now, created_by=author)
            for i, (sid, (c, a, k)) in enumerate(zip(ids, parsed, strict=True))]
        children = {g.id: _children_for(doc, g, now) for g in segs} if doc.doc_form == PARENT_CHILD else {}
        # vectors first: a segment row never claims to be searchable before its points exist
        live = bool(doc.enabled and not doc.archived)
        if children:
            await self._index(ds, doc, [(c.id, c.content, live) for g in segs for c in children[g.id]])
        else:
            await self._index(ds, doc, [(g.id, g.content, live) for g in segs])
        async with self.kn.db.session() as s:
            for g in segs:
                g.status, g.completed_at = "completed", utcnow()
                s.add(g)
            await s.flush()
            for c in (c for cs in children.values() for c in cs):
                s.add(c)
            await s.exec(_bump_document(doc.id, segs))
            await s.commit()
        return segs, children

    async def list(self, tenant_id: str, dataset_id: str, document_id: str, *, keyword: str | None,
                   status: list[str] | None, page: int, limit: int, enabled: bool | None = None,
                   hit_count_gte: int | None = None) -> dict[str, Any]:
        async with self.kn.db.session() as s:
            _, doc = await self._doc(s, tenant_id, dataset_id, document_id)
            where = [DocumentSegment.document_id == doc.id]
            if keyword:
                where.append(col(DocumentSegment.content).icontains(keyword, autoescape=True))
            if status:
                where.append(col(DocumentSegment.status).in_(status))
            if enabled is not None:
                where.append(DocumentSegment.enabled == enabled)
            if hit_count_gte is not None:
                where.append(DocumentSegment.hit_count >= hit_count_gte)
            total = (await s.exec(select(func.count()).select_from(DocumentSegment).where(*where))).one()
            rows = list(await s.exec(select(DocumentSegment).where(*where).order_by(col(DocumentSegment.position))
                                     .offset((page - 1) * limit).limit(limit)))
            children = await children_of(s, [g.id for g in rows]) if doc.doc_form == PARENT_CHILD else {}
        return {"data": [segment_json(g, children.get(g.id)) for g in rows], "doc_form": doc.doc_form,
                "total": total, "has_more": page * limit < total, "limit": limit, "page": page}

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
            g = await self._segment(s, doc, segment_id)
            children = await children_of(s, [g.id]) if doc.doc_form == PARENT_CHILD else {}
            return {"data": segment_json(g, children.get(g.id)), "doc_form": doc.doc_form}

    async def update(self, tenant_id: str, dataset_id: str, document_id: str, segment_id: str, body: Any
                     ) -> dict[str, Any]:
        """New content re-embeds a segment; in a parent-child document only the children are embedded, so
        the children change only with ``regenerate_child_chunks`` (split again from the new content)."""
        if not isinstance(body, dict):
            raise invalid("segment is required")
        regenerate = body.get("regenerate_child_chunks", False)
        if not isinstance(regenerate, bool):
            raise invalid("regenerate_child_chunks must be a boolean")
        enabled = body.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise invalid("enabled must be a boolean")
        stale: list[str] = []
        async with self.kn.db.session() as s:
            ds, doc = await self._doc(s, tenant_id, dataset_id, document_id)
            if doc.archived:
                raise archived_immutable()
            g = await self._segment(s, doc, segment_id)
            parent_child = doc.doc_form == PARENT_CHILD
            changed = False
            if body.get("content") is not None or body.get("answer") is not None:
                content, answer, kws = parse_segment({"content": body.get("content", g.content),
                                                 "answer": body.get("answer", g.answer),
                                                 "keywords": body.get("keywords")}, doc.doc_form)
                changed = content != g.content or answer != g.answer
                g.content, g.answer = content, answer
                g.word_count, g.tokens = len(content) + len(answer or ""), count_tokens(content)
                g.index_node_hash = content_hash(content)
                g.keywords = kws if kws is not None else keywords(content, 10)
            if enabled is not None:
                g.enabled = enabled
                g.disabled_at = None if enabled else utcnow()
            g.updated_at = utcnow()
            live = _searchable(doc, g)
            own = await self._point_ids(s, doc, [g.id])
            # a parent's text is not embedded (its children are), unless it has none (indexed before children)
            reembed = changed and own == [g.id]
            children: list[ChildChunk] | None = None
            if parent_child and regenerate:
                children = _children_for(doc, g, utcnow())
                fresh = {c.id for c in children}  # derived ids: a child at the same place keeps its point
                stale = [i for i in own if i not in fresh]
                await self._index(ds, doc, [(c.id, c.content, live) for c in children])
                await s.exec(delete(ChildChunk).where(ChildChunk.segment_id == g.id))
                for c in children:
                    s.add(c)
            if reembed:
                await self._index(ds, doc, [(g.id, g.content, live)])
            points = [] if reembed or enabled is None else ([c.id for c in children] if children is not None else own)
            await s.commit()
            if parent_child and children is None:
                children = (await children_of(s, [g.id])).get(g.id, [])
        if stale:
            await self.kn.vectors.delete_ids(dataset_space(ds), stale)
        if points:
            await self.kn.vectors.set_enabled(dataset_space(ds), live, ids=points)
        return {"data": segment_json(g, children), "doc_form": doc.doc_form}

    async def delete(self, tenant_id: str, dataset_id: str, document_id: str, segment_id: str) -> None:
        await self.delete_many(tenant_id, dataset_id, document_id, [segment_id])

    async def _segments(self, s: AsyncSession, doc: Document, segment_ids: list[str]) -> list[DocumentSegment]:
        """These segments of the document, all of them or 404."""
        ids = list(dict.fromkeys(parse_id(i, segment_not_found()) for i in segment_ids))
        rows = list(await s.exec(select(DocumentSegment).where(col(DocumentSegment.id).in_(ids),
                                                               DocumentSegment.document_id == doc.id)))
        if len(rows) != len(ids):
            raise segment_not_found()
        return rows

    async def delete_many(self, tenant_id: str, dataset_id: str, document_id: str, segment_ids: list[str]) -> None:
        """Delete segments (and their child chunks) in one transaction, then their points."""
        async with self.kn.db.session() as s:
            ds, doc = await self._doc(s, tenant_id, dataset_id, document_id)
            segs = await self._segments(s, doc, segment_ids)
            ids = [g.id for g in segs]
            points = await self._point_ids(s, doc, ids)
            await s.exec(delete(ChildChunk).where(col(ChildChunk.segment_id).in_(ids)))
            await s.exec(delete(DocumentSegment).where(col(DocumentSegment.id).in_(ids)))
            await s.exec(_bump_document(doc.id, segs, sign=-1))
            await s.commit()
        if points:
            await self.kn.vectors.delete_ids(dataset_space(ds), points)

    async def set_enabled_many(self, tenant_id: str, dataset_id: str, document_id: str, segment_ids: list[str],
                               enabled: bool) -> None:
        """The console's batch enable/disable: the points follow at once."""
        async with self.kn.db.session() as s:
            ds, doc = await self._doc(s, tenant_id, dataset_id, document_id)
            if doc.archived:
                raise archived_immutable()
            segs = await self._segments(s, doc, segment_ids)
            now = utcnow()
            for g in segs:
                if g.enabled != enabled:
                    g.enabled, g.disabled_at, g.updated_at = enabled, None if enabled else now, now
            points = await self._point_ids(s, doc, [g.id for g in segs])
            await s.commit()
        if points:
            await self.kn.vectors.set_enabled(dataset_space(ds), enabled and doc.enabled and not doc.archived,
                                              ids=points)

    # -- child chunks (parent-child documents) ---------------------------------------------------------------
    async def _parent(self, s: AsyncSession, tenant_id: str, dataset_id: str, document_id: str, segment_id: str,
                      *, write: bool) -> tuple[Dataset, Document, DocumentSegment]:
        ds, doc = await self._doc(s, tenant_id, dataset_id, document_id)
        g = await self._segment(s, doc, segment_id)
        if doc.doc_form != PARENT_CHILD:
            raise invalid("Child chunks belong to parent-child documents (doc_form hierarchical_model); "
                          f"this document's doc_form is {doc.doc_form}.")
        if write and doc.archived:
            raise archived_immutable()
        if write and doc.indexing_status != "completed":
            raise not_found("Document is not completed.")
        return ds, doc, g

    async def _child(self, s: AsyncSession, g: DocumentSegment, child_id: str) -> ChildChunk:
        c = (await s.exec(select(ChildChunk).where(
            ChildChunk.id == parse_id(child_id, child_chunk_not_found()), ChildChunk.segment_id == g.id))).first()
        if c is None:
            raise child_chunk_not_found()
        return c

    async def list_children(self, tenant_id: str, dataset_id: str, document_id: str, segment_id: str, *,
                            keyword: str | None, page: int, limit: int) -> dict[str, Any]:
        async with self.kn.db.session() as s:
            _, _, g = await self._parent(s, tenant_id, dataset_id, document_id, segment_id, write=False)
            where = [ChildChunk.segment_id == g.id]
            if keyword:
                where.append(col(ChildChunk.content).icontains(keyword, autoescape=True))
            total = (await s.exec(select(func.count()).select_from(ChildChunk).where(*where))).one()
            rows = list(await s.exec(select(ChildChunk).where(*where).order_by(col(ChildChunk.position))
                                     .offset((page - 1) * limit).limit(limit)))
        return {"data": [child_json(c) for c in rows], "total": total,
                "total_pages": (total + limit - 1) // limit, "page": page, "limit": limit}

    async def add_child(self, tenant_id: str, dataset_id: str, document_id: str, segment_id: str, body: Any
                        ) -> dict[str, Any]:
        content = _child_content(body.get("content") if isinstance(body, dict) else None)
        async with self.kn.db.session() as s:
            ds, doc, g = await self._parent(s, tenant_id, dataset_id, document_id, segment_id, write=True)
            pos = (await s.exec(select(func.coalesce(func.max(ChildChunk.position), 0))
                                .where(ChildChunk.segment_id == g.id))).one()
            now = utcnow()
            c = ChildChunk(tenant_id=tenant_id, dataset_id=ds.id, document_id=doc.id, segment_id=g.id,
                           position=pos + 1, content=content, word_count=len(content), tokens=count_tokens(content),
                           index_node_hash=content_hash(content), type="customized", created_by=created_by(),
                           created_at=now, updated_at=now, indexing_at=now, completed_at=now)
            await self._index(ds, doc, [(c.id, c.content, _searchable(doc, g))])
            s.add(c)
            await s.commit()
        return {"data": child_json(c)}

    async def update_child(self, tenant_id: str, dataset_id: str, document_id: str, segment_id: str,
                           child_id: str, body: Any) -> dict[str, Any]:
        content = _child_content(body.get("content") if isinstance(body, dict) else None)
        async with self.kn.db.session() as s:
            ds, doc, g = await self._parent(s, tenant_id, dataset_id, document_id, segment_id, write=True)
            c = await self._child(s, g, child_id)
            if content != c.content:
                await self._index(ds, doc, [(c.id, content, _searchable(doc, g))])
                c.content, c.word_count, c.tokens = content, len(content), count_tokens(content)
                c.index_node_hash, c.type = content_hash(content), "customized"
                c.updated_at = c.indexing_at = c.completed_at = utcnow()
                await s.commit()
        return {"data": child_json(c)}

    async def replace_children(self, tenant_id: str, dataset_id: str, document_id: str, segment_id: str,
                               chunks: Any) -> dict[str, Any]:
        """The console's save of a parent's children (``{"chunks": [{"id"?, "content"}]}``): listed ids are
        kept (re-embedded if their text changed), entries without an id are new, unlisted children go."""
        if not isinstance(chunks, list) or not all(isinstance(c, dict) and isinstance(c.get("id"), str | None)
                                                   for c in chunks):
            raise invalid("chunks must be a list of {id?, content} objects")
        wanted = [(parse_id(c["id"], child_chunk_not_found()) if c.get("id") else None, _child_content(c.get("content")))
                  for c in chunks]
        async with self.kn.db.session() as s:
            ds, doc, g = await self._parent(s, tenant_id, dataset_id, document_id, segment_id, write=True)
            current = {c.id: c for c in (await children_of(s, [g.id])).get(g.id, [])}
            unknown = [i for i, _ in wanted if i is not None and i not in current]
            if unknown:
                raise child_chunk_not_found()
            now, live = utcnow(), _searchable(doc, g)
            kept: list[ChildChunk] = []
            changed: list[ChildChunk] = []
            for position, (cid, content) in enumerate(wanted, 1):
                c = current.get(cid) if cid else None
                new = c is None
                if c is None:
                    c = ChildChunk(tenant_id=tenant_id, dataset_id=ds.id, document_id=doc.id, segment_id=g.id,
                                   position=position, content=content, type="customized", created_by=created_by(),
                                   created_at=now, indexing_at=now)
                if new or c.content != content:
                    c.content, c.word_count, c.tokens = content, len(content), count_tokens(content)
                    c.index_node_hash, c.type, c.completed_at = content_hash(content), "customized", now
                    changed.append(c)
                c.position, c.updated_at = position, now
                kept.append(c)
            gone = [i for i in current if i not in {c.id for c in kept}]
            await self._index(ds, doc, [(c.id, c.content, live) for c in changed])
            await s.exec(delete(ChildChunk).where(col(ChildChunk.id).in_(gone)))
            for c in kept:
                s.add(c)
            await s.commit()
        if gone:
            await self.kn.vectors.delete_ids(dataset_space(ds), gone)
        return {"data": [child_json(c) for c in kept]}

    async def delete_child(self, tenant_id: str, dataset_id: str, document_id: str, segment_id: str,
                           child_id: str) -> None:
        async with self.kn.db.session() as s:
            ds, _, g = await self._parent(s, tenant_id, dataset_id, document_id, segment_id, write=True)
            c = await self._child(s, g, child_id)
            await s.delete(c)
            await s.commit()
        await self.kn.vectors.delete_ids(dataset_space(ds), [c.id])


def _bump_document(doc_id: str, segs: list[DocumentSegment], sign: int = 1) -> Any:
    """Keep the document's totals in step with manual segment edits (one UPDATE, no read)."""
    t = Document.__table__
    return update(t).where(t.c.id == doc_id).values(
        total_segments=t.c.total_segments + sign * len(segs),
        word_count=t.c.word_count + sign * sum(g.word_count for g in segs),
        tokens=t.c.tokens + sign * sum(g.tokens for g in segs), updated_at=utcnow())

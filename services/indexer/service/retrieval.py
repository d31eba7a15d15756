"""Retrieval (reference §4.5): semantic, full-text, hybrid (RRF, weights or a rerank model) and keyword
search over one or more datasets of a tenant, joined with the database so that only enabled segments of
enabled, unarchived, completed documents come back.

Parent-child documents are searched by their child chunks: the hits are grouped under their parent
segment, which is the record (scored by its best child, its matching children in ``child_chunks``), so
top_k counts parents.

Scores: dense hits carry cosine similarity; full-text scores (IDF-weighted, unbounded) are divided by
the best one of the query, so both live in [0, 1] and a score threshold means the same for both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy import update
from sqlmodel import col, select

from services.indexer.service.common import dataset_space, get_dataset, invalid, not_initialized
from services.indexer.service.core import Knowledge
from services.indexer.service.segments import segment_json
from shared.credentials import provider_credentials
from shared.errors import ApiError, validation_message
from shared.knowledge.models import RetrievalModel
from shared.knowledge.sparse import encode_query
from shared.knowledge.vectors import MetadataCondition, VectorFilter, VectorHit
from shared.llm import call_kwargs, litellm
from shared.models import ChildChunk, Dataset, Document, DocumentSegment

log = structlog.get_logger("plexus.indexer.retrieval")

MAX_QUERY_CHARS = 250
CANDIDATES = 4  # candidates fetched per result wanted, for fusion and reranking


@dataclass(slots=True)
class Scored:
    segment_id: str  # the point's id: a segment's, or a child chunk's in a parent-child document
    dataset_id: str
    score: float


def _norm_sparse(hits: list[VectorHit]) -> dict[str, float]:
    best = max((h.score for h in hits), default=0.0)
    return {h.id: (h.score / best if best > 0 else 0.0) for h in hits}


def merge_retrieval_model(default: dict[str, Any] | None, override: dict[str, Any] | None) -> RetrievalModel:
    try:
        return RetrievalModel.model_validate({**(default or {}), **(override or {})})
    except ValidationError as e:
        raise invalid(f"retrieval_model: {validation_message(e)[1]}") from None


class RetrievalService:
    def __init__(self, kn: Knowledge) -> None:
        self.kn = kn

    # -- HTTP: one dataset -----------------------------------------------------------------------------
    async def hit_testing(self, tenant_id: str, dataset_id: str, query: Any, retrieval_model: Any
                          ) -> dict[str, Any]:
        if not isinstance(query, str) or not query.strip():
            raise invalid("query is required")
        if len(query) > MAX_QUERY_CHARS:
            raise invalid(f"Query cannot exceed {MAX_QUERY_CHARS} characters")
        if retrieval_model is not None and not isinstance(retrieval_model, dict):
            raise invalid("retrieval_model must be an object")
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
        if ds.indexing_technique is None:
            raise not_initialized()
        records = await self.retrieve(tenant_id, [ds], query, retrieval_model or None, replace=True)
        return {"query": {"content": query}, "records": records}

    # -- NATS: the runtime's RAG -------------------------------------------------------------------------
    async def for_app(self, tenant_id: str, dataset_ids: list[str], query: str, override: dict[str, Any] | None
                      ) -> list[dict[str, Any]]:
        async with self.kn.db.session() as s:
            rows = list(await s.exec(select(Dataset).where(Dataset.tenant_id == tenant_id,
                                                           col(Dataset.id).in_(dataset_ids))))
        by_id = {d.id: d for d in rows}
        datasets = [by_id[i] for i in dataset_ids if i in by_id and by_id[i].indexing_technique]
        if not datasets or not query.strip():
            return []
        return await self.retrieve(tenant_id, datasets, query[:4000], override, replace=False)

    # -- the search --------------------------------------------------------------------------------------
    async def retrieve(self, tenant_id: str, datasets: list[Dataset], query: str, request_rm: dict | None, *,
                       replace: bool) -> list[dict[str, Any]]:
        """``replace``: the request's retrieval_model replaces the dataset default (hit testing); otherwise
        it overrides parts of each dataset's default (an app's dataset_configs)."""
        t0 = time.perf_counter()
        scored: list[Scored] = []
        rm: RetrievalModel | None = None
        for ds in datasets:
            rm = merge_retrieval_model(None if replace and request_rm else ds.retrieval_model, request_rm)
            scored.extend(await self._search_dataset(tenant_id, ds, query, rm))
        assert rm is not None
        if rm.reranking_enable and rm.reranking_mode != "weighted_score" and rm.reranking_model and scored:
            scored = await self._rerank(tenant_id, query, scored, rm)
        scored.sort(key=lambda x: x.score, reverse=True)
        if rm.score_threshold_enabled and rm.score_threshold is not None:
            scored = [x for x in scored if x.score >= rm.score_threshold]
        records = await self._records(scored, rm.top_k, {d.id: d for d in datasets})
        log.info("retrieval", datasets=len(datasets), method=rm.search_method, hits=len(records),
                 ms=round((time.perf_counter() - t0) * 1000, 2))
        return records

    async def _search_dataset(self, tenant_id: str, ds: Dataset, query: str, rm: RetrievalModel) -> list[Scored]:
        space = dataset_space(ds)
        flt = VectorFilter(tenant_id=tenant_id, dataset_ids=(ds.id,), metadata=_conditions(rm),
                           metadata_logic=(rm.metadata_filtering_conditions.logical_operator
                                           if rm.metadata_filtering_conditions else "and"))
        method = "keyword_search" if ds.indexing_technique == "economy" else rm.search_method
        if method == "keyword_search" and ds.indexing_technique != "economy":
            method = "full_text_search"
        limit = rm.top_k * CANDIDATES
        vectors = self.kn.vectors
        dense_q: list[float] | None = None
        if method in ("semantic_search", "hybrid_search"):
            async with self.kn.db.session() as s:
                emb = await self.kn.embedder(s, tenant_id, ds.embedding_model_provider, ds.embedding_model)
            try:
                dense_q = await emb.embed_query(query)
            except Exception as e:
                raise ApiError(400, "invalid_param", f"Embedding the query failed: {e}") from e
        # a space no document reached yet reads as empty
        if method == "semantic_search":
            hits = await vectors.search_dense(space, dense_q, flt, limit)
            return [Scored(h.id, ds.id, max(h.score, 0.0)) for h in hits]
        sparse_q = encode_query(query)
        if not sparse_q.indices:
            sparse_hits: list[VectorHit] = []
        else:
            sparse_hits = await vectors.search_sparse(space, sparse_q, flt, limit)
        if method in ("full_text_search", "keyword_search"):
            return [Scored(i, ds.id, s) for i, s in _norm_sparse(sparse_hits).items()]
        # hybrid
        if rm.reranking_mode == "weighted_score" or (rm.weights is not None and not rm.reranking_enable):
            weights = rm.weights
            vw = weights.vector_setting.vector_weight if weights else 0.7
            kw = weights.keyword_setting.keyword_weight if weights else 0.3
            dense_hits = await vectors.search_dense(space, dense_q, flt, limit)
            combined: dict[str, float] = {}
            for h in dense_hits:
                combined[h.id] = vw * max(h.score, 0.0)
            for i, sc in _norm_sparse(sparse_hits).items():
                combined[i] = combined.get(i, 0.0) + kw * sc
            return [Scored(i, ds.id, sc) for i, sc in combined.items()]
        if rm.reranking_enable:  # candidates from both; the rerank model scores them afterwards
            dense_hits = await vectors.search_dense(space, dense_q, flt, limit)
            ids = dict.fromkeys([h.id for h in dense_hits] + [h.id for h in sparse_hits])
            return [Scored(i, ds.id, 0.0) for i in ids]
        hits = await vectors.search_hybrid(space, dense_q, sparse_q, flt, limit)
        best = max((h.score for h in hits), default=0.0)
        return [Scored(h.id, ds.id, h.score / best if best > 0 else 0.0) for h in hits]

    async def _rerank(self, tenant_id: str, query: str, scored: list[Scored], rm: RetrievalModel) -> list[Scored]:
        m = rm.reranking_model
        assert m is not None
        async with self.kn.db.session() as s:
            creds = await provider_credentials(s, self.kn.ctx.settings.secret_key, tenant_id,
                                               m.reranking_provider_name, m.reranking_model_name, "rerank")
            ids = [x.segment_id for x in scored]
            rows = dict((await s.exec(select(DocumentSegment.id, DocumentSegment.content).where(
                col(DocumentSegment.id).in_(ids)))).all())
            rows.update((await s.exec(select(ChildChunk.id, ChildChunk.content).where(
                col(ChildChunk.id).in_([i for i in ids if i not in rows])))).all())
        if creds is None:
            raise ApiError(400, "provider_not_initialize",
                           f"No credentials for the rerank provider '{m.reranking_provider_name}'.")
        present = [x for x in scored if x.segment_id in rows]
        if not present:
            return []
        try:
            resp = await litellm().arerank(**call_kwargs(m.reranking_provider_name, m.reranking_model_name, creds),
                                           query=query, documents=[rows[x.segment_id] for x in present],
                                           top_n=min(len(present), rm.top_k * 2))
        except Exception as e:
            raise ApiError(400, "invalid_param", f"Reranking failed: {e}") from e
        results = resp.results if hasattr(resp, "results") else resp["results"]
        out = []
        for r in results:
            idx = r["index"] if isinstance(r, dict) else r.index
            score = r["relevance_score"] if isinstance(r, dict) else r.relevance_score
            out.append(Scored(present[idx].segment_id, present[idx].dataset_id, float(score)))
        return out

    async def _records(self, scored: list[Scored], top_k: int, datasets: dict[str, Dataset]) -> list[dict[str, Any]]:
        if not scored:
            return []
        ids = [x.segment_id for x in scored[: top_k * CANDIDATES]]
        async with self.kn.db.session() as s:
            children = {c.id: c for c in await s.exec(select(ChildChunk).where(col(ChildChunk.id).in_(ids)))}
            parent_ids = {c.segment_id for c in children.values()}
            segs = {g.id: g for g in await s.exec(select(DocumentSegment).where(
                col(DocumentSegment.id).in_([i for i in ids if i not in children] + list(parent_ids)),
                DocumentSegment.enabled == True, DocumentSegment.status == "completed"))}
            doc_ids = {g.document_id for g in segs.values()}
            docs = {d.id: d for d in await s.exec(select(Document).where(
                col(Document.id).in_(doc_ids), Document.enabled == True,
                Document.archived == False, Document.indexing_status == "completed"))}
            out: list[dict[str, Any]] = []
            by_segment: dict[str, dict[str, Any]] = {}
            for x in scored:
                child = children.get(x.segment_id)
                g = segs.get(child.segment_id if child else x.segment_id)
                d = docs.get(g.document_id) if g else None
                if g is None or d is None:
                    continue
                record = by_segment.get(g.id)
                if record is None:  # best first: the parent's first hit is its best child
                    if len(out) >= top_k:
                        continue
                    ds = datasets[x.dataset_id]
                    seg = segment_json(g)
                    seg["document"] = {"id": d.id, "data_source_type": d.data_source_type, "name": d.name,
                                       "doc_type": None, "doc_metadata": d.doc_metadata or {}}
                    record = by_segment[g.id] = {
                        "segment": seg, "child_chunks": [], "score": round(x.score, 6), "tsne_position": None,
                        "files": [], "summary": None, "dataset": {"id": ds.id, "name": ds.name}}
                    out.append(record)
                if child is not None:
                    record["child_chunks"].append({"id": child.id, "content": child.content,
                                                   "position": child.position, "score": round(x.score, 6)})
            if out:
                t = DocumentSegment.__table__
                await s.exec(update(t).where(t.c.id.in_([r["segment"]["id"] for r in out]))
                             .values(hit_count=t.c.hit_count + 1))
                await s.commit()
        return out


def _conditions(rm: RetrievalModel) -> tuple[MetadataCondition, ...]:
    mf = rm.metadata_filtering_conditions
    if mf is None:
        return ()
    return tuple(MetadataCondition(name=c.name, op=c.comparison_operator, value=c.value)  # type: ignore[arg-type]
                 for c in mf.conditions)

"""VectorStore adapter over qdrant-client: a Qdrant server (``url=``) or its local mode (``location=":memory:"``
or ``path=``, for tests; local mode is brute force and ignores payload indexes)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import Any

from qdrant_client import AsyncQdrantClient
from qdrant_client import models as m
from qdrant_client.http.exceptions import UnexpectedResponse

from shared.knowledge.vectors import (
    NUMERIC_OPS,
    P_DATASET,
    P_DOCUMENT,
    P_ENABLED,
    P_METADATA,
    P_TENANT,
    MetadataCondition,
    SparseVector,
    VectorFilter,
    VectorHit,
    VectorPoint,
    is_number,
    metadata_matches,
    needs_recheck,
    search_rechecked,
)

DENSE, SPARSE = "dense", "sparse"
_UPSERT_BATCH = 256  # keeps one request well under the server's 32 MB body limit at 1024 dims


def _missing(exc: BaseException) -> bool:
    """The collection does not exist (server: 404; local mode: ValueError '... not found')."""
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code == 404
    return isinstance(exc, ValueError) and "not found" in str(exc)


def meta_key(name: str) -> str:
    # JSON-path quoting for names that are not plain identifiers (dots, spaces, ...).
    return f"{P_METADATA}.{name}" if re.fullmatch(r"\w+", name) else f'{P_METADATA}."{name}"'


def _eq(key: str, value: Any) -> m.Condition:
    if is_number(value):  # MatchValue never matches floats, and 5 must match a stored 5.0
        return m.FieldCondition(key=key, range=m.Range(gte=float(value), lte=float(value)))
    return m.FieldCondition(key=key, match=m.MatchValue(value=value))


def _any_values(value: Any) -> list[Any]:
    vals = list(value) if isinstance(value, list | tuple | set | frozenset) else [value]
    return vals if all(isinstance(v, int) and not isinstance(v, bool) for v in vals) else [str(v) for v in vals]


def _meta_condition(c: MetadataCondition) -> m.Condition:
    key, op = meta_key(c.name), c.op
    v = float(c.value) if op in NUMERIC_OPS else c.value
    empty = m.IsEmptyCondition(is_empty=m.PayloadField(key=key))

    def field(**kw: Any) -> m.FieldCondition:
        return m.FieldCondition(key=key, **kw)

    def absent_or(cond: m.Condition) -> m.Filter:  # negative ops: the value must exist (SQL semantics)
        return m.Filter(must_not=[cond, empty])

    if op in ("is", "="):
        return _eq(key, v)
    if op in ("is not", "≠"):
        return absent_or(_eq(key, v))
    if op == "contains":
        return field(match=m.MatchSubstring(substring=str(v)))
    if op == "not contains":
        return absent_or(field(match=m.MatchSubstring(substring=str(v))))
    if op == "start with":
        return field(match=m.MatchPrefix(prefix=str(v)))
    if op == "end with":  # no suffix match in Qdrant: a superset, re-checked by metadata_matches
        return field(match=m.MatchSubstring(substring=str(v)))
    if op == "empty":
        return empty
    if op == "not empty":
        return m.Filter(must_not=[empty])
    if op in (">", "<", "≥", "≤"):
        bound = {">": "gt", "<": "lt", "≥": "gte", "≤": "lte"}[op]
        return field(range=m.Range(**{bound: v}))
    if op in ("before", "after"):
        bound = "gt" if op == "after" else "lt"
        if is_number(v):  # Dify stores time metadata as unix seconds
            return field(range=m.Range(**{bound: float(v)}))
        return field(range=m.DatetimeRange(**{bound: str(v)}))
    if op == "in":
        return field(match=m.MatchAny(any=_any_values(v)))
    if op == "not in":
        return absent_or(field(match=m.MatchAny(any=_any_values(v))))
    raise ValueError(f"unknown metadata operator {op!r}")


def build_filter(flt: VectorFilter, include_disabled: bool = False) -> m.Filter:
    must: list[m.Condition] = [
        m.FieldCondition(key=P_TENANT, match=m.MatchValue(value=flt.tenant_id)),
        m.FieldCondition(key=P_DATASET, match=m.MatchAny(any=list(flt.dataset_ids))),
    ]
    if not include_disabled:
        must.append(m.FieldCondition(key=P_ENABLED, match=m.MatchValue(value=True)))
    if flt.document_ids is not None:
        must.append(m.FieldCondition(key=P_DOCUMENT, match=m.MatchAny(any=list(flt.document_ids))))
    conds = [_meta_condition(c) for c in flt.metadata]
    if conds and flt.metadata_logic == "or":
        must.append(m.Filter(should=conds))
    else:
        must.extend(conds)
    return m.Filter(must=must)


def _document_filter(tenant_id: str, dataset_id: str, document_id: str | None = None) -> list[m.Condition]:
    must: list[m.Condition] = [
        m.FieldCondition(key=P_TENANT, match=m.MatchValue(value=tenant_id)),
        m.FieldCondition(key=P_DATASET, match=m.MatchValue(value=dataset_id)),
    ]
    if document_id is not None:
        must.append(m.FieldCondition(key=P_DOCUMENT, match=m.MatchValue(value=document_id)))
    return must


def _empty(flt: VectorFilter) -> bool:
    return not flt.dataset_ids or (flt.document_ids is not None and not flt.document_ids)


def _hits(points: list[m.ScoredPoint]) -> list[VectorHit]:
    return [VectorHit(id=str(p.id), score=p.score, payload=p.payload or {}) for p in points]


class QdrantStore:
    kind = "qdrant"

    def __init__(self, url: str | None = None, api_key: str | None = None, location: str | None = None,
                 path: str | None = None, *, timeout: int = 60) -> None:
        if sum(x is not None for x in (url, location, path)) != 1:
            raise ValueError("QdrantStore needs exactly one of url, location, path")
        self._local = url is None
        if url is not None:
            # check_compatibility would make a blocking HTTP call inside this constructor.
            self._client = AsyncQdrantClient(url=url, api_key=api_key, timeout=timeout,
                                             check_compatibility=False)
        elif path is not None:
            self._client = AsyncQdrantClient(path=path)
        else:
            self._client = AsyncQdrantClient(location=location)
        self._ready: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    # -- spaces ------------------------------------------------------------------------------------------

    async def ensure_space(self, space: str, dim: int | None) -> None:
        if space in self._ready:
            return
        async with self._locks.setdefault(space, asyncio.Lock()):
            if space in self._ready:
                return
            if not await self._client.collection_exists(space):
                try:
                    await self._client.create_collection(
                        space,
                        vectors_config={} if dim is None else {
                            DENSE: m.VectorParams(size=dim, distance=m.Distance.COSINE)},
                        sparse_vectors_config={SPARSE: m.SparseVectorParams(modifier=m.Modifier.IDF)},
                    )
                except Exception:
                    # Another process created it between the check and the create: that is success.
                    if not await self._client.collection_exists(space):
                        raise
            if not self._local:  # local mode ignores payload indexes (and warns about them)
                await self._ensure_indexes(space)
            self._ready.add(space)

    async def _ensure_indexes(self, space: str) -> None:
        # Checked on every first use so a creator that died before indexing is repaired.
        have = (await self._client.get_collection(space)).payload_schema or {}
        wanted: dict[str, Any] = {
            P_TENANT: m.KeywordIndexParams(type=m.KeywordIndexType.KEYWORD, is_tenant=True),
            P_DATASET: m.PayloadSchemaType.KEYWORD,
            P_DOCUMENT: m.PayloadSchemaType.KEYWORD,
            P_ENABLED: m.PayloadSchemaType.BOOL,
        }
        for name, schema in wanted.items():
            if name not in have:
                await self._client.create_payload_index(space, name, field_schema=schema, wait=True)

    # -- writes ------------------------------------------------------------------------------------------

    async def upsert(self, space: str, points: list[VectorPoint]) -> None:
        structs = [m.PointStruct(id=p.id, vector=_vectors(p), payload=p.payload) for p in points]
        for i in range(0, len(structs), _UPSERT_BATCH):
            try:
                await self._client.upsert(space, structs[i:i + _UPSERT_BATCH], wait=True)
            except Exception as exc:
                if _missing(exc):
                    raise LookupError(f"vector space {space!r} does not exist (call ensure_space)") from exc
                raise

    async def delete_ids(self, space: str, ids: list[str]) -> None:
        if ids:
            await self._delete(space, m.PointIdsList(points=list(ids)))

    async def delete_document(self, space: str, tenant_id: str, dataset_id: str, document_id: str,
                              keep_ids: list[str] | None = None) -> None:
        must_not = [m.HasIdCondition(has_id=list(keep_ids))] if keep_ids else None
        flt = m.Filter(must=_document_filter(tenant_id, dataset_id, document_id), must_not=must_not)
        await self._delete(space, m.FilterSelector(filter=flt))

    async def delete_dataset(self, space: str, tenant_id: str, dataset_id: str) -> None:
        await self._delete(space, m.FilterSelector(filter=m.Filter(must=_document_filter(tenant_id, dataset_id))))

    async def _delete(self, space: str, selector: m.PointIdsList | m.FilterSelector) -> None:
        try:
            await self._client.delete(space, points_selector=selector, wait=True)
        except Exception as exc:
            if not _missing(exc):  # nothing to delete in a space that was never created
                raise

    async def set_enabled(self, space: str, enabled: bool, *, ids: list[str] | None = None,
                          tenant_id: str | None = None, dataset_id: str | None = None,
                          document_id: str | None = None) -> None:
        await self._set_payload(space, {P_ENABLED: enabled}, ids, tenant_id, dataset_id, document_id)

    async def set_document_metadata(self, space: str, tenant_id: str, dataset_id: str, document_id: str,
                                    metadata: dict[str, Any]) -> None:
        await self._set_payload(space, {P_METADATA: metadata}, None, tenant_id, dataset_id, document_id)

    async def _set_payload(self, space: str, payload: dict[str, Any], ids: list[str] | None,
                           tenant_id: str | None, dataset_id: str | None, document_id: str | None) -> None:
        if ids is not None:
            if not ids:
                return
            selector: Any = list(ids)
        elif tenant_id and dataset_id and document_id:
            selector = m.Filter(must=_document_filter(tenant_id, dataset_id, document_id))
        else:
            raise ValueError("a payload update needs ids, or tenant_id + dataset_id + document_id")
        try:
            await self._client.set_payload(space, payload=payload, points=selector, wait=True)
        except Exception as exc:
            if not _missing(exc):
                raise

    # -- reads -------------------------------------------------------------------------------------------

    async def _query(self, space: str, **kw: Any) -> list[VectorHit]:
        try:
            res = await self._client.query_points(space, with_payload=True, **kw)
        except Exception as exc:
            if _missing(exc):  # nothing indexed in this space yet
                return []
            raise
        return _hits(res.points)

    async def search_dense(self, space: str, vector: list[float], flt: VectorFilter, limit: int,
                           score_threshold: float | None = None) -> list[VectorHit]:
        if _empty(flt):
            return []
        f = build_filter(flt)
        return await search_rechecked(flt, limit, lambda n: self._query(
            space, query=_dense(vector), using=DENSE, query_filter=f, limit=n, score_threshold=score_threshold))

    async def search_sparse(self, space: str, vector: SparseVector, flt: VectorFilter, limit: int
                            ) -> list[VectorHit]:
        if _empty(flt) or not vector.indices:
            return []
        f = build_filter(flt)
        return await search_rechecked(flt, limit, lambda n: self._query(
            space, query=_sparse(vector), using=SPARSE, query_filter=f, limit=n))

    async def search_hybrid(self, space: str, dense: list[float], sparse: SparseVector, flt: VectorFilter,
                            limit: int) -> list[VectorHit]:
        if _empty(flt):
            return []
        f = build_filter(flt)

        def run(n: int) -> Awaitable[list[VectorHit]]:
            depth = max(n * 2, 20)  # each ranking must reach past the fused top-n
            prefetch = [m.Prefetch(query=_dense(dense), using=DENSE, filter=f, limit=depth)]
            if sparse.indices:
                prefetch.append(m.Prefetch(query=_sparse(sparse), using=SPARSE, filter=f, limit=depth))
            return self._query(space, prefetch=prefetch, query=m.FusionQuery(fusion=m.Fusion.RRF),
                               query_filter=f, limit=n)

        return await search_rechecked(flt, limit, run)

    async def count(self, space: str, flt: VectorFilter, include_disabled: bool = False) -> int:
        if _empty(flt):
            return 0
        f = build_filter(flt, include_disabled)
        try:
            if not needs_recheck(flt):
                return (await self._client.count(space, count_filter=f, exact=True)).count
            total, offset = 0, None
            while True:
                records, offset = await self._client.scroll(space, scroll_filter=f, limit=1000, offset=offset,
                                                            with_payload=[P_METADATA])
                total += sum(metadata_matches(flt, r.payload or {}) for r in records)
                if offset is None:
                    return total
        except Exception as exc:
            if _missing(exc):
                return 0
            raise

    async def optimize(self, space: str) -> bool:
        return False  # a Qdrant server builds its indexes by itself (optimizer thresholds)

    async def ping(self) -> None:
        await self._client.get_collections()

    async def close(self) -> None:
        await self._client.close()


def _dense(v: Any) -> list[float]:
    return v.tolist() if hasattr(v, "tolist") else list(v)


def _sparse(v: SparseVector) -> m.SparseVector:
    return m.SparseVector(indices=list(v.indices), values=list(v.values))


def _vectors(p: VectorPoint) -> dict[str, Any]:
    vec: dict[str, Any] = {}
    if p.dense is not None:
        vec[DENSE] = _dense(p.dense)
    if p.sparse is not None:
        vec[SPARSE] = _sparse(p.sparse)
    return vec

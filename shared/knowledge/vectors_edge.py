"""VectorStore adapter over qdrant-edge-py, the embedded Qdrant engine (`all` mode): one EdgeShard per space
in ``root/<space>``.

Engine facts this adapter relies on (qdrant-edge-py 0.9.0, measured):

* Calls are synchronous; queries release the GIL, so they run on a small dedicated thread pool.
* Concurrent writers are safe: ``EdgeShard.update`` holds the shard's WAL mutex while it applies the
  operation, so writes to one shard are serialised by the engine itself (no Python lock needed).
  ``optimize()`` may run concurrently with reads and writes.
* Every update is appended to the WAL before it returns and is replayed on load: a process killed right
  after an upsert returns loses nothing, without ``flush()``. ``flush()`` (5-100 ms) only adds
  durability against an OS crash or power loss, as the Qdrant server does not fsync per write either;
  ``flush_each_write=True`` buys it.
* A shard holds an exclusive lock on its WAL: one process (one EdgeStore) per root. ``close()`` releases it.
* Indexing is not automatic: points stay in an appendable segment searched by brute force (exact) until
  ``optimize()`` builds HNSW. HNSW recall@10 on random vectors is poor at the default ef (50k x 64d: 0.76,
  0.97 at ef=256; 20k x 384d: 0.37, 0.74 at ef=256, 0.89 at 512) while exact search costs about the same
  below ~50k points (5-7 ms), hence ``exact`` / ``hnsw_ef`` / ``exact_below``.
* ``MatchValue(True)`` is read as the integer 1 by the bindings and never matches a stored boolean; a
  numpy bool goes through as a boolean.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import qdrant_edge as qe

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

T = TypeVar("T")
DENSE, SPARSE = "dense", "sparse"
RRF_K = 2  # the Qdrant server's default for Fusion.RRF, so both adapters rank alike
_UPSERT_BATCH = 512  # bounds one WAL record
_SPACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")  # also a directory name: no traversal
_CONFIG_FILE = "edge_config.json"


def _value(v: Any) -> Any:
    return np.bool_(v) if isinstance(v, bool) else v  # see the module doc: True would become 1


def _field(key: str, **kw: Any) -> qe.FieldCondition:
    return qe.FieldCondition(key, **kw)


def _match(key: str, value: Any) -> qe.FieldCondition:
    return _field(key, match=qe.MatchValue(_value(value)))


def meta_key(name: str) -> str:
    return f"{P_METADATA}.{name}" if re.fullmatch(r"\w+", name) else f'{P_METADATA}."{name}"'


def _eq(key: str, value: Any) -> Any:
    if is_number(value):  # a range, so that 5 also matches a stored 5.0
        return _field(key, range=qe.RangeFloat(gte=float(value), lte=float(value)))
    return _match(key, value)


def _any_values(value: Any) -> list[Any]:
    vals = list(value) if isinstance(value, list | tuple | set | frozenset) else [value]
    return vals if all(isinstance(v, int) and not isinstance(v, bool) for v in vals) else [str(v) for v in vals]


def _meta_condition(c: MetadataCondition) -> Any:
    # Same mapping as vectors_qdrant._meta_condition (the contract tests hold both to it).
    key, op = meta_key(c.name), c.op
    v = float(c.value) if op in NUMERIC_OPS else c.value
    empty = qe.IsEmptyCondition(key)

    def absent_or(cond: Any) -> qe.Filter:  # negative ops: the value must exist (SQL semantics)
        return qe.Filter(must_not=[cond, empty])

    if op in ("is", "="):
        return _eq(key, v)
    if op in ("is not", "≠"):
        return absent_or(_eq(key, v))
    if op in ("contains", "end with"):  # "end with": a superset, re-checked by metadata_matches
        return _field(key, match=qe.MatchSubstring(str(v)))
    if op == "not contains":
        return absent_or(_field(key, match=qe.MatchSubstring(str(v))))
    if op == "start with":
        return _field(key, match=qe.MatchPrefix(str(v)))
    if op == "empty":
        return empty
    if op == "not empty":
        return qe.Filter(must_not=[empty])
    if op in (">", "<", "≥", "≤"):
        bound = {">": "gt", "<": "lt", "≥": "gte", "≤": "lte"}[op]
        return _field(key, range=qe.RangeFloat(**{bound: v}))
    if op in ("before", "after"):
        bound = "gt" if op == "after" else "lt"
        if is_number(v):  # Dify stores time metadata as unix seconds
            return _field(key, range=qe.RangeFloat(**{bound: float(v)}))
        return _field(key, range=qe.RangeDateTime(**{bound: str(v)}))
    if op == "in":
        return _field(key, match=qe.MatchAny(_any_values(v)))
    if op == "not in":
        return absent_or(_field(key, match=qe.MatchAny(_any_values(v))))
    raise ValueError(f"unknown metadata operator {op!r}")


def build_filter(flt: VectorFilter, include_disabled: bool = False) -> qe.Filter:
    must: list[Any] = [_match(P_TENANT, flt.tenant_id), _field(P_DATASET, match=qe.MatchAny(list(flt.dataset_ids)))]
    if not include_disabled:
        must.append(_match(P_ENABLED, True))
    if flt.document_ids is not None:
        must.append(_field(P_DOCUMENT, match=qe.MatchAny(list(flt.document_ids))))
    conds = [_meta_condition(c) for c in flt.metadata]
    if conds and flt.metadata_logic == "or":
        must.append(qe.Filter(should=conds))
    else:
        must.extend(conds)
    return qe.Filter(must=must)


def _document_filter(tenant_id: str, dataset_id: str, document_id: str | None = None) -> list[Any]:
    must = [_match(P_TENANT, tenant_id), _match(P_DATASET, dataset_id)]
    if document_id is not None:
        must.append(_match(P_DOCUMENT, document_id))
    return must


def _empty(flt: VectorFilter) -> bool:
    return not flt.dataset_ids or (flt.document_ids is not None and not flt.document_ids)


def _dense(v: Any) -> list[float]:
    return v.tolist() if hasattr(v, "tolist") else list(v)


def _sparse(v: SparseVector) -> qe.SparseVector:
    return qe.SparseVector(list(v.indices), list(v.values))


def _point(p: VectorPoint) -> qe.Point:
    vec: dict[str, Any] = {}
    if p.dense is not None:
        vec[DENSE] = _dense(p.dense)
    if p.sparse is not None:
        vec[SPARSE] = _sparse(p.sparse)
    return qe.Point(p.id, vec, p.payload)


def _hits(points: list[Any]) -> list[VectorHit]:
    return [VectorHit(id=str(p.id), score=p.score, payload=p.payload or {}) for p in points]


_INDEXES: dict[str, Any] = {
    P_TENANT: qe.KeywordIndexParams(is_tenant=True),
    P_DATASET: qe.PayloadSchemaType.Keyword,
    P_DOCUMENT: qe.PayloadSchemaType.Keyword,
    P_ENABLED: qe.PayloadSchemaType.Bool,
}


class EdgeStore:
    kind = "edge"

    def __init__(self, root: Path | str, *, exact: bool | None = None, hnsw_ef: int = 256,
                 exact_below: int = 50_000, flush_each_write: bool = False, max_workers: int = 4) -> None:
        """``exact``: True = always brute-force dense search, False = always HNSW (where built) with
        ``hnsw_ef``; None = exact while the shard has fewer than ``exact_below`` points (7 ms at 50k),
        then HNSW. ``flush_each_write``: fsync after every write (see the module doc)."""
        self._root = Path(root)
        self._exact, self._hnsw_ef, self._exact_below = exact, hnsw_ef, exact_below
        self._flush_each_write = flush_each_write
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="edge-store")
        self._shards: dict[str, qe.EdgeShard] = {}
        self._open_lock = threading.Lock()  # creating/loading a shard must happen once per space
        self._closed = False

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError("EdgeStore is closed")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- spaces (worker threads) -------------------------------------------------------------------------

    def _path(self, space: str) -> Path:
        if not _SPACE_NAME.fullmatch(space):
            raise ValueError(f"invalid vector space name {space!r}")
        return self._root / space

    def _open(self, space: str, dim: int | None = None, create: bool = False) -> qe.EdgeShard | None:
        """The open shard of ``space``; loaded from disk if it exists, else created (``create``) or None."""
        shard = self._shards.get(space)
        if shard is not None:
            return shard
        path = self._path(space)
        with self._open_lock:
            shard = self._shards.get(space)
            if shard is not None:
                return shard
            if (path / _CONFIG_FILE).exists():
                shard = qe.EdgeShard.load(str(path))
            elif create:
                path.mkdir(parents=True, exist_ok=True)
                vectors = None if dim is None else {DENSE: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)}
                config = qe.EdgeConfig(vectors=vectors,
                                       sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)})
                shard = qe.EdgeShard.create(str(path), config)
            else:
                return None
            # Checked on every open so a shard whose creator died before indexing is repaired.
            have = shard.info().payload_schema
            for name, schema in _INDEXES.items():
                if name not in have:
                    shard.update(qe.UpdateOperation.create_field_index(name, schema))
            self._shards[space] = shard
            return shard

    def _writable(self, space: str) -> qe.EdgeShard:
        shard = self._open(space)
        if shard is None:
            raise LookupError(f"vector space {space!r} does not exist (call ensure_space)")
        return shard

    async def ensure_space(self, space: str, dim: int | None) -> None:
        if space not in self._shards:
            await self._run(self._open, space, dim, True)

    # -- writes ------------------------------------------------------------------------------------------

    def _update(self, shard: qe.EdgeShard, ops: list[qe.UpdateOperation]) -> None:
        for op in ops:
            shard.update(op)
        if self._flush_each_write:
            shard.flush()

    async def _write(self, space: str, ops: Callable[[], list[qe.UpdateOperation]], must_exist: bool) -> None:
        def work() -> None:
            shard = self._writable(space) if must_exist else self._open(space)
            if shard is not None:  # deleting from a space that was never created: nothing to do
                self._update(shard, ops())
        await self._run(work)

    async def upsert(self, space: str, points: list[VectorPoint]) -> None:
        def ops() -> list[qe.UpdateOperation]:
            return [qe.UpdateOperation.upsert_points([_point(p) for p in points[i:i + _UPSERT_BATCH]])
                    for i in range(0, len(points), _UPSERT_BATCH)]
        if points:
            await self._write(space, ops, must_exist=True)

    async def delete_ids(self, space: str, ids: list[str]) -> None:
        if ids:
            await self._write(space, lambda: [qe.UpdateOperation.delete_points(list(ids))], must_exist=False)

    async def delete_document(self, space: str, tenant_id: str, dataset_id: str, document_id: str,
                              keep_ids: list[str] | None = None) -> None:
        must_not = [qe.HasIdCondition(set(keep_ids))] if keep_ids else None
        flt = qe.Filter(must=_document_filter(tenant_id, dataset_id, document_id), must_not=must_not)
        await self._write(space, lambda: [qe.UpdateOperation.delete_points_by_filter(flt)], must_exist=False)

    async def delete_dataset(self, space: str, tenant_id: str, dataset_id: str) -> None:
        flt = qe.Filter(must=_document_filter(tenant_id, dataset_id))
        await self._write(space, lambda: [qe.UpdateOperation.delete_points_by_filter(flt)], must_exist=False)

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
            op = qe.UpdateOperation.set_payload(list(ids), payload)
        elif tenant_id and dataset_id and document_id:
            flt = qe.Filter(must=_document_filter(tenant_id, dataset_id, document_id))
            op = qe.UpdateOperation.set_payload_by_filter(flt, payload)
        else:
            raise ValueError("a payload update needs ids, or tenant_id + dataset_id + document_id")
        await self._write(space, lambda: [op], must_exist=False)

    async def optimize(self, space: str) -> bool:
        """Build HNSW / merge segments (seconds per 10k points, on one of the store's threads; reads and
        writes continue meanwhile)."""
        def work() -> bool:
            shard = self._open(space)
            return bool(shard and shard.optimize())
        return await self._run(work)

    # -- reads -------------------------------------------------------------------------------------------

    def _params(self, shard: qe.EdgeShard) -> qe.SearchParams:
        exact = self._exact
        if exact is None:
            exact = shard.info().points_count < self._exact_below
        return qe.SearchParams(exact=True) if exact else qe.SearchParams(hnsw_ef=self._hnsw_ef)

    async def _query(self, space: str, build: Callable[[qe.EdgeShard], qe.QueryRequest]) -> list[VectorHit]:
        def work() -> list[VectorHit]:
            shard = self._open(space)
            return [] if shard is None else _hits(shard.query(build(shard)))
        return await self._run(work)

    async def search_dense(self, space: str, vector: list[float], flt: VectorFilter, limit: int,
                           score_threshold: float | None = None) -> list[VectorHit]:
        if _empty(flt):
            return []
        f, q = build_filter(flt), qe.Query.Nearest(_dense(vector), using=DENSE)
        return await search_rechecked(flt, limit, lambda n: self._query(space, lambda shard: qe.QueryRequest(
            limit=n, query=q, filter=f, score_threshold=score_threshold, params=self._params(shard),
            with_payload=True)))

    async def search_sparse(self, space: str, vector: SparseVector, flt: VectorFilter, limit: int
                            ) -> list[VectorHit]:
        if _empty(flt) or not vector.indices:
            return []
        f, q = build_filter(flt), qe.Query.Nearest(_sparse(vector), using=SPARSE)
        return await search_rechecked(flt, limit, lambda n: self._query(space, lambda shard: qe.QueryRequest(
            limit=n, query=q, filter=f, with_payload=True)))

    async def search_hybrid(self, space: str, dense: list[float], sparse: SparseVector, flt: VectorFilter,
                            limit: int) -> list[VectorHit]:
        if _empty(flt):
            return []
        f = build_filter(flt)
        dq = qe.Query.Nearest(_dense(dense), using=DENSE)
        sq = qe.Query.Nearest(_sparse(sparse), using=SPARSE) if sparse.indices else None

        def build(n: int, shard: qe.EdgeShard) -> qe.QueryRequest:
            depth = max(n * 2, 20)  # each ranking must reach past the fused top-n
            prefetches = [qe.Prefetch(limit=depth, query=dq, filter=f, params=self._params(shard))]
            if sq is not None:
                prefetches.append(qe.Prefetch(limit=depth, query=sq, filter=f))
            return qe.QueryRequest(limit=n, query=qe.Fusion.Rrf(k=RRF_K), prefetches=prefetches, filter=f,
                                   with_payload=True)

        return await search_rechecked(flt, limit, lambda n: self._query(space, lambda shard: build(n, shard)))

    async def count(self, space: str, flt: VectorFilter, include_disabled: bool = False) -> int:
        if _empty(flt):
            return 0
        f = build_filter(flt, include_disabled)

        def work() -> int:
            shard = self._open(space)
            if shard is None:
                return 0
            if not needs_recheck(flt):
                return shard.count(qe.CountRequest(exact=True, filter=f))
            total, offset = 0, None
            while True:
                records, offset = shard.scroll(qe.ScrollRequest(offset=offset, limit=1000, filter=f,
                                                                with_payload=[P_METADATA]))
                total += sum(metadata_matches(flt, r.payload or {}) for r in records)
                if offset is None:
                    return total
        return await self._run(work)

    async def ping(self) -> None:
        if self._closed:
            raise RuntimeError("EdgeStore is closed")
        await self._run(lambda: None)  # the engine's thread pool answers

    async def close(self) -> None:
        """Waits for running calls, then closes every shard (which flushes it and releases its WAL lock)."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._pool.shutdown, True)
        shards, self._shards = list(self._shards.values()), {}
        for shard in shards:
            await asyncio.to_thread(shard.close)

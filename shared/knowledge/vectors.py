"""The vector-store port (ARCHITECTURE §4): what the indexer writes and the runtime/indexer query.

Adapters: ``vectors_qdrant.QdrantStore`` (a Qdrant server through qdrant-client, or its local
``:memory:`` mode for small tests) and ``vectors_edge.EdgeStore`` (the embedded Qdrant engine,
qdrant-edge-py, for `all` mode). One contract test suite runs against every adapter.

A *space* is one collection: every segment embedded with the same model (and dimension) lives in the
same space, with two named vectors: ``dense`` (cosine) and ``sparse`` (term weights, IDF applied by
the engine). Economy datasets live in a sparse-only space. Point ids are UUID strings derived from
segment ids, so re-indexing overwrites instead of duplicating.

Every query is filtered by tenant and dataset; disabled points (``enabled: false``) are never
returned.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

# Payload keys every point carries (the adapters index the keyword ones).
P_TENANT = "tenant_id"
P_DATASET = "dataset_id"
P_DOCUMENT = "document_id"
P_SEGMENT = "segment_id"
P_ENABLED = "enabled"
P_METADATA = "doc_metadata"  # the document's metadata dict, for metadata filters


@dataclass(frozen=True, slots=True)
class SparseVector:
    indices: list[int]
    values: list[float]


@dataclass(slots=True)
class VectorPoint:
    id: str  # UUID string
    payload: dict[str, Any]  # P_TENANT, P_DATASET, P_DOCUMENT, P_SEGMENT, P_ENABLED, P_METADATA
    dense: list[float] | None = None  # None in a sparse-only space
    sparse: SparseVector | None = None


@dataclass(frozen=True, slots=True)
class MetadataCondition:
    """One condition on ``doc_metadata.<name>`` (Dify's metadata_filtering_conditions)."""

    name: str
    op: Literal["is", "is not", "contains", "not contains", "start with", "end with", "empty", "not empty",
                "=", "≠", ">", "<", "≥", "≤", "before", "after", "in", "not in"]
    value: Any = None


@dataclass(frozen=True, slots=True)
class VectorFilter:
    tenant_id: str
    dataset_ids: tuple[str, ...]
    document_ids: tuple[str, ...] | None = None  # restrict to these documents
    metadata: tuple[MetadataCondition, ...] = ()
    metadata_logic: Literal["and", "or"] = "and"


@dataclass(frozen=True, slots=True)
class VectorHit:
    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)


class VectorStore(Protocol):
    """Async port. Writes are idempotent; searches never return disabled points or other tenants'.
    A space that was never created reads as empty (searches [], count 0, deletes do nothing); upserting
    into it raises LookupError."""

    kind: str  # "qdrant" | "edge"

    async def ensure_space(self, space: str, dim: int | None) -> None:
        """Create the collection if missing: ``dense`` of ``dim`` (cosine) unless dim is None, and
        ``sparse`` with the IDF modifier. Safe to call repeatedly and concurrently."""

    async def upsert(self, space: str, points: list[VectorPoint]) -> None: ...

    async def delete_ids(self, space: str, ids: list[str]) -> None: ...

    async def delete_document(self, space: str, tenant_id: str, dataset_id: str, document_id: str,
                              keep_ids: list[str] | None = None) -> None:
        """Delete a document's points, except ``keep_ids`` (a re-index removes its stale chunks)."""

    async def delete_dataset(self, space: str, tenant_id: str, dataset_id: str) -> None: ...

    async def set_enabled(self, space: str, enabled: bool, *, ids: list[str] | None = None,
                          tenant_id: str | None = None, dataset_id: str | None = None,
                          document_id: str | None = None) -> None:
        """Flip ``enabled`` on points by id, or on every point of a document."""

    async def set_document_metadata(self, space: str, tenant_id: str, dataset_id: str, document_id: str,
                                    metadata: dict[str, Any]) -> None:
        """Replace ``doc_metadata`` on every point of a document (metadata filters read it)."""

    async def search_dense(self, space: str, vector: list[float], flt: VectorFilter, limit: int,
                           score_threshold: float | None = None) -> list[VectorHit]:
        """Cosine similarity, best first."""

    async def search_sparse(self, space: str, vector: SparseVector, flt: VectorFilter, limit: int
                            ) -> list[VectorHit]:
        """IDF-weighted dot product, best first (scores are not bounded)."""

    async def search_hybrid(self, space: str, dense: list[float], sparse: SparseVector, flt: VectorFilter,
                            limit: int) -> list[VectorHit]:
        """Reciprocal-rank fusion of the dense and sparse searches, done by the engine."""

    async def count(self, space: str, flt: VectorFilter, include_disabled: bool = False) -> int: ...

    async def optimize(self, space: str) -> bool:
        """Build the space's search index now (the embedded engine never does it by itself); False when
        there was nothing to do or the engine optimizes on its own (a Qdrant server)."""

    async def ping(self) -> None:
        """Raise when the store cannot serve (readiness probes)."""

    async def close(self) -> None: ...


# -- reference semantics of metadata conditions ---------------------------------------------------------
# The adapters translate conditions into engine filters. Qdrant has no suffix match, so "end with" goes to
# the engine as a substring match (a superset) and the adapters re-check the hits with this function; it
# is also the one definition of what each op means (Dify's SQL semantics: a missing or null value matches
# only "empty", never a negative op like "is not").

NUMERIC_OPS = frozenset({"=", "≠", ">", "<", "≥", "≤"})


def is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _values(metadata: Any, name: str) -> list[Any]:
    v = metadata.get(name) if isinstance(metadata, dict) else None
    return [x for x in (v if isinstance(v, list) else [v]) if x is not None]


def _same(x: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(x, bool):
        return isinstance(want, bool) and isinstance(x, bool) and x == want
    if is_number(want):
        return is_number(x) and x == want
    return isinstance(x, str) and x == want


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple | set | frozenset) else [value]


def _before_after(x: Any, want: Any, after: bool) -> bool:
    if is_number(want):
        return is_number(x) and (x > want if after else x < want)
    try:
        a, b = datetime.fromisoformat(str(x)), datetime.fromisoformat(str(want))
    except ValueError:
        return False
    a, b = (d if d.tzinfo else d.replace(tzinfo=UTC) for d in (a, b))
    return a > b if after else a < b


def condition_matches(cond: MetadataCondition, metadata: Any) -> bool:
    vals, op = _values(metadata, cond.name), cond.op
    want = float(cond.value) if op in NUMERIC_OPS else cond.value
    if op == "empty":
        return not vals
    if op == "not empty":
        return bool(vals)
    if op in ("is", "=", "is not", "≠"):
        hit = any(_same(x, want) for x in vals)
        return hit if op in ("is", "=") else bool(vals) and not hit
    if op in ("contains", "not contains"):
        hit = any(isinstance(x, str) and str(want) in x for x in vals)
        return hit if op == "contains" else bool(vals) and not hit
    if op == "start with":
        return any(isinstance(x, str) and x.startswith(str(want)) for x in vals)
    if op == "end with":
        return any(isinstance(x, str) and x.endswith(str(want)) for x in vals)
    if op in (">", "<", "≥", "≤"):
        cmp = {">": float.__gt__, "<": float.__lt__, "≥": float.__ge__, "≤": float.__le__}[op]
        return any(is_number(x) and cmp(float(x), want) for x in vals)
    if op in ("before", "after"):
        return any(_before_after(x, want, op == "after") for x in vals)
    if op in ("in", "not in"):
        hit = any(_same(x, w) for x in vals for w in _as_list(want))
        return hit if op == "in" else bool(vals) and not hit
    raise ValueError(f"unknown metadata operator {op!r}")


def metadata_matches(flt: VectorFilter, payload: dict[str, Any]) -> bool:
    """Whether a point's payload satisfies ``flt.metadata`` under ``flt.metadata_logic``."""
    if not flt.metadata:
        return True
    metadata = payload.get(P_METADATA)
    results = (condition_matches(c, metadata) for c in flt.metadata)
    return any(results) if flt.metadata_logic == "or" else all(results)


def needs_recheck(flt: VectorFilter) -> bool:
    """True when the engine filter is only a superset of ``flt`` (see above)."""
    return any(c.op == "end with" for c in flt.metadata)


_RECHECK_MAX = 10_000  # over-fetch ceiling for re-checked searches


async def search_rechecked(flt: VectorFilter, limit: int,
                           run: Callable[[int], Awaitable[list[VectorHit]]]) -> list[VectorHit]:
    """``run(n)`` searches the engine for n hits; when its filter is only a superset of ``flt``,
    over-fetch and keep the hits that really match, best first."""
    if not needs_recheck(flt):
        return await run(limit)
    n = max(limit * 4, 40)
    while True:
        hits = await run(n)
        kept = [h for h in hits if metadata_matches(flt, h.payload)]
        if len(kept) >= limit or len(hits) < n or n >= _RECHECK_MAX:
            return kept[:limit]
        n *= 4

"""Contract suite of the vector-store port (shared/knowledge/vectors.py), run against every adapter:
EdgeStore (embedded engine, tmp dir), QdrantStore in qdrant-client's local ``:memory:`` mode, and a real
Qdrant server when PLEXUS_TEST_QDRANT_URL is set. No mocks: every assertion goes through the engine."""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.knowledge.vectors import (
    P_DATASET,
    P_DOCUMENT,
    P_ENABLED,
    P_METADATA,
    P_SEGMENT,
    P_TENANT,
    MetadataCondition,
    SparseVector,
    VectorFilter,
    VectorHit,
    VectorPoint,
    VectorStore,
)
from shared.knowledge.vectors_edge import EdgeStore
from shared.knowledge.vectors_qdrant import QdrantStore

QDRANT_URL = os.environ.get("PLEXUS_TEST_QDRANT_URL")
TA, TB = "tenant-a", "tenant-b"
DS1, DS2 = "dataset-1", "dataset-2"
DIM = 8


class Space:
    """One test's store plus fresh space names (dropped afterwards on a real server)."""

    def __init__(self, store: VectorStore) -> None:
        self.store = store
        self.names: list[str] = []

    async def new(self, dim: int | None = DIM) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.names.append(name)
        await self.store.ensure_space(name, dim)
        return name


@pytest.fixture(params=["edge", "qdrant-local", "qdrant-server"])
async def sp(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Space]:
    if request.param == "edge":
        store: Any = EdgeStore(tmp_path / "vectors")
    elif request.param == "qdrant-local":
        store = QdrantStore(location=":memory:")
    else:
        if not QDRANT_URL:
            pytest.skip("PLEXUS_TEST_QDRANT_URL is not set")
        store = QdrantStore(url=QDRANT_URL)
    space = Space(store)
    yield space
    if request.param == "qdrant-server":
        for name in space.names:
            await store._client.delete_collection(name)
    await store.close()


def unit(*xs: float) -> list[float]:
    v = np.zeros(DIM)
    v[: len(xs)] = xs
    return (v / np.linalg.norm(v)).tolist()


def axis(i: int) -> list[float]:
    v = [0.0] * DIM
    v[i] = 1.0
    return v


def pt(tenant: str = TA, dataset: str = DS1, doc: str = "doc-1", *, dense: list[float] | None = None,
       sparse: dict[int, float] | None = None, enabled: bool = True, meta: dict[str, Any] | None = None,
       id: str | None = None) -> VectorPoint:
    pid = id or str(uuid.uuid4())
    payload = {P_TENANT: tenant, P_DATASET: dataset, P_DOCUMENT: doc, P_SEGMENT: f"seg-{pid[:8]}",
               P_ENABLED: enabled, P_METADATA: meta or {}}
    sv = SparseVector(list(sparse), list(sparse.values())) if sparse is not None else None
    return VectorPoint(id=pid, payload=payload, dense=dense, sparse=sv)


def flt(tenant: str = TA, datasets: tuple[str, ...] = (DS1,), **kw: Any) -> VectorFilter:
    return VectorFilter(tenant_id=tenant, dataset_ids=datasets, **kw)


def sv(**terms: float) -> SparseVector:
    return SparseVector([int(k[1:]) for k in terms], list(terms.values()))


def ids(hits: list[VectorHit]) -> list[str]:
    return [h.id for h in hits]


async def every_search(store: VectorStore, space: str, f: VectorFilter, dense: list[float],
                       sparse: SparseVector) -> set[str]:
    """Ids visible through any search path."""
    found: set[str] = set()
    found |= set(ids(await store.search_dense(space, dense, f, 100)))
    found |= set(ids(await store.search_sparse(space, sparse, f, 100)))
    found |= set(ids(await store.search_hybrid(space, dense, sparse, f, 100)))
    return found


async def test_upsert_is_idempotent_and_last_write_wins(sp: Space) -> None:
    s, space = sp.store, await sp.new()
    points = [pt(dense=axis(i), sparse={i: 1.0}, meta={"v": 1}) for i in range(3)]
    await s.upsert(space, points)
    assert await s.count(space, flt()) == 3
    # Same ids, new vectors and payload: still 3 points, and the new ones are what search sees.
    again = [pt(id=p.id, dense=axis(i + 3), sparse={i + 10: 1.0}, meta={"v": 2}) for i, p in enumerate(points)]
    await s.upsert(space, again)
    await s.upsert(space, again)
    assert await s.count(space, flt()) == 3
    hits = await s.search_dense(space, axis(3), flt(), 1)
    assert ids(hits) == [points[0].id]
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].payload[P_METADATA] == {"v": 2}
    assert hits[0].payload[P_SEGMENT] == again[0].payload[P_SEGMENT]
    assert await s.search_dense(space, axis(0), flt(), 3, score_threshold=0.5) == []  # old vector gone
    assert ids(await s.search_sparse(space, SparseVector([10], [1.0]), flt(), 3)) == [points[0].id]
    assert await s.search_sparse(space, SparseVector([0], [1.0]), flt(), 3) == []


async def test_tenant_dataset_and_document_isolation(sp: Space) -> None:
    s, space = sp.store, await sp.new()
    same, terms = unit(1, 1), {5: 1.0}
    a1 = pt(TA, DS1, "doc-1", dense=same, sparse=terms)
    a2 = pt(TA, DS1, "doc-2", dense=same, sparse=terms)
    a_other_ds = pt(TA, DS2, "doc-3", dense=same, sparse=terms)
    b = pt(TB, DS1, "doc-1", dense=same, sparse=terms)  # identical vectors, even the same dataset id
    await s.upsert(space, [a1, a2, a_other_ds, b])
    q, qs = same, SparseVector([5], [1.0])

    assert await every_search(s, space, flt(TA), q, qs) == {a1.id, a2.id}
    assert await every_search(s, space, flt(TB), q, qs) == {b.id}
    assert await every_search(s, space, flt(TA, (DS1, DS2)), q, qs) == {a1.id, a2.id, a_other_ds.id}
    assert await every_search(s, space, flt(TA, (DS2,)), q, qs) == {a_other_ds.id}
    assert await every_search(s, space, flt(TA, document_ids=("doc-2",)), q, qs) == {a2.id}
    assert await every_search(s, space, flt(TA, document_ids=("doc-3",)), q, qs) == set()  # other dataset's
    assert await every_search(s, space, flt("tenant-c"), q, qs) == set()
    assert await every_search(s, space, flt(TA, ()), q, qs) == set()
    assert await every_search(s, space, flt(TA, document_ids=()), q, qs) == set()
    assert await s.count(space, flt(TA)) == 2
    assert await s.count(space, flt(TB)) == 1
    assert await s.count(space, flt(TA, (DS1, DS2), document_ids=("doc-1", "doc-3"))) == 2


async def test_dense_ranking_scores_and_threshold(sp: Space) -> None:
    s, space = sp.store, await sp.new()
    cosines = [1.0, 0.8, 0.5, 0.0, -0.6]
    points = [pt(dense=unit(c, math.sqrt(1 - c * c))) for c in cosines]
    await s.upsert(space, list(reversed(points)))
    hits = await s.search_dense(space, axis(0), flt(), 10)
    assert ids(hits) == [p.id for p in points]
    for hit, c in zip(hits, cosines, strict=True):
        assert hit.score == pytest.approx(c, abs=1e-4)
    assert ids(await s.search_dense(space, axis(0), flt(), 2)) == [points[0].id, points[1].id]
    above = await s.search_dense(space, axis(0), flt(), 10, score_threshold=0.7)
    assert ids(above) == [points[0].id, points[1].id]
    # Cosine, not dot product: the vectors' lengths do not matter.
    long = pt(dense=[3.0, 4.0] + [0.0] * (DIM - 2))
    await s.upsert(space, [long])
    hit = (await s.search_dense(space, [0.6, 0.8] + [0.0] * (DIM - 2), flt(), 1))[0]
    assert hit.id == long.id and hit.score == pytest.approx(1.0, abs=1e-4)


async def test_sparse_idf_ranks_rare_term_first(sp: Space) -> None:
    s, space = sp.store, await sp.new()
    # Term 1 is in 9 of 10 docs with a big weight; term 7 is in one doc with a small weight. Without IDF the
    # common docs score 3.0 and the rare one 1.0; with IDF the rare term dominates.
    common = [pt(sparse={1: 3.0, 100 + i: 0.5}) for i in range(9)]
    rare = pt(sparse={7: 1.0})
    await s.upsert(space, [*common, rare])
    hits = await s.search_sparse(space, SparseVector([1, 7], [1.0, 1.0]), flt(), 10)
    assert hits[0].id == rare.id
    assert set(ids(hits)) == {rare.id, *(p.id for p in common)}
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    assert ids(await s.search_sparse(space, SparseVector([7], [1.0]), flt(), 10)) == [rare.id]


async def test_hybrid_is_rrf_over_both_rankings(sp: Space) -> None:
    s, space = sp.store, await sp.new()
    both = pt(dense=unit(1, 0.1), sparse={3: 1.0, 4: 1.0})  # 2nd by dense, 1st by sparse
    dense_top = pt(dense=unit(1, 0), sparse={9: 1.0})  # 1st by dense, absent from sparse
    sparse_only = pt(dense=unit(0, 1), sparse={3: 1.0})  # last by dense, 2nd by sparse
    filler = [pt(dense=unit(1, 0.5 + i), sparse={50 + i: 1.0}) for i in range(3)]
    await s.upsert(space, [both, dense_top, sparse_only, *filler])
    hits = await s.search_hybrid(space, axis(0), SparseVector([3, 4], [1.0, 1.0]), flt(), 10)
    assert ids(hits)[0] == both.id  # high in both lists beats first in one
    assert {both.id, dense_top.id, sparse_only.id} <= set(ids(hits))  # the union
    # Ranked in both lists beats a similar rank in one list (true for any RRF constant k).
    assert ids(hits).index(dense_top.id) < ids(hits).index(filler[0].id)
    assert ids(hits).index(sparse_only.id) < ids(hits).index(filler[0].id)
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    assert len(await s.search_hybrid(space, axis(0), SparseVector([3], [1.0]), flt(), 2)) == 2


async def test_hybrid_fuses_ranks_not_scores(sp: Space) -> None:
    # Points carrying only one of the two vectors appear in one ranking only. Under RRF the score depends
    # only on the rank, so the two first places tie, and so do the two second places, although the
    # underlying scores (cosine vs IDF-weighted dot product) are nothing alike.
    s, space = sp.store, await sp.new()
    d1, d2, d3 = pt(dense=unit(1, 0)), pt(dense=unit(1, 0.05)), pt(dense=unit(0, 1))
    s1, s2 = pt(sparse={3: 9.0}), pt(sparse={3: 0.1, 8: 1.0})
    await s.upsert(space, [d1, d2, d3, s1, s2])
    hits = {h.id: h.score for h in await s.search_hybrid(space, axis(0), SparseVector([3], [1.0]), flt(), 10)}
    assert set(hits) == {d1.id, d2.id, d3.id, s1.id, s2.id}
    assert hits[d1.id] == pytest.approx(hits[s1.id], rel=1e-5)
    assert hits[d2.id] == pytest.approx(hits[s2.id], rel=1e-5)
    assert hits[d1.id] > hits[d2.id]


async def test_set_enabled_by_ids_and_by_document(sp: Space) -> None:
    s, space = sp.store, await sp.new()
    d1 = [pt(doc="doc-1", dense=unit(1, i), sparse={2: 1.0}) for i in range(3)]
    d2 = [pt(doc="doc-2", dense=unit(1, i), sparse={2: 1.0}) for i in range(2)]
    other_tenant_same_doc = pt(TB, doc="doc-1", dense=unit(1, 0), sparse={2: 1.0})
    await s.upsert(space, [*d1, *d2, other_tenant_same_doc])
    q, qs = unit(1, 0), SparseVector([2], [1.0])
    everyone = {p.id for p in d1 + d2}

    await s.set_enabled(space, False, ids=[d1[0].id, d2[1].id])
    assert await every_search(s, space, flt(), q, qs) == everyone - {d1[0].id, d2[1].id}
    assert await s.count(space, flt()) == 3
    assert await s.count(space, flt(), include_disabled=True) == 5

    await s.set_enabled(space, False, tenant_id=TA, dataset_id=DS1, document_id="doc-1")
    assert await every_search(s, space, flt(), q, qs) == {d2[0].id}
    assert await s.count(space, flt(TB)) == 1  # the other tenant's doc-1 is untouched

    await s.set_enabled(space, True, tenant_id=TA, dataset_id=DS1, document_id="doc-1")
    await s.set_enabled(space, True, ids=[d2[1].id])
    assert await every_search(s, space, flt(), q, qs) == everyone
    assert await s.count(space, flt()) == 5
    with pytest.raises(ValueError):
        await s.set_enabled(space, False, tenant_id=TA, dataset_id=DS1)


async def test_disabled_at_upsert_is_invisible(sp: Space) -> None:
    s, space = sp.store, await sp.new()
    off = pt(dense=unit(1), sparse={1: 1.0}, enabled=False)
    await s.upsert(space, [off])
    assert await every_search(s, space, flt(), unit(1), SparseVector([1], [1.0])) == set()
    assert await s.count(space, flt()) == 0
    assert await s.count(space, flt(), include_disabled=True) == 1


async def test_delete_document_keep_ids_and_delete_dataset(sp: Space) -> None:
    s, space = sp.store, await sp.new()
    doc = [pt(doc="doc-1", dense=unit(1, i)) for i in range(4)]
    sibling = pt(doc="doc-2", dense=unit(1))
    other_ds = pt(dataset=DS2, doc="doc-1", dense=unit(1))
    other_tenant = pt(TB, doc="doc-1", dense=unit(1))
    await s.upsert(space, [*doc, sibling, other_ds, other_tenant])

    await s.delete_document(space, TA, DS1, "doc-1", keep_ids=[doc[0].id, doc[2].id])
    got = set(ids(await s.search_dense(space, unit(1), flt(TA, (DS1, DS2)), 20)))
    assert got == {doc[0].id, doc[2].id, sibling.id, other_ds.id}
    assert await s.count(space, flt(TB)) == 1

    await s.delete_document(space, TA, DS1, "doc-2")
    assert await s.count(space, flt(TA), include_disabled=True) == 2

    await s.delete_ids(space, [doc[0].id])
    assert await s.count(space, flt(TA)) == 1

    await s.delete_dataset(space, TA, DS1)
    assert await s.count(space, flt(TA), include_disabled=True) == 0
    assert await s.count(space, flt(TA, (DS2,))) == 1
    assert await s.count(space, flt(TB)) == 1


META = {
    "a": {"title": "Annual report", "author": "alice", "pages": 10, "file": "a.pdf", "ts": 1_700_000_000,
          "tags": ["x", "y"]},
    "b": {"title": "Budget draft", "author": "bob", "pages": 25.5, "file": "b.pdf.txt", "ts": 1_600_000_000},
    "c": {"title": "Report card", "author": "carol", "pages": 3, "file": "c.pdf"},
    "d": {"author": None},
}


def cond(name: str, op: str, value: Any = None) -> MetadataCondition:
    return MetadataCondition(name=name, op=op, value=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("conditions", "logic", "expected"), [
    ((cond("author", "is", "alice"),), "and", "a"),
    ((cond("author", "is not", "alice"),), "and", "bc"),  # a null value matches no negative op
    ((cond("title", "contains", "port"),), "and", "ac"),
    ((cond("title", "not contains", "port"),), "and", "b"),
    ((cond("title", "start with", "Re"),), "and", "c"),
    ((cond("file", "end with", ".pdf"),), "and", "ac"),  # not b.pdf.txt
    ((cond("pages", ">", 5),), "and", "ab"),
    ((cond("pages", "<", 20),), "and", "ac"),
    ((cond("pages", ">", 5), cond("pages", "<", 20)), "and", "a"),
    ((cond("pages", "=", 25.5),), "and", "b"),
    ((cond("pages", "=", 10),), "and", "a"),
    ((cond("pages", "≠", 10),), "and", "bc"),
    ((cond("pages", "≥", 10), cond("pages", "≤", 25.5)), "and", "ab"),
    ((cond("author", "is", "alice"), cond("pages", ">", 20)), "or", "ab"),
    ((cond("author", "is", "carol"), cond("file", "end with", "txt")), "or", "bc"),
    ((cond("author", "is", "alice"), cond("pages", ">", 20)), "and", ""),
    ((cond("title", "empty"),), "and", "d"),
    ((cond("author", "not empty"),), "and", "abc"),
    ((cond("author", "in", ["alice", "carol"]),), "and", "ac"),
    ((cond("author", "not in", ["alice", "carol"]),), "and", "b"),
    ((cond("tags", "in", ["y"]),), "and", "a"),
    ((cond("ts", "before", 1_650_000_000),), "and", "b"),
    ((cond("ts", "after", 1_650_000_000),), "and", "a"),
])
async def test_metadata_filters(sp: Space, conditions: tuple[MetadataCondition, ...], logic: str,
                                expected: str) -> None:
    s, space = sp.store, await sp.new()
    points = {k: pt(doc=f"doc-{k}", dense=unit(1, i), sparse={1: 1.0}, meta=m) for i, (k, m) in
              enumerate(META.items())}
    points["x"] = pt(TB, doc="doc-x", dense=unit(1), sparse={1: 1.0}, meta=META["a"])  # matches, other tenant
    await s.upsert(space, list(points.values()))
    f = flt(metadata=conditions, metadata_logic=logic)
    want = {points[k].id for k in expected}
    assert await every_search(s, space, f, unit(1), SparseVector([1], [1.0])) == want
    assert await s.count(space, f) == len(want)


async def test_set_document_metadata_changes_what_filters_match(sp: Space) -> None:
    s, space = sp.store, await sp.new()
    mine = [pt(doc="doc-1", dense=unit(1, i), meta={"lang": "en"}) for i in range(3)]
    other = pt(doc="doc-2", dense=unit(1), meta={"lang": "en"})
    await s.upsert(space, [*mine, other])
    de = flt(metadata=(cond("lang", "is", "de"),))
    assert await s.count(space, de) == 0
    await s.set_document_metadata(space, TA, DS1, "doc-1", {"lang": "de", "year": 2024})
    assert set(ids(await s.search_dense(space, unit(1), de, 10))) == {p.id for p in mine}
    assert await s.count(space, flt(metadata=(cond("lang", "is", "en"),))) == 1  # only doc-2 left
    assert await s.count(space, flt(metadata=(cond("year", ">", 2000),))) == 3


async def test_end_with_recheck_fills_the_limit(sp: Space) -> None:
    # "end with" runs as a substring match in the engine: the adapter must over-fetch past the decoys.
    s, space = sp.store, await sp.new()
    decoys = [pt(dense=unit(1, 0.01 * i), meta={"file": f"d{i}.pdf.bak"}) for i in range(30)]
    real = [pt(dense=unit(1, 5 + i), meta={"file": f"r{i}.pdf"}) for i in range(3)]
    await s.upsert(space, [*decoys, *real])
    f = flt(metadata=(cond("file", "end with", ".pdf"),))
    assert ids(await s.search_dense(space, unit(1), f, 2)) == [real[0].id, real[1].id]
    assert await s.count(space, f) == 3


async def test_sparse_only_space(sp: Space) -> None:
    s, space = sp.store, await sp.new(dim=None)
    points = [pt(doc=f"doc-{i}", sparse={i: 1.0, 99: 0.5}) for i in range(5)]
    await s.upsert(space, points)
    assert await s.count(space, flt()) == 5
    assert ids(await s.search_sparse(space, SparseVector([3], [1.0]), flt(), 5)) == [points[3].id]
    assert len(await s.search_sparse(space, SparseVector([99], [1.0]), flt(), 10)) == 5
    assert await s.search_sparse(space, SparseVector([], []), flt(), 10) == []
    await s.delete_document(space, TA, DS1, "doc-3")
    assert await s.count(space, flt()) == 4


async def test_missing_space_reads_empty_and_writes_fail(sp: Space) -> None:
    s = sp.store
    assert await s.search_dense("never_created", unit(1), flt(), 5) == []
    assert await s.search_sparse("never_created", SparseVector([1], [1.0]), flt(), 5) == []
    assert await s.count("never_created", flt()) == 0
    await s.delete_document("never_created", TA, DS1, "doc-1")
    await s.delete_ids("never_created", [str(uuid.uuid4())])
    with pytest.raises(LookupError):
        await s.upsert("never_created", [pt(dense=unit(1))])


async def test_concurrent_ensure_space_and_upserts(sp: Space) -> None:
    s = sp.store
    name = f"t_{uuid.uuid4().hex[:12]}"
    sp.names.append(name)

    async def worker(k: int) -> None:
        await s.ensure_space(name, DIM)
        for b in range(5):
            await s.upsert(name, [pt(doc=f"doc-{k}", dense=unit(1, k, b, j)) for j in range(10)])

    await asyncio.gather(*(worker(k) for k in range(8)))
    assert await s.count(name, flt()) == 400
    assert await s.count(name, flt(document_ids=("doc-3",))) == 50


async def test_recall_at_10_against_exact_cosine(sp: Space) -> None:
    s, space = sp.store, await sp.new(dim=64)
    rng = np.random.default_rng(7)
    data = rng.standard_normal((2000, 64)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    points = [pt(dense=v.tolist()) for v in data]
    await s.upsert(space, points)
    queries = rng.standard_normal((20, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    found = 0
    for q in queries:
        truth = {points[i].id for i in np.argsort(-(data @ q))[:10]}
        found += len(truth & set(ids(await s.search_dense(space, q.tolist(), flt(), 10))))
    assert found / 200 >= 0.95


# -- qdrant server only -------------------------------------------------------------------------------------

async def test_qdrant_server_two_clients_create_one_space_at_once() -> None:
    if not QDRANT_URL:
        pytest.skip("PLEXUS_TEST_QDRANT_URL is not set")
    a, b = QdrantStore(url=QDRANT_URL), QdrantStore(url=QDRANT_URL)
    name = f"t_{uuid.uuid4().hex[:12]}"
    try:
        # Two processes' worth of clients racing to create the collection: the loser must not fail.
        await asyncio.gather(a.ensure_space(name, DIM), b.ensure_space(name, DIM))
        await a.upsert(name, [pt(dense=unit(1))])
        assert await b.count(name, flt()) == 1
    finally:
        await a._client.delete_collection(name)
        await a.close()
        await b.close()


# -- edge only -----------------------------------------------------------------------------------------------

async def test_edge_persists_across_reopen_and_close_releases_the_lock(tmp_path: Path) -> None:
    root = tmp_path / "vectors"
    store = EdgeStore(root, flush_each_write=True)
    await store.ensure_space("dense_space", DIM)
    await store.ensure_space("sparse_space", None)
    kept = [pt(dense=unit(1, i), sparse={i: 1.0}) for i in range(5)]
    await store.upsert("dense_space", kept)
    await store.upsert("sparse_space", [pt(sparse={1: 1.0})])
    await store.set_enabled("dense_space", False, ids=[kept[4].id])

    # One process per root: the open shard holds the WAL lock.
    intruder = EdgeStore(root)
    with pytest.raises(Exception, match="(?i)wal"):
        await intruder.count("dense_space", flt())
    await intruder.close()
    await store.close()
    with pytest.raises(RuntimeError):
        await store.count("dense_space", flt())

    reopened = EdgeStore(root)  # no ensure_space: spaces on disk open on first use
    try:
        assert await reopened.count("dense_space", flt()) == 4
        assert await reopened.count("dense_space", flt(), include_disabled=True) == 5
        assert ids(await reopened.search_dense("dense_space", unit(1, 0), flt(), 1)) == [kept[0].id]
        assert await reopened.count("sparse_space", flt()) == 1
        await reopened.ensure_space("dense_space", DIM)
        await reopened.upsert("dense_space", [pt(dense=unit(1))])
        assert await reopened.count("dense_space", flt()) == 5
    finally:
        await reopened.close()


async def test_edge_acknowledged_writes_survive_a_killed_process(tmp_path: Path) -> None:
    # Without flush: the WAL alone must bring back what upsert acknowledged before SIGKILL.
    root = tmp_path / "vectors"
    script = (
        "import asyncio, os, signal, sys, uuid\n"
        "from pathlib import Path\n"
        "from shared.knowledge.vectors import VectorPoint\n"
        "from shared.knowledge.vectors_edge import EdgeStore\n"
        "async def main():\n"
        "    s = EdgeStore(Path(sys.argv[1]))\n"
        "    await s.ensure_space('sp', 4)\n"
        "    pay = {'tenant_id': 'a', 'dataset_id': 'd', 'document_id': 'x', 'enabled': True}\n"
        "    await s.upsert('sp', [VectorPoint(str(uuid.uuid4()), dict(pay), dense=[1, i, 0, 0])"
        " for i in range(100)])\n"
        "    await s.set_enabled('sp', False, tenant_id='a', dataset_id='d', document_id='x')\n"
        "    print('acked', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(root), stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2])
    out, _ = await proc.communicate()
    assert out.strip() == b"acked" and proc.returncode == -9
    store = EdgeStore(root)
    try:
        f = VectorFilter("a", ("d",))
        assert await store.count("sp", f, include_disabled=True) == 100
        assert await store.count("sp", f) == 0
    finally:
        await store.close()


@pytest.mark.parametrize("exact", [True, False])
async def test_edge_search_modes_agree_on_small_shard(tmp_path: Path, exact: bool) -> None:
    store = EdgeStore(tmp_path / "v", exact=exact, hnsw_ef=64)
    try:
        await store.ensure_space("s", DIM)
        points = [pt(dense=unit(1, 0.1 * i)) for i in range(20)]
        await store.upsert("s", points)
        assert await store.optimize("s") in (True, False)
        assert ids(await store.search_dense("s", unit(1), flt(), 3)) == [p.id for p in points[:3]]
    finally:
        await store.close()

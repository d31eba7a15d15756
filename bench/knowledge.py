"""Knowledge: the indexing pipeline, and retrieval on the embedded vector engine (qdrant-edge). Four
measurements, each printed as a markdown table:

1. parse      pipeline vs parser. A generated 50-page PDF and 1,000 small markdown files. The parser alone
              (`parse.extract`) against extract + `chunk_elements` + the built-in embedding model + upsert
              into an EdgeStore, with the time of each stage. Target: pipeline ≤ 1.3× the parser's time.
2. retrieval  search latency at 100k points in one EdgeStore space (384-d dense + sparse, 10 tenants ×
              10 datasets): dense, sparse and hybrid, filtered to a tenant + dataset and to a tenant + all
              its datasets, before and after `EdgeStore.optimize` (HNSW). Target: p99 ≤ 25 ms.
3. recall     recall@10 of `search_dense` against exact numpy cosine over the same filtered points: on
              real embeddings only, and on the 100k space. Target ≥ 0.95.
4. workers    docs/s of a real `plexus run indexer` process for markdown documents created through
              `DocumentService`: 1 index worker + 1 parse process vs 2 + 2, in one process (the embedded
              engine allows one process per data dir). Target ≥ 1.8×.

The text is real prose: paragraphs from the docstrings of the installed packages (site-packages, read
only), shuffled with a fixed seed. The PDF and the markdown files are assembled from them. 100k real
embeddings would take ~20 min with the built-in model. So the 100k space holds the real embeddings of
--real paragraphs, plus copies of them with small deterministic noise (renormalised). The output says so.
--real is 8,000 because Qdrant scans a filtered set exactly below 6,666 vectors of 384 d per segment:
fewer real embeddings could never show the HNSW graph's recall on real data.

    python -m bench.knowledge [--only parse,retrieval,recall,workers] [--pdf-pages 50] [--md-docs 1000]
                              [--points 100000] [--real 8000] [--queries 500] [--docs 300]
                              [--worker-configs 1x1,2x2] [--keep-logs]

A quick run: --pdf-pages 5 --md-docs 40 --points 10000 --real 1000 --queries 100 --docs 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import random
import re
import secrets
import sqlite3
import statistics
import sys
import sysconfig
import time
import unicodedata
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from bench.common import (
    HOST,
    Service,
    child_pids,
    cpu_seconds,
    free_port,
    percentile,
    plexus_argv,
    print_machine,
    python_env,
    run_async,
    table,
    verdict,
    workdir,
)

SEED = 20261121
SECTIONS = ("parse", "retrieval", "recall", "workers")
TENANTS, DATASETS = 10, 10
NOISE = 0.01  # per-dimension sigma of a copy's noise: |noise| ≈ 0.2, cosine to the original ≈ 0.98
DROP_TERM = 0.1  # a copy's sparse vector loses each term with this probability
FULL_SCAN_KB = 10_000  # Qdrant's default hnsw full_scan_threshold, in KB of vectors (6,666 × 384 d)
EXACT_BELOW = 50_000  # EdgeStore's default exact_below
BENCH_NS = uuid.UUID("6b1d3c52-9a0e-4f7e-b1f4-2d8c5e9a7b31")
RULE = {"mode": "automatic"}
WARMUP_DOCS = 10  # first completions in the workers bench: model load, parse-process spawn


def _ms(values: list[float], q: float) -> float:
    return percentile(sorted(values), q) * 1e3


# ---- text ------------------------------------------------------------------------------------------

_DOCSTRING = re.compile(r'"""(.*?)"""', re.DOTALL)
_BLANK = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_NOT_PROSE = (">>>", "```", "|", "..", ":", "$ ", "#", "=", "~", "<", "!", "{", "}", "-", "*")


def _prose(block: str) -> str | None:
    lines = [line.strip() for line in block.strip().splitlines()]
    if not lines or any(line.startswith(_NOT_PROSE) for line in lines):
        return None
    s = re.sub(r"\s+", " ", " ".join(lines))
    if not 80 <= len(s) <= 1500 or len(s.split()) < 12 or not s[0].isupper() or s[-1] not in ".!?":
        return None
    if sum(c.isalpha() or c == " " for c in s) / len(s) < 0.9:  # code, tables, paths
        return None
    if len(s) > 700:  # whole sentences up to 700 characters
        out = ""
        for sentence in _SENTENCE_END.split(s):
            if len(out) + len(sentence) > 700:
                break
            out = f"{out} {sentence}".strip()
        s = out
    return s if len(s) >= 80 else None


def prose_paragraphs() -> list[str]:
    """Distinct prose paragraphs (80-700 characters) from the docstrings of the installed packages, in an
    order fixed by SEED: real technical English, read from site-packages, nothing downloaded."""
    found: set[str] = set()
    for f in sorted(Path(sysconfig.get_paths()["purelib"]).rglob("*.py")):
        try:
            src = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for m in _DOCSTRING.finditer(src):
            for block in _BLANK.split(m.group(1)):
                if (p := _prose(block)) is not None:
                    found.add(p)
    paras = sorted(found)
    random.Random(SEED).shuffle(paras)
    return paras


def first_sentence(paragraph: str) -> str:
    for s in _SENTENCE_END.split(paragraph):
        if len(s.split()) >= 6:
            return s
    return paragraph


def _title(rng: random.Random, paras: list[str]) -> str:
    words = re.sub(r"[^\w\s-]", "", rng.choice(paras)).split()
    return " ".join(words[: rng.randint(3, 7)]).capitalize() or "Notes"


def markdown_doc(rng: random.Random, paras: list[str]) -> str:
    """~1-2 KB of markdown: a title, paragraphs, now and then a section heading or a bullet list."""
    target = rng.randint(1000, 1900)
    out = [f"# {_title(rng, paras)}", ""]
    size = len(out[0])
    while size < target:
        r = rng.random()
        if r < 0.12:
            block = f"## {_title(rng, paras)}"
        elif r < 0.25:
            block = "\n".join(f"- {first_sentence(rng.choice(paras))}" for _ in range(rng.randint(2, 4)))
        else:
            block = rng.choice(paras)
        out += [block, ""]
        size += len(block.encode()) + 2
    return "\n".join(out)


def _latin1(text: str) -> str:  # the PDF core fonts are latin-1
    return unicodedata.normalize("NFKD", text).encode("latin-1", "ignore").decode("latin-1")


def make_pdf(path: Path, pages: int, rng: random.Random, paras: list[str], chars_per_page: int = 2000) -> int:
    """A text PDF (fpdf2, Helvetica): per page a heading and prose paragraphs, ~chars_per_page characters.
    Returns the number of characters written."""
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_margins(20, 20, 20)
    pdf.set_auto_page_break(True, 15)
    total = 0
    for number in range(1, pages + 1):
        pdf.add_page()
        heading = _latin1(f"{number}. {_title(rng, paras)}")
        pdf.set_font("Helvetica", "B", 13)
        pdf.multi_cell(0, 7, heading, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)
        pdf.set_font("Helvetica", size=10)
        n = len(heading)
        while n < chars_per_page:
            para = _latin1(rng.choice(paras))
            if n + len(para) > chars_per_page + 150:  # end the page near the target, on a sentence
                para = _SENTENCE_END.split(para)[0][: chars_per_page + 150 - n]
            pdf.multi_cell(0, 5, para, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(3)
            n += len(para) + 1
        total += n
    pdf.output(str(path))
    return total


# ---- 1. pipeline vs parser -------------------------------------------------------------------------


@dataclass
class Stages:
    extract: float = 0.0
    chunk: float = 0.0
    embed: float = 0.0
    store: float = 0.0
    pages: int = 0
    texts: list[str] = field(default_factory=list)  # the chunks, for the truncation count afterwards

    @property
    def total(self) -> float:
        return self.extract + self.chunk + self.embed + self.store


def _bench_dataset(tenant_id: str) -> Any:
    from shared.knowledge.models import LOCAL_EMBEDDING_MODEL, LOCAL_EMBEDDING_PROVIDER
    from shared.models import Dataset

    return Dataset(id=str(uuid.uuid5(BENCH_NS, f"ds:{tenant_id}")), tenant_id=tenant_id, name="bench",
                   indexing_technique="high_quality", embedding_model_provider=LOCAL_EMBEDDING_PROVIDER,
                   embedding_model=LOCAL_EMBEDDING_MODEL)


async def pipeline_document(path: Path, kind: str, rule: dict, kn: Any, ds: Any, embedder: Any, batch: int,
                            st: Stages) -> None:
    """One document as IndexWorkers.process handles it, minus the database and NATS: extract, then clean +
    split + full-text encoding (chunk_elements), then per `batch` chunks embed_points + upsert."""
    from services.indexer.pipeline.prepare import chunk_elements
    from services.indexer.service.common import segment_id
    from services.indexer.service.indexing import automatic_chunk_tokens, embed_points
    from shared.knowledge.vectors import SparseVector
    from shared.models import Document
    from shared.parse import extract

    doc = Document(id=str(uuid.uuid5(BENCH_NS, f"doc:{path.name}")), tenant_id=ds.tenant_id,
                   dataset_id=ds.id, batch="bench", name=path.name, doc_metadata={})
    t0 = time.perf_counter()
    elements = extract(path, kind)
    t1 = time.perf_counter()
    chunks = chunk_elements(elements, rule, automatic_chunk_tokens(ds))  # as the indexer chunks it
    t2 = time.perf_counter()
    st.extract += t1 - t0
    st.chunk += t2 - t1
    st.pages = max([st.pages] + [e.page or 0 for e in elements])
    st.texts += [c.content for c in chunks]
    ids = [segment_id(doc.id, 1, c.position) for c in chunks]
    for start in range(0, len(chunks), batch):
        items = [(ids[start + i], c.content, SparseVector(c.sparse_indices, c.sparse_values), True)
                 for i, c in enumerate(chunks[start:start + batch])]
        ta = time.perf_counter()
        space, points = await embed_points(kn, ds, doc, items, embedder)
        tb = time.perf_counter()
        await kn.vectors.upsert(space, points)
        st.embed += tb - ta
        st.store += time.perf_counter() - tb


def model_tokens(texts: list[str]) -> list[int]:
    """WordPiece tokens of each text for the built-in model, without its 256-token truncation."""
    from tokenizers import Tokenizer

    from shared.knowledge.embeddings import _tokenizer_path

    tok = Tokenizer.from_file(str(_tokenizer_path()))
    tok.no_truncation()  # the file itself truncates at 128
    return [len(e.ids) for e in tok.encode_batch(texts)]


async def bench_parse(args: argparse.Namespace, work: Path, paras: list[str]) -> None:
    from services.indexer.pipeline.split import validate_process_rule
    from services.indexer.service.common import space_for
    from shared.knowledge.embeddings import LOCAL_MAX_TOKENS, LOCAL_THREADS, local_embedder
    from shared.knowledge.vectors_edge import EdgeStore
    from shared.parse import extract
    from shared.settings import KnowledgeSettings

    print(f"### 1. Pipeline vs parser ({args.pdf_pages}-page PDF, {args.md_docs} markdown files)\n",
          flush=True)
    rng = random.Random(SEED + 1)
    src = work / "parse-input"
    src.mkdir()
    pdf = src / "report.pdf"
    pdf_chars = make_pdf(pdf, args.pdf_pages, rng, paras)
    md_files = []
    for i in range(args.md_docs):
        p = src / f"note-{i:04d}.md"
        p.write_text(markdown_doc(rng, paras), encoding="utf-8")
        md_files.append(p)
    md_kb = sum(p.stat().st_size for p in md_files) / max(1, len(md_files)) / 1024
    rule = validate_process_rule(RULE, required=True).model_dump(mode="json")  # as DocumentService stores it
    batch = KnowledgeSettings().embedding_batch
    embedder = local_embedder()
    store = EdgeStore(work / "parse-vectors")
    kn = SimpleNamespace(vectors=store)  # embed_points only uses kn.vectors
    ds = _bench_dataset(str(uuid.uuid5(BENCH_NS, "tenant:parse")))
    rows, notes = [], []
    try:
        # warm-up, untimed: imports, the model, the space (the indexer finds it existing too)
        await store.ensure_space(space_for(ds.indexing_technique, ds.embedding_model_provider,
                                           ds.embedding_model), embedder.dim)
        warm = src / "warm.md"
        warm.write_text(markdown_doc(random.Random(0), paras), encoding="utf-8")
        await pipeline_document(warm, "md", rule, kn, ds, embedder, batch, Stages())
        extract(pdf, "pdf")

        inputs = (("PDF", "pages", [pdf], "pdf"), ("markdown", "docs", md_files, "md"))
        for label, unit, files, kind in inputs:
            runs = []
            for _ in range(3):
                t0 = time.perf_counter()
                for f in files:
                    extract(f, kind)
                runs.append(time.perf_counter() - t0)
            parser = statistics.median(runs)
            st = Stages()
            for f in files:
                await pipeline_document(f, kind, rule, kn, ds, embedder, batch, st)
            n = st.pages if kind == "pdf" else len(files)
            chunks = len(st.texts)
            lengths = model_tokens(st.texts)
            truncated = sum(t > LOCAL_MAX_TOKENS for t in lengths)
            ratio, share = st.total / parser, st.embed / st.total
            rows.append([label, f"{n} {unit}", chunks, parser, n / parser, st.total, n / st.total,
                         f"{ratio:.1f}×", st.extract, st.chunk, st.embed, st.store, f"{100 * share:.0f} %",
                         chunks / st.embed, f"{truncated} ({100 * truncated / max(1, chunks):.0f} %)",
                         statistics.mean(lengths) if lengths else float("nan")])
            rest = (st.total - st.embed) / parser
            notes.append(verdict(ratio <= 1.3, (
                f"{label}: the pipeline takes {ratio:.1f}× the parser's own time (target ≤ 1.3×). The "
                f"embedding is {100 * share:.0f} % of it ({chunks / st.embed:.1f} chunks/s); extract + "
                f"chunk + store alone take {rest:.2f}× the parser.")))
    finally:
        await store.close()
    print(table(["input", "size", "chunks", "parser s", "parser /s", "pipeline s", "pipeline /s",
                 "pipeline / parser", "extract s", "chunk s", "embed s", "store s", "embed share",
                 "chunks/s embedded", f"chunks > {LOCAL_MAX_TOKENS} model tokens", "model tokens/chunk"],
                rows))
    print()
    print(f"- Input: a PDF of {args.pdf_pages} pages and {pdf_chars:,} characters (fpdf2, seed {SEED + 1}); "
          f"{args.md_docs} markdown files of {md_kb:.1f} KB on average. Process rule `automatic` (for the "
          f"built-in model: 217 tokens, overlap 21, split by title), embedding batches of {batch} per document, the built-in "
          f"model on {LOCAL_THREADS} thread(s). Rates: pages/s for the PDF, docs/s for markdown.")
    print("- parser = `parse.extract` alone, median of 3 runs. pipeline = one run of extract + "
          "`prepare.chunk_elements` + `indexing.embed_points` + `EdgeStore.upsert`, all in this process. "
          "Not included: the indexer's parse-process round trips, database writes and NATS (section 4 has "
          "them).")
    print(f"- Last two columns: chunks longer than the built-in model's window ({LOCAL_MAX_TOKENS} WordPiece "
          f"tokens; the model embeds only their beginning), and the mean WordPiece tokens per chunk.")
    for line in notes:
        print(line)
    print(flush=True)


# ---- 2. + 3. retrieval latency and recall ----------------------------------------------------------


def _tenant_id(t: int) -> str:
    return str(uuid.uuid5(BENCH_NS, f"tenant:{t}"))


def _dataset_id(t: int, d: int) -> str:
    return str(uuid.uuid5(BENCH_NS, f"dataset:{t}:{d}"))


@dataclass
class Space:
    """The points of one EdgeStore space: vectors, and where each point sits (tenant, dataset)."""

    name: str
    vectors: np.ndarray  # (n, dim) float32, unit norm
    sparse: list[Any]  # a SparseVector per point
    tenant: np.ndarray = field(default_factory=lambda: np.empty(0, int))
    dataset: np.ndarray = field(default_factory=lambda: np.empty(0, int))
    ids: list[str] = field(default_factory=list)
    docs: list[str] = field(default_factory=list)

    def layout(self, slots: np.ndarray | None) -> None:
        """Point j goes to tenant slot % 10, dataset (slot // 10) % 10 (None: all in tenant 0, dataset 0),
        in documents of 20 points; point ids are segment ids, as the indexer derives them."""
        from services.indexer.service.common import segment_id

        n = len(self.vectors)
        if slots is None:
            self.tenant, self.dataset, pos = np.zeros(n, int), np.zeros(n, int), np.arange(n)
        else:
            self.tenant, self.dataset, pos = slots % TENANTS, (slots // TENANTS) % DATASETS, slots // 100
        self.ids, self.docs = [], []
        for j in range(n):
            t, d, k = int(self.tenant[j]), int(self.dataset[j]), int(pos[j])
            doc = str(uuid.uuid5(BENCH_NS, f"doc:{self.name}:{t}:{d}:{k // 20}"))
            self.docs.append(doc)
            self.ids.append(segment_id(doc, 1, k % 20))

    async def upsert(self, store: Any, batch: int = 2000) -> float:
        """Points built by indexing.point_for, upserted in batches; returns the seconds it took."""
        from services.indexer.service.indexing import point_for

        await store.ensure_space(self.name, self.vectors.shape[1])
        t0 = time.perf_counter()
        for start in range(0, len(self.ids), batch):
            points = []
            for j in range(start, min(start + batch, len(self.ids))):
                t, d = int(self.tenant[j]), int(self.dataset[j])
                ds = SimpleNamespace(tenant_id=_tenant_id(t), id=_dataset_id(t, d))
                doc = SimpleNamespace(id=self.docs[j], doc_metadata={})
                points.append(point_for(ds, doc, self.ids[j], self.vectors[j], self.sparse[j], True))
            await store.upsert(self.name, points)
        return time.perf_counter() - t0

    def members(self, t: int, d: int | None) -> np.ndarray:
        m = self.tenant == t if d is None else (self.tenant == t) & (self.dataset == d)
        return np.flatnonzero(m)

    def exact_top(self, q: np.ndarray, members: np.ndarray, k: int = 10) -> set[str]:
        top = members[np.argsort(-(self.vectors[members] @ q), kind="stable")[:k]]
        return {self.ids[j] for j in top}


def vfilter(t: int, d: int | None) -> Any:
    """tenant t and dataset d, or (d None) tenant t and all its datasets."""
    from shared.knowledge.vectors import VectorFilter

    datasets = tuple(_dataset_id(t, x) for x in range(DATASETS)) if d is None else (_dataset_id(t, d),)
    return VectorFilter(tenant_id=_tenant_id(t), dataset_ids=datasets)


def query_slot(k: int, one_dataset: bool = False) -> tuple[int, int]:
    """The tenant and dataset query k is filtered to."""
    return (0, 0) if one_dataset else (k % TENANTS, (k // TENANTS) % DATASETS)


def shard_info(store: Any, space: str) -> Any:
    """Segments / indexed vectors of a space, for the report: the port has no such call, so this peeks."""
    shard = store._shards.get(space)
    return shard.info() if shard is not None else None


@dataclass
class Corpus:
    units: list[str]
    queries: list[str]
    real: np.ndarray
    qvec: np.ndarray
    usparse: list[Any]
    qsparse: list[Any]
    embed_s: float


def engine_path(store: Any, space: Space, c: Corpus, store_exact: bool | None, whole_tenant: bool,
                one_dataset: bool, probes: int = 50) -> str:
    """Which search the engine really ran. If the store asks for exact search, that. Otherwise the same
    queries go straight to the shard with hnsw_ef=10 and with exact=True: identical results for all of them
    mean no HNSW graph was used (none built yet, or the matching points of each segment were below its
    full-scan threshold, so it scanned them)."""
    import qdrant_edge as qe

    from shared.knowledge.vectors_edge import DENSE, build_filter

    if store_exact or (store_exact is None and len(space.ids) < EXACT_BELOW):
        return "exact (store setting)"
    shard = store._shards[space.name]
    differ = 0
    for k in range(min(probes, len(c.queries))):
        t, d = query_slot(k, one_dataset)
        f = build_filter(vfilter(t, None if whole_tenant else d))
        q = qe.Query.Nearest(c.qvec[k].tolist(), using=DENSE)
        fast = shard.query(qe.QueryRequest(limit=10, query=q, filter=f, params=qe.SearchParams(hnsw_ef=10)))
        exact = shard.query(qe.QueryRequest(limit=10, query=q, filter=f, params=qe.SearchParams(exact=True)))
        differ += [p.id for p in fast] != [p.id for p in exact]
    return "HNSW graph" if differ else "full scan"


async def build_corpus(args: argparse.Namespace, paras: list[str]) -> Corpus:
    from shared.knowledge.embeddings import local_embedder
    from shared.knowledge.sparse import encode_document, encode_query

    n_real = min(args.real, len(paras) - args.queries)
    units, held_out = paras[:n_real], paras[n_real:n_real + args.queries]
    queries = [first_sentence(p) for p in held_out]
    emb = local_embedder()
    await emb.load()
    t0 = time.perf_counter()
    real = np.asarray(await emb.embed_documents(units), dtype=np.float32)
    embed_s = time.perf_counter() - t0
    qvec = np.asarray([await emb.embed_query(q) for q in queries], dtype=np.float32)
    return Corpus(units, queries, real, qvec, [encode_document(u) for u in units],
                  [encode_query(q) for q in queries], embed_s)


def noisy_space(name: str, c: Corpus, total: int) -> tuple[Space, float]:
    """`total` points: the real embeddings, then copies of them (round robin) plus Gaussian noise,
    renormalised; a copy's sparse vector is its original's, each term dropped with DROP_TERM.
    Returns the space and the mean cosine of a copy to its original."""
    from shared.knowledge.vectors import SparseVector

    rng = np.random.default_rng(SEED)
    n, dim = c.real.shape
    vec = np.empty((total, dim), dtype=np.float32)
    vec[:n] = c.real
    for start in range(n, total, 10_000):
        idx = np.arange(start, min(start + 10_000, total))
        block = c.real[idx % n] + NOISE * rng.standard_normal((len(idx), dim), dtype=np.float32)
        vec[idx] = block / np.linalg.norm(block, axis=1, keepdims=True)
    sparse = list(c.usparse)
    for j in range(n, total):
        base = c.usparse[j % n]
        keep = rng.random(len(base.indices)) >= DROP_TERM
        if len(keep) and not keep.any():
            keep[rng.integers(len(keep))] = True
        sparse.append(SparseVector([i for i, k in zip(base.indices, keep, strict=True) if k],
                                   [v for v, k in zip(base.values, keep, strict=True) if k]))
    copies = np.arange(n, total)
    cos = float(np.mean(np.sum(vec[copies] * c.real[copies % n], axis=1))) if total > n else 1.0
    space = Space(name, vec, sparse)
    space.layout(np.random.default_rng(SEED + 2).permutation(total))
    return space, cos


FILTERS = (("tenant + dataset", False), ("tenant, all its datasets", True))


async def latency_rows(store: Any, space: Space, c: Corpus, phase: str) -> list[list[Any]]:
    """Each query alone, through the EdgeStore port, top 10."""
    searches: dict[str, Callable[[int, Any], Awaitable[list[Any]]]] = {
        "dense": lambda k, f: store.search_dense(space.name, c.qvec[k].tolist(), f, 10),
        "sparse": lambda k, f: store.search_sparse(space.name, c.qsparse[k], f, 10),
        "hybrid": lambda k, f: store.search_hybrid(space.name, c.qvec[k].tolist(), c.qsparse[k], f, 10),
    }
    rows = []
    for flt_label, whole_tenant in FILTERS:
        slots = [query_slot(k) for k in range(len(c.queries))]
        filters = [vfilter(t, None if whole_tenant else d) for t, d in slots]
        matching = statistics.mean(len(space.members(t, None if whole_tenant else d)) for t, d in slots)
        for name, search in searches.items():
            lat, hits = [], 0
            for k, f in enumerate(filters):
                t0 = time.perf_counter()
                res = await search(k, f)
                lat.append(time.perf_counter() - t0)
                hits += len(res)
            rows.append([phase, name, flt_label, f"{matching:,.0f}", len(lat), _ms(lat, 50), _ms(lat, 99),
                         max(lat) * 1e3, hits / len(lat)])
    return rows


async def recall_rows(store: Any, space: Space, c: Corpus, label: str, settings: str,
                      store_exact: bool | None, optimized: bool, one_dataset: bool = False
                      ) -> list[list[Any]]:
    await store.ensure_space(space.name, space.vectors.shape[1])  # loads the shard of a reopened store
    info = shard_info(store, space.name)
    rows = []
    for flt_label, whole_tenant in FILTERS[:1] if one_dataset else FILTERS:
        recalls, sizes = [], []
        for k in range(len(c.queries)):
            t, d = query_slot(k, one_dataset)
            d_or_all = None if whole_tenant else d
            members = space.members(t, d_or_all)
            truth = space.exact_top(c.qvec[k], members)
            hits = await store.search_dense(space.name, c.qvec[k].tolist(), vfilter(t, d_or_all), 10)
            recalls.append(len(truth & {h.id for h in hits}) / max(1, len(truth)))
            sizes.append(len(members))
        perfect = 100 * sum(r == 1.0 for r in recalls) / len(recalls)
        rows.append([label, flt_label, f"{statistics.mean(sizes):,.0f}", settings,
                     f"yes ({info.segments_count})" if optimized else "no",
                     engine_path(store, space, c, store_exact, whole_tenant, one_dataset),
                     statistics.mean(recalls), min(recalls), f"{perfect:.0f} %"])
    return rows


async def real_recall(work: Path, c: Corpus) -> list[list[Any]]:
    """Recall on the real embeddings alone: laid out 10 × 10, and all in one dataset."""
    from shared.knowledge.vectors_edge import EdgeStore

    n = len(c.units)
    grid = Space("kb_bench_real_grid", c.real, list(c.usparse))
    grid.layout(np.random.default_rng(SEED + 3).permutation(n))
    one = Space("kb_bench_real_one", c.real, list(c.usparse))
    one.layout(None)
    spaces = ((grid, f"real only, {n:,} points ({TENANTS}×{DATASETS})", False),
              (one, f"real only, {n:,} points (1 dataset)", True))
    root = work / "vectors-real"
    rows: list[list[Any]] = []
    store = EdgeStore(root)
    try:
        for sp, _, _ in spaces:
            await sp.upsert(store)
        for sp, label, single in spaces:
            rows += await recall_rows(store, sp, c, label, "default", None, False, single)
        for sp, _, _ in spaces:
            await store.optimize(sp.name)
        for sp, label, single in spaces:
            rows += await recall_rows(store, sp, c, label, "default", None, True, single)
    finally:
        await store.close()
    store = EdgeStore(root, exact=False, hnsw_ef=256)  # the same shards, reopened
    try:
        for sp, label, single in spaces:
            rows += await recall_rows(store, sp, c, label, "HNSW ef=256", False, True, single)
    finally:
        await store.close()
    return rows


async def bench_retrieval(args: argparse.Namespace, work: Path, paras: list[str], sections: set[str]) -> None:
    from shared.knowledge.vectors_edge import EdgeStore

    do_latency, do_recall = "retrieval" in sections, "recall" in sections
    c = await build_corpus(args, paras)
    n_real = len(c.units)
    total = max(args.points, n_real)
    t0 = time.perf_counter()
    big, cos = noisy_space("kb_bench_points", c, total)
    prep_s = time.perf_counter() - t0
    label = f"{total:,} points ({n_real:,} real + copies)"
    store = EdgeStore(work / "vectors-big")
    latency: list[list[Any]] = []
    recall: list[list[Any]] = []
    try:
        upsert_s = await big.upsert(store)
        info0 = shard_info(store, big.name)
        if do_latency:
            phase = f"before optimize ({info0.segments_count} segment(s))"
            latency += await latency_rows(store, big, c, phase)
        if do_recall:
            recall += await recall_rows(store, big, c, label, "default", None, False)
        t0 = time.perf_counter()
        await store.optimize(big.name)
        optimize_s = time.perf_counter() - t0
        info1 = shard_info(store, big.name)
        if do_latency:
            latency += await latency_rows(store, big, c, f"after optimize ({info1.segments_count} segments)")
        if do_recall:
            recall += await recall_rows(store, big, c, label, "default", None, True)
    finally:
        await store.close()
    del big
    if do_recall:
        recall += await real_recall(work, c)

    per_s, chars, q = n_real / c.embed_s, statistics.mean(map(len, c.units)), len(c.queries)
    setup = "\n".join([
        (f"- Corpus: {n_real:,} distinct real paragraphs ({chars:.0f} characters on average) from the "
         f"docstrings of the installed packages, embedded with the built-in model in {c.embed_s:.0f} s "
         f"({per_s:.0f}/s). {q} queries: the first sentence of {q} held-out paragraphs (real query "
         f"embeddings; sparse by `encode_query`)."),
        (f"- The {total:,}-point space is SYNTHETIC beyond the first {n_real:,}: those real embeddings plus "
         f"{total - n_real:,} copies of them with Gaussian noise (σ = {NOISE} per dimension, renormalised; "
         f"mean cosine to the original {cos:.3f}), because {total:,} real embeddings would take "
         f"~{total / per_s / 60:.0f} min here. Sparse vectors by `encode_document`; a copy drops each term "
         f"with p = {DROP_TERM}. Payloads: {TENANTS} tenants × {DATASETS} datasets (points spread by a "
         f"seeded permutation), documents of 20 points, enabled true; built in {prep_s:.1f} s."),
        (f"- Upsert of {total:,} points: {upsert_s:.1f} s ({total / upsert_s:,.0f} points/s) into "
         f"{info0.segments_count} segment(s). `EdgeStore.optimize`: {optimize_s:.1f} s, giving "
         f"{info1.segments_count} segments and {info1.indexed_vectors_count:,} indexed vectors (dense + "
         f"sparse)."),
    ])
    if do_latency:
        print(f"### 2. Retrieval latency at {total:,} points on the embedded engine\n")
        print(table(["index", "search", "filter", "points matching", "queries", "p50 ms", "p99 ms", "max ms",
                     "hits/query"], latency))
        print()
        print(setup)
        print(f"- One query at a time through the `EdgeStore` port (its thread pool included), top 10, "
              f"default store settings: exact search below {EXACT_BELOW:,} points in the space, else HNSW "
              f"with ef = 256 where optimize has built it.")
        for phase in dict.fromkeys(r[0] for r in latency):
            worst = max((r for r in latency if r[0] == phase), key=lambda r: r[6])
            print(verdict(worst[6] <= 25, f"{phase}: worst p99 {worst[6]:.1f} ms ({worst[1]}, {worst[2]}; "
                                          f"target p99 ≤ 25 ms)"))
        print(flush=True)
    if do_recall:
        print("### 3. Recall@10 of `search_dense` against exact cosine (numpy) over the same filtered "
              "points\n")
        print(table(["space", "filter", "points matching", "store settings", "optimized (segments)",
                     "engine path", "recall@10 mean", "min", "queries 10/10"], recall))
        print()
        if not do_latency:
            print(setup)
        dim = c.real.shape[1]
        print(f"- 'real only' rows: the {n_real:,} real embeddings alone, laid out {TENANTS} × {DATASETS} as "
              f"in section 2, and all in one dataset (the largest filtered set they give). The "
              f"{total:,}-point rows include the noisy copies (truth = numpy over the same stored vectors). "
              f"The same {q} queries everywhere.")
        print(f"- Store settings: 'default' = `EdgeStore()`: exact search below {EXACT_BELOW:,} points in "
              f"the space, else HNSW with ef = 256. 'HNSW ef=256' = `EdgeStore(exact=False)` on the same "
              f"shards: what the default switches to at {EXACT_BELOW:,} points.")
        print(f"- Engine path, probed with 50 queries sent to the shard with hnsw_ef = 10 and with exact = "
              f"true: 'full scan' means identical results, no graph used. Qdrant answers a filtered query "
              f"with the payload index and a scan while a segment's matching points are below its "
              f"full_scan_threshold ({FULL_SCAN_KB:,} KB = {FULL_SCAN_KB * 1024 // (dim * 4):,} vectors of "
              f"{dim} d); only larger filtered sets use the HNSW graph.")
        real_rows = [r for r in recall if r[0].startswith("real")]
        for what, rows in (("real embeddings", real_rows),
                           (f"{total:,} points with copies", [r for r in recall if r not in real_rows])):
            if rows:
                w = min(rows, key=lambda r: r[6])
                print(verdict(w[6] >= 0.95, f"{what}: worst mean recall@10 {w[6]:.3f} ({w[1]}, {w[3]}, "
                                            f"optimized {w[4]}, {w[5]}; target ≥ 0.95)"))
        graph = [r for r in recall if r[5] == "HNSW graph"]
        if graph:
            print(f"- {len(graph)} row(s) went through the HNSW graph: mean recall@10 "
                  f"{statistics.mean(r[6] for r in graph):.3f}, worst {min(r[6] for r in graph):.3f}.")
        else:
            print("- No row went through the HNSW graph: every filtered search was exact.")
        print(flush=True)


# ---- 4. indexer workers -----------------------------------------------------------------------------


@dataclass
class WorkerRun:
    label: str
    docs: int
    completed: int = 0
    errors: int = 0
    first_error: str = ""
    segments: int = 0
    window_s: float = float("nan")
    since_start_s: float = float("nan")
    job_s: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return (self.completed - WARMUP_DOCS) / self.window_s if self.window_s > 0 else float("nan")


def _ts(value: str) -> datetime:
    t = datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


async def queue_documents(url: str, nats_url: str, settings: Any, docs: list[bytes]) -> None:
    """A tenant, a high-quality dataset on the built-in model, and the documents, through the services
    (object store + database + index job each), from this process."""
    from services.indexer.service.core import Knowledge
    from services.indexer.service.datasets import DatasetService
    from services.indexer.service.documents import DocumentService
    from shared.bus import Bus
    from shared.context import Context
    from shared.db import Database
    from shared.knowledge.vectors_qdrant import QdrantStore
    from shared.models import Tenant

    ctx = Context(settings, Database(url), await Bus.connect(nats_url, name="bench-knowledge"))
    kn = Knowledge(ctx, QdrantStore(location=":memory:"))  # create() never touches vectors: an unused store
    try:
        async with ctx.db.session() as s:
            tenant = Tenant(name="bench")
            s.add(tenant)
            await s.commit()
        ds = await DatasetService(kn).create(tenant.id, {"name": "bench",
                                                         "indexing_technique": "high_quality"})
        service = DocumentService(kn)
        body = {"indexing_technique": "high_quality", "process_rule": RULE}
        for i, data in enumerate(docs):
            src = service.file_source(f"doc-{i:04d}.md", io.BytesIO(data), len(data))
            await service.create(tenant.id, ds["id"], src, body)
    finally:
        await kn.vectors.close()
        await ctx.bus.close()
        await ctx.db.close()


async def one_worker_config(work: Path, label: str, workers: int, procs: int, docs: list[bytes]) -> WorkerRun:
    from shared.migrate import upgrade_async
    from shared.natsd import EmbeddedNats
    from shared.settings import Settings

    run = WorkerRun(label, len(docs))
    base = work / f"workers-{workers}x{procs}"
    base.mkdir()
    db_path = base / "plexus.db"
    url = f"sqlite+aiosqlite:///{db_path}"
    nats = EmbeddedNats(base / "nats")
    nats.start()
    svc: Service | None = None
    try:
        secret, internal = secrets.token_urlsafe(48), secrets.token_urlsafe(48)
        await upgrade_async(url)
        settings = Settings(_env_file=None, database_url=url, nats_url=nats.url, secret_key=secret,
                            internal_secret=internal, data_dir=base / "bench-side")
        await queue_documents(url, nats.url, settings, docs)  # all queued before the indexer starts

        port = free_port()
        env = python_env(PLEXUS_DATABASE_URL=url, PLEXUS_NATS_URL=nats.url, PLEXUS_SECRET_KEY=secret,
                         PLEXUS_INTERNAL_SECRET=internal, PLEXUS_DATA_DIR=str(base / "data"),
                         PLEXUS_PORT=str(port), PLEXUS_KNOWLEDGE__WORKERS=str(workers),
                         PLEXUS_KNOWLEDGE__PARSE_PROCESSES=str(procs))
        svc = Service(f"indexer-{workers}x{procs}", plexus_argv("indexer", port, base / "data"), env=env,
                      cwd=base, log_dir=work, ready_url=f"http://{HOST}:{port}/readyz")
        started = time.time()
        svc.start(timeout=120)
        pids: dict[str, list[int]] = {}
        cpu0: dict[str, float] = {}
        t_cpu0 = 0.0
        deadline = time.monotonic() + 120 + 3 * len(docs)
        with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as db:
            while True:
                done, errors = (x or 0 for x in db.execute(
                    "SELECT SUM(indexing_status = 'completed'), SUM(indexing_status = 'error') FROM documents"
                ).fetchone())
                if not cpu0 and done >= WARMUP_DOCS:  # the measured window starts about now
                    pids = {"indexer": [svc.pid], "parse processes": child_pids(svc.pid),
                            "nats": [nats.proc.pid], "bench": [os.getpid()]}
                    cpu0 = {k: sum(map(cpu_seconds, v)) for k, v in pids.items()}
                    t_cpu0 = time.monotonic()
                if done + errors >= len(docs) or time.monotonic() > deadline or svc.proc.poll() is not None:
                    break
                await asyncio.sleep(0.2)
            if cpu0:
                elapsed = time.monotonic() - t_cpu0
                run.cpu = {k: 100 * (sum(map(cpu_seconds, pids[k])) - v) / elapsed for k, v in cpu0.items()}
            rows = db.execute("SELECT processing_started_at, completed_at FROM documents "
                              "WHERE indexing_status = 'completed'").fetchall()
            err = db.execute("SELECT error FROM documents WHERE indexing_status = 'error' LIMIT 1").fetchone()
            run.segments = db.execute("SELECT COUNT(*) FROM document_segments").fetchone()[0]
        run.completed, run.errors = len(rows), errors
        run.first_error = err[0] if err else ""
        run.job_s = [(_ts(b) - _ts(a)).total_seconds() for a, b in rows]
        done_at = sorted(_ts(r[1]) for r in rows)
        if len(done_at) > WARMUP_DOCS:
            run.window_s = (done_at[-1] - done_at[WARMUP_DOCS - 1]).total_seconds()
            run.since_start_s = done_at[-1].timestamp() - started
        if run.completed + run.errors < len(docs):
            print(f"- {label}: only {run.completed} of {len(docs)} documents completed; indexer log tail:\n"
                  f"{svc.log_tail(15)}")
    finally:
        if svc is not None:
            svc.stop()
        nats.stop()
    return run


async def bench_workers(args: argparse.Namespace, work: Path, paras: list[str]) -> None:
    from shared.knowledge.embeddings import LOCAL_THREADS

    print(f"### 4. Indexer: 2 index workers vs 1 ({args.docs} markdown documents, `plexus run indexer`)\n",
          flush=True)
    rng = random.Random(SEED + 4)
    docs = [markdown_doc(rng, paras).encode() for _ in range(args.docs)]
    configs = [tuple(int(x) for x in spec.strip().split("x")) for spec in args.worker_configs.split(",")]
    runs = [await one_worker_config(work, f"WORKERS={w} PARSE_PROCESSES={p}", w, p, docs) for w, p in configs]
    cpu_keys = ("indexer", "parse processes", "nats", "bench")
    rows = [[r.label, r.docs, r.completed, r.errors, r.segments, r.rate, r.window_s, r.since_start_s,
             _ms(r.job_s, 50) / 1e3 if r.job_s else float("nan"),
             " / ".join(f"{r.cpu.get(k, float('nan')):.0f}" for k in cpu_keys)] for r in runs]
    print(table(["config (one process)", "docs", "completed", "errors", "segments", "docs/s", "window s",
                 "s since start", "job p50 s", "CPU % indexer / parse processes / nats / bench"], rows))
    print()
    print(f"- {args.docs} markdown files of {sum(map(len, docs)) / len(docs) / 1024:.1f} KB on average, "
          f"created with `DocumentService.create` from this process (object store + database + job) before "
          f"the indexer starts. `plexus run indexer` (a SQLite file, an embedded nats-server, its own data "
          f"dir and vector engine) then indexes them with the built-in model ({LOCAL_THREADS} ONNX threads).")
    print(f"- docs/s = the documents completed after the first {WARMUP_DOCS} (model load, parse-process "
          f"spawn), divided by the time from the {WARMUP_DOCS}th to the last completion (the indexer's own "
          f"`completed_at`). 's since start' includes process start-up. CPU % over about the same window "
          f"(100 = one core). job = `processing_started_at` to `completed_at` of one document.")
    cpus = os.cpu_count() or 1
    print(f"- What a second worker can add depends on how busy one keeps the {cpus} CPUs: every embedding "
          f"call already runs on {LOCAL_THREADS} ONNX thread(s), and the embedding is most of a job (section "
          f"1). A second worker mainly overlaps the rest (database writes, parse-process round trips, NATS, "
          f"the object store). Read the CPU column: near {100 * cpus} % with one worker leaves nothing to "
          f"gain.")
    print("- '2 workers' = two concurrent index jobs and two parse processes in ONE indexer process. The "
          "embedded engine locks its data dir, so a second indexer process would need a vector store of its "
          "own; several indexer processes only make sense with a Qdrant server.")
    for r in runs:
        if r.first_error:
            print(f"- {r.label}: first error: {r.first_error[:200]}")
    if len(runs) >= 2:
        one_r = next((r for r in runs if r.label.startswith("WORKERS=1 ")), runs[0])
        for other in (r for r in runs if r is not one_r):  # each configuration against one worker
            ratio = other.rate / one_r.rate
            print(verdict(ratio >= 1.8, f"{other.label}: {other.rate:.2f} docs/s against {one_r.rate:.2f} with "
                                        f"{one_r.label}, {ratio:.2f}× (target ≥ 1.8×)"))
    print(flush=True)


# ---- main -------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, sections: set[str], work: Path) -> None:
    t0 = time.perf_counter()
    paras = prose_paragraphs()
    print(f"(text: {len(paras):,} distinct prose paragraphs from the installed docstrings, "
          f"{time.perf_counter() - t0:.1f} s)\n", flush=True)
    if "parse" in sections:
        await bench_parse(args, work, paras)
    if sections & {"retrieval", "recall"}:
        await bench_retrieval(args, work, paras, sections)
    if "workers" in sections:
        await bench_workers(args, work, paras)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma list of {','.join(SECTIONS)} (default all)")
    p.add_argument("--pdf-pages", type=int, default=50, help="pages of the generated PDF (default 50)")
    p.add_argument("--md-docs", type=int, default=1000, help="markdown files for `parse` (default 1000)")
    p.add_argument("--points", type=int, default=100_000,
                   help="points in the retrieval space (default 100000)")
    p.add_argument("--real", type=int, default=8000,
                   help="real paragraphs embedded; the rest of --points are noisy copies (default 8000, "
                        "the smallest round number above the engine's full-scan threshold)")
    p.add_argument("--queries", type=int, default=500, help="queries per search and filter (default 500)")
    p.add_argument("--docs", type=int, default=300, help="documents for `workers` (default 300)")
    p.add_argument("--worker-configs", default="1x1,2x2",
                   help="WORKERSxPARSE_PROCESSES configs for `workers` (default 1x1,2x2)")
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with the indexer logs")
    args = p.parse_args(argv)
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    if unknown := sections - set(SECTIONS):
        p.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    if "workers" in sections and args.docs <= WARMUP_DOCS:
        p.error(f"--docs must be more than {WARMUP_DOCS}: the first {WARMUP_DOCS} are the warm-up")
    if not re.fullmatch(r"\d+x\d+(,\d+x\d+)*", args.worker_configs.replace(" ", "")):
        p.error("--worker-configs: a comma list like 1x1,2x2")

    print("## knowledge: indexing pipeline, retrieval and recall on the embedded engine, indexer workers\n")
    print_machine()
    print(flush=True)
    with workdir("knowledge", args.keep_logs) as work:
        run_async(run(args, sections, work))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Kill -9 resilience of the durable indexing pipeline (services/indexer/service/indexing.py).

`plexus run indexer` runs as a real child process on production settings while 200 text documents are
created through DocumentService.create; the indexer's whole process group (with its parse processes) is
killed with SIGKILL 20 times and restarted each time. Every other kill comes 0.3-2.5 s after the new life is
ready (it lands while the parse process starts); the others come 0.3-2.5 s after the life's first document
got past parsing, so that they also land in cleaning, splitting and indexing (segments written, vectors
partly stored: one chunk per embedding call and upsert, nothing acked). Afterwards every document must be
`completed` exactly as a clean run indexes it: the same chunks, segment ids ``segment_id(doc, version,
1..n)``, one vector point per segment, no duplicates and no orphans, and the work queue empty.

The outcome is asserted, never the timing: the kill delays are seeded, but where each kill lands depends
on the machine. Which jobs a kill interrupted is read from the database once the group is dead (documents
this life moved into an active stage); the test requires that at least half of the kills interrupted jobs,
and prints how many found a document's vectors partly stored (timing decides that). (A variant of the indexer
with random point ids and no clean-up of old points fails this test with duplicated points.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats.js.errors
import orjson
import pytest
from sqlmodel import col, select

from services.indexer.pipeline.prepare import chunk_elements, extract_elements
from services.indexer.pipeline.split import validate_process_rule
from services.indexer.service.common import segment_id, space_for
from services.indexer.service.core import Knowledge
from services.indexer.service.datasets import DatasetService
from services.indexer.service.documents import ACTIVE_STATES, DocumentService
from shared import subjects
from shared.bus import Bus
from shared.context import Context
from shared.db import Database
from shared.knowledge.vectors import VectorFilter
from shared.models import Document, DocumentSegment, Tenant
from shared.natsd import free_port
from tests.conftest import db_params, fresh_database, make_settings

N_DOCS = 200
N_KILLS = 20
SEED = 20250611
KILL_DELAY = (0.3, 2.5)  # seconds from the moment a life is ready (or warm, see below) to its SIGKILL
MIN_CHUNKS, MAX_CHUNKS = 3, 8
# Small chunks keep 200 documents of a few paragraphs at 3-8 chunks each and the built-in embedding model's
# CPU time within the test's budget; the pipeline runs exactly as with the automatic rule.
PROCESS_RULE = {"mode": "custom", "rules": {
    "pre_processing_rules": [{"id": "remove_extra_spaces", "enabled": True},
                             {"id": "remove_urls_emails", "enabled": False}],
    "segmentation": {"separator": "\\n\\n", "max_tokens": 64, "chunk_overlap": 8}}}
READY_TIMEOUT = 60.0
WARM_TIMEOUT = 30.0
FINISH_TIMEOUT = 150.0  # after the last restart: every document completed or error
SPACE = space_for("high_quality", "plexus", "all-MiniLM-L6-v2")
PLEXUS = Path(sys.executable).parent / "plexus"
PAST_PARSING = ("cleaning", "splitting", "indexing", "completed")

pytestmark = [pytest.mark.timeout(420), pytest.mark.heavy]

# -- the corpus -------------------------------------------------------------------------------------------

WORDS = ["index", "queue", "worker", "segment", "vector", "point", "durable", "replay", "ledger", "shard",
         "tenant", "dataset", "chunk", "token", "signal", "process", "restart", "crash", "commit",
         "version", "stale", "orphan", "duplicate", "batch", "upload", "parser", "embed", "store",
         "harbor", "meadow", "lantern", "copper", "violet", "orbit", "canyon", "glacier", "ember",
         "falcon", "quartz", "willow", "thunder", "saffron", "marble", "cobalt", "prairie", "tundra",
         "beacon"]
HANZI = ("数据索引系统可靠性问题以及如何在进程被强制终止后恢复工作队列中的任务并且保证向量存储没有重复记录"
         "文档段落内容检索模型服务器重启持久化消息确认版本删除更新批量上传解析嵌入分块令牌租户集合")


def _english_paragraph(rnd: random.Random, doc: int, para: int) -> str:
    sentences = []
    for _ in range(rnd.randint(1, 4)):
        words = [rnd.choice(WORDS) for _ in range(rnd.randint(5, 12))]
        sentences.append(" ".join(words).capitalize() + rnd.choice(".!?"))
    return f"Document {doc}, paragraph {para}: " + " ".join(sentences)


def _chinese_paragraph(rnd: random.Random, doc: int, para: int) -> str:
    sentences = ["".join(rnd.choice(HANZI) for _ in range(rnd.randint(8, 20))) + rnd.choice("。！？")
                 for _ in range(rnd.randint(1, 4))]
    return f"第{para}段（文档{doc}）：" + "".join(sentences)


def _text(doc: int, variant: int) -> str:
    rnd = random.Random(f"{SEED}:{doc}:{variant}")
    chinese = doc % 3 == 0  # every third document mixes Chinese paragraphs in; some are all Chinese
    all_chinese = doc % 15 == 0
    paras = []
    for p in range(rnd.randint(3, 10)):
        zh = all_chinese or (chinese and rnd.random() < 0.5)
        paras.append(_chinese_paragraph(rnd, doc, p) if zh else _english_paragraph(rnd, doc, p))
    return "\n\n".join(paras)


@dataclass
class Expected:
    name: str
    text: str
    chunks: list[str]  # contents a clean run produces, by position 1..n
    hashes: list[str]


def build_corpus(rule: dict[str, Any]) -> list[Expected]:
    """N_DOCS distinct texts of MIN_CHUNKS..MAX_CHUNKS chunks each, with what a clean run makes of them
    (the same extract + chunk calls the indexer's parse processes run)."""
    out: list[Expected] = []
    with tempfile.TemporaryDirectory(prefix="plexus-kill-corpus-") as tmp:
        path = Path(tmp) / "source"
        for doc in range(N_DOCS):
            for variant in range(100):
                text = _text(doc, variant)
                path.write_text(text, encoding="utf-8")
                chunks = chunk_elements(extract_elements(str(path), "txt"), rule)
                if MIN_CHUNKS <= len(chunks) <= MAX_CHUNKS:
                    break
            else:
                raise AssertionError(f"no text of {MIN_CHUNKS}-{MAX_CHUNKS} chunks for document {doc}")
            assert [c.position for c in chunks] == list(range(1, len(chunks) + 1))
            out.append(Expected(f"kill-doc-{doc:03d}", text, [c.content for c in chunks],
                                [c.content_hash for c in chunks]))
    assert len({e.text for e in out}) == N_DOCS
    return out


# -- the indexer child process ----------------------------------------------------------------------------


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


@dataclass
class Incarnation:
    number: int
    proc: asyncio.subprocess.Process
    port: int
    log: Path
    ready_after: float = 0.0  # seconds from spawn to a healthy /healthz


@dataclass
class KillRecord:
    number: int
    mode: str  # cold: timed from readiness; warm: timed from the life's first document past parsing
    delay: float
    interrupted: dict[str, str]  # document id -> the stage it was in when this life was killed
    partly_stored: int  # of those, documents killed in indexing with some of their vectors already stored
    completed_in_life: int
    ack_pending: int


class Indexer:
    """Starts, kills and stops `plexus run indexer` (own session, so its parse processes share its group)."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.current: Incarnation | None = None
        self.count = 0
        self.logs: list[Path] = []
        self.ready_times: list[float] = []

    async def start(self) -> Incarnation:
        assert self.current is None
        self.count += 1
        port = free_port()
        log = self.workdir / f"indexer-{self.count:02d}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                str(PLEXUS), "run", "indexer", cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env={**self.env, "PLEXUS_PORT": str(port)})
        inc = self.current = Incarnation(self.count, proc, port, log)
        t0 = time.monotonic()
        deadline = t0 + READY_TIMEOUT
        async with httpx.AsyncClient(timeout=2) as c:
            while True:
                if proc.returncode is not None:
                    raise AssertionError(f"indexer #{inc.number} exited with {proc.returncode}:\n{tail(log)}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await c.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"indexer #{inc.number} not ready in {READY_TIMEOUT:g} s:\n{tail(log)}")
                await asyncio.sleep(0.1)
        inc.ready_after = time.monotonic() - t0
        self.ready_times.append(inc.ready_after)
        return inc

    async def _reap_group(self, inc: Incarnation) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(inc.proc.pid, signal.SIGKILL)
        await inc.proc.wait()
        deadline = time.monotonic() + 10
        while members := group_members(inc.proc.pid):
            assert time.monotonic() < deadline, f"indexer #{inc.number}: survivors of SIGKILL {members}"
            await asyncio.sleep(0.05)

    async def kill(self) -> Incarnation:
        """SIGKILL to the whole group (the indexer and its parse processes) and wait until all are gone."""
        inc = self.current
        assert inc is not None
        await self._reap_group(inc)
        self.current = None
        return inc

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM to the indexer; whatever of its group outlives it (parse processes) is killed."""
        inc = self.current
        assert inc is not None
        inc.proc.send_signal(signal.SIGTERM)
        try:
            rc = await asyncio.wait_for(inc.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"indexer #{inc.number} ignored SIGTERM for {timeout:g} s:\n{tail(inc.log)}") from None
        finally:
            await self._reap_group(inc)
            self.current = None
        return rc

    async def close(self) -> None:
        if self.current is not None:
            await self._reap_group(self.current)
            self.current = None


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"<{e}>"


def log_events(paths: list[Path]) -> Counter:
    """Counts of the indexer's warning/error events over all its lives (structlog JSON lines)."""
    seen: Counter = Counter()
    for p in paths:
        for line in p.read_bytes().splitlines():
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("level") in ("warning", "error", "critical"):
                seen[f"{rec.get('level')}:{rec.get('event')}"] += 1
    return seen


# -- the test ------------------------------------------------------------------------------------------------


class _NoVectors:
    """The test process must not open the edge store while an indexer owns it; creating datasets and
    documents never touches vectors, which this stand-in proves."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the test process used the vector store ({name})")


States = dict[str, tuple[str, Any]]  # document id -> (indexing_status, updated_at)


async def doc_states(db: Database, dataset_id: str) -> States:
    async with db.session() as s:
        rows = (await s.exec(select(Document.id, Document.indexing_status, Document.updated_at)
                             .where(Document.dataset_id == dataset_id))).all()
    return {r[0]: (r[1], r[2]) for r in rows}


def touched(before: States, after: States, statuses: tuple[str, ...]) -> dict[str, str]:
    """Documents the indexer moved into one of ``statuses`` since ``before``."""
    return {d: st for d, (st, upd) in after.items()
            if st in statuses and (d not in before or before[d][1] != upd)}


async def partly_stored(db: Database, interrupted: dict[str, str]) -> int:
    """Interrupted documents with some segments already marked completed, i.e. vector batches upserted."""
    ids = [d for d, st in interrupted.items() if st == "indexing"]
    if not ids:
        return 0
    async with db.session() as s:
        rows = (await s.exec(select(DocumentSegment.document_id).distinct().where(
            col(DocumentSegment.document_id).in_(ids), DocumentSegment.status == "completed"))).all()
    return len(rows)


async def consumer_info(bus: Bus) -> Any:
    return await bus.js.consumer_info(subjects.INDEX_JOBS_STREAM, subjects.INDEX_WORKERS)


async def create_documents(kn: Knowledge, tenant_id: str, dataset_id: str, corpus: list[Expected],
                           created: dict[str, Expected], rnd: random.Random) -> None:
    """Creates the corpus in batches of 10 with pauses, so that creation overlaps the kills."""
    svc = DocumentService(kn)
    body = {"indexing_technique": "high_quality", "process_rule": PROCESS_RULE}
    for i, e in enumerate(corpus):
        out = await svc.create(tenant_id, dataset_id, svc.text_source(e.name, e.text), body)
        created[out["document"]["id"]] = e
        if i % 10 == 9:
            await asyncio.sleep(rnd.uniform(0.5, 2.5))


async def wait_warm(db: Database, dataset_id: str, before: States, created: dict[str, Expected],
                    creator: asyncio.Task) -> bool:
    """Until this life has brought a document past parsing (its parse process is up), so that the kill
    can land in any stage; False when there is nothing left to do or it takes over WARM_TIMEOUT."""
    deadline = time.monotonic() + WARM_TIMEOUT
    while time.monotonic() < deadline:
        now = await doc_states(db, dataset_id)
        if touched(before, now, PAST_PARSING):
            return True
        if creator.done() and len(now) == len(created) and all(st == "completed" for st, _ in now.values()):
            return False
        await asyncio.sleep(0.1)
    return False


@pytest.mark.parametrize("db_kind", db_params())
async def test_index_survives_repeated_kill_9(db_kind: str, tmp_path: Path, nats_url: str) -> None:
    t_start = time.monotonic()
    rnd = random.Random(SEED)
    rule = validate_process_rule(PROCESS_RULE, required=True).model_dump(mode="json")
    corpus = build_corpus(rule)
    total_segments = sum(len(e.chunks) for e in corpus)

    db_url = await fresh_database(db_kind, tmp_path)
    data_dir = tmp_path / "data"
    settings = make_settings(tmp_path, db_url, nats_url)
    db = Database(db_url)
    bus = await Bus.connect(nats_url, name="plexus-kill-test")
    # the session's NATS is shared with other tests: start from an empty queue and a fresh durable consumer
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await bus.js.delete_consumer(subjects.INDEX_JOBS_STREAM, subjects.INDEX_WORKERS)
    await bus.js.purge_stream(subjects.INDEX_JOBS_STREAM)
    kn = Knowledge(Context(settings=settings, db=db, bus=bus), _NoVectors())  # type: ignore[arg-type]

    async with db.session() as s:
        tenant = Tenant(name="kill-9 workspace")
        s.add(tenant)
        await s.commit()
        tenant_id = tenant.id
    ds = await DatasetService(kn).create(tenant_id, {"name": "kill-9", "indexing_technique": "high_quality"})
    dataset_id = ds["id"]

    env = {k: v for k, v in os.environ.items() if not k.startswith("PLEXUS_")}
    env.update({
        "PLEXUS_DATABASE_URL": db_url, "PLEXUS_NATS_URL": nats_url, "PLEXUS_DATA_DIR": str(data_dir),
        "PLEXUS_SECRET_KEY": "kill-9-secret-key-" * 3, "PLEXUS_INTERNAL_SECRET": "kill-9-internal-" * 3,
        "PLEXUS_LOG_LEVEL": "INFO", "PLEXUS_LOG_JSON": "true", "PLEXUS_KNOWLEDGE__VECTOR_STORE": "edge",
        "PLEXUS_KNOWLEDGE__ACK_WAIT": "2", "PLEXUS_KNOWLEDGE__MAX_ATTEMPTS": "50",
        "PLEXUS_KNOWLEDGE__WORKERS": "2", "PLEXUS_KNOWLEDGE__REQUEUE_AFTER": "3",
        # one chunk per embedding call and upsert: a kill in `indexing` mostly finds a document's vectors
        # partly stored (the redelivered job must then neither duplicate nor lose points)
        "PLEXUS_KNOWLEDGE__EMBEDDING_BATCH": "1",
    })
    workdir = tmp_path / "indexer"
    workdir.mkdir()
    indexer = Indexer(env, workdir)
    created: dict[str, Expected] = {}
    kills: list[KillRecord] = []
    creator: asyncio.Task | None = None
    try:
        before = await doc_states(db, dataset_id)
        await indexer.start()
        creator = asyncio.create_task(create_documents(kn, tenant_id, dataset_id, corpus, created,
                                                       random.Random(SEED + 1)))
        for k in range(N_KILLS):
            if creator.done():
                creator.result()  # a failed create fails the test now
            # every other kill is timed from readiness (it lands while the parse process starts), the
            # others from the life's first document past parsing (they land in any stage)
            mode = "cold" if k % 2 == 0 else "warm"
            if mode == "warm" and not await wait_warm(db, dataset_id, before, created, creator):
                mode = "cold"
            delay = rnd.uniform(*KILL_DELAY)
            await asyncio.sleep(delay)
            inc = await indexer.kill()
            # the whole group is dead: the database shows exactly where this life stopped
            after = await doc_states(db, dataset_id)
            info = await consumer_info(bus)
            interrupted = touched(before, after, ACTIVE_STATES)
            partial = await partly_stored(db, interrupted)
            kills.append(KillRecord(inc.number, mode, delay, interrupted, partial,
                                    len(touched(before, after, ("completed",))), info.num_ack_pending))
            before = after  # nothing writes for the indexer until the next life starts
            await indexer.start()
        await creator
        assert len(created) == N_DOCS
        kill_phase = time.monotonic() - t_start
        redelivered_before_final = (await consumer_info(bus)).num_redelivered

        # after the last restart the indexer runs undisturbed until every document is done
        deadline = time.monotonic() + FINISH_TIMEOUT
        while True:
            states = await doc_states(db, dataset_id)
            if len(states) == N_DOCS and all(st in ("completed", "error") for st, _ in states.values()):
                break
            live = indexer.current
            assert live is not None
            if time.monotonic() > deadline or live.proc.returncode is not None:
                info = await consumer_info(bus)
                stream = await bus.js.stream_info(subjects.INDEX_JOBS_STREAM)
                raise AssertionError(
                    f"documents not finished {FINISH_TIMEOUT:g} s after the last restart: "
                    f"{Counter(st for st, _ in states.values())}; stream messages={stream.state.messages}, "
                    f"ack_pending={info.num_ack_pending}, pending={info.num_pending}, "
                    f"redelivered={info.num_redelivered}; indexer rc={live.proc.returncode}\n"
                    f"{tail(live.log)}")
            await asyncio.sleep(0.5)
        # ... and every job is acked in the end (work queue empty): none is left to loop or to redeliver
        deadline = time.monotonic() + 30
        while (stream := await bus.js.stream_info(subjects.INDEX_JOBS_STREAM)).state.messages:
            assert time.monotonic() < deadline, (f"{stream.state.messages} jobs never acked after every "
                                                 f"document completed: {await consumer_info(bus)}")
            await asyncio.sleep(0.2)
        final_phase = time.monotonic() - t_start - kill_phase

        # -- the database: exactly a clean run's segments, nothing else ---------------------------------
        async with db.session() as s:
            docs = list(await s.exec(select(Document).where(Document.dataset_id == dataset_id)))
            segs = list(await s.exec(
                select(DocumentSegment).where(col(DocumentSegment.document_id).in_(list(created)))
                .order_by(col(DocumentSegment.document_id), col(DocumentSegment.position))))
            in_dataset = list(await s.exec(select(DocumentSegment.id)
                                           .where(DocumentSegment.dataset_id == dataset_id)))
        not_completed = {d.name: (d.indexing_status, d.error)
                         for d in docs if d.indexing_status != "completed"}
        assert not not_completed, f"{len(not_completed)} documents did not complete: {not_completed}"
        assert {d.id for d in docs} == set(created)
        per_doc: dict[str, list[DocumentSegment]] = {}
        for seg in segs:
            per_doc.setdefault(seg.document_id, []).append(seg)
        for d in docs:
            exp = created[d.id]
            n = len(exp.chunks)
            rows = per_doc.get(d.id, [])
            assert d.total_segments == n, (d.name, d.total_segments, n)
            assert len(rows) == n, (d.name, len(rows), n)
            assert [r.position for r in rows] == list(range(1, n + 1)), d.name
            ids = [segment_id(d.id, d.index_version, p) for p in range(1, n + 1)]
            assert [r.id for r in rows] == ids, d.name
            assert all(r.dataset_id == dataset_id and r.tenant_id == tenant_id for r in rows), d.name
            assert [r.content for r in rows] == exp.chunks, d.name
            assert [r.index_node_hash for r in rows] == exp.hashes, d.name
            assert all(r.status == "completed" for r in rows), (d.name, [r.status for r in rows])
            assert d.word_count == sum(len(c) for c in exp.chunks), d.name
        assert len(segs) == len(in_dataset) == total_segments

        # -- the vectors: stop the indexer (it owns the edge store), then count ------------------------
        rc = await indexer.stop()
        # 0: `plexus run` stops its stack on SIGTERM (workers, the vector store's close) and exits normally
        assert rc == 0, f"indexer exited with {rc} on SIGTERM:\n{tail(indexer.logs[-1])}"
        from shared.knowledge.vectors_edge import EdgeStore

        store = EdgeStore(data_dir / "vectors")
        try:
            wrong = {}
            for d in docs:
                got = await store.count(SPACE, VectorFilter(tenant_id, (dataset_id,), document_ids=(d.id,)),
                                        include_disabled=True)
                if got != len(created[d.id].chunks):
                    wrong[d.name] = (got, len(created[d.id].chunks))
            assert not wrong, f"vector points per document (got, expected): {wrong}"
            points = await store.count(SPACE, VectorFilter(tenant_id, (dataset_id,)), include_disabled=True)
            assert points == total_segments, (points, total_segments)
        finally:
            await store.close()

        # -- the kills must have hit work in flight, or the test proves nothing ---------------------------
        mid_job = [k for k in kills if k.interrupted]
        stages = Counter(st for k in kills for st in k.interrupted.values())
        ever_interrupted = set().union(*(k.interrupted for k in kills))
        print(f"\n[{db_kind}] {N_DOCS} documents, {total_segments} segments, {len(kills)} kills; "
              f"kill phase {kill_phase:.1f} s, final phase {final_phase:.1f} s, "
              f"total {time.monotonic() - t_start:.1f} s; indexer start to ready: mean "
              f"{sum(indexer.ready_times) / len(indexer.ready_times):.1f} s, "
              f"max {max(indexer.ready_times):.1f} s")
        print(f"kills that interrupted jobs in flight: {len(mid_job)}/{len(kills)}; jobs interrupted: "
              f"{sum(stages.values())}, by stage: {dict(stages)}; documents interrupted at least once: "
              f"{len(ever_interrupted)}; killed with vectors partly stored: "
              f"{sum(k.partly_stored for k in kills)}; redelivered and not yet acked at the last restart "
              f"(consumer num_redelivered): {redelivered_before_final}")
        for k in kills:
            since = "warm" if k.mode == "warm" else "ready"
            print(f"  life {k.number:2d} killed {k.delay:.2f} s after {since}: "
                  f"interrupted={sorted(k.interrupted.values())} partly stored={k.partly_stored} "
                  f"completed in life={k.completed_in_life} "
                  f"ack_pending={k.ack_pending}")
        print(f"indexer warnings/errors over all lives: {dict(log_events(indexer.logs))}")
        assert len(mid_job) >= N_KILLS // 2, f"only {len(mid_job)} of {len(kills)} kills hit a job in flight"
        # Whether a kill lands while a document's vectors are partly stored depends on timing this test cannot
        # control (on a loaded CI machine it missed that window in some runs); the outcome above is asserted
        # either way, and the count of such kills is printed.
        print(f"kills with vectors partly stored: {sum(1 for k in kills if k.partly_stored)} ({dict(stages)})")
    finally:
        if creator is not None and not creator.done():
            creator.cancel()
            with contextlib.suppress(BaseException):
                await creator
        await indexer.close()
        await bus.close()
        await db.close()

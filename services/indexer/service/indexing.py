"""The indexing pipeline (ARCHITECTURE §2 `plexus.index.jobs`): durable pull consumer → extract → clean →
split → embed → store, ack only after the vector store and database writes.

Exactly-once effect on top of at-least-once delivery:
- a job names (document id, index version); every status write is guarded by that version and by an
  indexing state, so a job made stale by a newer upload, a delete, a dataset change or a pause stops at its
  next write (and before each embedding batch is stored), and takes back the points it stored;
- segment ids (= vector point ids) are derived from (document, version, position): a redelivered job
  rewrites the same rows and points, and the points of earlier versions are deleted at the end;
- JetStream redelivers a job whose worker died (no ack within ack_wait); a delivery past
  ``max_attempts`` ends the document in ``error`` with the reason (poison documents stop);
- a file the parser rejects (encrypted, corrupt, zip bomb) ends in ``error`` at once, without retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import orjson
import structlog
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import update
from sqlmodel import col, delete, select

from services.indexer.pipeline.prepare import (
    PreparedChunk,
    chunk_elements,
    extract_elements,
    init_child,
    prepared,
)
from services.indexer.pipeline.qa import QA_NEEDS_MODEL, parse_pairs, qa_language, qa_messages
from services.indexer.pipeline.split import Chunk, count_tokens
from services.indexer.service.common import INDEXING_STATES, child_chunk_id, dataset_space, segment_id
from services.indexer.service.core import Knowledge
from shared import subjects
from shared.credentials import default_model, provider_credentials
from shared.knowledge.embeddings import LOCAL_MAX_TOKENS, Embedder
from shared.knowledge.models import LOCAL_EMBEDDING_PROVIDER
from shared.knowledge.vectors import (
    P_DATASET,
    P_DOCUMENT,
    P_ENABLED,
    P_METADATA,
    P_SEGMENT,
    P_TENANT,
    SparseVector,
    VectorPoint,
)
from shared.llm import call_kwargs, litellm
from shared.models import ChildChunk, Dataset, Document, DocumentSegment, SegmentImportJob, UploadFile, utcnow
from shared.parse import ParseError

log = structlog.get_logger("plexus.indexer.pipeline")

_DOCS = Document.__table__


def automatic_chunk_tokens(ds: Dataset) -> int | None:
    """The built-in model embeds at most 256 of its tokens: the automatic rule makes chunks it sees whole
    (our token estimate runs ~10 % under its count for English)."""
    return automatic_tokens_for(ds.indexing_technique, ds.embedding_model_provider)


def automatic_tokens_for(technique: str | None, embedding_provider: str | None) -> int | None:
    if technique == "high_quality" and embedding_provider in (None, LOCAL_EMBEDDING_PROVIDER):
        return int(LOCAL_MAX_TOKENS * 0.85)
    return None


SEGMENTS_IMPORT = "segments_import"  # the kind of an index job that imports segments (not a document's)


class Stale(Exception):
    """The document changed (new version, deleted, paused) while this job worked on it: drop the job."""


class Transient(Exception):
    """Worth another try (provider or store unreachable)."""


def _mine(doc_id: str, version: int) -> tuple[Any, ...]:
    """The document row while this job may still write it: the job's version, still being indexed (a pause,
    or a duplicate job that finished it, ends the job's writes)."""
    return (_DOCS.c.id == doc_id, _DOCS.c.index_version == version,
            _DOCS.c.indexing_status.in_(INDEXING_STATES))


def searched_points(doc_id: str, version: int, chunks: list[PreparedChunk]
                    ) -> list[tuple[str, PreparedChunk, str]]:
    """(point id, chunk, its segment's id) of a version's chunks: a parent-child document's points are its
    child chunks. Ids derive from the version, so these are this version's points and no other's."""
    out: list[tuple[str, PreparedChunk, str]] = []
    for c in chunks:
        sid = segment_id(doc_id, version, c.position)
        if c.children is None:
            out.append((sid, c, sid))
        else:
            out += [(child_chunk_id(sid, k.position), k, sid) for k in c.children]
    return out


def point_for(ds: Dataset, doc: Document, seg_id: str, dense: list[float] | None, sparse: SparseVector,
              enabled: bool) -> VectorPoint:
    return VectorPoint(id=seg_id, dense=dense, sparse=sparse, payload={
        P_TENANT: ds.tenant_id, P_DATASET: ds.id, P_DOCUMENT: doc.id, P_SEGMENT: seg_id,
        P_ENABLED: enabled, P_METADATA: doc.doc_metadata or {}})


async def embed_points(kn: Knowledge, ds: Dataset, doc: Document, items: list[tuple[str, str, SparseVector, bool]],
                       embedder: Embedder | None) -> tuple[str, list[VectorPoint]]:
    """(space, points) for (segment id, text, sparse vector, enabled) items; dense only for high_quality."""
    space = dataset_space(ds)
    dense: list[list[float] | None] = [None] * len(items)
    if embedder is not None:
        vectors = await embedder.embed_documents([t for _, t, _, _ in items])
        dense = list(vectors)
        await kn.vectors.ensure_space(space, len(vectors[0]) if vectors else embedder.dim)
    else:
        await kn.vectors.ensure_space(space, None)
    return space, [point_for(ds, doc, sid, d, sv, en) for (sid, _, sv, en), d in zip(items, dense, strict=True)]


class QAWriter:
    """The workspace's default LLM writing question-answer pairs (Q&A documents and their previews)."""

    def __init__(self, kn: Knowledge, provider: str, model: str, creds: dict[str, Any]) -> None:
        self.kn, self.label = kn, f"{provider}/{model}"
        self._kwargs = call_kwargs(provider, model, creds)

    @classmethod
    async def of_workspace(cls, kn: Knowledge, tenant_id: str) -> QAWriter | None:
        """None when the workspace has no default LLM, or no credentials for it."""
        async with kn.db.session() as s:
            row = await default_model(s, tenant_id, "llm")
            creds = await provider_credentials(s, kn.ctx.settings.secret_key, tenant_id, row[0], row[1],
                                               "llm") if row else None
        return cls(kn, row[0], row[1], creds) if row is not None and creds is not None else None

    async def write(self, texts: list[str], language: str) -> list[list[tuple[str, str]]]:
        """The pairs of each text, ``qa_concurrency`` calls at once; a failing call fails the whole and cancels
        the calls still running or waiting (a retried job starts over, not beside them)."""
        gate = asyncio.Semaphore(max(1, self.kn.settings.qa_concurrency))

        async def pairs(text: str) -> list[tuple[str, str]]:
            async with gate:
                resp = await litellm().acompletion(**self._kwargs, messages=qa_messages(text, language),
                                                   timeout=self.kn.ctx.settings.runtime.llm_timeout)
            return parse_pairs(resp.choices[0].message.content or "")

        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(pairs(t)) for t in texts]
        except BaseExceptionGroup as eg:
            raise eg.exceptions[0] from None  # the first failure, as gather would raise it
        return [t.result() for t in tasks]


class IndexWorkers:
    def __init__(self, kn: Knowledge) -> None:
        self.kn = kn
        self.settings = kn.settings
        self._tasks: list[asyncio.Task] = []
        self._subs: list[Any] = []
        self._pool: ProcessPoolExecutor | None = None
        self._stopping = False
        self.processed = 0  # jobs finished by this process (observability and tests)
        self._written: dict[str, int] = {}  # space → points written since its index was last built
        self._optimizing: asyncio.Task | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        js = self.kn.bus.js
        cfg = ConsumerConfig(
            durable_name=subjects.INDEX_WORKERS, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.settings.ack_wait, max_deliver=-1,  # our attempt count decides, never a silent drop
            filter_subject=subjects.INDEX_JOBS, max_ack_pending=max(64, self.settings.workers * 4))
        try:
            await js.add_consumer(subjects.INDEX_JOBS_STREAM, cfg)
        except nats.js.errors.BadRequestError:  # exists with other settings (e.g. ack_wait changed)
            await js.update_consumer(subjects.INDEX_JOBS_STREAM, cfg)
        for i in range(max(1, self.settings.workers)):
            sub = await js.pull_subscribe(subjects.INDEX_JOBS, durable=subjects.INDEX_WORKERS,
                                          stream=subjects.INDEX_JOBS_STREAM)
            self._subs.append(sub)
            self._tasks.append(asyncio.create_task(self._worker(sub), name=f"index-worker-{i}"))
        self._tasks.append(asyncio.create_task(self._sweep(), name="index-requeue"))

    async def stop(self) -> None:
        self._stopping = True
        if self._optimizing is not None:
            self._tasks.append(self._optimizing)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        # unsubscribe, not drain: a pull subscription's late fetch replies would hold a drain for its timeout
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: a fork of a process with running threads (uvloop, onnxruntime) is not safe
            self._pool = ProcessPoolExecutor(max_workers=max(1, self.settings.parse_processes),
                                             mp_context=multiprocessing.get_context("spawn"),
                                             initializer=init_child)
        return self._pool

    async def _in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.wrap_future(self._executor().submit(fn, *args))
        except BrokenProcessPool:
            # the child died (out of memory, a crash in a C parser): a fresh pool for the next job
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            raise ParseError("The parser process stopped while reading this file "
                             "(it may be too large or malformed).") from None

    # -- the CPU-bound stages, in the parse processes (also for previews) -----------------------------------
    async def extract(self, f: UploadFile) -> list[Any]:
        """The file's elements. FileNotFoundError: gone from the object store; Transient: the store is
        unreachable; ParseError: the parser refuses the file."""
        with tempfile.TemporaryDirectory(prefix="plexus-index-") as tmp:
            path = Path(tmp) / "source"
            try:
                await self.kn.files.get_to(f.object_name, path)
            except (nats.js.errors.ObjectNotFoundError, nats.js.errors.NotFoundError):
                raise FileNotFoundError("The uploaded file is missing from the object store.") from None
            except Exception as e:
                raise Transient(f"object store unavailable: {e}") from e
            return await self._in_pool(extract_elements, str(path), f.extension)

    async def chunk(self, elements: list[Any], rule: dict[str, Any], automatic_tokens: int | None
                    ) -> list[PreparedChunk]:
        return await self._in_pool(chunk_elements, elements, rule, automatic_tokens)

    # -- the loop ------------------------------------------------------------------------------------
    async def _worker(self, sub: Any) -> None:
        while not self._stopping:
            try:
                msgs = await sub.fetch(1, timeout=2)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("index_fetch_failed", exc_info=True)
                await asyncio.sleep(1)
                continue
            for msg in msgs:
                await self._handle(msg)

    async def _handle(self, msg: Msg) -> None:
        try:
            job = orjson.loads(msg.data)
            if job.get("kind") == SEGMENTS_IMPORT:
                import_id = str(job["job_id"])
            else:
                import_id, doc_id, version = None, str(job["document_id"]), int(job["version"])
        except Exception:  # noqa: BLE001 - not a job we can read: drop it, loudly
            log.error("index_job_unreadable", data=msg.data[:200])
            await msg.term()
            return
        if import_id is not None:
            await self._handle_import(msg, import_id)
            return
        attempt = msg.metadata.num_delivered or 1
        structlog.contextvars.bind_contextvars(document_id=doc_id)
        try:
            async with self._heartbeat(msg):
                await self.process(doc_id, version, attempt)
            await msg.ack()
            self.processed += 1
        except Stale:
            await msg.ack()
        except Transient as e:
            if attempt >= self.settings.max_attempts:
                await self._fail(doc_id, version, f"Gave up after {attempt} attempts: {e}")
                await msg.ack()
            else:
                log.warning("index_job_retry", attempt=attempt, error=str(e))
                await msg.nak(delay=min(2.0**attempt, 30.0))
        except asyncio.CancelledError:
            raise  # shutting down: no ack, so the job is redelivered to a live worker
        except Exception as e:
            log.exception("index_job_failed", attempt=attempt)
            if attempt >= self.settings.max_attempts:
                await self._fail(doc_id, version, f"Gave up after {attempt} attempts: {type(e).__name__}: {e}")
                await msg.ack()
            else:
                await msg.nak(delay=min(2.0**attempt, 30.0))
        finally:
            structlog.contextvars.unbind_contextvars("document_id")

    async def _handle_import(self, msg: Msg, job_id: str) -> None:
        """A CSV import of segments (service/segment_import.py): retried like a document, then ``error``. Never
        raises (it runs in the worker loop); a message left without ack or nak is redelivered after ack_wait."""
        from services.indexer.service.segment_import import SegmentImports  # here: it imports this module

        attempt = msg.metadata.num_delivered or 1
        imports = SegmentImports(self.kn)
        try:
            if attempt > self.settings.max_attempts:  # earlier deliveries died without an answer
                await imports.finish(job_id, "error", f"Gave up after {attempt - 1} attempts: the import "
                                                      "stopped each time (the worker ended).")
            else:
                async with self._heartbeat(msg):
                    await imports.run(job_id)
                self.processed += 1
            await msg.ack()
        except asyncio.CancelledError:
            raise  # shutting down: redelivered to a live worker
        except Exception as e:  # noqa: BLE001 - any failure is retried, then the job's status
            log.warning("segment_import_failed", job_id=job_id, attempt=attempt, error=str(e))
            try:
                if attempt >= self.settings.max_attempts:
                    await imports.finish(job_id, "error", f"Gave up after {attempt} attempts: {e}"[:2000])
                    await msg.ack()
                else:
                    await msg.nak(delay=min(2.0**attempt, 30.0))
            except Exception:  # the database or NATS is down: redelivered after ack_wait
                log.warning("segment_import_not_settled", job_id=job_id, exc_info=True)

    @contextlib.asynccontextmanager
    async def _heartbeat(self, msg: Msg) -> AsyncIterator[None]:
        """Tell JetStream the job is alive while a long stage runs (else it is redelivered after ack_wait)."""
        async def beat() -> None:
            while True:
                await asyncio.sleep(max(self.settings.ack_wait / 3, 0.5))
                with contextlib.suppress(Exception):
                    await msg.in_progress()

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()

    # -- one job ---------------------------------------------------------------------------------------
    async def _set(self, doc_id: str, version: int, **values: Any) -> None:
        """A guarded status write (``_mine``): nothing happens (Stale) if the document moved on or was paused."""
        async with self.kn.db.session() as s:
            res = await s.exec(update(_DOCS).where(*_mine(doc_id, version)).values(updated_at=utcnow(), **values))
            await s.commit()
        if res.rowcount == 0:
            raise Stale

    async def _check(self, doc_id: str, version: int) -> None:
        """Stale unless the job may still write the document (``_mine``): read before each vector write."""
        async with self.kn.db.session() as s:
            found = (await s.exec(select(_DOCS.c.id).where(*_mine(doc_id, version)))).first()
        if found is None:
            raise Stale

    async def _fail(self, doc_id: str, version: int, reason: str) -> None:
        log.warning("index_document_failed", reason=reason)
        with contextlib.suppress(Stale):
            await self._set(doc_id, version, indexing_status="error", error=reason[:2000], stopped_at=utcnow())

    async def process(self, doc_id: str, version: int, attempt: int = 1) -> None:
        async with self.kn.db.session() as s:
            doc = await s.get(Document, doc_id)
            if doc is None or doc.index_version != version or doc.indexing_status not in INDEXING_STATES:
                raise Stale  # moved on, finished, or paused
            ds = await s.get(Dataset, doc.dataset_id)
            f = await s.get(UploadFile, doc.upload_file_id) if doc.upload_file_id else None
        if ds is None or f is None:
            raise Stale
        if attempt > self.settings.max_attempts:
            # earlier deliveries ended without an ack (the worker died mid-job): a poison document
            await self._fail(doc_id, version, f"Gave up after {attempt - 1} attempts: indexing stopped during "
                                              f"'{doc.indexing_status}' each time (the worker ended).")
            raise Stale
        t0 = time.perf_counter()
        await self._set(doc_id, version, indexing_status="parsing", processing_started_at=utcnow(), error=None)
        try:
            try:
                elements = await self.extract(f)
            except FileNotFoundError as e:
                await self._fail(doc_id, version, str(e))
                raise Stale from None
            await self._set(doc_id, version, indexing_status="cleaning", parsing_completed_at=utcnow())
            chunks = await self.chunk(elements, doc.process_rule, automatic_chunk_tokens(ds))
        except ParseError as e:
            await self._fail(doc_id, version, str(e))
            raise Stale from None
        now = utcnow()
        await self._set(doc_id, version, indexing_status="splitting", cleaning_completed_at=now)
        if doc.doc_form == "qa_model":
            chunks = await self._qa_pairs(ds, doc, version, chunks)
        points = searched_points(doc_id, version, chunks)
        try:
            await self._write_segments(ds, doc, version, chunks)
            await self._embed_and_store(ds, doc, version, points)
            await self._set(doc_id, version, indexing_status="completed", completed_at=utcnow(),
                            word_count=sum(len(c.content) + len(c.answer or "") for c in chunks),
                            tokens=sum(c.tokens for c in chunks))
        except Stale:
            await self._take_back(ds, doc_id, version, [pid for pid, _, _ in points])
            raise
        log.info("index_document_completed", segments=len(chunks), seconds=round(time.perf_counter() - t0, 3))

    async def _qa_pairs(self, ds: Dataset, doc: Document, version: int, chunks: list[PreparedChunk]
                        ) -> list[PreparedChunk]:
        """A Q&A document's segments: the pairs the workspace's default LLM writes from each chunk (at most
        ``qa_concurrency`` calls at once). A provider failure is worth another try; no default model, or
        no pair at all, ends the document in error."""
        writer = await QAWriter.of_workspace(self.kn, ds.tenant_id)
        if writer is None:
            await self._fail(doc.id, version, QA_NEEDS_MODEL)
            raise Stale
        try:
            written = await writer.write([c.content for c in chunks], qa_language(doc.doc_language))
        except Exception as e:
            raise Transient(f"Q&A generation with {writer.label} failed: {type(e).__name__}: {e}") from e

        def prepare() -> list[PreparedChunk]:
            out: list[PreparedChunk] = []
            for c, found in zip(chunks, written, strict=True):
                for q, a in found:  # the question is what is searched
                    out.append(prepared(Chunk(q, len(out) + 1, count_tokens(q), page=c.page), answer=a))
            return out

        out = await asyncio.to_thread(prepare)
        if not out and chunks:
            await self._fail(doc.id, version, f"{writer.label} wrote no question-answer pairs "
                                              "(Q1: … A1: …) for this document.")
            raise Stale
        return out

    async def _take_back(self, ds: Dataset, doc_id: str, version: int, ids: list[str]) -> None:
        """A job that stopped (Stale) after it may have stored points removes them: all the document's when
        it was deleted (or its dataset); this version's (``ids``) when it was paused or re-indexed, so none
        stays searchable (a newer version's keep_ids would only remove them once it completes). Points of a
        document a duplicate job of this version completed stay."""
        async with self.kn.db.session() as s:
            now = (await s.exec(select(_DOCS.c.index_version, _DOCS.c.indexing_status)
                                .where(_DOCS.c.id == doc_id))).first()
        space = dataset_space(ds)
        with contextlib.suppress(Exception):  # what is left is not served: retrieval reads the database
            if now is None:
                await self.kn.vectors.delete_document(space, ds.tenant_id, ds.id, doc_id)
            elif now[0] != version or now[1] == "paused":
                await self.kn.vectors.delete_ids(space, ids)

    async def _write_segments(self, ds: Dataset, doc: Document, version: int, chunks: list[PreparedChunk]) -> None:
        """Replace the document's segments with this version's (status indexing), in one transaction."""
        now = utcnow()
        async with self.kn.db.session() as s:
            res = await s.exec(update(_DOCS).where(*_mine(doc.id, version))
                               .values(indexing_status="indexing", splitting_completed_at=now,
                                       total_segments=len(chunks), updated_at=now))
            if res.rowcount == 0:
                await s.rollback()
                raise Stale
            await s.exec(delete(ChildChunk).where(ChildChunk.document_id == doc.id))
            await s.exec(delete(DocumentSegment).where(DocumentSegment.document_id == doc.id))
            for c in chunks:
                sid = segment_id(doc.id, version, c.position)
                s.add(DocumentSegment(
                    id=sid, tenant_id=ds.tenant_id, dataset_id=ds.id,
                    document_id=doc.id, position=c.position, content=c.content, answer=c.answer,
                    word_count=len(c.content) + len(c.answer or ""),
                    tokens=c.tokens, keywords=c.keywords, index_node_hash=c.content_hash, page=c.page,
                    status="indexing", indexing_at=now, created_at=now, updated_at=now))
            await s.flush()  # parents before their children (foreign key)
            for c in chunks:
                sid = segment_id(doc.id, version, c.position)
                for k in c.children or ():
                    s.add(ChildChunk(
                        id=child_chunk_id(sid, k.position), tenant_id=ds.tenant_id, dataset_id=ds.id,
                        document_id=doc.id, segment_id=sid,
                        position=k.position, content=k.content, word_count=len(k.content), tokens=k.tokens,
                        index_node_hash=k.content_hash, status="indexing", indexing_at=now, created_at=now,
                        updated_at=now))
            await s.commit()

    async def _embed_and_store(self, ds: Dataset, doc: Document, version: int,
                               searched: list[tuple[str, PreparedChunk, str]]) -> None:
        """Embed and store ``searched`` (searched_points) in batches, each segment completed with its last point;
        then remove the document's other points (earlier versions')."""
        embedder = None
        if ds.indexing_technique == "high_quality":
            async with self.kn.db.session() as s:
                embedder = await self.kn.embedder(s, ds.tenant_id, ds.embedding_model_provider, ds.embedding_model)
        space = dataset_space(ds)
        retrievable = doc.enabled and not doc.archived
        batch = max(1, self.settings.embedding_batch)
        ids = [pid for pid, _, _ in searched]
        last = {sid: pid for pid, _, sid in searched}  # a segment is completed once its last point is stored
        has_children = any(pid != sid for pid, _, sid in searched)
        for start in range(0, len(searched), batch):
            part = searched[start:start + batch]
            items = [(pid, c.content, SparseVector(c.sparse_indices, c.sparse_values), retrievable)
                     for pid, c, _ in part]
            try:
                space, points = await embed_points(self.kn, ds, doc, items, embedder)
            except Exception as e:
                raise Transient(f"{type(e).__name__}: {e}") from e
            await self._check(doc.id, version)  # embedding is the slow part: a pause meanwhile stores nothing
            try:
                await self.kn.vectors.upsert(space, points)
                self._written[space] = self._written.get(space, 0) + len(points)
            except Exception as e:
                raise Transient(f"{type(e).__name__}: {e}") from e
            async with self.kn.db.session() as s:
                now = utcnow()
                if has_children:
                    await s.exec(update(ChildChunk).where(col(ChildChunk.id).in_([pid for pid, _, _ in part]))
                                 .values(status="completed", completed_at=now))
                finished = [sid for pid, _, sid in part if last[sid] == pid]
                await s.exec(update(DocumentSegment).where(col(DocumentSegment.id).in_(finished))
                             .values(status="completed", completed_at=now))
                await s.commit()
        await self._check(doc.id, version)  # a stale job must not remove a newer version's points
        try:  # points of earlier versions (and of chunks this version no longer has)
            await self.kn.vectors.delete_document(space, ds.tenant_id, ds.id, doc.id, keep_ids=ids)
        except Exception as e:
            raise Transient(f"{type(e).__name__}: {e}") from e

    # -- requeue sweep ---------------------------------------------------------------------------------------
    async def _sweep(self) -> None:
        """A document committed as waiting whose job never reached the queue (the publish failed after the
        commit) is queued again once the queue is empty and the document has waited ``requeue_after``."""
        interval = max(min(self.settings.requeue_after / 4, 30.0), 0.5)
        while not self._stopping:
            await asyncio.sleep(interval)
            try:
                await self.requeue_lost()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("index_requeue_failed", exc_info=True)
            self._maybe_optimize()

    def _maybe_optimize(self) -> None:
        """Rebuild the search index of a space that grew by ``optimize_after`` points, one space at a time,
        in the background (the embedded engine searches an unindexed segment by brute force)."""
        if self._optimizing is not None and not self._optimizing.done():
            return
        due = [s for s, n in self._written.items() if n >= self.settings.optimize_after]
        if not due:
            return
        space = due[0]
        self._written[space] = 0

        async def run() -> None:
            t0 = time.perf_counter()
            try:
                built = await self.kn.vectors.optimize(space)
            except Exception:  # searches still work on the unindexed segment
                log.warning("vector_optimize_failed", space=space, exc_info=True)
                return
            if built:
                log.info("vector_space_optimized", space=space, seconds=round(time.perf_counter() - t0, 2))

        self._optimizing = asyncio.create_task(run(), name=f"optimize-{space}")

    async def requeue_lost(self) -> int:
        info = await self.kn.bus.js.stream_info(subjects.INDEX_JOBS_STREAM)
        if info.state.messages:
            return 0
        cutoff = utcnow() - timedelta(seconds=self.settings.requeue_after)
        async with self.kn.db.session() as s:
            rows = (await s.exec(select(Document.id, Document.index_version).where(
                Document.indexing_status == "waiting", Document.updated_at < cutoff).limit(500))).all()
            if rows:
                await s.exec(update(_DOCS).where(_DOCS.c.id.in_([r[0] for r in rows])).values(updated_at=utcnow()))
                await s.commit()
        for doc_id, version in rows:
            await self.kn.enqueue(doc_id, version)
        async with self.kn.db.session() as s:  # imports whose job never reached the queue, or was dropped
            imports = list((await s.exec(select(SegmentImportJob.id).where(
                col(SegmentImportJob.status).in_(("waiting", "processing")),
                SegmentImportJob.updated_at < cutoff).limit(500))).all())
            if imports:
                await s.exec(update(SegmentImportJob).where(col(SegmentImportJob.id).in_(imports))
                             .values(updated_at=utcnow()))
                await s.commit()
        for job_id in imports:  # a new message id: the first one may still be in the duplicate window
            await self.kn.enqueue_job({"kind": SEGMENTS_IMPORT, "job_id": job_id},
                                      f"{SEGMENTS_IMPORT}:{job_id}:{time.time_ns()}")
        if rows or imports:
            log.warning("index_jobs_requeued", count=len(rows), imports=len(imports))
        return len(rows) + len(imports)


async def pending_jobs(kn: Knowledge) -> int:
    info = await kn.bus.js.stream_info(subjects.INDEX_JOBS_STREAM)
    return int(info.state.messages)


"""The console's CSV import of segments into a document (Dify's ``POST …/segments/batch_import`` and
``GET /datasets/batch_import_status/{job_id}``).

The CSV (a console upload) has a header row, then one segment per row: its first column is the content, or
for a Q&A document the question and the second the answer. It is checked when the import is asked for
(a bad file is a 400 at once), then imported by an indexer worker from the index job queue, so any replica
runs it and a crash only delays it: the segments' ids are derived from the job and the row, and a redelivered
job skips the rows it already stored. Rows are embedded and stored ``embedding_batch`` at a time.
"""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from typing import Any

from sqlmodel import col, select

from services.indexer.service.common import (
    SEGMENT_NS,
    created_by,
    get_dataset,
    get_document,
    invalid,
    parse_id,
)
from services.indexer.service.core import Knowledge
from services.indexer.service.documents import DocumentService
from services.indexer.service.indexing import SEGMENTS_IMPORT
from services.indexer.service.segments import MAX_SEGMENT_CHARS, SegmentService, check_open
from shared.errors import ApiError, not_found
from shared.models import Dataset, Document, DocumentSegment, SegmentImportJob, UploadFile, utcnow

MAX_ROWS = 10_000


def job_not_found() -> ApiError:
    return not_found("The import job does not exist.")


def read_rows(data: bytes, qa: bool) -> list[tuple[str, str | None, None]]:
    """The segments of a CSV (header row first); ValueError with a readable message."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("The CSV must be UTF-8 text.") from None
    try:
        rows = list(csv.reader(io.StringIO(text)))[1:]
    except csv.Error as e:
        raise ValueError(f"The CSV cannot be read: {e}") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise ValueError("The CSV has no rows under its header.")
    if len(rows) > MAX_ROWS:
        raise ValueError(f"The CSV has {len(rows)} rows; at most {MAX_ROWS} can be imported at once.")
    out: list[tuple[str, str | None, None]] = []
    for n, r in enumerate(rows, 2):
        content = r[0].strip() if r else ""
        answer = r[1].strip() if qa and len(r) > 1 else None
        if not content:
            raise ValueError(f"Row {n}: the {'question' if qa else 'content'} is empty.")
        if qa and not answer:
            raise ValueError(f"Row {n}: a Q&A document needs the answer in the second column.")
        if len(content) + len(answer or "") > MAX_SEGMENT_CHARS:
            raise ValueError(f"Row {n}: longer than {MAX_SEGMENT_CHARS} characters.")
        out.append((content, answer, None))
    return out


def row_segment_id(job_id: str, row: int) -> str:
    return str(uuid.uuid5(SEGMENT_NS, f"import:{job_id}:{row}"))


class SegmentImports:
    def __init__(self, kn: Knowledge) -> None:
        self.kn = kn

    async def start(self, tenant_id: str, dataset_id: str, document_id: str, body: dict[str, Any]
                    ) -> dict[str, Any]:
        file_id = body.get("upload_file_id")
        if not isinstance(file_id, str) or not file_id:
            raise invalid("upload_file_id is required: upload the CSV with POST /console/api/files/upload first.")
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            doc = await get_document(s, ds, document_id)
            check_open(doc)
            f = (await DocumentService(self.kn).uploaded_files(s, tenant_id, [file_id], unused=False))[file_id]
        if f.extension != "csv":
            raise invalid("Invalid file type. Only CSV files are allowed")
        data = await self.kn.files.get_bytes(f.object_name)
        try:
            rows = await asyncio.to_thread(read_rows, data, doc.doc_form == "qa_model")
        except ValueError as e:
            raise invalid(str(e)) from None
        job = SegmentImportJob(tenant_id=tenant_id, dataset_id=ds.id, document_id=doc.id, upload_file_id=f.id,
                               total=len(rows), created_by=created_by())
        async with self.kn.db.session() as s:
            s.add(job)
            await s.commit()
        try:
            await self.kn.enqueue_job({"kind": SEGMENTS_IMPORT, "job_id": job.id}, f"{SEGMENTS_IMPORT}:{job.id}")
        except Exception as e:  # noqa: BLE001 - not queued: say so rather than leave a job nobody runs
            await self.finish(job.id, "error", f"The import could not be queued: {e}")
            raise ApiError(503, "service_unavailable", "The import could not be queued; try again.") from None
        return {"job_id": job.id, "job_status": "waiting"}

    async def status(self, tenant_id: str, job_id: str) -> dict[str, Any]:
        async with self.kn.db.session() as s:
            job = (await s.exec(select(SegmentImportJob).where(
                SegmentImportJob.id == parse_id(job_id, job_not_found()),
                SegmentImportJob.tenant_id == tenant_id))).first()
            if job is None:
                raise job_not_found()
            await get_dataset(s, tenant_id, job.dataset_id)  # a console member's dataset permissions
        return {"job_id": job.id, "job_status": job.status, "error_msg": job.error or ""}

    async def finish(self, job_id: str, status: str, error: str | None = None) -> None:
        async with self.kn.db.session() as s:
            job = await s.get(SegmentImportJob, job_id)
            if job is not None:
                job.status, job.error, job.updated_at = status, error, utcnow()
                await s.commit()

    async def run(self, job_id: str) -> None:
        """Import the job's rows (the worker's side); rows stored by an earlier delivery are skipped. A
        document or dataset deleted meanwhile ends the job in error."""
        async with self.kn.db.session() as s:
            job = await s.get(SegmentImportJob, job_id)
            if job is None or job.status in ("completed", "error"):
                return
            doc = await s.get(Document, job.document_id)
            ds = await s.get(Dataset, job.dataset_id)
            f = await s.get(UploadFile, job.upload_file_id)
            job.status, job.updated_at = "processing", utcnow()
            await s.commit()
        if doc is None or ds is None or f is None:
            await self.finish(job_id, "error", "The document, its dataset or the CSV was deleted.")
            return
        data = await self.kn.files.get_bytes(f.object_name)
        try:
            rows = await asyncio.to_thread(read_rows, data, doc.doc_form == "qa_model")
        except ValueError as e:
            await self.finish(job_id, "error", str(e))
            return
        ids = [row_segment_id(job_id, n) for n in range(len(rows))]
        async with self.kn.db.session() as s:
            done = set((await s.exec(select(DocumentSegment.id).where(col(DocumentSegment.id).in_(ids)))).all())
        segments, batch = SegmentService(self.kn), max(1, self.kn.settings.embedding_batch)
        todo = [(sid, row) for sid, row in zip(ids, rows, strict=True) if sid not in done]
        for start in range(0, len(todo), batch):
            if not await self._still_open(job_id, doc):
                await self.finish(job_id, "error", "The document was deleted, indexed again, disabled or archived "
                                                   "during the import; the rows imported before it stay.")
                return
            part = todo[start:start + batch]
            await segments.create(ds, doc, [row for _, row in part], [sid for sid, _ in part], job.created_by)
        await self.finish(job_id, "completed")

    async def _still_open(self, job_id: str, doc: Document) -> bool:
        """The job and its document as they were when it started: same version, completed, enabled."""
        async with self.kn.db.session() as s:
            now = await s.get(Document, doc.id)
            job = await s.get(SegmentImportJob, job_id)
        return job is not None and now is not None and now.index_version == doc.index_version and \
            now.indexing_status == "completed" and now.enabled and not now.archived

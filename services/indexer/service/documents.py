"""Documents of a dataset (reference §4.2): create/update by text or file, list, get, delete, status,
indexing status. Creating or updating stores the bytes in the object store, commits the document as
``waiting`` and queues an index job; the call returns at once."""

from __future__ import annotations

import contextlib
import io
import secrets
from datetime import UTC, datetime
from typing import Any, BinaryIO

from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.indexer.pipeline.qa import QA_NEEDS_MODEL
from services.indexer.pipeline.split import ProcessRule, validate_process_rule
from services.indexer.service.common import (
    INDEXING_STATES,
    archived_immutable,
    created_by,
    created_from,
    dataset_space,
    document_indexing,
    get_dataset,
    get_document,
    invalid,
)
from services.indexer.service.core import Knowledge
from services.indexer.service.datasets import TECHNIQUES, DatasetService, parse_retrieval_model
from services.indexer.service.metadata import built_in_values
from shared.credentials import default_model
from shared.errors import ApiError, not_found
from shared.files import MIME, upload_name
from shared.models import (
    ChildChunk,
    Dataset,
    Document,
    DocumentSegment,
    SegmentImportJob,
    TenantMember,
    UploadFile,
    ts,
    utcnow,
)
from shared.parse import SNIFF_BYTES, UnsupportedFileType, sniff

MAX_RETRY = 100  # documents per retry call
_DOCS = Document.__table__
ACTIVE_STATES = tuple(st for st in INDEXING_STATES if st != "waiting")  # a worker is on it: no delete
MAX_BATCH_FILES = 20  # files per console documents call (Dify's BATCH_UPLOAD_LIMIT)
STATUS_ACTIONS = ("enable", "disable", "archive", "un_archive")


def new_batch() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S") + f"{secrets.randbelow(10**6):06d}"


def file_too_large(limit: int) -> ApiError:
    return ApiError(413, "file_too_large", f"File size exceeded. The limit is {limit // (1024 * 1024)} MB.")


def unsupported(message: str) -> ApiError:
    return ApiError(415, "unsupported_file_type", message)


def display_status(d: Document) -> str:
    if d.archived:
        return "archived"
    if d.indexing_status == "waiting":
        return "queuing"
    if d.indexing_status in ACTIVE_STATES:
        return "indexing"
    if d.indexing_status in ("paused", "error"):
        return d.indexing_status
    return "available" if d.enabled else "disabled"


def _ts(dt: datetime | None) -> float | None:
    if dt is None:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def document_json(d: Document, f: UploadFile | None, *, metadata: str = "all") -> dict[str, Any]:
    if metadata == "only":
        return {"id": d.id, "doc_type": None, "doc_metadata": d.doc_metadata or {}}
    out: dict[str, Any] = {
        "id": d.id, "position": d.position, "data_source_type": d.data_source_type,
        "data_source_info": {"upload_file_id": d.upload_file_id} if d.upload_file_id else {},
        "data_source_detail_dict": {"upload_file": upload_file_json(f)} if f else {},
        "dataset_process_rule_id": None, "dataset_process_rule": d.process_rule, "name": d.name,
        "created_from": d.created_from, "created_by": d.created_by, "created_at": ts(d.created_at),
        "tokens": d.tokens, "indexing_status": d.indexing_status, "error": d.error, "enabled": d.enabled,
        "disabled_at": ts(d.disabled_at), "disabled_by": d.disabled_by, "archived": d.archived,
        "display_status": display_status(d), "word_count": d.word_count, "hit_count": d.hit_count,
        "doc_form": d.doc_form, "doc_language": d.doc_language, "segment_count": d.total_segments,
        "updated_at": ts(d.updated_at), "completed_at": ts(d.completed_at),
    }
    if metadata != "without":
        out["doc_type"] = None
        out["doc_metadata"] = d.doc_metadata or {}
    return out


def upload_file_json(f: UploadFile) -> dict[str, Any]:
    return {"id": f.id, "name": f.name, "size": f.size, "extension": f.extension, "url": None,
            "download_url": None, "mime_type": f.mime_type, "created_by": f.created_by,
            "created_at": ts(f.created_at)}


def indexing_status_json(d: Document, completed: int) -> dict[str, Any]:
    return {"id": d.id, "indexing_status": d.indexing_status,
            "processing_started_at": _ts(d.processing_started_at),
            "parsing_completed_at": _ts(d.parsing_completed_at),
            "cleaning_completed_at": _ts(d.cleaning_completed_at),
            "splitting_completed_at": _ts(d.splitting_completed_at), "completed_at": _ts(d.completed_at),
            "paused_at": _ts(d.paused_at), "error": d.error, "stopped_at": _ts(d.stopped_at),
            "completed_segments": completed, "total_segments": d.total_segments}


class Source:
    """What a create/update call brings: a name and either text or an open file."""

    def __init__(self, name: str, *, text: str | None = None, file: BinaryIO | None = None,
                 size: int = 0, kind: str = "txt") -> None:
        self.name, self.text, self.file, self.size, self.kind = name, text, file, size, kind


def upload_file_ids(body: dict[str, Any]) -> list[str]:
    """The file ids of a console documents call (Dify's ``data_source``: only ``upload_file`` sources)."""
    source = body.get("data_source")
    if not isinstance(source, dict):
        raise invalid("data_source is required.")
    info = source.get("info_list") if isinstance(source.get("info_list"), dict) else {}
    kind = source.get("type") or info.get("data_source_type")
    if kind != "upload_file":
        raise invalid(f"Data source type {kind!r} is not supported: upload the files (POST /console/api/files/upload) "
                      "and send data_source.type upload_file.")
    files = info.get("file_info_list") if isinstance(info.get("file_info_list"), dict) else {}
    ids = files.get("file_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
        raise invalid("data_source.info_list.file_info_list.file_ids must be a non-empty list of file ids.")
    ids = list(dict.fromkeys(ids))
    if len(ids) > MAX_BATCH_FILES:
        raise invalid(f"You have reached the batch upload limit of {MAX_BATCH_FILES}.")
    return ids


DOC_FORMS = ("text_model", "hierarchical_model", "qa_model")


def next_version(doc: Document) -> None:
    """A new index version, waiting in a new batch with its stage times cleared: the worker of an older
    version stops at its next write."""
    doc.index_version += 1
    doc.indexing_status, doc.error, doc.batch = "waiting", None, new_batch()
    for attr in ("processing_started_at", "parsing_completed_at", "cleaning_completed_at",
                 "splitting_completed_at", "completed_at", "stopped_at", "paused_at"):
        setattr(doc, attr, None)


async def require_qa_model(s: AsyncSession, tenant_id: str) -> None:
    """Q&A documents are written by the workspace's default LLM: without one they are refused at once."""
    if await default_model(s, tenant_id, "llm") is None:
        raise ApiError(400, "provider_not_initialize", QA_NEEDS_MODEL)


def doc_language(body: dict[str, Any]) -> str | None:
    """The language a Q&A document's pairs are written in (Dify's doc_language, "English" when missing)."""
    value = body.get("doc_language")
    if value is not None and (not isinstance(value, str) or len(value) > 64):
        raise invalid("doc_language must be a language name of at most 64 characters, like \"English\".")
    return value.strip() or None if isinstance(value, str) else None


def check_doc_form(requested: Any, rule: ProcessRule, dataset_form: str | None) -> str:
    """The doc_form of a document indexed with ``rule``: the one requested, else the one the rule implies
    (a hierarchical rule makes parent-child documents), else the dataset's. The parent-child form and the
    hierarchical rule go together, and a dataset's documents share one form (Dify's check)."""
    if requested is not None and requested not in DOC_FORMS:
        raise invalid(f"doc_form is invalid: choose one of {', '.join(DOC_FORMS)}.")
    hierarchical = rule.mode == "hierarchical"
    form = requested or ("hierarchical_model" if hierarchical else dataset_form or "text_model")
    if (form == "hierarchical_model") != hierarchical:
        raise invalid('doc_form "hierarchical_model" (parent-child chunks) needs a process_rule with mode '
                      '"hierarchical", and that mode makes hierarchical_model documents.')
    if dataset_form is not None and form != dataset_form:
        raise invalid("doc_form is different from the dataset doc_form.")
    return form


class DocumentService:
    def __init__(self, kn: Knowledge) -> None:
        self.kn = kn

    # -- sources --------------------------------------------------------------------------------------
    def text_source(self, name: Any, text: Any) -> Source:
        if not isinstance(name, str) or not name.strip():
            raise invalid("name is required")
        if not isinstance(text, str):
            raise invalid("text is required")
        data = text.encode()
        if len(data) > self.kn.settings.max_file_bytes:
            raise file_too_large(self.kn.settings.max_file_bytes)
        return Source(name.strip()[:255], text=text, size=len(data), kind="txt")

    def file_source(self, filename: str | None, file: BinaryIO, size: int | None) -> Source:
        if not filename:
            raise ApiError(400, "filename_not_exists_error", "The specified filename does not exist.")
        limit = self.kn.settings.max_file_bytes
        file.seek(0, io.SEEK_END)
        size = file.tell()
        file.seek(0)
        if size > limit:
            raise file_too_large(limit)
        head = file.read(SNIFF_BYTES)
        file.seek(0)
        try:
            kind = sniff(filename, head)
        except UnsupportedFileType as e:
            raise unsupported(str(e)) from None
        return Source(upload_name(filename), file=file, size=size, kind=kind)

    # -- create / update ----------------------------------------------------------------------------------
    async def _prepare_dataset(self, s: AsyncSession, ds: Dataset, body: dict[str, Any], tenant_id: str
                               ) -> tuple[dict[str, Any], str]:
        """First upload configures the dataset (technique, rule, model, doc_form); returns the rule and the
        doc_form of the new documents."""
        doc_language(body)  # checked before anything is stored
        if ds.indexing_technique is None:
            technique = body.get("indexing_technique")
            if technique is None:
                raise invalid("indexing_technique is required.")
            if technique not in TECHNIQUES:
                raise invalid("indexing_technique is invalid: choose high_quality or economy")
            if technique == "high_quality":
                provider, model = await DatasetService(self.kn)._check_embedding(
                    s, tenant_id, body.get("embedding_model_provider"), body.get("embedding_model"))
                ds.embedding_model_provider, ds.embedding_model = provider, model
            ds.indexing_technique = technique
            ds.retrieval_model = parse_retrieval_model(body.get("retrieval_model"), technique).model_dump(mode="json")
        raw_rule = body.get("process_rule")
        rule = validate_process_rule(raw_rule if raw_rule is not None else (ds.process_rule or None),
                                     required=True)
        rule_dict = rule.model_dump(mode="json")
        if not ds.process_rule or raw_rule is not None:
            ds.process_rule = rule_dict
        if ds.data_source_type is None:
            ds.data_source_type = "upload_file"
        first = (await s.exec(select(Document.id).where(Document.dataset_id == ds.id).limit(1))).first() is None
        doc_form = check_doc_form(body.get("doc_form"), rule, None if first else ds.doc_form)
        if doc_form == "qa_model":
            await require_qa_model(s, tenant_id)
        ds.doc_form = doc_form  # a dataset's documents share one form, set by its first one
        return rule_dict, doc_form

    async def _store(self, tenant_id: str, src: Source) -> UploadFile:
        ext = "txt" if src.text is not None else src.kind
        name = src.name if src.text is None else upload_name(f"{src.name}.txt")
        row = UploadFile(tenant_id=tenant_id, name=name, size=src.size, extension=ext,
                         mime_type=MIME.get(ext, "application/octet-stream"), object_name="",
                         created_by=created_by())
        row.object_name = f"upload/{tenant_id}/{row.id}"
        data: Any = src.text.encode() if src.text is not None else src.file
        row.size = await self.kn.files.put(row.object_name, data) or src.size
        return row

    async def create(self, tenant_id: str, dataset_id: str, src: Source, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("original_document_id"):
            return await self.update(tenant_id, dataset_id, str(body["original_document_id"]), src, body)
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            rule, doc_form = await self._prepare_dataset(s, ds, body, tenant_id)
            await s.commit()  # the dataset's configuration stands even if the upload below fails
        f = await self._store(tenant_id, src)
        batch = new_batch()
        async with self.kn.files.kept_if_recorded(f.object_name), self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            position = (await s.exec(select(func.coalesce(func.max(Document.position), 0))
                                     .where(Document.dataset_id == ds.id))).one() + 1
            doc = Document(tenant_id=tenant_id, dataset_id=ds.id, position=position, batch=batch, name=f.name,
                           upload_file_id=f.id, process_rule=rule, doc_form=doc_form,
                           doc_language=doc_language(body), created_by=created_by(),
                           created_from=created_from())
            if ds.built_in_field_enabled:
                doc.doc_metadata = built_in_values(doc, f)
            s.add(f)
            s.add(doc)
            await s.commit()
        await self.kn.enqueue(doc.id, doc.index_version)
        return {"document": document_json(doc, f), "batch": batch}

    async def update(self, tenant_id: str, dataset_id: str, document_id: str, src: Source | None,
                     body: dict[str, Any]) -> dict[str, Any]:
        """New content and/or rule → a new index version; a rename alone does not re-index."""
        old_file: UploadFile | None = None
        new_file: UploadFile | None = None
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            doc = await get_document(s, ds, document_id)
            if doc.archived:
                raise archived_immutable()
        if src is not None:
            new_file = await self._store(tenant_id, src)
        stored = self.kn.files.kept_if_recorded(new_file.object_name) if new_file else contextlib.nullcontext()
        async with stored, self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            doc = await get_document(s, ds, document_id)
            reindex = new_file is not None
            if body.get("process_rule") is not None or body.get("doc_form") is not None:
                rule = validate_process_rule(body.get("process_rule") or doc.process_rule, required=True)
                form = check_doc_form(body.get("doc_form"), rule, ds.doc_form)
                reindex = reindex or body.get("process_rule") is not None or form != doc.doc_form
                doc.doc_form, doc.process_rule = form, rule.model_dump(mode="json")
            language = doc_language(body)
            if language is not None and language != doc.doc_language:
                reindex = reindex or doc.doc_form == "qa_model"  # the pairs are written in it
                doc.doc_language = language
            if reindex and doc.doc_form == "qa_model":
                await require_qa_model(s, tenant_id)
            if new_file is not None:
                old_file = await s.get(UploadFile, doc.upload_file_id) if doc.upload_file_id else None
                s.add(new_file)
                doc.upload_file_id = new_file.id
                doc.name = new_file.name
            if isinstance(body.get("name"), str) and body["name"].strip():
                doc.name = body["name"].strip()[:255] if new_file is None or new_file.extension != "txt" \
                    else f"{body['name'].strip()[:250]}.txt"
            if reindex:
                next_version(doc)
            doc.updated_at = utcnow()
            if old_file is not None:
                await s.delete(old_file)
            await s.commit()
            f = new_file or (await s.get(UploadFile, doc.upload_file_id) if doc.upload_file_id else None)
        if old_file is not None:
            await self.kn.files.delete(old_file.object_name)
        if reindex:
            await self.kn.enqueue(doc.id, doc.index_version)
        return {"document": document_json(doc, f), "batch": doc.batch}

    # -- console: files uploaded first, documents made from them ----------------------------------------------
    async def upload(self, tenant_id: str, src: Source) -> dict[str, Any]:
        """A console upload (POST /console/api/files/upload): stored now, made a document by a later call."""
        f = await self._store(tenant_id, src)
        async with self.kn.files.kept_if_recorded(f.object_name), self.kn.db.session() as s:
            s.add(f)
            await s.commit()
        return upload_file_json(f)

    async def uploaded_files(self, s: AsyncSession, tenant_id: str, ids: list[str], *, unused: bool = True
                             ) -> dict[str, UploadFile]:
        """The console uploads ``ids`` (by a member of the workspace; an app user's chat files are not
        knowledge), with ``unused`` none of them a document's file yet: deleting a document deletes its file."""
        rows = {f.id: f for f in await s.exec(
            select(UploadFile).join(TenantMember, (TenantMember.tenant_id == UploadFile.tenant_id)
                                    & (TenantMember.account_id == UploadFile.created_by))
            .where(UploadFile.tenant_id == tenant_id, col(UploadFile.id).in_(ids)))}
        missing = [i for i in ids if i not in rows]
        if missing:
            raise ApiError(404, "file_not_found", f"File not found: {missing[0]}. Upload it with "
                                                  "POST /console/api/files/upload first.")
        used = (await s.exec(select(Document.upload_file_id).where(col(Document.upload_file_id).in_(ids)))).first() \
            if unused else None
        if used is not None:
            raise invalid(f"File {used} is already a document's file; upload it again for another document.")
        return rows

    async def create_from_files(self, tenant_id: str, dataset_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Console ``POST /datasets/{id}/documents``: one document per uploaded file, one batch."""
        ids = upload_file_ids(body)
        if body.get("original_document_id"):
            raise invalid("original_document_id is not supported here: replace a document's file with "
                          "update-by-file.")
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            await self.uploaded_files(s, tenant_id, ids)  # before the dataset is configured by this call
            rule, doc_form = await self._prepare_dataset(s, ds, body, tenant_id)
            await s.commit()
        batch = new_batch()
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            files = await self.uploaded_files(s, tenant_id, ids)
            position = (await s.exec(select(func.coalesce(func.max(Document.position), 0))
                                     .where(Document.dataset_id == ds.id))).one() + 1
            docs = []
            for i, fid in enumerate(ids):
                f = files[fid]
                doc = Document(tenant_id=tenant_id, dataset_id=ds.id, position=position + i, batch=batch,
                               name=f.name, upload_file_id=f.id, process_rule=rule,
                               doc_form=doc_form, doc_language=doc_language(body),
                               created_by=created_by(), created_from=created_from())
                if ds.built_in_field_enabled:
                    doc.doc_metadata = built_in_values(doc, f)
                s.add(doc)
                docs.append(doc)
            try:
                await s.commit()
            except IntegrityError:  # another request made a document of one of the files meanwhile
                raise invalid("A file is already a document's file; upload it again for another document.") from None
        for doc in docs:
            await self.kn.enqueue(doc.id, doc.index_version)
        return {"documents": [document_json(d, files[d.upload_file_id or ""]) for d in docs], "batch": batch}

    async def init(self, tenant_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Console ``POST /datasets/init``: a dataset named after the first file, with the files as documents.
        The files and the rule are checked before the dataset is made; a dataset whose documents are refused goes
        again."""
        ids = upload_file_ids(body)
        if body.get("indexing_technique") not in TECHNIQUES:
            raise invalid("indexing_technique is required: choose high_quality or economy.")
        validate_process_rule(body.get("process_rule"), required=True)
        async with self.kn.db.session() as s:
            first = (await self.uploaded_files(s, tenant_id, ids))[ids[0]].name
        datasets = DatasetService(self.kn)
        made = await datasets.create(tenant_id, {
            "name": first if len(first) <= 40 else first[:37] + "...", "permission": "only_me",
            **{k: body.get(k) for k in ("indexing_technique", "embedding_model", "embedding_model_provider",
                                        "retrieval_model")}})
        try:
            out = await self.create_from_files(tenant_id, made["id"], body)
        except ApiError:  # refused before any document was stored (say, a file made a document meanwhile)
            await datasets.delete(tenant_id, made["id"])
            raise
        return {"dataset": await datasets.get(tenant_id, made["id"]), **out}

    # -- read -----------------------------------------------------------------------------------------------
    async def list(self, tenant_id: str, dataset_id: str, *, page: int, limit: int, keyword: str | None,
                   status: str | None) -> dict[str, Any]:
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            where = [Document.dataset_id == ds.id]
            if keyword:
                where.append(col(Document.name).icontains(keyword, autoescape=True))
            if status:
                where.extend(_status_filter(status))
            total = (await s.exec(select(func.count()).select_from(Document).where(*where))).one()
            docs = list(await s.exec(select(Document).where(*where)
                                     .order_by(col(Document.created_at).desc(), col(Document.position).desc())
                                     .offset((page - 1) * limit).limit(limit)))
            files = await _files(s, docs)
        return {"data": [document_json(d, files.get(d.upload_file_id or "")) for d in docs],
                "has_more": page * limit < total, "limit": limit, "total": total, "page": page}

    async def get(self, tenant_id: str, dataset_id: str, document_id: str, metadata: str = "all") -> dict[str, Any]:
        async with self.kn.db.session() as s:
            doc = await get_document(s, await get_dataset(s, tenant_id, dataset_id), document_id)
            f = (await _files(s, [doc])).get(doc.upload_file_id or "")
        return document_json(doc, f, metadata=metadata)

    async def upload_file(self, tenant_id: str, dataset_id: str, document_id: str) -> dict[str, Any]:
        async with self.kn.db.session() as s:
            doc = await get_document(s, await get_dataset(s, tenant_id, dataset_id), document_id)
            f = await s.get(UploadFile, doc.upload_file_id) if doc.upload_file_id else None
        if f is None:
            raise not_found("Upload file not found.")
        return upload_file_json(f)

    async def indexing_status(self, tenant_id: str, dataset_id: str, batch: str) -> dict[str, Any]:
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            docs = list(await s.exec(select(Document).where(Document.dataset_id == ds.id, Document.batch == batch)
                                     .order_by(col(Document.position))))
            if not docs:
                raise not_found("Documents not found.")
            done = await _completed_segments(s, docs)
        return {"data": [indexing_status_json(d, done.get(d.id, 0)) for d in docs]}

    async def document_indexing_status(self, tenant_id: str, dataset_id: str, document_id: str) -> dict[str, Any]:
        """One document's status object (the console's document page)."""
        async with self.kn.db.session() as s:
            doc = await get_document(s, await get_dataset(s, tenant_id, dataset_id), document_id)
            return indexing_status_json(doc, (await _completed_segments(s, [doc])).get(doc.id, 0))

    # -- console: the dataset's document pages -----------------------------------------------------------
    async def rename(self, tenant_id: str, dataset_id: str, document_id: str, name: Any) -> dict[str, Any]:
        """A new name only: nothing is indexed again (the console's rename)."""
        if not isinstance(name, str) or not name.strip():
            raise invalid("name is required")
        if len(name.strip()) > 255:
            raise invalid("name must be at most 255 characters")
        async with self.kn.db.session() as s:
            doc = await get_document(s, await get_dataset(s, tenant_id, dataset_id), document_id)
            if doc.archived:
                raise archived_immutable()
            doc.name, doc.updated_at = name.strip(), utcnow()
            await s.commit()
            f = await s.get(UploadFile, doc.upload_file_id) if doc.upload_file_id else None
        return document_json(doc, f)

    async def error_documents(self, tenant_id: str, dataset_id: str) -> dict[str, Any]:
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            docs = list(await s.exec(select(Document).where(Document.dataset_id == ds.id,
                                                            Document.indexing_status == "error")
                                     .order_by(col(Document.position))))
            files = await _files(s, docs)
        return {"data": [document_json(d, files.get(d.upload_file_id or "")) for d in docs], "total": len(docs)}

    async def retry(self, tenant_id: str, dataset_id: str, document_ids: Any) -> None:
        """Index documents that ended in ``error`` again (a new version, queued at once); any other state is
        a 400 before anything is queued."""
        if not isinstance(document_ids, list) or not document_ids or \
                not all(isinstance(i, str) for i in document_ids):
            raise invalid("document_ids must be a non-empty list of document ids")
        if len(document_ids) > MAX_RETRY:
            raise invalid(f"At most {MAX_RETRY} documents can be retried at once.")
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            docs = [await get_document(s, ds, i) for i in dict.fromkeys(document_ids)]
            busy = [d.name for d in docs if d.indexing_status != "error"]
            if busy:
                raise invalid(f"Only documents in error can be retried; not: {', '.join(busy[:5])}.")
            await self._index_again(s, tenant_id, docs)

    async def pause(self, tenant_id: str, dataset_id: str, document_id: str) -> None:
        """Stop indexing a document (Dify's pause): its worker stops at its next stage or embedding batch and
        takes back the points it stored; ``resume`` indexes it again."""
        async with self.kn.db.session() as s:
            doc = await get_document(s, await get_dataset(s, tenant_id, dataset_id), document_id)
            if doc.archived:
                raise archived_immutable()
            if doc.indexing_status == "paused":
                return  # a second pause changes nothing (Dify's succeeds too)
            now = utcnow()
            # conditional: a worker that finishes (or fails) first wins, "paused" never hides "completed"
            res = await s.exec(update(_DOCS)
                               .where(_DOCS.c.id == doc.id, _DOCS.c.indexing_status.in_(INDEXING_STATES))
                               .values(indexing_status="paused", paused_at=now, updated_at=now))
            if res.rowcount == 0:
                raise document_indexing("Cannot pause completed document.")
            await s.commit()

    async def resume(self, tenant_id: str, dataset_id: str, document_id: str) -> None:
        """Index a paused document again from the start (a new version, as a retry)."""
        async with self.kn.db.session() as s:
            doc = await get_document(s, await get_dataset(s, tenant_id, dataset_id), document_id)
            if doc.archived:
                raise archived_immutable()
            if doc.indexing_status != "paused":
                raise document_indexing("Document is not in paused status.")
            await self._index_again(s, tenant_id, [doc])

    async def _index_again(self, s: AsyncSession, tenant_id: str, docs: list[Document]) -> None:
        """Commit a new version of each document, then queue it (a lost publish is the requeue sweep's: the
        documents are ``waiting``)."""
        if any(d.doc_form == "qa_model" for d in docs):
            await require_qa_model(s, tenant_id)
        for doc in docs:
            next_version(doc)
            doc.updated_at = utcnow()
        await s.commit()
        for doc in docs:
            await self.kn.enqueue(doc.id, doc.index_version)

    # -- delete / status ----------------------------------------------------------------------------------
    async def delete(self, tenant_id: str, dataset_id: str, document_id: str) -> None:
        await self.delete_many(tenant_id, dataset_id, [document_id])

    async def delete_many(self, tenant_id: str, dataset_id: str, document_ids: list[str]) -> None:
        """Delete documents, with their segments, files and vectors, in one transaction: every one is checked
        (exists, no worker on it) before any goes (the console's batch delete; one for the knowledge API)."""
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            docs = [await get_document(s, ds, doc_id) for doc_id in dict.fromkeys(document_ids)]
            if any(d.indexing_status in ACTIVE_STATES for d in docs):
                raise document_indexing()
            files = await _files(s, docs)
            ids = [d.id for d in docs]
            await s.exec(delete(SegmentImportJob).where(col(SegmentImportJob.document_id).in_(ids)))
            await s.exec(delete(ChildChunk).where(col(ChildChunk.document_id).in_(ids)))
            await s.exec(delete(DocumentSegment).where(col(DocumentSegment.document_id).in_(ids)))
            await s.exec(delete(Document).where(col(Document.id).in_(ids)))
            if files:
                await s.exec(delete(UploadFile).where(col(UploadFile.id).in_([f.id for f in files.values()])))
            await s.commit()
        for doc_id in ids:
            await self.kn.vectors.delete_document(dataset_space(ds), tenant_id, ds.id, doc_id)
        for f in files.values():
            await self.kn.files.delete(f.object_name)

    async def set_status(self, tenant_id: str, dataset_id: str, action: str, document_ids: list[str]) -> None:
        if action not in STATUS_ACTIONS:
            raise ApiError(400, "invalid_action", f"Invalid action: {action}.")
        now = utcnow()
        changed: list[tuple[str, bool]] = []  # (document id, retrievable)
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            for doc_id in dict.fromkeys(document_ids):
                doc = await get_document(s, ds, doc_id)
                if action in ("enable", "disable"):
                    if doc.archived:
                        raise archived_immutable()
                    doc.enabled = action == "enable"
                    doc.disabled_at = None if doc.enabled else now
                else:
                    doc.archived = action == "archive"
                    doc.archived_at = now if doc.archived else None
                doc.updated_at = now
                changed.append((doc.id, doc.enabled and not doc.archived))
            await s.commit()
        space = dataset_space(ds)
        for doc_id, retrievable in changed:
            await self.kn.vectors.set_enabled(space, retrievable, tenant_id=tenant_id, dataset_id=ds.id,
                                              document_id=doc_id)



def _status_filter(status: str) -> list[Any]:
    """Dify's display_status values as filters on the document columns."""
    m = {"queuing": [Document.indexing_status == "waiting"],
         "indexing": [col(Document.indexing_status).in_(ACTIVE_STATES)],
         "paused": [Document.indexing_status == "paused"], "error": [Document.indexing_status == "error"],
         "available": [Document.indexing_status == "completed", Document.enabled == True,
                       Document.archived == False],
         "disabled": [Document.indexing_status == "completed", Document.enabled == False,
                      Document.archived == False],
         "archived": [Document.archived == True]}
    if status not in m:
        raise invalid(f"status must be one of {list(m)}")
    return m[status]


async def _completed_segments(s: AsyncSession, docs: list[Document]) -> dict[str, int]:
    return {i: int(n) for i, n in (await s.exec(
        select(DocumentSegment.document_id, func.count())
        .where(col(DocumentSegment.document_id).in_([d.id for d in docs]), DocumentSegment.status == "completed")
        .group_by(DocumentSegment.document_id))).all()}


async def _files(s: AsyncSession, docs: list[Document]) -> dict[str, UploadFile]:
    ids = [d.upload_file_id for d in docs if d.upload_file_id]
    if not ids:
        return {}
    return {f.id: f for f in await s.exec(select(UploadFile).where(col(UploadFile.id).in_(ids)))}


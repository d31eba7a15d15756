"""Document metadata of a dataset (reference §4.6): declared fields, per-document values, built-in fields.
Values live in ``documents.doc_metadata`` and in every vector point of the document, where retrieval's
metadata filters read them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.indexer.service.common import (
    dataset_space,
    get_dataset,
    get_document,
    invalid,
    parse_id,
)
from services.indexer.service.core import Knowledge
from shared.errors import ApiError, not_found
from shared.models import Dataset, DatasetMetadataField, Document, UploadFile, ts

TYPES = ("string", "number", "time")
BUILT_IN = (("document_name", "string"), ("uploader", "string"), ("upload_date", "time"),
            ("last_update_date", "time"), ("source", "string"))
BUILT_IN_NAMES = frozenset(n for n, _ in BUILT_IN)


def invalid_metadata(message: str) -> ApiError:
    return ApiError(400, "invalid_metadata", message)


def _value(kind: str, value: Any, name: str) -> Any:
    """A value coerced to its field's type (time: Unix seconds), or 400 invalid_metadata."""
    if value is None or value == "":
        return None
    try:
        if kind == "number":
            if isinstance(value, bool):
                raise ValueError
            f = float(value)
            return int(f) if f.is_integer() else f
        if kind == "time":
            if isinstance(value, int | float) and not isinstance(value, bool):
                return int(value)
            return int(datetime.fromisoformat(str(value)).replace(tzinfo=UTC).timestamp())
    except (TypeError, ValueError):
        raise invalid_metadata(f"Metadata '{name}' must be a {kind}.") from None
    return str(value)


def built_in_values(doc: Document, f: UploadFile | None) -> dict[str, Any]:
    return {"document_name": doc.name, "uploader": doc.created_by or "api", "upload_date": ts(doc.created_at),
            "last_update_date": ts(doc.updated_at), "source": "file_upload" if f else doc.data_source_type}


class MetadataService:
    def __init__(self, kn: Knowledge) -> None:
        self.kn = kn

    async def _field(self, s: AsyncSession, ds: Dataset, field_id: str) -> DatasetMetadataField:
        row = (await s.exec(select(DatasetMetadataField).where(
            DatasetMetadataField.id == parse_id(field_id, not_found("Metadata not found.")),
            DatasetMetadataField.dataset_id == ds.id))).first()
        if row is None:
            raise not_found("Metadata not found.")
        return row

    async def _sync(self, ds: Dataset, docs: list[Document]) -> None:
        """Push the documents' metadata into their vector points."""
        space = dataset_space(ds)
        for d in docs:
            await self.kn.vectors.set_document_metadata(space, ds.tenant_id, ds.id, d.id, d.doc_metadata or {})

    async def list(self, tenant_id: str, dataset_id: str) -> dict[str, Any]:
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            fields = list(await s.exec(select(DatasetMetadataField).where(DatasetMetadataField.dataset_id == ds.id)
                                       .order_by(col(DatasetMetadataField.created_at))))
            metas = list(await s.exec(select(Document.doc_metadata).where(Document.dataset_id == ds.id)))
        return {"doc_metadata": [{"id": f.id, "name": f.name, "type": f.type,
                                  "use_count": sum(1 for m in metas if m and f.name in m)} for f in fields],
                "built_in_field_enabled": ds.built_in_field_enabled}

    async def create(self, tenant_id: str, dataset_id: str, kind: Any, name: Any) -> dict[str, Any]:
        if kind not in TYPES:
            raise invalid_metadata(f"Metadata type must be one of {list(TYPES)}.")
        name = self._name(name)
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            row = DatasetMetadataField(tenant_id=tenant_id, dataset_id=ds.id, name=name, type=kind)
            s.add(row)
            try:
                await s.commit()
            except IntegrityError:
                raise invalid_metadata("Metadata name already exists.") from None
        return {"id": row.id, "type": row.type, "name": row.name}

    @staticmethod
    def _name(name: Any) -> str:
        if not isinstance(name, str) or not name.strip() or len(name) > 255:
            raise invalid_metadata("Metadata name is required (at most 255 characters).")
        if name in BUILT_IN_NAMES:
            raise invalid_metadata("Metadata name already exists in the built-in fields.")
        return name.strip()

    async def rename(self, tenant_id: str, dataset_id: str, field_id: str, name: Any) -> dict[str, Any]:
        name = self._name(name)
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            row = await self._field(s, ds, field_id)
            old, row.name = row.name, name
            docs = await self._docs_with(s, ds, old)
            for d in docs:
                meta = dict(d.doc_metadata)
                meta[name] = meta.pop(old)
                d.doc_metadata = meta
            try:
                await s.commit()
            except IntegrityError:
                raise invalid_metadata("Metadata name already exists.") from None
        await self._sync(ds, docs)
        return {"id": row.id, "type": row.type, "name": row.name}

    async def delete(self, tenant_id: str, dataset_id: str, field_id: str) -> None:
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            row = await self._field(s, ds, field_id)
            docs = await self._docs_with(s, ds, row.name)
            for d in docs:
                d.doc_metadata = {k: v for k, v in d.doc_metadata.items() if k != row.name}
            await s.delete(row)
            await s.commit()
        await self._sync(ds, docs)

    async def _docs_with(self, s: AsyncSession, ds: Dataset, name: str) -> list[Document]:
        docs = await s.exec(select(Document).where(Document.dataset_id == ds.id))
        return [d for d in docs if d.doc_metadata and name in d.doc_metadata]

    async def set_built_in(self, tenant_id: str, dataset_id: str, enable: bool) -> None:
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            ds.built_in_field_enabled = enable
            docs = list(await s.exec(select(Document).where(Document.dataset_id == ds.id)))
            files = {f.id: f for f in await s.exec(select(UploadFile).where(
                col(UploadFile.id).in_([d.upload_file_id for d in docs if d.upload_file_id])))}
            for d in docs:
                meta = {k: v for k, v in (d.doc_metadata or {}).items() if k not in BUILT_IN_NAMES}
                if enable:
                    meta.update(built_in_values(d, files.get(d.upload_file_id or "")))
                d.doc_metadata = meta
            await s.commit()
        await self._sync(ds, docs)

    async def update_documents(self, tenant_id: str, dataset_id: str, operations: Any) -> None:
        if not isinstance(operations, list):
            raise invalid("operation_data must be a list")
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            fields = {f.id: f for f in await s.exec(select(DatasetMetadataField)
                                                    .where(DatasetMetadataField.dataset_id == ds.id))}
            touched: list[Document] = []
            for op in operations:
                if not isinstance(op, dict) or not isinstance(op.get("metadata_list"), list):
                    raise invalid("each operation needs document_id and metadata_list")
                doc = await get_document(s, ds, str(op.get("document_id")))
                base = dict(doc.doc_metadata or {}) if op.get("partial_update") else \
                    {k: v for k, v in (doc.doc_metadata or {}).items() if k in BUILT_IN_NAMES}
                for item in op["metadata_list"]:
                    f = fields.get(str(item.get("id"))) if isinstance(item, dict) else None
                    if f is None or item.get("name", f.name) != f.name:
                        raise invalid_metadata(f"Metadata {item!r} is not a field of this dataset.")
                    base[f.name] = _value(f.type, item.get("value"), f.name)
                doc.doc_metadata = base
                touched.append(doc)
            await s.commit()
        await self._sync(ds, touched)

    @staticmethod
    def built_in_fields() -> dict[str, Any]:
        return {"fields": [{"name": n, "type": t} for n, t in BUILT_IN]}

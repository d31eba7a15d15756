"""Datasets of a workspace (reference §4.1): create, list, get, update, delete."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.indexer.service.common import (
    CONSOLE_MEMBER,
    created_by,
    dataset_in_use,
    dataset_space,
    get_dataset,
    invalid,
    name_duplicate,
    space_for,
)
from services.indexer.service.core import Knowledge
from services.indexer.service.tags import TAG_TYPE
from shared.credentials import default_model
from shared.errors import forbidden, validation_message
from shared.knowledge.access import visible_to
from shared.knowledge.models import (
    LOCAL_EMBEDDING_MODEL,
    LOCAL_EMBEDDING_PROVIDER,
    RetrievalModel,
    default_retrieval_model,
)
from shared.models import (
    App,
    AppDatasetJoin,
    ChildChunk,
    Dataset,
    DatasetMetadataField,
    DatasetPermission,
    Document,
    DocumentSegment,
    SegmentImportJob,
    TenantMember,
    UploadFile,
    ts,
    utcnow,
)
from shared.tags import bound_to_any, tags_of, unbind_target

TECHNIQUES = ("high_quality", "economy")
PERMISSIONS = ("only_me", "all_team_members", "partial_members")


def parse_retrieval_model(raw: Any, technique: str | None) -> RetrievalModel:
    if raw is None or raw == {}:
        return default_retrieval_model(technique)
    try:
        rm = RetrievalModel.model_validate(raw)
    except ValidationError as e:
        raise invalid(f"retrieval_model: {validation_message(e)[1]}") from None
    if technique == "economy":
        rm.search_method = "keyword_search"  # economy datasets have no vectors (reference §4.1)
    elif rm.search_method == "keyword_search":
        rm.search_method = "full_text_search"
    return rm


async def _counts(s: AsyncSession, ids: list[str]) -> dict[str, tuple[int, int, int]]:
    """dataset id → (document_count, word_count, app_count)."""
    if not ids:
        return {}
    docs = dict((await s.exec(
        select(Document.dataset_id, func.count()).where(col(Document.dataset_id).in_(ids))
        .group_by(Document.dataset_id))).all())
    words = dict((await s.exec(
        select(Document.dataset_id, func.coalesce(func.sum(Document.word_count), 0))
        .where(col(Document.dataset_id).in_(ids)).group_by(Document.dataset_id))).all())
    apps = dict((await s.exec(
        select(AppDatasetJoin.dataset_id, func.count()).where(col(AppDatasetJoin.dataset_id).in_(ids))
        .group_by(AppDatasetJoin.dataset_id))).all())
    return {i: (int(docs.get(i, 0)), int(words.get(i, 0)), int(apps.get(i, 0))) for i in ids}


async def _extras(s: AsyncSession, ids: list[str]) -> tuple[dict[str, list[str]], dict[str, list[dict[str, str]]]]:
    """dataset id → its partial member list (account ids), and → its metadata fields ({id, name, type})."""
    members: dict[str, list[str]] = {i: [] for i in ids}
    fields: dict[str, list[dict[str, str]]] = {i: [] for i in ids}
    if ids:
        for dataset_id, account_id in (await s.exec(
                select(DatasetPermission.dataset_id, DatasetPermission.account_id)
                .where(col(DatasetPermission.dataset_id).in_(ids)).order_by(DatasetPermission.created_at))).all():
            members[dataset_id].append(account_id)
        for f in await s.exec(select(DatasetMetadataField).where(col(DatasetMetadataField.dataset_id).in_(ids))
                              .order_by(DatasetMetadataField.created_at, DatasetMetadataField.name)):
            fields[f.dataset_id].append({"id": f.id, "name": f.name, "type": f.type})
    return members, fields


def member_ids(raw: Any) -> list[str]:
    """Dify's ``partial_member_list``: ``[{"user_id": …}]`` (or bare account ids)."""
    if not isinstance(raw, list):
        raise invalid("partial_member_list must be a list of {\"user_id\": …}")
    ids = []
    for item in raw:
        user = item.get("user_id") if isinstance(item, dict) else item
        if not isinstance(user, str) or not user:
            raise invalid("partial_member_list must be a list of {\"user_id\": …}")
        ids.append(user)
    return list(dict.fromkeys(ids))


async def _set_members(s: AsyncSession, ds: Dataset, ids: list[str] | None) -> None:
    """Replace the dataset's member list (None: clear it); every id must be an active member of the workspace."""
    await s.exec(delete(DatasetPermission).where(DatasetPermission.dataset_id == ds.id))
    if not ids:
        return
    found = set((await s.exec(select(TenantMember.account_id).where(
        TenantMember.tenant_id == ds.tenant_id, TenantMember.status == "active",
        col(TenantMember.account_id).in_(ids)))).all())
    for missing in ids:
        if missing not in found:
            raise invalid(f"partial_member_list: {missing} is not a member of this workspace.")
    s.add_all(DatasetPermission(tenant_id=ds.tenant_id, dataset_id=ds.id, account_id=a) for a in ids)


def detail(ds: Dataset, counts: tuple[int, int, int], tags: list[dict[str, str]], members: list[str] | None = None,
           fields: list[dict[str, str]] | None = None) -> dict[str, Any]:
    rm = parse_retrieval_model(ds.retrieval_model or None, ds.indexing_technique)
    return {
        "id": ds.id, "name": ds.name, "description": ds.description, "provider": ds.provider,
        "permission": ds.permission, "data_source_type": ds.data_source_type,
        "indexing_technique": ds.indexing_technique, "app_count": counts[2], "document_count": counts[0],
        "word_count": counts[1], "created_by": ds.created_by, "created_at": ts(ds.created_at),
        "updated_by": ds.updated_by, "updated_at": ts(ds.updated_at),
        "embedding_model": ds.embedding_model, "embedding_model_provider": ds.embedding_model_provider,
        "embedding_available": True, "retrieval_model_dict": rm.wire(), "tags": tags, "doc_form": ds.doc_form,
        "external_knowledge_info": {"external_knowledge_id": None, "external_knowledge_api_id": None,
                                    "external_knowledge_api_name": None,
                                    "external_knowledge_api_endpoint": None},
        "external_retrieval_model": {"top_k": 2, "score_threshold": 0.0, "score_threshold_enabled": False},
        "doc_metadata": fields or [], "built_in_field_enabled": ds.built_in_field_enabled,
        "enable_api": ds.enable_api, "partial_member_list": members or [],
    }


async def _detail(s: AsyncSession, ds: Dataset) -> dict[str, Any]:
    members, fields = await _extras(s, [ds.id])
    tags = (await tags_of(s, ds.tenant_id, TAG_TYPE, [ds.id]))[ds.id]
    return detail(ds, (await _counts(s, [ds.id]))[ds.id], tags, members[ds.id], fields[ds.id])


class DatasetService:
    def __init__(self, kn: Knowledge) -> None:
        self.kn = kn

    async def _check_embedding(self, s: AsyncSession, tenant_id: str, provider: str | None, model: str | None
                               ) -> tuple[str, str]:
        """The embedding model to store, checked usable now (reference: 400 provider_not_initialize). None named:
        the workspace's default text-embedding model, as Dify does, else the built-in one."""
        if not provider:
            provider, model = await default_model(s, tenant_id, "text-embedding") or (None, None)
        if not provider or provider == LOCAL_EMBEDDING_PROVIDER:
            return LOCAL_EMBEDDING_PROVIDER, LOCAL_EMBEDDING_MODEL
        if not model:
            raise invalid("embedding_model is required with embedding_model_provider")
        await self.kn.embedder(s, tenant_id, provider, model)
        return provider, model

    async def create(self, tenant_id: str, body: dict[str, Any]) -> dict[str, Any]:
        technique = body.get("indexing_technique")
        if technique is not None and technique not in TECHNIQUES:
            raise invalid("indexing_technique is invalid: choose high_quality or economy")
        if body.get("provider", "vendor") == "external":
            raise invalid("External knowledge bases are not supported.")
        rm = parse_retrieval_model(body.get("retrieval_model"), technique)
        async with self.kn.db.session() as s:
            provider = model = None
            if technique == "high_quality" or body.get("embedding_model_provider"):
                provider, model = await self._check_embedding(
                    s, tenant_id, body.get("embedding_model_provider"), body.get("embedding_model"))
            ds = Dataset(tenant_id=tenant_id, name=body["name"], description=body.get("description") or "",
                         permission=body.get("permission") or "only_me", indexing_technique=technique,
                         embedding_model=model, embedding_model_provider=provider,
                         retrieval_model=rm.model_dump(mode="json"), created_by=created_by())
            s.add(ds)
            members = member_ids(body["partial_member_list"]) \
                if ds.permission == "partial_members" and body.get("partial_member_list") is not None else []
            try:
                if members:
                    await s.flush()  # the dataset row first: the member rows point at it
                    await _set_members(s, ds, members)
                await s.commit()
            except IntegrityError:
                await s.rollback()
                raise name_duplicate() from None
            return detail(ds, (0, 0, 0), [], members)

    async def list(self, tenant_id: str, *, page: int, limit: int, keyword: str | None,
                   tag_ids: list[str] | None = None) -> dict[str, Any]:
        where = [Dataset.tenant_id == tenant_id]
        member = CONSOLE_MEMBER.get()
        if member is not None and not member.sees_all:
            where.append(visible_to(member))
        if keyword:
            where.append(col(Dataset.name).icontains(keyword, autoescape=True))
        tag_ids = [t for t in tag_ids or [] if t]
        if tag_ids:  # datasets carrying ANY of the tags, as Dify's get_target_ids_by_tag_ids
            where.append(col(Dataset.id).in_(bound_to_any(tenant_id, TAG_TYPE, tag_ids)))
        async with self.kn.db.session() as s:
            total = (await s.exec(select(func.count()).select_from(Dataset).where(*where))).one()
            rows = list(await s.exec(select(Dataset).where(*where)
                                     .order_by(col(Dataset.created_at).desc(), col(Dataset.id).desc())
                                     .offset((page - 1) * limit).limit(limit)))
            counts = await _counts(s, [d.id for d in rows])
            tags = await tags_of(s, tenant_id, TAG_TYPE, [d.id for d in rows])
            members, fields = await _extras(s, [d.id for d in rows])
        return {"data": [detail(d, counts[d.id], tags[d.id], members[d.id], fields[d.id]) for d in rows],
                "has_more": page * limit < total,
                "limit": limit, "total": total, "page": page}

    async def get(self, tenant_id: str, dataset_id: str) -> dict[str, Any]:
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            return await _detail(s, ds)

    async def update(self, tenant_id: str, dataset_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Partial update. A new indexing technique or embedding model re-indexes every document."""
        reindex: list[tuple[str, int]] = []
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            old_technique = ds.indexing_technique
            old_space = dataset_space(ds)
            if "name" in body and body["name"] is not None:
                taken = (await s.exec(select(Dataset.id).where(
                    Dataset.tenant_id == tenant_id, Dataset.name == body["name"], Dataset.id != ds.id))).first()
                if taken:
                    raise name_duplicate()
                ds.name = body["name"]
            if body.get("description") is not None:
                ds.description = body["description"]
            if body.get("permission") is not None or body.get("partial_member_list") is not None:
                member = CONSOLE_MEMBER.get()
                if member is not None and not member.sees_all and ds.created_by != member.account_id:
                    raise forbidden("Only the dataset's creator, owners and admins can change who may use it.")
                ds.permission = body.get("permission") or ds.permission
                if ds.permission != "partial_members":
                    await _set_members(s, ds, None)
                elif body.get("partial_member_list") is not None:
                    await _set_members(s, ds, member_ids(body["partial_member_list"]))
            technique = body.get("indexing_technique") or ds.indexing_technique
            if technique not in (None, *TECHNIQUES):
                raise invalid("indexing_technique is invalid: choose high_quality or economy")
            provider, model = ds.embedding_model_provider, ds.embedding_model
            if technique == "high_quality" and (
                    "embedding_model_provider" in body or "embedding_model" in body or provider is None):
                provider, model = await self._check_embedding(
                    s, tenant_id, body.get("embedding_model_provider", provider), body.get("embedding_model", model))
            ds.indexing_technique, ds.embedding_model_provider, ds.embedding_model = technique, provider, model
            if "retrieval_model" in body or technique != old_technique:
                ds.retrieval_model = parse_retrieval_model(
                    body.get("retrieval_model", ds.retrieval_model), technique).model_dump(mode="json")
            ds.updated_at = utcnow()
            if space_for(technique, provider, model) != old_space:
                # a paused document stays paused: its resume indexes it into the new space
                docs = list(await s.exec(select(Document).where(Document.dataset_id == ds.id,
                                                                Document.archived == False,
                                                                Document.indexing_status != "paused")))
                for d in docs:
                    d.index_version += 1
                    d.indexing_status, d.error = "waiting", None
                    reindex.append((d.id, d.index_version))
            try:
                await s.commit()
            except IntegrityError:
                await s.rollback()
                raise name_duplicate() from None
            out = await _detail(s, ds)
        if reindex:
            await self.kn.vectors.delete_dataset(old_space, tenant_id, ds.id)
            for doc_id, version in reindex:
                await self.kn.enqueue(doc_id, version)
        return out

    async def members(self, tenant_id: str, dataset_id: str) -> list[str]:
        """The dataset's partial member list (account ids)."""
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            return list((await s.exec(select(DatasetPermission.account_id).where(
                DatasetPermission.dataset_id == ds.id).order_by(DatasetPermission.created_at))).all())

    async def in_use(self, tenant_id: str, dataset_id: str) -> bool:
        """Whether an app links the dataset (which then cannot be deleted)."""
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            return (await s.exec(select(AppDatasetJoin.id).where(AppDatasetJoin.dataset_id == ds.id))).first() \
                is not None

    async def related_apps(self, tenant_id: str, dataset_id: str) -> dict[str, Any]:
        """The apps whose current config links the dataset (the console's dataset page)."""
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            apps = list(await s.exec(select(App).join(AppDatasetJoin, col(AppDatasetJoin.app_id) == col(App.id))
                                     .where(AppDatasetJoin.dataset_id == ds.id, App.tenant_id == tenant_id)
                                     .order_by(col(App.created_at).desc())))
        data = [{"id": a.id, "name": a.name, "mode": a.mode, "icon_type": a.icon_type, "icon": a.icon,
                 "icon_background": a.icon_background} for a in apps]
        return {"data": data, "total": len(data)}

    async def delete(self, tenant_id: str, dataset_id: str) -> None:
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            if (await s.exec(select(AppDatasetJoin.id).where(AppDatasetJoin.dataset_id == ds.id))).first():
                raise dataset_in_use()
            files = list(await s.exec(
                select(UploadFile.id, UploadFile.object_name).join(Document, Document.upload_file_id == UploadFile.id)
                .where(Document.dataset_id == ds.id)))
            await s.exec(delete(SegmentImportJob).where(SegmentImportJob.dataset_id == ds.id))
            await s.exec(delete(ChildChunk).where(ChildChunk.dataset_id == ds.id))
            await s.exec(delete(DocumentSegment).where(DocumentSegment.dataset_id == ds.id))
            await s.exec(delete(Document).where(Document.dataset_id == ds.id))
            await unbind_target(s, tenant_id, TAG_TYPE, ds.id)
            if files:
                await s.exec(delete(UploadFile).where(col(UploadFile.id).in_([f[0] for f in files])))
            await s.delete(ds)
            await s.commit()
        await self.kn.vectors.delete_dataset(
            dataset_space(ds), tenant_id, ds.id)
        for _, name in files:
            await self.kn.files.delete(name)

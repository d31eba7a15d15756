"""Knowledge tags of a workspace (reference §4.1 Tags): tag CRUD, binding tags to datasets, and the
``tags[]`` that dataset details and lists carry."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Select, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.indexer.service.common import get_dataset, invalid, parse_id
from services.indexer.service.core import Knowledge
from shared.errors import ApiError, not_found
from shared.models import Tag, TagBinding

TAG_TYPE = "knowledge"
NAME_MAX = 50
MAX_TAG_IDS = 1000  # per request: far more than a dataset carries, and one IN (...) every database accepts


def tag_not_found() -> ApiError:
    return not_found("Tag not found.")


def tag_name(raw: Any) -> str:
    name = raw.strip() if isinstance(raw, str) else ""
    if not 1 <= len(name) <= NAME_MAX:
        raise invalid("Name must be between 1 to 50 characters.")  # Dify's words
    return name


def _tag_ids(body: dict[str, Any]) -> list[str]:
    """``tag_ids`` (or the legacy single ``tag_id``) as a de-duplicated list; a non-UUID is an unknown tag."""
    raw = body.get("tag_ids")
    if raw is None and body.get("tag_id") is not None:
        raw = [body["tag_id"]]
    if raw is None or raw == []:
        raise invalid("Tag IDs is required.")
    if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
        raise invalid("tag_ids must be a list of tag id strings.")
    if len(raw) > MAX_TAG_IDS:
        raise invalid(f"tag_ids must list at most {MAX_TAG_IDS} tags.")
    return list(dict.fromkeys(parse_id(t, tag_not_found()) for t in raw))


def _one_tag_id(body: dict[str, Any]) -> str:
    raw = body.get("tag_id")
    if not isinstance(raw, str) or not raw:
        raise invalid("tag_id is required.")
    return parse_id(raw, tag_not_found())


def _target_id(body: dict[str, Any]) -> str:
    raw = body.get("target_id")
    if not isinstance(raw, str) or not raw:
        raise invalid("target_id is required.")
    return raw


def _tags(tenant_id: str) -> Select:
    return select(Tag).where(Tag.tenant_id == tenant_id, Tag.type == TAG_TYPE)


def bound_to_any(tenant_id: str, tag_ids: Iterable[str]) -> Select:
    """The ids of the workspace's datasets that carry at least one of ``tag_ids`` (Dify's list filter)."""
    return (select(TagBinding.target_id).join(Tag, col(Tag.id) == col(TagBinding.tag_id))
            .where(Tag.tenant_id == tenant_id, Tag.type == TAG_TYPE, col(Tag.id).in_(list(tag_ids))))


async def tags_of(s: AsyncSession, tenant_id: str, dataset_ids: list[str]) -> dict[str, list[dict[str, str]]]:
    """dataset id → its ``[{id, name, type}]``, for a whole page in one query."""
    out: dict[str, list[dict[str, str]]] = {i: [] for i in dataset_ids}
    if not dataset_ids:
        return out
    rows = await s.exec(
        select(TagBinding.target_id, Tag.id, Tag.name, Tag.type).join(Tag, col(Tag.id) == col(TagBinding.tag_id))
        .where(Tag.tenant_id == tenant_id, Tag.type == TAG_TYPE, col(TagBinding.target_id).in_(dataset_ids))
        .order_by(col(Tag.name), col(Tag.id)))
    for target, tid, name, kind in rows:
        out[target].append({"id": tid, "name": name, "type": kind})
    return out


async def unbind_dataset(s: AsyncSession, tenant_id: str, dataset_id: str) -> None:
    """Drop a dataset's bindings (it is being deleted); the caller commits."""
    await s.exec(delete(TagBinding).where(TagBinding.tenant_id == tenant_id, TagBinding.target_id == dataset_id))


def _wire(tag: Tag, binding_count: int) -> dict[str, Any]:
    # Dify marshals binding_count with fields.String (newer: coerce_numbers_to_str): a string on the wire
    return {"id": tag.id, "name": tag.name, "type": tag.type, "binding_count": str(binding_count)}


class TagService:
    def __init__(self, kn: Knowledge) -> None:
        self.kn = kn

    async def _tag(self, s: AsyncSession, tenant_id: str, tag_id: str) -> Tag:
        tag = (await s.exec(_tags(tenant_id).where(Tag.id == tag_id))).first()
        if tag is None:
            raise tag_not_found()
        return tag

    async def _check_tags(self, s: AsyncSession, tenant_id: str, tag_ids: list[str]) -> None:
        found = set((await s.exec(select(Tag.id).where(Tag.tenant_id == tenant_id, Tag.type == TAG_TYPE,
                                                       col(Tag.id).in_(tag_ids)))).all())
        if len(found) != len(tag_ids):
            raise tag_not_found()

    @staticmethod
    async def _count(s: AsyncSession, tag_id: str) -> int:
        return int((await s.exec(select(func.count()).select_from(TagBinding)
                                 .where(TagBinding.tag_id == tag_id))).one())

    async def list(self, tenant_id: str) -> list[dict[str, Any]]:
        """Every knowledge tag of the workspace, newest first, with how many datasets carry it."""
        async with self.kn.db.session() as s:
            rows = await s.exec(
                select(Tag, func.count(col(TagBinding.id))).outerjoin(TagBinding, col(TagBinding.tag_id) == col(Tag.id))
                .where(Tag.tenant_id == tenant_id, Tag.type == TAG_TYPE)
                .group_by(col(Tag.id)).order_by(col(Tag.created_at).desc(), col(Tag.id).desc()))
            return [_wire(tag, n) for tag, n in rows]

    async def create(self, tenant_id: str, body: dict[str, Any]) -> dict[str, Any]:
        name = tag_name(body.get("name"))
        async with self.kn.db.session() as s:
            if (await s.exec(_tags(tenant_id).where(Tag.name == name))).first():
                raise invalid("Tag name already exists")
            tag = Tag(tenant_id=tenant_id, type=TAG_TYPE, name=name)
            s.add(tag)
            try:
                await s.commit()
            except IntegrityError:  # a concurrent create of the same name won
                await s.rollback()
                raise invalid("Tag name already exists") from None
            return _wire(tag, 0)

    async def update(self, tenant_id: str, body: dict[str, Any]) -> dict[str, Any]:
        tag_id, name = _one_tag_id(body), tag_name(body.get("name"))
        async with self.kn.db.session() as s:
            tag = await self._tag(s, tenant_id, tag_id)
            if (await s.exec(_tags(tenant_id).where(Tag.name == name, Tag.id != tag.id))).first():
                raise invalid("Tag name already exists")
            tag.name = name
            try:
                await s.commit()
            except IntegrityError:
                await s.rollback()
                raise invalid("Tag name already exists") from None
            return _wire(tag, await self._count(s, tag.id))

    async def delete(self, tenant_id: str, body: dict[str, Any]) -> None:
        tag_id = _one_tag_id(body)
        async with self.kn.db.session() as s:
            tag = await self._tag(s, tenant_id, tag_id)
            # explicit: SQLite does not enforce the foreign key's ON DELETE CASCADE
            await s.exec(delete(TagBinding).where(TagBinding.tag_id == tag.id))
            await s.delete(tag)
            await s.commit()

    async def bind(self, tenant_id: str, body: dict[str, Any]) -> None:
        """Put the tags on the dataset; tags it already carries are left alone (idempotent)."""
        tag_ids, target = _tag_ids(body), _target_id(body)
        for attempt in range(2):
            async with self.kn.db.session() as s:
                ds = await get_dataset(s, tenant_id, target, api=False)
                await self._check_tags(s, tenant_id, tag_ids)
                have = set((await s.exec(select(TagBinding.tag_id).where(
                    TagBinding.target_id == ds.id, col(TagBinding.tag_id).in_(tag_ids)))).all())
                for tid in tag_ids:
                    if tid not in have:
                        s.add(TagBinding(tenant_id=tenant_id, tag_id=tid, target_id=ds.id))
                try:
                    await s.commit()
                    return
                except IntegrityError:  # a concurrent bind of the same pair: look again
                    await s.rollback()
                    if attempt:
                        raise

    async def unbind(self, tenant_id: str, body: dict[str, Any]) -> None:
        """Take the tags off the dataset; a tag it does not carry is not an error."""
        tag_ids, target = _tag_ids(body), _target_id(body)
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, target, api=False)
            await self._check_tags(s, tenant_id, tag_ids)
            await s.exec(delete(TagBinding).where(TagBinding.target_id == ds.id,
                                                  col(TagBinding.tag_id).in_(tag_ids)))
            await s.commit()

    async def of_dataset(self, tenant_id: str, dataset_id: str) -> dict[str, Any]:
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            tags = (await tags_of(s, tenant_id, [ds.id]))[ds.id]
        return {"data": [{"id": t["id"], "name": t["name"]} for t in tags], "total": len(tags)}


"""A workspace's tags, of one type each: ``knowledge`` tags go on datasets (the indexer: /v1/datasets/tags and
/console/api/datasets/tags; the console: /console/api/tags?type=knowledge), ``app`` tags on apps (the console:
/console/api/tags?type=app). Tag CRUD, binding tags to targets, the ``tags[]`` of a page of targets and the
``tag_ids`` filter of their lists, in one place for both services. The caller names the type and checks the
target (it knows what a dataset or an app is, and who may see it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

from sqlalchemy import Select, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from shared.db import Database
from shared.errors import ApiError, canonical_uuid, invalid_param, not_found, parse_uuid
from shared.models import Tag, TagBinding

TagType = Literal["knowledge", "app"]
TYPES: tuple[str, ...] = ("knowledge", "app")
NAME_MAX = 50
MAX_TAG_IDS = 1000  # per request: far more than a target carries, and one IN (...) every database accepts
DUPLICATE = "Tag name already exists"

# (session, the body's target id) → the target's id once it is known to exist for the caller; raises otherwise
TargetCheck = Callable[[AsyncSession, str], Awaitable[str]]


def tag_not_found() -> ApiError:
    return not_found("Tag not found.")


def tag_type(raw: Any) -> str:
    if raw not in TYPES:
        raise invalid_param("Invalid tag type.", params="type")  # Dify's words
    return raw


def tag_name(raw: Any) -> str:
    name = raw.strip() if isinstance(raw, str) else ""
    if not 1 <= len(name) <= NAME_MAX:
        raise invalid_param("Name must be between 1 to 50 characters.")  # Dify's words
    return name


def parse_tag_id(raw: Any) -> str:
    """A tag id in canonical form; a non-UUID is an unknown tag (Dify declares them as UUIDs)."""
    return parse_uuid(raw, tag_not_found())


def tag_ids(body: dict[str, Any]) -> list[str]:
    """``tag_ids`` (or the legacy single ``tag_id``) as a de-duplicated list; a non-UUID is an unknown tag."""
    raw = body.get("tag_ids")
    if raw is None and body.get("tag_id") is not None:
        raw = [body["tag_id"]]
    if raw is None or raw == []:
        raise invalid_param("Tag IDs is required.")
    if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
        raise invalid_param("tag_ids must be a list of tag id strings.")
    if len(raw) > MAX_TAG_IDS:
        raise invalid_param(f"tag_ids must list at most {MAX_TAG_IDS} tags.")
    return list(dict.fromkeys(parse_tag_id(t) for t in raw))


def one_tag_id(body: dict[str, Any]) -> str:
    raw = body.get("tag_id")
    if not isinstance(raw, str) or not raw:
        raise invalid_param("tag_id is required.")
    return parse_tag_id(raw)


def target_id(body: dict[str, Any]) -> str:
    raw = body.get("target_id")
    if not isinstance(raw, str) or not raw:
        raise invalid_param("target_id is required.")
    return raw


def filter_ids(raw: Iterable[str] | None) -> list[str] | None:
    """A list filter's ``tag_ids`` (comma-separated as Dify's console sends them, or repeated): the
    well-formed ones, canonical and de-duplicated, a malformed one dropped (it matches nothing); None when
    none is given (no filter). At most MAX_TAG_IDS."""
    given = [part.strip() for value in raw or () for part in value.split(",") if part.strip()]
    if not given:
        return None
    out = dict.fromkeys(i for i in map(canonical_uuid, given) if i is not None)
    if len(out) > MAX_TAG_IDS:
        raise invalid_param(f"tag_ids must list at most {MAX_TAG_IDS} tags.", params="tag_ids")
    return list(out)


def wire(tag: Tag, binding_count: int) -> dict[str, Any]:
    # Dify marshals binding_count with fields.String (newer: coerce_numbers_to_str): a string on the wire
    return {"id": tag.id, "name": tag.name, "type": tag.type, "binding_count": str(binding_count)}


def _tags(tenant_id: str, kind: str) -> Select:
    return select(Tag).where(Tag.tenant_id == tenant_id, Tag.type == kind)


# ---- what targets carry, for their details and lists -------------------------------------------------------


def bound_to_any(tenant_id: str, kind: str, ids: Iterable[str]) -> Select:
    """The ids of the targets that carry at least one of the workspace's ``kind`` tags ``ids`` (Dify's
    get_target_ids_by_tag_ids: a list filter is "any of")."""
    return (select(TagBinding.target_id).join(Tag, col(Tag.id) == col(TagBinding.tag_id))
            .where(Tag.tenant_id == tenant_id, Tag.type == kind, col(Tag.id).in_(list(ids))))


async def tags_of(s: AsyncSession, tenant_id: str, kind: str, target_ids: list[str]
                  ) -> dict[str, list[dict[str, str]]]:
    """target id → its ``[{id, name, type}]`` (by name), for a whole page in one query."""
    out: dict[str, list[dict[str, str]]] = {i: [] for i in target_ids}
    if not target_ids:
        return out
    rows = await s.exec(
        select(TagBinding.target_id, Tag.id, Tag.name, Tag.type)
        .join(Tag, col(Tag.id) == col(TagBinding.tag_id))
        .where(Tag.tenant_id == tenant_id, Tag.type == kind, col(TagBinding.target_id).in_(target_ids))
        .order_by(col(Tag.name), col(Tag.id)))
    for target, tid, name, kind_ in rows:
        out[target].append({"id": tid, "name": name, "type": kind_})
    return out


async def tag_names(s: AsyncSession, tenant_id: str, kind: str, target: str) -> list[str]:
    """The names of one target's tags, by name (GET /v1/info's ``tags``): one query."""
    return list(await s.exec(
        select(Tag.name).join(TagBinding, col(TagBinding.tag_id) == col(Tag.id))
        .where(TagBinding.target_id == target, Tag.tenant_id == tenant_id, Tag.type == kind)
        .order_by(col(Tag.name))))


async def unbind_target(s: AsyncSession, tenant_id: str, kind: str, target: str) -> None:
    """Drop a target's bindings (it is being deleted); the caller commits."""
    await s.exec(delete(TagBinding).where(
        TagBinding.tenant_id == tenant_id, TagBinding.target_id == target,
        col(TagBinding.tag_id).in_(select(Tag.id).where(Tag.tenant_id == tenant_id, Tag.type == kind))))


# ---- the tags themselves -----------------------------------------------------------------------------------


async def find(s: AsyncSession, tenant_id: str, tag_id: str, kind: str | None = None) -> Tag:
    """The workspace's tag (of ``kind``, when given); 404 ``Tag not found.`` otherwise."""
    q = select(Tag).where(Tag.tenant_id == tenant_id, Tag.id == parse_tag_id(tag_id))
    if kind is not None:
        q = q.where(Tag.type == kind)
    tag = (await s.exec(q)).first()
    if tag is None:
        raise tag_not_found()
    return tag


async def _check_tags(s: AsyncSession, tenant_id: str, kind: str, ids: list[str]) -> None:
    found = set((await s.exec(select(Tag.id).where(Tag.tenant_id == tenant_id, Tag.type == kind,
                                                   col(Tag.id).in_(ids)))).all())
    if len(found) != len(ids):
        raise tag_not_found()


async def _count(s: AsyncSession, tag_id: str) -> int:
    return int((await s.exec(select(func.count()).select_from(TagBinding)
                             .where(TagBinding.tag_id == tag_id))).one())


async def list_tags(db: Database, tenant_id: str, kind: str, keyword: str | None = None
                    ) -> list[dict[str, Any]]:
    """The workspace's ``kind`` tags, newest first, with how many targets carry each; ``keyword``: a
    case-insensitive part of the name."""
    q = (select(Tag, func.count(col(TagBinding.id)))
         .outerjoin(TagBinding, col(TagBinding.tag_id) == col(Tag.id))
         .where(Tag.tenant_id == tenant_id, Tag.type == kind))
    if keyword:
        q = q.where(col(Tag.name).icontains(keyword, autoescape=True))
    async with db.session() as s:
        rows = await s.exec(q.group_by(col(Tag.id)).order_by(col(Tag.created_at).desc(), col(Tag.id).desc()))
        return [wire(tag, n) for tag, n in rows]


async def create(db: Database, tenant_id: str, kind: str, name: Any, created_by: str | None = None
                 ) -> dict[str, Any]:
    name = tag_name(name)
    async with db.session() as s:
        if (await s.exec(_tags(tenant_id, kind).where(Tag.name == name))).first():
            raise invalid_param(DUPLICATE)
        tag = Tag(tenant_id=tenant_id, type=kind, name=name, created_by=created_by)
        s.add(tag)
        try:
            await s.commit()
        except IntegrityError:  # a concurrent create of the same name won
            await s.rollback()
            raise invalid_param(DUPLICATE) from None
        return wire(tag, 0)


async def rename(db: Database, tenant_id: str, kind: str, tag_id: str, name: Any) -> dict[str, Any]:
    """The tag renamed (names are unique per workspace and type), with its binding count."""
    name = tag_name(name)
    async with db.session() as s:
        tag = await find(s, tenant_id, tag_id, kind)
        if (await s.exec(_tags(tenant_id, kind).where(Tag.name == name, Tag.id != tag.id))).first():
            raise invalid_param(DUPLICATE)
        tag.name = name
        try:
            await s.commit()
        except IntegrityError:
            await s.rollback()
            raise invalid_param(DUPLICATE) from None
        return wire(tag, await _count(s, tag.id))


async def remove(db: Database, tenant_id: str, kind: str, tag_id: str) -> list[str]:
    """Delete the tag and take it off everything; the ids of the targets that carried it."""
    async with db.session() as s:
        tag = await find(s, tenant_id, tag_id, kind)
        targets = list((await s.exec(select(TagBinding.target_id).where(TagBinding.tag_id == tag.id))).all())
        # explicit: SQLite does not enforce the foreign key's ON DELETE CASCADE
        await s.exec(delete(TagBinding).where(TagBinding.tag_id == tag.id))
        await s.delete(tag)
        await s.commit()
    return targets


async def bind(db: Database, tenant_id: str, kind: str, body: dict[str, Any], check: TargetCheck,
               created_by: str | None = None) -> str:
    """Put the body's ``tag_ids`` on its ``target_id``; tags it already carries are left alone (idempotent).
    Returns the target's id."""
    ids, raw_target = tag_ids(body), target_id(body)
    for attempt in range(2):
        async with db.session() as s:
            target = await check(s, raw_target)
            await _check_tags(s, tenant_id, kind, ids)
            have = set((await s.exec(select(TagBinding.tag_id).where(
                TagBinding.target_id == target, col(TagBinding.tag_id).in_(ids)))).all())
            for tid in ids:
                if tid not in have:
                    s.add(TagBinding(tenant_id=tenant_id, tag_id=tid, target_id=target,
                                     created_by=created_by))
            try:
                await s.commit()
                return target
            except IntegrityError:  # a concurrent bind of the same pair: look again
                await s.rollback()
                if attempt:
                    raise
    raise AssertionError("unreachable")


async def unbind(db: Database, tenant_id: str, kind: str, body: dict[str, Any], check: TargetCheck) -> str:
    """Take the body's tags (``tag_ids``, or ``tag_id``) off its ``target_id``; a tag it does not carry is no
    error. Returns the target's id."""
    ids, raw_target = tag_ids(body), target_id(body)
    async with db.session() as s:
        target = await check(s, raw_target)
        await _check_tags(s, tenant_id, kind, ids)
        await s.exec(delete(TagBinding).where(TagBinding.target_id == target,
                                              col(TagBinding.tag_id).in_(ids)))
        await s.commit()
    return target

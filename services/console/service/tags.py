"""The console's tags (Dify's /console/api/tags and /console/api/tag-bindings): app tags, and the knowledge
tags the indexer also serves at /datasets/tags, through the one tag logic in shared/tags.py. Here: what a
target is for each type, and who may tag it."""

from __future__ import annotations

from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.console.service.common import Principal, get_app
from shared import tags
from shared.db import Database
from shared.errors import forbidden, not_found
from shared.knowledge.access import Member, may_see
from shared.models import Dataset


async def _dataset(s: AsyncSession, p: Principal, target: str) -> str:
    """A dataset of the workspace the caller may see, by the rule the indexer's console routes apply
    (shared.knowledge.access): 404 / 403 in their words otherwise."""
    ds = (await s.exec(select(Dataset).where(Dataset.id == target, Dataset.tenant_id == p.tenant_id))).first()
    if ds is None:
        raise not_found("Dataset not found.")
    if not await may_see(s, ds, Member(p.account_id or "", p.role)):
        raise forbidden("You do not have permission to access this dataset.")
    return ds.id


def target_check(p: Principal, kind: str) -> tags.TargetCheck:
    """What a binding's ``target_id`` must be: an app of the workspace, or a dataset the caller may see."""
    async def check(s: AsyncSession, target: str) -> str:
        if kind == "app":
            return (await get_app(s, p.tenant_id, target)).id
        return await _dataset(s, p, target)
    return check


async def kind_of(db: Database, p: Principal, tag_id: str) -> str:
    """The type of one of the workspace's tags (404 ``Tag not found.``): what a rename or delete needs."""
    async with db.session() as s:
        return (await tags.find(s, p.tenant_id, tag_id)).type


async def list_tags(db: Database, p: Principal, kind: str, keyword: str | None) -> list[dict[str, Any]]:
    return await tags.list_tags(db, p.tenant_id, kind, keyword)


async def create(db: Database, p: Principal, kind: str, name: Any) -> dict[str, Any]:
    return await tags.create(db, p.tenant_id, kind, name, p.account_id or None)


async def rename(db: Database, p: Principal, kind: str, tag_id: str, name: Any) -> dict[str, Any]:
    return await tags.rename(db, p.tenant_id, kind, tag_id, name)


async def delete(db: Database, p: Principal, kind: str, tag_id: str) -> None:
    await tags.remove(db, p.tenant_id, kind, tag_id)


async def bind(db: Database, p: Principal, kind: str, body: dict[str, Any]) -> None:
    await tags.bind(db, p.tenant_id, kind, body, target_check(p, kind), p.account_id or None)


async def unbind(db: Database, p: Principal, kind: str, body: dict[str, Any]) -> None:
    await tags.unbind(db, p.tenant_id, kind, body, target_check(p, kind))


async def app_tags(db: Database, tenant_id: str, app_ids: list[str]) -> dict[str, list[dict[str, str]]]:
    """app id → its ``tags`` (``[{id, name, type}]``), for a page of apps in one query."""
    async with db.session() as s:
        return await tags.tags_of(s, tenant_id, "app", app_ids)

"""Knowledge tags of a workspace (reference §4.1 Tags): tag CRUD and binding tags to datasets, on
/v1/datasets/tags and /console/api/datasets/tags. The tag logic is shared/tags.py's (the console serves the
same tags, and app tags, at /console/api/tags); this binds it to datasets."""

from __future__ import annotations

from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from services.indexer.service.common import created_by, get_dataset
from services.indexer.service.core import Knowledge
from shared import tags as shared_tags
from shared.tags import MAX_TAG_IDS, NAME_MAX, tags_of

__all__ = ["MAX_TAG_IDS", "NAME_MAX", "TAG_TYPE", "TagService"]

TAG_TYPE = "knowledge"


class TagService:
    def __init__(self, kn: Knowledge) -> None:
        self.kn = kn

    @staticmethod
    def _dataset(tenant_id: str) -> shared_tags.TargetCheck:
        async def check(s: AsyncSession, target: str) -> str:
            # on the console: a dataset the member may see
            return (await get_dataset(s, tenant_id, target, api=False)).id
        return check

    async def list(self, tenant_id: str) -> list[dict[str, Any]]:
        """Every knowledge tag of the workspace, newest first, with how many datasets carry it."""
        return await shared_tags.list_tags(self.kn.db, tenant_id, TAG_TYPE)

    async def create(self, tenant_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return await shared_tags.create(self.kn.db, tenant_id, TAG_TYPE, body.get("name"), created_by())

    async def update(self, tenant_id: str, body: dict[str, Any]) -> dict[str, Any]:
        tag_id = shared_tags.one_tag_id(body)
        return await shared_tags.rename(self.kn.db, tenant_id, TAG_TYPE, tag_id, body.get("name"))

    async def delete(self, tenant_id: str, body: dict[str, Any]) -> None:
        await shared_tags.remove(self.kn.db, tenant_id, TAG_TYPE, shared_tags.one_tag_id(body))

    async def bind(self, tenant_id: str, body: dict[str, Any]) -> None:
        """Put the tags on the dataset; tags it already carries are left alone (idempotent)."""
        await shared_tags.bind(self.kn.db, tenant_id, TAG_TYPE, body, self._dataset(tenant_id), created_by())

    async def unbind(self, tenant_id: str, body: dict[str, Any]) -> None:
        """Take the tags off the dataset; a tag it does not carry is not an error."""
        await shared_tags.unbind(self.kn.db, tenant_id, TAG_TYPE, body, self._dataset(tenant_id))

    async def of_dataset(self, tenant_id: str, dataset_id: str) -> dict[str, Any]:
        async with self.kn.db.session() as s:
            ds = await get_dataset(s, tenant_id, dataset_id)
            tags = (await tags_of(s, tenant_id, TAG_TYPE, [ds.id]))[ds.id]
        return {"data": [{"id": t["id"], "name": t["name"]} for t in tags], "total": len(tags)}

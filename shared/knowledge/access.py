"""Who sees a knowledge base on the console (Dify's dataset ``permission``): one rule for the indexer's console
routes and the console's tag bindings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from shared.models import Dataset, DatasetPermission


@dataclass(frozen=True, slots=True)
class Member:
    """A console caller (a workspace member, or an admin key acting as its creator): the knowledge routes under
    /console/api act for it, where a ``dataset-`` key acts for the whole workspace."""

    account_id: str
    role: str

    @property
    def sees_all(self) -> bool:
        return self.role in ("owner", "admin")


def visible_to(member: Member) -> Any:
    """The datasets a member sees, as Dify's permission field says: the team's, its own, and the
    ``partial_members`` ones whose list names it. Owners and admins see every dataset of the workspace."""
    listed = select(DatasetPermission.dataset_id).where(DatasetPermission.account_id == member.account_id)
    return or_(Dataset.permission == "all_team_members", Dataset.created_by == member.account_id,
               and_(Dataset.permission == "partial_members", col(Dataset.id).in_(listed)))


async def may_see(s: AsyncSession, ds: Dataset, member: Member) -> bool:
    if member.sees_all or ds.permission == "all_team_members" or ds.created_by == member.account_id:
        return True
    if ds.permission != "partial_members":
        return False
    return (await s.exec(select(DatasetPermission.id).where(
        DatasetPermission.dataset_id == ds.id, DatasetPermission.account_id == member.account_id))).first() is not None

"""What the console's service modules share: the signed-in caller, tenant-scoped lookups, change events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import ValidationError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from shared import subjects
from shared.bus import Bus
from shared.db import lock_rows
from shared.errors import ApiError, invalid_param, not_found, validation_message
from shared.models import App

log = structlog.get_logger("plexus.console")

# The role ladder, lowest first: each role can do what the ones below it can (docs/access.md).
ROLES = ("normal", "editor", "admin", "owner")
RANK = {r: i for i, r in enumerate(ROLES)}


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller and the workspace it acts in: a signed-in account (its current membership), or a workspace
    admin API key (``key_id`` set, role "admin", limited to ``scopes``)."""

    account_id: str
    tenant_id: str
    role: str
    claims: dict[str, Any]
    key_id: str | None = None
    scopes: frozenset[str] | None = None

    @property
    def is_key(self) -> bool:
        return self.key_id is not None

    def at_least(self, role: str) -> bool:
        return RANK.get(self.role, -1) >= RANK[role]


def invalid_from(e: ValidationError) -> ApiError:
    """A pydantic error as 400 invalid_param, worded like request validation errors."""
    _, message, param = validation_message(e)
    return invalid_param(message, **({"params": param} if param else {}))


async def get_app(session: AsyncSession, tenant_id: str, app_id: str, *, for_update: bool = False) -> App:
    """The workspace's app (another workspace's app is indistinguishable from a missing one).

    ``for_update`` locks it until the session's transaction ends, for a change that reads the app's config or
    rollout state and writes it back: concurrent changes then run one after another, each seeing the last.
    Call it first in the session."""
    where = (App.id == app_id, App.tenant_id == tenant_id)
    if for_update:
        await lock_rows(session, App, where, App.updated_at)
    app = (await session.exec(select(App).where(*where))).first()
    if app is None:
        raise not_found("App not found.")
    return app


async def publish_change(bus: Bus, kind: str, ident: str, **payload: Any) -> None:
    """Tell the gateway and runtimes to drop caches. Sent after the commit; a failed publish is logged,
    not raised: the change is stored, and the receivers' cache TTLs bound the staleness."""
    try:
        await bus.publish_json(subjects.config_changed(kind, ident), {"kind": kind, "id": ident, **payload})
        # Answer only once the server has routed it: a client's next request then finds caches dropped.
        await bus.sync(timeout=1)
    except Exception:
        log.warning("config_publish_failed", kind=kind, id=ident, exc_info=True)

"""The workspace plan: its per-app default limits (shared/plans.py). Any member reads it; only the
owner changes it. A change is published like any config change, so every gateway replica drops the
workspace's cached keys and the next request is limited by the new plan."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlmodel import select

from services.console.service.common import Principal, invalid_from, publish_change
from shared.context import Context
from shared.db import Database
from shared.errors import invalid_param, not_found
from shared.models import App, Tenant
from shared.plans import CUSTOM_PLANS, PLAN_NAMES, PLANS, PlanLimits, effective_limits, plan_limits

INT32 = 2**31 - 1  # the largest Postgres INTEGER: the bound of the console's limit and count fields
Count = Annotated[int, Field(ge=0, le=INT32, strict=True)]


class CustomLimits(BaseModel):
    """An enterprise workspace's own per-app defaults; 0 (or absent) = unlimited."""

    model_config = ConfigDict(extra="forbid")
    rpm: Count = 0
    rph: Count = 0
    rpd: Count = 0


class PlanChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plan: Literal[PLAN_NAMES]
    custom_limits: CustomLimits | None = None


def _view(tenant: Tenant) -> dict[str, Any]:
    return {
        "plan": tenant.plan,
        "custom_limits": tenant.custom_limits,
        "limits": plan_limits(tenant.plan, tenant.custom_limits).as_dict(),
        # the catalogue; null = custom (set by the workspace)
        "plans": {name: None if name in CUSTOM_PLANS else lim.as_dict() for name, lim in PLANS.items()},
    }


async def _tenant(db: Database, tenant_id: str) -> Tenant:
    async with db.session() as s:
        tenant = (await s.exec(select(Tenant).where(Tenant.id == tenant_id))).first()
    if tenant is None:
        raise not_found("Workspace not found.")
    return tenant


async def get_plan(db: Database, p: Principal) -> dict[str, Any]:
    return _view(await _tenant(db, p.tenant_id))


async def set_plan(ctx: Context, p: Principal, body: dict[str, Any]) -> dict[str, Any]:
    try:
        change = PlanChange.model_validate(body)
    except ValidationError as e:
        raise invalid_from(e) from None
    if change.custom_limits is not None and change.plan not in CUSTOM_PLANS:
        raise invalid_param("custom_limits can only be set with the enterprise plan.", params="custom_limits")
    async with ctx.db.session() as s:
        tenant = (await s.exec(select(Tenant).where(Tenant.id == p.tenant_id))).first()
        if tenant is None:
            raise not_found("Workspace not found.")
        tenant.plan = change.plan
        # leaving enterprise (or setting it without limits) drops the custom ones: no stale values linger
        tenant.custom_limits = change.custom_limits.model_dump() if change.custom_limits else None
        await s.commit()
        await s.refresh(tenant)
    await publish_change(ctx.bus, "tenant", tenant.id)
    return _view(tenant)


async def defaults_for(db: Database, tenant_id: str) -> PlanLimits:
    tenant = await _tenant(db, tenant_id)
    return plan_limits(tenant.plan, tenant.custom_limits)


def app_limits(app: App, defaults: PlanLimits) -> dict[str, int]:
    """What the gateway enforces for the app (0 = unlimited): its overrides over the plan's values."""
    lim = effective_limits(defaults, app.api_rpm, app.api_rph, app.api_rpd, app.max_active_requests)
    return {"rpm": lim.rpm, "rph": lim.rph, "rpd": lim.rpd, "max_active_requests": lim.max_active}

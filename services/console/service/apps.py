"""Apps of a workspace, their model config and their API keys."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.console.service import extensions, keys, versions
from services.console.service.common import (
    Principal,
    get_app,
    invalid_from,
    publish_change,
)
from shared import tags
from shared.app_config import parse_model_config
from shared.context import Context
from shared.db import Database
from shared.errors import ApiError, invalid_param
from shared.knowledge.models import DatasetConfigs
from shared.llm import is_known_provider
from shared.models import (
    ApiToken,
    App,
    AppDatasetJoin,
    AppModelConfig,
    Conversation,
    ConversationVariable,
    Dataset,
    EndUser,
    Message,
    MessageFeedback,
    MessageFile,
    Workflow,
    WorkflowNodeExecution,
    WorkflowRun,
    ts,
    utcnow,
)
from shared.settings import Settings
from shared.site import site_view
from shared.tool_catalog import AGENT_STRATEGIES, ToolResolutionError, resolve_agent_tools

MODES = ("chat", "agent-chat", "advanced-chat", "workflow", "completion")
MODEL_CONFIG_MODES = versions.MODEL_CONFIG_MODES
# columns PUT /apps/{id} may change; those in NULLABLE accept an explicit null
# (for api_rpm/api_rph/api_rpd null = the workspace plan's value, 0 = unlimited: shared/plans.py)
UPDATABLE = ("name", "description", "icon_type", "icon", "icon_background", "enable_site", "enable_api",
             "api_rpm", "api_rph", "api_rpd", "max_active_requests")
NULLABLE = ("icon_type", "icon", "icon_background", "max_active_requests", "api_rpm", "api_rph", "api_rpd")
SITE_FIELDS = ("use_icon_as_answer_icon",)  # site settings Dify's PUT /apps/{id} also takes (kept in apps.site)

AppDetail = tuple[App, dict[str, Any] | None]


def duplicate(name: str) -> ApiError:
    return invalid_param(f"An app named '{name}' already exists in this workspace.", params="name")


async def _configs(session: AsyncSession, apps: list[App]) -> dict[str, dict[str, Any]]:
    ids = [a.app_model_config_id for a in apps if a.app_model_config_id]
    if not ids:
        return {}
    rows = await session.exec(select(AppModelConfig).where(col(AppModelConfig.id).in_(ids)))
    return {r.id: r.config for r in rows}


async def workflow_summaries(db: Database, apps: list[App]) -> dict[str, dict[str, Any]]:
    """app id → Dify's ``workflow`` of an app detail (the version in service: id, created_by, created_at,
    updated_by, updated_at) for the graph apps that have published one."""
    ids = [a.workflow_id for a in apps if a.workflow_id]
    if not ids:
        return {}
    async with db.session() as s:
        rows = await s.exec(select(Workflow).where(col(Workflow.id).in_(ids)))
        found = {w.id: {"id": w.id, "created_by": w.created_by, "created_at": ts(w.created_at),
                        "updated_by": w.updated_by, "updated_at": ts(w.updated_at)} for w in rows}
    return {a.id: found[a.workflow_id] for a in apps if a.workflow_id in found}


async def _detail(session: AsyncSession, app: App) -> AppDetail:
    configs = await _configs(session, [app])
    return app, configs.get(app.app_model_config_id or "")


async def name_taken(session: AsyncSession, tenant_id: str, name: str, except_id: str | None = None) -> bool:
    q = select(App.id).where(App.tenant_id == tenant_id, App.name == name)
    if except_id:
        q = q.where(App.id != except_id)
    return (await session.exec(q)).first() is not None


# ---- apps -----------------------------------------------------------------------------------------


async def list_apps(db: Database, p: Principal, *, page: int, limit: int, name: str | None,
                    mode: str | None, created_by_me: bool = False, tag_ids: list[str] | None = None
                    ) -> tuple[list[AppDetail], int]:
    """A page of the workspace's apps, newest first; with ``tag_ids`` (shared/tags.py filter_ids), those that
    carry any of the workspace's app tags among them."""
    where = [App.tenant_id == p.tenant_id]
    if tag_ids is not None:
        where.append(col(App.id).in_(tags.bound_to_any(p.tenant_id, "app", tag_ids)))
    if created_by_me:  # an admin key acts for the member who made it
        where.append(App.created_by == p.account_id)
    if name:
        where.append(col(App.name).icontains(name, autoescape=True))
    if mode and mode != "all":
        where.append(App.mode == mode)
    async with db.session() as s:
        total = (await s.exec(select(func.count()).select_from(App).where(*where))).one()
        apps = list(await s.exec(
            select(App).where(*where).order_by(col(App.created_at).desc(), col(App.id).desc())
            .offset((page - 1) * limit).limit(limit)
        ))
        configs = await _configs(s, apps)
    return [(a, configs.get(a.app_model_config_id or "")) for a in apps], total


async def create_app(db: Database, p: Principal, *, name: str, mode: str, description: str = "",
                     icon_type: str | None = "emoji", icon: str | None = None,
                     icon_background: str | None = None) -> AppDetail:
    async with db.session() as s:
        if await name_taken(s, p.tenant_id, name):
            raise duplicate(name)
        app = App(tenant_id=p.tenant_id, name=name, mode=mode, description=description, icon_type=icon_type,
                  icon=icon if icon is not None else "🤖",
                  icon_background=icon_background if icon_background is not None else "#FFEAD5",
                  created_by=p.account_id)
        s.add(app)
        try:
            await s.commit()
        except IntegrityError:  # a concurrent create took the name between check and insert
            await s.rollback()
            raise duplicate(name) from None
    return app, None


async def get_app_detail(db: Database, p: Principal, app_id: str) -> AppDetail:
    async with db.session() as s:
        return await _detail(s, await get_app(s, p.tenant_id, app_id))


async def update_app(ctx: Context, p: Principal, app_id: str, changes: dict[str, Any]) -> AppDetail:
    site = {k: changes[k] for k in SITE_FIELDS if changes.get(k) is not None}
    async with ctx.db.session() as s:
        app = await get_app(s, p.tenant_id, app_id, for_update=bool(site))  # site: read-merge-write
        name = changes.get("name")
        # checked before any attribute changes: the query would autoflush them
        if name is not None and await name_taken(s, p.tenant_id, name, app.id):
            raise duplicate(name)
        for field in UPDATABLE:
            if field in changes and (changes[field] is not None or field in NULLABLE):
                setattr(app, field, changes[field])
        if site:
            app.site = {**(app.site or {}), **site}
        app.updated_at = utcnow()
        try:
            await s.commit()
        except IntegrityError:
            await s.rollback()
            raise duplicate(name) from None
        detail = await _detail(s, app)
    await publish_change(ctx.bus, "app", app.id, tenant_id=app.tenant_id)
    return detail


async def update_site(ctx: Context, p: Principal, app_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Merge validated site settings (shared/site.py SiteUpdate) into apps.site; runtimes reload the app."""
    async with ctx.db.session() as s:
        app = await get_app(s, p.tenant_id, app_id, for_update=True)  # read-merge-write: one at a time
        if changes:
            # a new dict: SQLAlchemy does not see in-place changes to a JSON column
            app.site = {**(app.site or {}), **changes}
            app.updated_at = utcnow()
            await s.commit()
        view = site_view(app)
    if changes:
        await publish_change(ctx.bus, "app", app.id, tenant_id=app.tenant_id)
    return view


async def set_api_enabled(ctx: Context, p: Principal, app_id: str, enable: bool) -> AppDetail:
    return await update_app(ctx, p, app_id, {"enable_api": enable})


async def delete_app(ctx: Context, p: Principal, app_id: str) -> None:
    """Delete the app and everything hanging off it. Explicit deletes: SQLite only cascades with the
    foreign_keys pragma on, and the order here is safe without any cascade."""
    async with ctx.db.session() as s:
        app = await get_app(s, p.tenant_id, app_id)
        keys = list(await s.exec(select(ApiToken.id, ApiToken.token_hash).where(ApiToken.app_id == app.id)))
        message_ids = select(Message.id).where(Message.app_id == app.id)
        await s.exec(delete(MessageFile).where(col(MessageFile.message_id).in_(message_ids)))
        for model in (MessageFeedback, Message, ConversationVariable, Conversation, EndUser, WorkflowNodeExecution,
                      WorkflowRun, Workflow, AppModelConfig, AppDatasetJoin, ApiToken):
            await s.exec(delete(model).where(model.app_id == app.id))
        await tags.unbind_target(s, app.tenant_id, "app", app.id)
        await s.exec(delete(App).where(App.id == app.id))
        await s.commit()
    await publish_change(ctx.bus, "app", app.id, tenant_id=app.tenant_id, deleted=True)
    for key_id, token_hash in keys:
        await publish_change(ctx.bus, "apikey", key_id, app_id=app.id, token_hash=token_hash)


# ---- model config ---------------------------------------------------------------------------------


_basic_mode = versions.basic_mode


async def get_model_config(db: Database, p: Principal, app_id: str) -> dict[str, Any] | None:
    async with db.session() as s:
        app = await get_app(s, p.tenant_id, app_id)
        _basic_mode(app)
        return (await _detail(s, app))[1]


async def save_model_config(ctx: Context, p: Principal, app_id: str, data: dict[str, Any],
                            note: str | None = None) -> AppModelConfig:
    """Store a new config version: the app's current one at once, or a draft when the app requires publishing
    to be confirmed (services/console/service/versions.py)."""
    try:
        config = parse_model_config(data)
    except ValidationError as e:
        raise invalid_from(e) from None
    if not is_known_provider(config.model.provider):
        raise invalid_param(f"Unknown model provider '{config.model.provider}'.", params="model.provider")
    try:
        dataset_ids = DatasetConfigs.model_validate(config.dataset_configs).dataset_ids()
    except ValidationError as e:
        raise invalid_from(e) from None
    async with ctx.db.session() as s:
        # The app's lock serialises saves (and rollout changes): the version number read under it stays the
        # last until the commit, and the delete + re-insert of the dataset links cannot interleave with another.
        app = await get_app(s, p.tenant_id, app_id, for_update=True)
        _basic_mode(app)
        if app.mode == "agent-chat":
            await _check_agent(s, p.tenant_id, config.agent_mode, ctx.settings)
        await extensions.check_exist(s, p.tenant_id, extensions.extension_ids(config.to_wire()))
        if dataset_ids:
            found = set(await s.exec(select(Dataset.id).where(Dataset.tenant_id == p.tenant_id,
                                                              col(Dataset.id).in_(dataset_ids))))
            missing = [i for i in dataset_ids if i not in found]
            if missing:
                raise invalid_param(f"Dataset {missing[0]} not found.", params="dataset_configs")
        row = await versions.add_version(s, app, config.to_wire(), p, note)
        await s.commit()
    if row.status == "published":  # a draft changes nothing that is served
        await publish_change(ctx.bus, "app", app.id, tenant_id=app.tenant_id)
    return row


async def _check_agent(s: AsyncSession, tenant_id: str, agent_mode: dict[str, Any], settings: Settings) -> None:
    strategy = agent_mode.get("strategy") or "function_call"
    if strategy not in AGENT_STRATEGIES:
        raise invalid_param(f"agent_mode.strategy must be one of {list(AGENT_STRATEGIES)}", params="agent_mode")
    steps = agent_mode.get("max_iteration", 5)
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= settings.runtime.agent_max_iterations:
        raise invalid_param(f"agent_mode.max_iteration must be an integer from 1 to "
                            f"{settings.runtime.agent_max_iterations}", params="agent_mode")
    try:
        await resolve_agent_tools(s, tenant_id, agent_mode.get("tools") or [], settings.tools)
    except ToolResolutionError as e:
        raise invalid_param(str(e), params="agent_mode") from None


# ---- API keys -------------------------------------------------------------------------------------


async def list_keys(db: Database, p: Principal, app_id: str) -> list[ApiToken]:
    async with db.session() as s:
        app = await get_app(s, p.tenant_id, app_id)
    return await keys.list_keys(db, p.tenant_id, "app", app.id)

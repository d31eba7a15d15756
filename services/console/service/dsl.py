"""Apps as YAML documents in Dify's DSL shape (``kind: app``, ``version``, ``app``, and ``workflow`` for graph
apps or ``model_config`` for basic ones), so an app moves between workspaces or from Dify itself.

Import creates the app and its draft (graph apps) or model config (basic apps), checked like a save;
nothing is published. Copy (``POST /apps/{id}/copy``) is an export with secrets imported at once. Export leaves secret environment variables empty unless asked for them (which takes
``apps:write`` for an admin key: the export route in services/console/api.py).
"""

from __future__ import annotations

from typing import Any

import yaml
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.console.service import apps, workflows
from services.console.service.common import Principal, get_app
from shared.context import Context
from shared.errors import ApiError
from shared.models import App, AppModelConfig, Workflow

DSL_VERSION = "0.1.5"
MAX_DSL_BYTES = 10 * 1024 * 1024


def _fail(message: str) -> ApiError:
    return ApiError(400, "invalid_param", message)


async def import_app(ctx: Context, p: Principal, body: dict[str, Any]) -> dict[str, Any]:
    mode = body.get("mode", "yaml-content")
    if mode != "yaml-content":
        raise _fail("only mode 'yaml-content' is supported (send the document in yaml_content)")
    text = body.get("yaml_content")
    if not isinstance(text, str) or not text.strip():
        raise _fail("yaml_content is required")
    if len(text.encode()) > MAX_DSL_BYTES:
        raise _fail("the DSL document is larger than 10 MB")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise _fail(f"the DSL document is not valid YAML: {e}") from None
    if not isinstance(doc, dict) or doc.get("kind", "app") != "app" or not isinstance(doc.get("app"), dict):
        raise _fail("not an app DSL document (expected kind: app and an app section)")
    meta = doc["app"]
    if meta.get("mode") not in apps.MODES:
        raise _fail(f"app.mode must be one of {list(apps.MODES)}")
    app = await _create_from(ctx, p, doc, name=str(body.get("name") or meta.get("name") or "Imported app")[:40],
                             description=str(body.get("description") or meta.get("description") or "")[:200])
    return {"id": app.id, "status": "completed", "app_id": app.id, "app_mode": app.mode,
            "imported_dsl_version": str(doc.get("version") or ""), "current_dsl_version": DSL_VERSION, "error": ""}


async def copy_app(ctx: Context, p: Principal, app_id: str, changes: dict[str, Any]) -> App:
    """A new app in the workspace from this one's DSL document, secrets included (Dify's copy): its model
    config or workflow draft, with ``changes`` (name, description, icon_type, icon, icon_background) applied.
    Keys, conversations and published versions are not copied."""
    async with ctx.db.session() as s:
        source = await get_app(s, p.tenant_id, app_id)
        doc = await _document(s, source, include_secret=True)
    return await _create_from(ctx, p, doc, name=changes.get("name") or f"{source.name} (copy)"[:40],
                              description=changes.get("description") or source.description,
                              icon_type=changes.get("icon_type") or source.icon_type,
                              icon=changes.get("icon") or source.icon,
                              icon_background=changes.get("icon_background") or source.icon_background)


async def _create_from(ctx: Context, p: Principal, doc: dict[str, Any], *, name: str, description: str,
                       icon_type: str | None = "emoji", icon: str | None = None,
                       icon_background: str | None = None) -> App:
    """A new app made from a DSL document (its app section checked already); no half-made app is left."""
    meta = doc["app"]
    app, _ = await apps.create_app(ctx.db, p, name=name, mode=meta["mode"], description=description,
                                   icon_type=icon_type, icon=icon if icon is not None else meta.get("icon"),
                                   icon_background=icon_background if icon_background is not None
                                   else meta.get("icon_background"))
    try:
        if app.mode in workflows.GRAPH_MODES:
            wf = doc.get("workflow") or {}
            await workflows.save_draft(ctx, p, app.id, {
                "graph": wf.get("graph"), "features": wf.get("features") or {},
                "environment_variables": wf.get("environment_variables") or [],
                "conversation_variables": wf.get("conversation_variables") or []})
        elif doc.get("model_config"):
            await apps.save_model_config(ctx, p, app.id, doc["model_config"])
    except ApiError as e:  # the document does not hold up: no half-imported app is left behind
        await apps.delete_app(ctx, p, app.id)
        raise _fail(f"the app in the document is invalid: {e.message}") from None
    return app


async def export_app(ctx: Context, p: Principal, app_id: str, include_secret: bool) -> dict[str, Any]:
    async with ctx.db.session() as s:
        doc = await _document(s, await get_app(s, p.tenant_id, app_id), include_secret)
    return {"data": yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)}


async def _document(s: AsyncSession, app: App, include_secret: bool) -> dict[str, Any]:
    """The app's DSL document: its model config, or its workflow draft (secret environment values blanked
    unless ``include_secret``)."""
    doc: dict[str, Any] = {"app": {"name": app.name, "mode": app.mode, "description": app.description,
                                   "icon": app.icon, "icon_background": app.icon_background,
                                   "use_icon_as_answer_icon": False},
                           "kind": "app", "version": DSL_VERSION}
    if app.mode in workflows.GRAPH_MODES:
        draft = (await s.exec(select(Workflow).where(Workflow.app_id == app.id,
                                                     Workflow.version == "draft"))).first()
        if draft is not None:
            env = [v if include_secret or v.get("value_type") != "secret" else {**v, "value": ""}
                   for v in draft.environment_variables or []]
            doc["workflow"] = {"graph": draft.graph, "features": draft.features, "environment_variables": env,
                               "conversation_variables": draft.conversation_variables or []}
    elif app.app_model_config_id:
        doc["model_config"] = (await s.exec(select(AppModelConfig.config).where(
            AppModelConfig.id == app.app_model_config_id))).first()
    return doc

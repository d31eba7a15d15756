"""Workflow drafts and published versions of graph apps (workflow, advanced-chat).

One draft per app, edited in place and checked on every save (a stale editor — wrong ``hash`` — gets
409 like Dify); publishing copies the draft into an immutable version and makes it the one the API runs.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.console.service import extensions
from services.console.service.common import Principal, get_app, publish_change
from shared.context import Context
from shared.errors import ApiError, invalid_param
from shared.models import App, Workflow, utcnow
from shared.workflow import GRAPH_MODES, GraphError, parse_graph, validate_graph

VAR_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,29}$")
ENV_TYPES = ("string", "number", "secret")
CONVERSATION_TYPES = ("string", "number", "object", "boolean", "array[string]", "array[number]", "array[object]",
                      "array[boolean]")
SECRET_MASK = "[__HIDDEN__]"


def _graph_app(app: App) -> None:
    if app.mode not in GRAPH_MODES:
        raise ApiError(400, "app_unavailable", "App unavailable, please check your app configurations.")


def _kind(app: App) -> str:
    return "chat" if app.mode == "advanced-chat" else "workflow"


def content_hash(graph: Any, features: Any, env: Any, conv: Any) -> str:
    blob = orjson.dumps({"graph": graph, "features": features, "env": env, "conv": conv},
                        option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()


def _variables(raw: Any, field: str, types: tuple[str, ...]) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid_param(f"{field} must be a list", params=field)
    out, seen = [], set()
    for i, v in enumerate(raw):
        if not isinstance(v, dict) or not isinstance(v.get("name"), str) or not VAR_NAME.match(v["name"]):
            raise invalid_param(f"{field}[{i}].name must be an identifier of at most 30 characters", params=field)
        if v["name"] in seen:
            raise invalid_param(f"{field}: variable {v['name']!r} appears twice", params=field)
        seen.add(v["name"])
        vtype = v.get("value_type", "string")
        if vtype not in types:
            raise invalid_param(f"{field}[{i}] ({v['name']}): value_type must be one of {list(types)}", params=field)
        out.append({"id": str(v.get("id") or hashlib.md5(v["name"].encode()).hexdigest()),
                    "name": v["name"], "value_type": vtype, "value": v.get("value"),
                    "description": str(v.get("description") or "")})
    return out


def _check(app: App, graph: Any, env: list[dict[str, Any]], conv: list[dict[str, Any]]) -> None:
    try:
        g = parse_graph(graph)
        validate_graph(g, "advanced-chat" if app.mode == "advanced-chat" else "workflow",
                       environment={v["name"]: v["value_type"] for v in env},
                       conversation={v["name"]: v["value_type"] for v in conv})
    except GraphError as e:
        raise ApiError(400, "invalid_param", str(e), **({"node_id": e.node_id} if e.node_id else {})) from None


def _masked_env(env: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**v, "value": SECRET_MASK} if v["value_type"] == "secret" else v for v in env]


def view(w: Workflow) -> dict[str, Any]:
    def t(d: datetime | None) -> int | None:
        return int(d.timestamp()) if d else None

    return {"id": w.id, "version": w.version, "graph": w.graph, "features": w.features, "hash": w.hash,
            "environment_variables": _masked_env(w.environment_variables or []),
            "conversation_variables": w.conversation_variables or [], "marked_name": w.marked_name,
            "marked_comment": w.marked_comment, "created_by": w.created_by, "created_at": t(w.created_at),
            "updated_by": w.updated_by, "updated_at": t(w.updated_at)}


async def _draft(s: AsyncSession, app_id: str) -> Workflow | None:
    return (await s.exec(select(Workflow).where(Workflow.app_id == app_id, Workflow.version == "draft"))).first()


async def get_draft(ctx: Context, p: Principal, app_id: str) -> dict[str, Any]:
    async with ctx.db.session() as s:
        app = await get_app(s, p.tenant_id, app_id)
        _graph_app(app)
        draft = await _draft(s, app.id)
    if draft is None:
        raise ApiError(404, "draft_workflow_not_exist", "Draft workflow need to be initialized.")
    return view(draft)


async def save_draft(ctx: Context, p: Principal, app_id: str, body: dict[str, Any]) -> dict[str, Any]:
    graph, features = body.get("graph"), body.get("features") or {}
    if not isinstance(graph, dict):
        raise invalid_param("graph must be an object with nodes and edges", params="graph")
    if not isinstance(features, dict):
        raise invalid_param("features must be an object", params="features")
    async with ctx.db.session() as s:
        app = await get_app(s, p.tenant_id, app_id, for_update=True)  # the draft's hash check holds under races
        _graph_app(app)
        draft = await _draft(s, app.id)
        stored_env = {v["name"]: v for v in (draft.environment_variables if draft else []) or []}
        env = _variables(body.get("environment_variables"), "environment_variables", ENV_TYPES)
        for v in env:  # a secret echoed back masked keeps its stored value
            if v["value_type"] == "secret" and v["value"] == SECRET_MASK and v["name"] in stored_env:
                v["value"] = stored_env[v["name"]]["value"]
        conv = _variables(body.get("conversation_variables"), "conversation_variables", CONVERSATION_TYPES)
        if conv and app.mode != "advanced-chat":
            raise invalid_param("conversation_variables are for advanced-chat apps only",
                                params="conversation_variables")
        _check(app, graph, env, conv)
        # an `api` moderation names an extension of the workspace (deleting it is refused while this draft uses it)
        await extensions.check_exist(s, p.tenant_id, extensions.extension_ids(features))
        if draft is not None and body.get("hash") and body["hash"] != draft.hash:
            raise ApiError(409, "draft_workflow_not_sync",
                           "Workflow not synced: the draft changed since it was loaded; reload it first.")
        digest = content_hash(graph, features, env, conv)
        if draft is None:
            draft = Workflow(tenant_id=app.tenant_id, app_id=app.id, type=_kind(app), version="draft",
                             created_by=p.account_id)
            s.add(draft)
        draft.graph, draft.features, draft.environment_variables, draft.conversation_variables = graph, features, env, conv
        draft.hash, draft.updated_by, draft.updated_at = digest, p.account_id, utcnow()
        await s.commit()
        return {"result": "success", "hash": digest, "updated_at": int(draft.updated_at.timestamp())}


async def publish(ctx: Context, p: Principal, app_id: str, body: dict[str, Any]) -> dict[str, Any]:
    name, comment = body.get("marked_name") or "", body.get("marked_comment") or ""
    if not isinstance(name, str) or len(name) > 20 or not isinstance(comment, str) or len(comment) > 100:
        raise invalid_param("marked_name is at most 20 characters and marked_comment at most 100")
    async with ctx.db.session() as s:
        app = await get_app(s, p.tenant_id, app_id, for_update=True)  # one publish at a time per app
        _graph_app(app)
        draft = await _draft(s, app.id)
        if draft is None:
            raise ApiError(400, "draft_workflow_not_exist", "Draft workflow need to be initialized.")
        _check(app, draft.graph, draft.environment_variables or [], draft.conversation_variables or [])
        await extensions.check_exist(s, p.tenant_id, extensions.extension_ids(draft.features))
        now = utcnow()
        version = Workflow(tenant_id=app.tenant_id, app_id=app.id, type=draft.type,
                           version=now.strftime("%Y-%m-%d %H:%M:%S.%f"), graph=draft.graph, features=draft.features,
                           environment_variables=draft.environment_variables,
                           conversation_variables=draft.conversation_variables, hash=draft.hash,
                           marked_name=name, marked_comment=comment, created_by=p.account_id, created_at=now,
                           updated_by=p.account_id, updated_at=now)
        s.add(version)
        app.workflow_id, app.updated_at = version.id, now
        await s.commit()
        result = {"result": "success", "id": version.id, "version": version.version,
                  "created_at": int(now.timestamp()), "published_at": int(now.timestamp())}
    await publish_change(ctx.bus, "app", app.id, tenant_id=app.tenant_id)
    return result


async def published(ctx: Context, p: Principal, app_id: str) -> dict[str, Any] | None:
    async with ctx.db.session() as s:
        app = await get_app(s, p.tenant_id, app_id)
        _graph_app(app)
        if not app.workflow_id:
            return None
        w = (await s.exec(select(Workflow).where(Workflow.id == app.workflow_id))).first()
    return view(w) if w else None


async def versions(ctx: Context, p: Principal, app_id: str, page: int, limit: int) -> dict[str, Any]:
    if not 1 <= limit <= 100 or page < 1:
        raise invalid_param("page must be ≥ 1 and limit between 1 and 100")
    async with ctx.db.session() as s:
        app = await get_app(s, p.tenant_id, app_id)
        _graph_app(app)
        where = (Workflow.app_id == app.id, Workflow.version != "draft")
        total = (await s.exec(select(func.count()).select_from(Workflow).where(*where))).one()
        rows = (await s.exec(select(Workflow).where(*where).order_by(col(Workflow.created_at).desc())
                             .offset((page - 1) * limit).limit(limit))).all()
    return {"items": [view(w) | {"is_current": w.id == app.workflow_id} for w in rows], "page": page,
            "limit": limit, "total": total, "has_more": page * limit < total}


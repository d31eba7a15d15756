"""Console HTTP API (/console/api): parse the request, call the service, shape Dify's response.

The gateway forwards /console/api/* with the full path and without key auth: these routes authenticate
with the console's own JWTs (``Authorization: Bearer <access token>``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request, Response
from pydantic import BaseModel, Field, StringConstraints

from services.console.auth import Auth, TokenPair
from services.console.service import accounts, apps, dsl, keys, providers, tools, workflows
from services.console.service.common import ADMIN_ROLES, EDITOR_ROLES, Principal
from shared.context import Context
from shared.errors import not_found, unauthorized
from shared.http import create_base_app
from shared.identity import AuthError, bearer_token
from shared.models import ApiToken, App, ts

INT32 = 2**31 - 1  # Postgres INTEGER columns
AppName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)]
Mode = Literal[apps.MODES]
IconType = Literal["emoji", "image", "link"]
Short = Annotated[str, StringConstraints(max_length=255)]

router = APIRouter(prefix="/console/api")


# ---- dependencies ---------------------------------------------------------------------------------


# async: FastAPI runs plain-def dependencies in its threadpool, a needless hop per request
async def _ctx(request: Request) -> Context:
    return request.app.state.ctx


async def _auth(request: Request) -> Auth:
    return request.app.state.auth


async def _principal(request: Request) -> Principal:
    header = request.headers.get("authorization")
    try:
        token = bearer_token(header.encode("latin-1") if header is not None else None).decode("latin-1")
    except AuthError as e:
        raise unauthorized(e.message) from None
    return await accounts.authenticate(request.app.state.ctx.db, request.app.state.auth, token)


Ctx = Annotated[Context, Depends(_ctx)]
AuthDep = Annotated[Auth, Depends(_auth)]
Caller = Annotated[Principal, Depends(_principal)]
SUCCESS = {"result": "success"}


# ---- request bodies -------------------------------------------------------------------------------


class SetupBody(BaseModel):
    email: Short
    name: Short
    password: Annotated[str, StringConstraints(max_length=256)]


class LoginBody(BaseModel):
    email: Short
    password: Annotated[str, StringConstraints(max_length=256)]
    remember_me: bool = False


class RefreshBody(BaseModel):
    refresh_token: str


class LogoutBody(BaseModel):
    refresh_token: str | None = None


class AppCreateBody(BaseModel):
    name: AppName
    mode: Mode
    description: Annotated[str, StringConstraints(max_length=200)] | None = None
    icon_type: IconType | None = "emoji"
    icon: Short | None = None
    icon_background: Short | None = None


class AppUpdateBody(BaseModel):
    """Partial update: absent fields stay; null clears only the nullable ones (icon*, max_active_requests)."""

    name: AppName | None = None
    description: Annotated[str, StringConstraints(max_length=200)] | None = None
    icon_type: IconType | None = None
    icon: Short | None = None
    icon_background: Short | None = None
    enable_site: bool | None = None
    enable_api: bool | None = None
    api_rpm: Annotated[int, Field(ge=0, le=INT32)] | None = None
    api_rph: Annotated[int, Field(ge=0, le=INT32)] | None = None
    max_active_requests: Annotated[int, Field(ge=0, le=INT32)] | None = None


class ApiEnableBody(BaseModel):
    enable_api: bool


class CredentialsBody(BaseModel):
    credentials: dict[str, Any]


class ValidateBody(CredentialsBody):
    model: Short | None = None


# ---- response shapes ------------------------------------------------------------------------------


def _app_json(request: Request, app: App, config: dict[str, Any] | None) -> dict[str, Any]:
    base = request.app.state.ctx.settings.public_api_base.rstrip("/") or str(request.base_url).rstrip("/")
    return {
        "id": app.id, "name": app.name, "description": app.description, "mode": app.mode,
        "icon_type": app.icon_type, "icon": app.icon, "icon_background": app.icon_background,
        "enable_site": app.enable_site, "enable_api": app.enable_api, "api_rpm": app.api_rpm,
        "api_rph": app.api_rph, "max_active_requests": app.max_active_requests, "model_config": config,
        "created_at": ts(app.created_at), "updated_at": ts(app.updated_at), "api_base_url": f"{base}/v1",
    }


def _key_json(key: ApiToken, token: str | None = None) -> dict[str, Any]:
    # the full token only once, at creation; afterwards its hint
    return {"id": key.id, "type": key.type, "token": token or key.token_hint,
            "last_used_at": ts(key.last_used_at), "created_at": ts(key.created_at)}


def _tokens_json(pair: TokenPair) -> dict[str, Any]:
    return {"result": "success", "data": {"access_token": pair.access_token, "refresh_token": pair.refresh_token}}


# ---- setup and sign-in ----------------------------------------------------------------------------


@router.get("/setup")
async def get_setup(ctx: Ctx) -> dict:
    setup_at = await accounts.setup_status(ctx.db)
    # Dify sends setup_at as an ISO string here (unlike the Unix seconds elsewhere)
    return {"step": "finished" if setup_at else "not_started", "setup_at": setup_at.isoformat() if setup_at else None}


@router.post("/setup", status_code=201)
async def post_setup(ctx: Ctx, body: SetupBody) -> dict:
    await accounts.setup_account(ctx.db, email=body.email, name=body.name, password=body.password)
    return SUCCESS


@router.post("/login")
async def login(ctx: Ctx, auth: AuthDep, body: LoginBody) -> dict:
    return _tokens_json(await accounts.login(ctx.db, auth, email=body.email, password=body.password))


@router.post("/refresh-token")
async def refresh_token(ctx: Ctx, auth: AuthDep, body: RefreshBody) -> dict:
    return _tokens_json(await accounts.refresh(ctx.db, auth, body.refresh_token))


@router.post("/logout")
async def logout(auth: AuthDep, caller: Caller, body: LogoutBody | None = None) -> dict:
    await accounts.logout(auth, caller, body.refresh_token if body else None)
    return SUCCESS


@router.get("/account/profile")
async def profile(ctx: Ctx, caller: Caller) -> dict:
    a = await accounts.get_account(ctx.db, caller.account_id)
    return {"id": a.id, "name": a.name, "email": a.email, "avatar": None, "interface_language": "en-US",
            "timezone": "UTC", "last_login_at": ts(a.last_login_at), "created_at": ts(a.created_at)}


# ---- apps -----------------------------------------------------------------------------------------


@router.get("/apps")
async def list_apps(
    request: Request, ctx: Ctx, caller: Caller,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    name: Annotated[str | None, Query(max_length=255)] = None,
    mode: Literal[("all", *apps.MODES)] = "all",
) -> dict:
    items, total = await apps.list_apps(ctx.db, caller, page=page, limit=limit, name=name, mode=mode)
    return {"page": page, "limit": limit, "total": total, "has_more": page * limit < total,
            "data": [_app_json(request, a, c) for a, c in items]}


@router.post("/apps", status_code=201)
async def create_app_route(request: Request, ctx: Ctx, caller: Caller, body: AppCreateBody) -> dict:
    app, config = await apps.create_app(
        ctx.db, caller, name=body.name, mode=body.mode, description=body.description or "",
        icon_type=body.icon_type, icon=body.icon, icon_background=body.icon_background)
    return _app_json(request, app, config)


@router.get("/apps/{app_id}")
async def get_app(request: Request, ctx: Ctx, caller: Caller, app_id: str) -> dict:
    return _app_json(request, *await apps.get_app_detail(ctx.db, caller, app_id))


@router.put("/apps/{app_id}")
async def update_app(request: Request, ctx: Ctx, caller: Caller, app_id: str, body: AppUpdateBody) -> dict:
    return _app_json(request, *await apps.update_app(ctx, caller, app_id, body.model_dump(exclude_unset=True)))


@router.delete("/apps/{app_id}", status_code=204)
async def delete_app(ctx: Ctx, caller: Caller, app_id: str) -> Response:
    await apps.delete_app(ctx, caller, app_id)
    return Response(status_code=204)


@router.post("/apps/{app_id}/api-enable")
async def api_enable(request: Request, ctx: Ctx, caller: Caller, app_id: str, body: ApiEnableBody) -> dict:
    return _app_json(request, *await apps.set_api_enabled(ctx, caller, app_id, body.enable_api))


@router.get("/apps/{app_id}/model-config")
async def get_model_config(ctx: Ctx, caller: Caller, app_id: str) -> dict | None:
    return await apps.get_model_config(ctx.db, caller, app_id)


@router.post("/apps/{app_id}/model-config")
async def save_model_config(ctx: Ctx, caller: Caller, app_id: str, config: Annotated[dict[str, Any], Body()]
                            ) -> dict:
    await apps.save_model_config(ctx, caller, app_id, config)
    return SUCCESS


@router.post("/apps/imports")
async def import_app(ctx: Ctx, caller: Caller, body: Annotated[dict[str, Any], Body()]) -> dict:
    return await dsl.import_app(ctx, caller, body)


@router.get("/apps/{app_id}/export")
async def export_app(ctx: Ctx, caller: Caller, app_id: str, include_secret: bool = False) -> dict:
    return await dsl.export_app(ctx, caller, app_id, include_secret)


# ---- workflows (graph apps) -------------------------------------------------------------------------


@router.get("/apps/{app_id}/workflows/draft")
async def get_workflow_draft(ctx: Ctx, caller: Caller, app_id: str) -> dict:
    return await workflows.get_draft(ctx, caller, app_id)


@router.post("/apps/{app_id}/workflows/draft")
async def save_workflow_draft(ctx: Ctx, caller: Caller, app_id: str, body: Annotated[dict[str, Any], Body()]
                              ) -> dict:
    return await workflows.save_draft(ctx, caller, app_id, body)


@router.post("/apps/{app_id}/workflows/publish")
async def publish_workflow(ctx: Ctx, caller: Caller, app_id: str,
                           body: Annotated[dict[str, Any] | None, Body()] = None) -> dict:
    return await workflows.publish(ctx, caller, app_id, body or {})


@router.get("/apps/{app_id}/workflows/publish")
async def published_workflow(ctx: Ctx, caller: Caller, app_id: str) -> dict | None:
    return await workflows.published(ctx, caller, app_id)


@router.get("/apps/{app_id}/workflows")
async def workflow_versions(ctx: Ctx, caller: Caller, app_id: str, page: int = 1, limit: int = 20) -> dict:
    return await workflows.versions(ctx, caller, app_id, page, limit)


# ---- app API keys ---------------------------------------------------------------------------------


@router.get("/apps/{app_id}/api-keys")
async def list_keys(ctx: Ctx, caller: Caller, app_id: str) -> dict:
    return {"data": [_key_json(k) for k in await apps.list_keys(ctx.db, caller, app_id)]}


@router.post("/apps/{app_id}/api-keys", status_code=201)
async def create_key(ctx: Ctx, caller: Caller, app_id: str) -> dict:
    return _key_json(*await apps.create_key(ctx, caller, app_id))


@router.delete("/apps/{app_id}/api-keys/{key_id}", status_code=204)
async def delete_key(ctx: Ctx, caller: Caller, app_id: str, key_id: str) -> Response:
    await apps.delete_key(ctx, caller, app_id, key_id)
    return Response(status_code=204)


# ---- knowledge API keys (workspace-wide `dataset-` keys) -------------------------------------------


@router.get("/datasets/api-keys")
async def list_dataset_keys(ctx: Ctx, caller: Caller) -> dict:
    return {"data": [_key_json(k) for k in await keys.list_keys(ctx.db, caller.tenant_id, "dataset")]}


@router.post("/datasets/api-keys", status_code=201)
async def create_dataset_key(ctx: Ctx, caller: Caller) -> dict:
    caller.require(EDITOR_ROLES)
    return _key_json(*await keys.create_key(ctx, caller.tenant_id, "dataset"))


@router.delete("/datasets/api-keys/{key_id}", status_code=204)
async def delete_dataset_key(ctx: Ctx, caller: Caller, key_id: str) -> Response:
    caller.require(ADMIN_ROLES)
    await keys.delete_key(ctx, caller.tenant_id, "dataset", key_id)
    return Response(status_code=204)


@router.get("/datasets/api-base-info")
async def dataset_api_base(request: Request, ctx: Ctx, caller: Caller) -> dict:
    base = ctx.settings.public_api_base.rstrip("/") or str(request.base_url).rstrip("/")
    return {"api_base_url": f"{base}/v1"}


# ---- model providers (provider may be a plugin id with slashes, e.g. langgenius/openai/openai) ------


@router.get("/workspaces/current/model-providers")
async def list_providers(ctx: Ctx, caller: Caller) -> dict:
    return {"data": [{"provider": v.provider, "has_credentials": True, "credentials": v.credentials,
                      "updated_at": ts(v.updated_at)} for v in await providers.list_providers(ctx, caller)]}


@router.post("/workspaces/current/model-providers/{provider:path}/credentials/validate")
async def validate_credentials(ctx: Ctx, caller: Caller, provider: str, body: ValidateBody) -> dict:
    error = await providers.validate_credentials(ctx, caller, provider, body.credentials, body.model)
    return SUCCESS if error is None else {"result": "error", "error": error}


@router.post("/workspaces/current/model-providers/{provider:path}/credentials")
async def save_credentials(ctx: Ctx, caller: Caller, provider: str, body: CredentialsBody) -> dict:
    await providers.save_credentials(ctx, caller, provider, body.credentials)
    return SUCCESS


@router.delete("/workspaces/current/model-providers/{provider:path}/credentials")
async def delete_credentials(ctx: Ctx, caller: Caller, provider: str) -> dict:
    await providers.delete_credentials(ctx, caller, provider)
    return SUCCESS


# ---- tool providers (Dify's console paths; schema_type "webhook" is Plexus' own) ----------------------

ToolBody = Annotated[dict[str, Any], Body()]
TOOLS = "/workspaces/current/tool-provider"


@router.get("/workspaces/current/tool-providers")
async def list_tool_providers(ctx: Ctx, caller: Caller) -> list[dict]:
    return await tools.list_providers(ctx, caller)


@router.get(TOOLS + "/builtin/{provider}/tools")
async def builtin_tools(caller: Caller, provider: str) -> list[dict]:
    found = next((p for p in tools.builtin_views() if p["name"] == provider), None)
    if found is None:
        raise not_found(f"Built-in tool provider {provider!r} not found.")
    return found["tools"]


@router.post(TOOLS + "/api/add")
async def add_tool_provider(ctx: Ctx, caller: Caller, body: ToolBody) -> dict:
    return {**SUCCESS, **await tools.save_provider(ctx, caller, body)}


@router.post(TOOLS + "/api/update")
async def update_tool_provider(ctx: Ctx, caller: Caller, body: ToolBody) -> dict:
    original = body.get("original_provider") or body.get("provider")
    return {**SUCCESS, **await tools.save_provider(ctx, caller, body, original=original)}


@router.post(TOOLS + "/api/delete")
async def delete_tool_provider(ctx: Ctx, caller: Caller, body: ToolBody) -> dict:
    await tools.delete_provider(ctx, caller, body.get("provider"))
    return SUCCESS


@router.get(TOOLS + "/api/get")
async def get_tool_provider(ctx: Ctx, caller: Caller, provider: str) -> dict:
    return await tools.get_provider(ctx, caller, provider)


@router.get(TOOLS + "/api/tools")
async def list_provider_tools(ctx: Ctx, caller: Caller, provider: str) -> list[dict]:
    return (await tools.get_provider(ctx, caller, provider))["tools"]


@router.post(TOOLS + "/api/schema")
async def preview_tool_schema(caller: Caller, body: ToolBody) -> dict:
    return tools.preview_schema(body)


@router.post(TOOLS + "/api/test/pre")
@router.post(TOOLS + "/api/test")
async def test_tool(ctx: Ctx, caller: Caller, body: ToolBody) -> dict:
    return await tools.test_call(ctx, caller, body)


# ---- the app ----------------------------------------------------------------------------------------


def create_app(ctx: Context) -> FastAPI:
    checks = {"database": ctx.db.ping, "nats": ctx.bus.ping}
    if ctx.redis is not None:
        checks["redis"] = ctx.redis.ping
    app = create_base_app("console", checks=checks)
    app.state.ctx = ctx
    app.state.auth = Auth.from_settings(ctx.settings, ctx.redis)
    app.include_router(router)
    return app

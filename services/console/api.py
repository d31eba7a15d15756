"""Console HTTP API (/console/api): parse the request, call the service, shape Dify's response.

The gateway forwards /console/api/* with the full path and without key auth: these routes authenticate
with the console's own JWTs (``Authorization: Bearer <access token>``, or the ``access_token`` cookie plus
``X-CSRF-Token`` for newer consoles: see ``authorize``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request, Response
from pydantic import BaseModel, Field, StringConstraints
from starlette.requests import cookie_parser

from services.console.auth import INIT_PASS_SECONDS, Auth, TokenPair
from services.console.service import (
    accounts,
    apps,
    default_models,
    dsl,
    keys,
    logs,
    members,
    plans,
    providers,
    tags,
    tools,
    versions,
    workflows,
)
from services.console.service.common import Principal
from services.console.service.extensions import Extensions
from services.console.service.plans import INT32
from shared import credentials, llm
from shared.context import Context
from shared.errors import forbidden, invalid_param, not_found, unauthorized
from shared.http import create_base_app
from shared.identity import CONSOLE_PREFIX, H_CSRF, AuthError, bearer_token, console_knowledge, cookie_header
from shared.models import Account, ApiToken, App, TenantMember, ts
from shared.plans import PlanLimits
from shared.site import SiteUpdate, site_view
from shared.tags import filter_ids, tag_type
from shared.tool_catalog import builtin_provider, is_agent_strategy_plugin

AppName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)]
Mode = Literal[apps.MODES]
IconType = Literal["emoji", "image", "link"]
Short = Annotated[str, StringConstraints(max_length=255)]

router = APIRouter(prefix=CONSOLE_PREFIX)

# Sign-in cookies (newer Dify consoles, reference §7): set by /login, /refresh-token and /activate next to the
# tokens in the body, cleared by /logout. A request signed in by cookie sends the CSRF token as X-CSRF-Token
# with every method but these.
ACCESS_COOKIE, REFRESH_COOKIE, CSRF_COOKIE = "access_token", "refresh_token", "csrf_token"
INIT_COOKIE = "init_validated"  # a right init password (POST /init), for POST /setup
CSRF_INVALID = "CSRF token is missing or invalid."
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


# ---- dependencies ---------------------------------------------------------------------------------


# async: FastAPI runs plain-def dependencies in its threadpool, a needless hop per request
async def _ctx(request: Request) -> Context:
    return request.app.state.ctx


async def _auth(request: Request) -> Auth:
    return request.app.state.auth


# Least role and admin-key scope of every console route: the one place access is decided (docs/access.md).
# Keyed by (method, path after /console/api). Scope None: members only, an admin key gets 403; a tuple: a key
# needs one of them, and the route checks the one its parameters call for (the tag routes). Routes that take
# no Caller (setup, login, refresh, activation) are public. Rules about the member acted on (the owner, admins,
# oneself) are in service/members.py; a scope a query parameter adds (export's include_secret) is checked by the
# route with require_scope.
N, E, A, O = "normal", "editor", "admin", "owner"
Scope = str | tuple[str, ...] | None
# Tags (Dify's /tags and /tag-bindings, one API for both types): app tags are the apps scopes', knowledge tags
# the datasets scopes'. The type is a parameter (or, for a rename or delete, the tag's own), so the table lets
# a key with either scope through and the route asks for its type's one (_tag_scope).
TAG_READ, TAG_WRITE = ("apps:read", "datasets:read"), ("apps:write", "datasets:write")
ACCESS: dict[tuple[str, str], tuple[str, Scope]] = {
    ("POST", "/logout"): (N, None),
    ("GET", "/account/profile"): (N, None),
    # workspaces and members
    ("GET", "/workspaces"): (N, None),
    ("POST", "/workspaces/switch"): (N, None),
    ("GET", "/workspaces/current"): (N, None),
    ("POST", "/workspaces/current"): (N, None),
    ("POST", "/workspaces/info"): (O, None),
    ("GET", "/workspaces/current/plan"): (N, None),
    ("PUT", "/workspaces/current/plan"): (O, None),
    ("GET", "/workspaces/current/members"): (N, None),
    ("POST", "/workspaces/current/members/invite-email"): (A, None),
    ("PUT", "/workspaces/current/members/{member_id}/update-role"): (A, None),
    ("DELETE", "/workspaces/current/members/{member_id}"): (A, None),
    ("POST", "/workspaces/current/members/{member_id}/owner-transfer"): (O, None),
    # workspace admin keys: managed by people only, never by a key
    ("GET", "/api-keys"): (A, None),
    ("POST", "/api-keys"): (A, None),
    ("DELETE", "/api-keys/{key_id}"): (A, None),
    ("POST", "/api-keys/{key_id}/rotate"): (A, None),
    # apps and workflows
    ("GET", "/apps"): (N, "apps:read"),
    ("POST", "/apps"): (E, "apps:write"),
    ("GET", "/apps/{app_id}"): (N, "apps:read"),
    ("PUT", "/apps/{app_id}"): (E, "apps:write"),
    ("DELETE", "/apps/{app_id}"): (E, "apps:write"),
    ("POST", "/apps/{app_id}/api-enable"): (E, "apps:write"),
    ("POST", "/apps/{app_id}/site-enable"): (E, "apps:write"),
    ("POST", "/apps/{app_id}/copy"): (E, "apps:write"),
    ("POST", "/apps/{app_id}/site"): (E, "apps:write"),
    ("GET", "/apps/{app_id}/model-config"): (N, "apps:read"),
    ("POST", "/apps/{app_id}/model-config"): (E, "apps:write"),
    ("POST", "/apps/imports"): (E, "apps:write"),
    ("POST", "/apps/imports/{import_id}/confirm"): (E, "apps:write"),
    ("GET", "/apps/{app_id}/export"): (E, "apps:read"),  # include_secret=true: apps:write too (export_app)
    ("GET", "/apps/{app_id}/workflows/draft"): (E, "apps:read"),
    ("POST", "/apps/{app_id}/workflows/draft"): (E, "apps:write"),
    ("POST", "/apps/{app_id}/workflows/publish"): (E, "apps:write"),
    ("GET", "/apps/{app_id}/workflows/publish"): (N, "apps:read"),
    ("GET", "/apps/{app_id}/workflows"): (N, "apps:read"),
    # tags of apps and knowledge bases: everyone lists them, editors change them and tag things (as Dify)
    ("GET", "/tags"): (N, TAG_READ),
    ("POST", "/tags"): (E, TAG_WRITE),
    ("PATCH", "/tags/{tag_id}"): (E, TAG_WRITE),
    ("DELETE", "/tags/{tag_id}"): (E, TAG_WRITE),
    ("POST", "/tag-bindings/create"): (E, TAG_WRITE),
    ("POST", "/tag-bindings"): (E, TAG_WRITE),  # newer Dify consoles' name for /tag-bindings/create
    ("POST", "/tag-bindings/remove"): (E, TAG_WRITE),
    # app logs (docs/access.md)
    ("GET", "/apps/{app_id}/chat-conversations"): (N, "logs:read"),
    ("GET", "/apps/{app_id}/completion-conversations"): (N, "logs:read"),
    ("GET", "/apps/{app_id}/chat-messages"): (N, "logs:read"),
    ("GET", "/apps/{app_id}/workflow-app-logs"): (N, "logs:read"),
    # model-config versions and canary rollouts (docs/versions.md)
    ("GET", "/apps/{app_id}/model-config/versions"): (N, "apps:read"),
    ("GET", "/apps/{app_id}/model-config/versions/{version_id}"): (N, "apps:read"),
    ("POST", "/apps/{app_id}/model-config/versions/{version_id}/publish"): (E, "apps:write"),
    ("GET", "/apps/{app_id}/model-config/settings"): (N, "apps:read"),
    ("POST", "/apps/{app_id}/model-config/settings"): (E, "apps:write"),
    ("GET", "/apps/{app_id}/rollout"): (N, "apps:read"),
    ("POST", "/apps/{app_id}/rollout"): (E, "apps:write"),
    ("POST", "/apps/{app_id}/rollout/promote"): (E, "apps:write"),
    ("POST", "/apps/{app_id}/rollout/rollback"): (E, "apps:write"),
    # app and knowledge API keys
    ("GET", "/apps/{app_id}/api-keys"): (E, "keys:read"),
    ("POST", "/apps/{app_id}/api-keys"): (A, "keys:write"),
    ("DELETE", "/apps/{app_id}/api-keys/{key_id}"): (A, "keys:write"),
    ("POST", "/apps/{app_id}/api-keys/{key_id}/rotate"): (A, "keys:write"),
    ("GET", "/datasets/api-keys"): (E, "keys:read"),
    ("POST", "/datasets/api-keys"): (A, "keys:write"),
    ("DELETE", "/datasets/api-keys/{key_id}"): (A, "keys:write"),
    ("POST", "/datasets/api-keys/{key_id}/rotate"): (A, "keys:write"),
    ("GET", "/datasets/api-base-info"): (N, "keys:read"),
    # model and tool providers
    ("GET", "/workspaces/current/model-providers"): (N, "providers:read"),
    ("POST", "/workspaces/current/model-providers/{provider:path}/credentials/validate"): (A, "providers:write"),
    ("POST", "/workspaces/current/model-providers/{provider:path}/credentials"): (A, "providers:write"),
    ("DELETE", "/workspaces/current/model-providers/{provider:path}/credentials"): (A, "providers:write"),
    ("GET", "/workspaces/current/model-providers/{provider:path}/models"): (N, "providers:read"),
    ("GET", "/workspaces/current/model-providers/{provider:path}/models/credentials"): (N, "providers:read"),
    ("POST", "/workspaces/current/model-providers/{provider:path}/models/credentials/validate"):
        (A, "providers:write"),
    ("POST", "/workspaces/current/model-providers/{provider:path}/models"): (A, "providers:write"),
    ("DELETE", "/workspaces/current/model-providers/{provider:path}/models"): (A, "providers:write"),
    ("GET", "/workspaces/current/default-model"): (N, "providers:read"),
    ("POST", "/workspaces/current/default-model"): (A, "providers:write"),
    ("GET", "/workspaces/current/models/model-types/{model_type}"): (N, "providers:read"),
    ("POST", "/workspaces/current/plugin/install/marketplace"): (A, "providers:write"),
    ("GET", "/workspaces/current/tool-providers"): (N, "tools:read"),
    ("GET", "/workspaces/current/tool-provider/builtin/{provider}/tools"): (N, "tools:read"),
    ("POST", "/workspaces/current/tool-provider/api/add"): (A, "tools:write"),
    ("POST", "/workspaces/current/tool-provider/api/update"): (A, "tools:write"),
    ("POST", "/workspaces/current/tool-provider/api/delete"): (A, "tools:write"),
    ("GET", "/workspaces/current/tool-provider/api/get"): (E, "tools:read"),
    ("GET", "/workspaces/current/tool-provider/api/tools"): (N, "tools:read"),
    ("POST", "/workspaces/current/tool-provider/api/schema"): (E, "tools:read"),
    ("POST", "/workspaces/current/tool-provider/api/test/pre"): (E, "tools:write"),
    ("POST", "/workspaces/current/tool-provider/api/test"): (E, "tools:write"),
    # API-based extensions (external data tools): their keys are credentials, managed like tool providers'
    ("GET", "/api-based-extension"): (N, "tools:read"),
    ("POST", "/api-based-extension"): (A, "tools:write"),
    ("GET", "/api-based-extension/{extension_id}"): (N, "tools:read"),
    ("POST", "/api-based-extension/{extension_id}"): (A, "tools:write"),
    ("DELETE", "/api-based-extension/{extension_id}"): (A, "tools:write"),
}
_PREFIX_LEN = len(CONSOLE_PREFIX)


# The knowledge routes the indexer serves under /console/api (everything under /datasets but the keys above, and
# console file uploads): one rule for all of them, as Dify's dataset editors: everyone reads and tests retrieval,
# editors change. The indexer asks through CONSOLE_AUTHORIZE (handlers.py) with the route's template.
KNOWLEDGE_READS = frozenset({"/datasets/{dataset_id}/retrieve", "/datasets/{dataset_id}/hit-testing"})


def access_for(method: str, path: str) -> tuple[str, Scope]:
    """The route's entry; a route missing from ACCESS (test_roles checks there are none) is members only,
    readable by everyone, changed by editors."""
    path = path[_PREFIX_LEN:]
    found = ACCESS.get((method, path))
    if found is not None:
        return found
    if console_knowledge(path):
        return (N, "datasets:read") if method in ("GET", "HEAD") or path in KNOWLEDGE_READS \
            else (E, "datasets:write")
    return (N, None) if method in ("GET", "HEAD") else (E, None)


def require_scope(p: Principal, scope: str | tuple[str, ...], action: str) -> None:
    """403 for an admin key without ``scope`` (a tuple: without any of them; members have no scopes: their
    role decides). For what a route decides from its parameters on top of its ACCESS entry."""
    options = (scope,) if isinstance(scope, str) else scope
    if p.is_key and not any(s in p.scopes for s in options):
        named = " or ".join(f"'{s}'" for s in options)
        raise forbidden(f"This API key lacks the {named} permission required for {action}.")


def _session_token(header: str | None, cookie: str | None) -> tuple[str, bool]:
    """The access token and whether it came from the ``access_token`` cookie. An ``Authorization: Bearer``
    header wins (an explicit credential: a client keeping cookies may sign in as one account and send another's
    token); without one, the cookie; without either, the header's own 401."""
    raw = header.encode("latin-1") if header is not None else None
    try:
        return bearer_token(raw).decode("latin-1"), False
    except AuthError as e:
        session = cookie_parser(cookie).get(ACCESS_COOKIE) if cookie else None
        if session:
            return session, True
        raise unauthorized(e.message) from None


async def authorize(ctx: Context, auth: Auth, header: str | None, method: str, path: str,
                    cookie: str | None = None, csrf: str | None = None) -> Principal:
    """The caller behind an Authorization header or the ``access_token`` cookie (``cookie``: the request's Cookie
    header), allowed to call the route ``method path`` (its template, with the /console/api prefix): 401 / 403
    otherwise. Signed in by cookie, a method other than GET/HEAD/OPTIONS also needs ``csrf`` (X-CSRF-Token), the
    CSRF token of that access token. For the console's routes and, over NATS, other services'."""
    token, by_cookie = _session_token(header, cookie)
    if by_cookie and token.startswith(keys.ADMIN_PREFIX):
        raise unauthorized("Workspace admin keys are sent as Authorization: Bearer, not as a cookie.")
    p = await accounts.authenticate(ctx.db, auth, token)
    if by_cookie and method.upper() not in SAFE_METHODS and not auth.tokens.check_csrf(p.claims, csrf):
        raise unauthorized(CSRF_INVALID)
    role, scope = access_for(method, path)
    if p.is_key:
        if scope is None:
            raise forbidden(f"{method} {path} is not available to API keys; sign in as a workspace member.")
        require_scope(p, scope, f"{method} {path}")
    if not p.at_least(role):
        raise forbidden(f"This action requires the {role} role or higher; your role in this workspace is {p.role}.")
    return p


async def _principal(request: Request) -> Principal:
    """The caller, allowed to call this route (401 / 403 otherwise)."""
    route = request.scope.get("route")
    return await authorize(request.app.state.ctx, request.app.state.auth, request.headers.get("authorization"),
                           request.method, getattr(route, "path", request.url.path),
                           cookie_header(request.headers), request.headers.get(H_CSRF))


Ctx = Annotated[Context, Depends(_ctx)]
AuthDep = Annotated[Auth, Depends(_auth)]
Caller = Annotated[Principal, Depends(_principal)]


async def _plan(ctx: Ctx, caller: Caller) -> PlanLimits:
    """The caller's workspace plan defaults, for the effective limits in app responses."""
    return await plans.defaults_for(ctx.db, caller.tenant_id)


Plan = Annotated[PlanLimits, Depends(_plan)]
SUCCESS = {"result": "success"}


# ---- request bodies -------------------------------------------------------------------------------


class InitBody(BaseModel):
    password: Annotated[str, StringConstraints(max_length=256)]


class SetupBody(BaseModel):
    email: Short
    name: Short
    password: Annotated[str, StringConstraints(max_length=256)]


class LoginBody(BaseModel):
    email: Short
    password: Annotated[str, StringConstraints(max_length=256)]
    remember_me: bool = False


class RefreshBody(BaseModel):
    refresh_token: str | None = None  # newer consoles send none: the refresh_token cookie


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
    """Partial update: absent fields stay; null clears only the nullable ones (icon*, max_active_requests, and
    api_rpm/api_rph/api_rpd, where null = the workspace plan's value and 0 = unlimited)."""

    name: AppName | None = None
    description: Annotated[str, StringConstraints(max_length=200)] | None = None
    icon_type: IconType | None = None
    icon: Short | None = None
    icon_background: Short | None = None
    enable_site: bool | None = None
    enable_api: bool | None = None
    api_rpm: Annotated[int, Field(ge=0, le=INT32)] | None = None
    api_rph: Annotated[int, Field(ge=0, le=INT32)] | None = None
    api_rpd: Annotated[int, Field(ge=0, le=INT32)] | None = None
    max_active_requests: Annotated[int, Field(ge=0, le=INT32)] | None = None
    use_icon_as_answer_icon: bool | None = None  # a site setting (POST /apps/{id}/site), accepted here as Dify's


class ApiEnableBody(BaseModel):
    enable_api: bool


class SiteEnableBody(BaseModel):
    enable_site: bool


class AppCopyBody(BaseModel):
    """Dify's copy: each field absent keeps the source app's (the name gets " (copy)")."""

    name: AppName | None = None
    description: Annotated[str, StringConstraints(max_length=200)] | None = None
    icon_type: IconType | None = None
    icon: Short | None = None
    icon_background: Short | None = None


class CredentialsBody(BaseModel):
    credentials: dict[str, Any]


class ValidateBody(CredentialsBody):
    model: Short | None = None


class ModelBody(BaseModel):
    model: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
    model_type: Short  # checked by the service (400 invalid_param naming the six types)


class ModelCredentialsBody(ModelBody):
    credentials: dict[str, Any]


class DefaultModelBody(BaseModel):
    model_settings: Any = None  # checked entry by entry by default_models.set_defaults


Permissions = Annotated[list[Annotated[str, StringConstraints(max_length=64)]], Field(max_length=32)]
Role = Annotated[str, StringConstraints(max_length=16)]


class KeyCreateBody(BaseModel):
    name: Short | None = None
    permissions: Permissions | None = None


class AdminKeyCreateBody(KeyCreateBody):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]


class RotateBody(BaseModel):
    grace_seconds: Annotated[int, Field(ge=0, le=INT32)] | None = None


class InviteBody(BaseModel):
    emails: Annotated[list[Short], Field(min_length=1, max_length=100)]
    role: Role = "normal"
    language: Short | None = None


class RoleBody(BaseModel):
    role: Role


class SwitchBody(BaseModel):
    tenant_id: Short


class WorkspaceInfoBody(BaseModel):
    name: Short


class ActivateBody(BaseModel):
    token: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    name: Short
    password: Annotated[str, StringConstraints(max_length=256)]
    email: Short | None = None
    workspace_id: Short | None = None
    interface_language: Short | None = None
    timezone: Short | None = None


# ---- response shapes ------------------------------------------------------------------------------


def _base(request: Request, ctx: Context) -> str:
    """The public address clients use: the configured one, else the one this request came in on."""
    return ctx.settings.public_api_base.rstrip("/") or str(request.base_url).rstrip("/")


async def _app_out(request: Request, ctx: Context, detail: apps.AppDetail, plan: PlanLimits) -> dict[str, Any]:
    """One app's detail, with its published workflow's summary and its tags."""
    app, config = detail
    app_tags = (await tags.app_tags(ctx.db, app.tenant_id, [app.id]))[app.id]
    return _app_json(request, app, config, plan, (await apps.workflow_summaries(ctx.db, [app])).get(app.id),
                     app_tags)


def _app_json(request: Request, app: App, config: dict[str, Any] | None, plan: PlanLimits,
              workflow: dict[str, Any] | None = None, app_tags: list[dict[str, str]] | None = None
              ) -> dict[str, Any]:
    base = _base(request, request.app.state.ctx)
    site = site_view(app)
    return {
        "id": app.id, "name": app.name, "description": app.description, "mode": app.mode,
        "icon_type": app.icon_type, "icon": app.icon, "icon_background": app.icon_background,
        "enable_site": app.enable_site, "enable_api": app.enable_api, "api_rpm": app.api_rpm,
        "api_rph": app.api_rph, "api_rpd": app.api_rpd, "max_active_requests": app.max_active_requests,
        "effective_limits": plans.app_limits(app, plan), "model_config": config, "workflow": workflow,
        "use_icon_as_answer_icon": site["use_icon_as_answer_icon"],
        "created_by": app.created_by,
        "created_at": ts(app.created_at), "updated_at": ts(app.updated_at), "api_base_url": f"{base}/v1",
        "site": site,  # as Dify's app detail carries it (GET /v1/site's body)
        "tags": app_tags or [],  # [{id, name, type}], by name
    }


def _key_json(key: ApiToken, token: str | None = None, full: bool = True) -> dict[str, Any]:
    # the full token only once, at creation; afterwards its hint. Dify's five fields, and (full) Plexus' own:
    # a key created with no body answers in exactly Dify's shape.
    out = {"id": key.id, "type": key.type, "token": token or key.token_hint,
           "last_used_at": ts(key.last_used_at), "created_at": ts(key.created_at)}
    if full:
        out.update(name=key.name, permissions=key.permissions, expires_at=ts(key.expires_at),
                   created_by=key.created_by)
    return out


def _tokens_json(pair: TokenPair) -> dict[str, Any]:
    return {"result": "success", "data": {"access_token": pair.access_token, "refresh_token": pair.refresh_token}}


def _cookie_attrs(ctx: Context) -> dict[str, Any]:
    a = ctx.settings.auth
    return {"path": "/", "domain": a.cookie_domain, "secure": a.cookie_secure, "samesite": a.cookie_samesite}


def _signed_in(response: Response, ctx: Context, auth: Auth, pair: TokenPair) -> dict[str, Any]:
    """The tokens in the body (older clients) and as cookies (newer ones): the two tokens HttpOnly, the CSRF
    token readable by the console's scripts; each lives as long as its token."""
    attrs = _cookie_attrs(ctx)
    response.set_cookie(ACCESS_COOKIE, pair.access_token, max_age=auth.tokens.access_ttl, httponly=True, **attrs)
    response.set_cookie(REFRESH_COOKIE, pair.refresh_token, max_age=auth.tokens.refresh_ttl, httponly=True,
                        **attrs)
    response.set_cookie(CSRF_COOKIE, pair.csrf_token, max_age=auth.tokens.access_ttl, **attrs)
    return _tokens_json(pair)


# ---- setup and sign-in ----------------------------------------------------------------------------


@router.get("/setup")
async def get_setup(ctx: Ctx) -> dict:
    setup_at = await accounts.setup_status(ctx.db)
    # Dify sends setup_at as an ISO string here (unlike the Unix seconds elsewhere)
    return {"step": "finished" if setup_at else "not_started", "setup_at": setup_at.isoformat() if setup_at else None}


@router.post("/setup", status_code=201)
async def post_setup(request: Request, ctx: Ctx, auth: AuthDep, body: SetupBody) -> dict:
    await accounts.setup_account(ctx.db, email=body.email, name=body.name, password=body.password,
                                 plan=ctx.settings.default_plan, init_validated=accounts.init_validated(
                                     auth, ctx.settings.auth.init_password, request.cookies.get(INIT_COOKIE)))
    return SUCCESS


@router.get("/init")
async def get_init(request: Request, ctx: Ctx, auth: AuthDep) -> dict:
    """Dify's init validation status: finished once set up, without an init password, or after a right one."""
    done = await accounts.is_setup_done(ctx.db) or accounts.init_validated(
        auth, ctx.settings.auth.init_password, request.cookies.get(INIT_COOKIE))
    return {"status": "finished" if done else "not_started"}


@router.post("/init", status_code=201)
async def post_init(response: Response, ctx: Ctx, auth: AuthDep, body: InitBody) -> dict:
    """The init password (``PLEXUS_AUTH__INIT_PASSWORD``), proven once: an HttpOnly cookie lets setup go on."""
    value = await accounts.validate_init(ctx.db, auth, ctx.settings.auth.init_password, body.password)
    if value is not None:
        response.set_cookie(INIT_COOKIE, value, max_age=INIT_PASS_SECONDS, httponly=True, **_cookie_attrs(ctx))
    return SUCCESS


@router.post("/login")
async def login(response: Response, ctx: Ctx, auth: AuthDep, body: LoginBody) -> dict:
    return _signed_in(response, ctx, auth,
                      await accounts.login(ctx.db, auth, email=body.email, password=body.password))


@router.post("/refresh-token")
async def refresh_token(request: Request, response: Response, ctx: Ctx, auth: AuthDep,
                        body: RefreshBody | None = None) -> dict:
    # the body's token (older clients) or the cookie's (newer ones); either is spent, and new cookies are set
    token = (body.refresh_token if body else None) or request.cookies.get(REFRESH_COOKIE)
    if not token:
        raise unauthorized("No refresh token provided.")
    return _signed_in(response, ctx, auth, await accounts.refresh(ctx.db, auth, token))


@router.post("/logout")
async def logout(request: Request, response: Response, ctx: Ctx, auth: AuthDep, caller: Caller,
                 body: LogoutBody | None = None) -> dict:
    # the refresh token revoked with the access token: the body's, else this client's cookie (same account only)
    await accounts.logout(auth, caller, (body.refresh_token if body else None) or request.cookies.get(REFRESH_COOKIE))
    attrs = _cookie_attrs(ctx)
    for name in (ACCESS_COOKIE, REFRESH_COOKIE, CSRF_COOKIE):
        response.delete_cookie(name, httponly=name != CSRF_COOKIE, **attrs)
    return SUCCESS


@router.get("/account/profile")
async def profile(ctx: Ctx, caller: Caller) -> dict:
    a = await accounts.get_account(ctx.db, caller.account_id)
    return {"id": a.id, "name": a.name, "email": a.email, "avatar": None, "interface_language": "en-US",
            "timezone": "UTC", "last_login_at": ts(a.last_login_at), "created_at": ts(a.created_at)}


# ---- apps -----------------------------------------------------------------------------------------


@router.get("/apps")
async def list_apps(
    request: Request, ctx: Ctx, caller: Caller, plan: Plan,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    name: Annotated[str | None, Query(max_length=255)] = None,
    mode: Literal[("all", *apps.MODES)] = "all",
    is_created_by_me: bool = False,
    tag_ids: Annotated[list[str] | None, Query()] = None,  # comma-separated (Dify's console), or repeated
) -> dict:
    items, total = await apps.list_apps(ctx.db, caller, page=page, limit=limit, name=name, mode=mode,
                                        created_by_me=is_created_by_me, tag_ids=filter_ids(tag_ids))
    workflows = await apps.workflow_summaries(ctx.db, [a for a, _ in items])
    app_tags = await tags.app_tags(ctx.db, caller.tenant_id, [a.id for a, _ in items])
    return {"page": page, "limit": limit, "total": total, "has_more": page * limit < total,
            "data": [_app_json(request, a, c, plan, workflows.get(a.id), app_tags[a.id]) for a, c in items]}


@router.post("/apps", status_code=201)
async def create_app_route(request: Request, ctx: Ctx, caller: Caller, plan: Plan, body: AppCreateBody) -> dict:
    app, config = await apps.create_app(
        ctx.db, caller, name=body.name, mode=body.mode, description=body.description or "",
        icon_type=body.icon_type, icon=body.icon, icon_background=body.icon_background)
    return _app_json(request, app, config, plan)


@router.get("/apps/{app_id}")
async def get_app(request: Request, ctx: Ctx, caller: Caller, plan: Plan, app_id: str) -> dict:
    return await _app_out(request, ctx, await apps.get_app_detail(ctx.db, caller, app_id), plan)


@router.put("/apps/{app_id}")
async def update_app(request: Request, ctx: Ctx, caller: Caller, plan: Plan, app_id: str, body: AppUpdateBody
                     ) -> dict:
    return await _app_out(request, ctx, await apps.update_app(ctx, caller, app_id,
                                                             body.model_dump(exclude_unset=True)),
                     plan)


@router.delete("/apps/{app_id}", status_code=204)
async def delete_app(ctx: Ctx, caller: Caller, app_id: str) -> Response:
    await apps.delete_app(ctx, caller, app_id)
    return Response(status_code=204)


@router.post("/apps/{app_id}/site")
async def update_site(ctx: Ctx, caller: Caller, app_id: str, body: SiteUpdate) -> dict:
    return await apps.update_site(ctx, caller, app_id, body.model_dump(exclude_unset=True))


@router.post("/apps/{app_id}/api-enable")
async def api_enable(request: Request, ctx: Ctx, caller: Caller, plan: Plan, app_id: str, body: ApiEnableBody
                     ) -> dict:
    return await _app_out(request, ctx, await apps.set_api_enabled(ctx, caller, app_id, body.enable_api), plan)


@router.post("/apps/{app_id}/site-enable")
async def site_enable(request: Request, ctx: Ctx, caller: Caller, plan: Plan, app_id: str, body: SiteEnableBody
                      ) -> dict:
    return await _app_out(request, ctx, await apps.update_app(ctx, caller, app_id,
                                                             {"enable_site": body.enable_site}), plan)


@router.post("/apps/{app_id}/copy", status_code=201)
async def copy_app(request: Request, ctx: Ctx, caller: Caller, plan: Plan, app_id: str,
                   body: AppCopyBody | None = None) -> dict:
    copied = await dsl.copy_app(ctx, caller, app_id, (body or AppCopyBody()).model_dump(exclude_none=True))
    return await _app_out(request, ctx, await apps.get_app_detail(ctx.db, caller, copied.id), plan)


@router.get("/apps/{app_id}/model-config")
async def get_model_config(ctx: Ctx, caller: Caller, app_id: str) -> dict | None:
    return await apps.get_model_config(ctx.db, caller, app_id)


@router.post("/apps/{app_id}/model-config")
async def save_model_config(ctx: Ctx, caller: Caller, app_id: str, config: Annotated[dict[str, Any], Body()],
                            note: Annotated[str | None, Query(max_length=255)] = None) -> dict:
    await apps.save_model_config(ctx, caller, app_id, config, note)
    return SUCCESS


# ---- model-config versions, publish confirmation, canary rollouts (docs/versions.md) ------------------


class RolloutBody(BaseModel):
    version_id: Annotated[str, StringConstraints(min_length=1, max_length=36)]
    percentage: Annotated[float, Field(ge=0, le=100)]


class ReleaseSettingsBody(BaseModel):
    publish_requires_confirmation: bool


@router.get("/apps/{app_id}/model-config/versions")
async def list_config_versions(ctx: Ctx, caller: Caller, app_id: str,
                               page: Annotated[int, Query(ge=1, le=100_000)] = 1,
                               limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict:
    return await versions.list_versions(ctx.db, caller, app_id, page=page, limit=limit)


@router.get("/apps/{app_id}/model-config/versions/{version_id}")
async def get_config_version(ctx: Ctx, caller: Caller, app_id: str, version_id: str,
                             against: Annotated[str | None, Query(max_length=36)] = None) -> dict:
    return await versions.get_version(ctx.db, caller, app_id, version_id, against)


@router.post("/apps/{app_id}/model-config/versions/{version_id}/publish")
async def publish_config_version(ctx: Ctx, caller: Caller, app_id: str, version_id: str) -> dict:
    return await versions.publish(ctx, caller, app_id, version_id)


@router.get("/apps/{app_id}/model-config/settings")
async def get_release_settings(ctx: Ctx, caller: Caller, app_id: str) -> dict:
    return await versions.get_settings(ctx.db, caller, app_id)


@router.post("/apps/{app_id}/model-config/settings")
async def set_release_settings(ctx: Ctx, caller: Caller, app_id: str, body: ReleaseSettingsBody) -> dict:
    return await versions.set_settings(ctx, caller, app_id,
                                       publish_requires_confirmation=body.publish_requires_confirmation)


@router.get("/apps/{app_id}/rollout")
async def get_rollout(ctx: Ctx, caller: Caller, app_id: str) -> dict:
    return await versions.get_rollout(ctx.db, caller, app_id)


@router.post("/apps/{app_id}/rollout")
async def start_rollout(ctx: Ctx, caller: Caller, app_id: str, body: RolloutBody) -> dict:
    return await versions.start_rollout(ctx, caller, app_id, body.version_id, body.percentage)


@router.post("/apps/{app_id}/rollout/promote")
async def promote_rollout(ctx: Ctx, caller: Caller, app_id: str) -> dict:
    return await versions.end_rollout(ctx, caller, app_id, promote=True)


@router.post("/apps/{app_id}/rollout/rollback")
async def rollback_rollout(ctx: Ctx, caller: Caller, app_id: str) -> dict:
    return await versions.end_rollout(ctx, caller, app_id, promote=False)


def _import_answer(response: Response, result: dict[str, Any]) -> dict[str, Any]:
    """Dify's import object, its status as the HTTP status: failed 400, pending 202, else 200."""
    response.status_code = {"failed": 400, "pending": 202}.get(result["status"], 200)
    return result


@router.post("/apps/imports")
async def import_app(ctx: Ctx, caller: Caller, response: Response, body: Annotated[dict[str, Any], Body()]) -> dict:
    return _import_answer(response, await dsl.import_app(ctx, caller, body))


@router.post("/apps/imports/{import_id}/confirm")
async def confirm_import(ctx: Ctx, caller: Caller, response: Response, import_id: str) -> dict:
    return _import_answer(response, await dsl.confirm_import(ctx, caller, import_id))


@router.get("/apps/{app_id}/export")
async def export_app(ctx: Ctx, caller: Caller, app_id: str, include_secret: bool = False) -> dict:
    if include_secret:  # secret environment variables in clear: not a read-only key's to take
        require_scope(caller, "apps:write", "GET /console/api/apps/{app_id}/export?include_secret=true")
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


# ---- tags of apps and knowledge bases (Dify's console tag API; shared/tags.py) -----------------------------

TagBody = Annotated[dict[str, Any], Body()]  # checked by shared/tags.py, in Dify's words


def _tag_scope(caller: Principal, kind: str, write: bool, action: str) -> None:
    """An admin key's scope for a tag of ``kind``: app tags are apps', knowledge tags datasets'."""
    scope = f"{'apps' if kind == 'app' else 'datasets'}:{'write' if write else 'read'}"
    require_scope(caller, scope, f"{action} (type={kind})")


def _body_type(body: dict[str, Any]) -> str:
    return tag_type(body.get("type"))


@router.get("/tags")
async def list_tags(ctx: Ctx, caller: Caller,
                    kind: Annotated[str | None, Query(alias="type", max_length=16)] = None,
                    keyword: Annotated[str | None, Query(max_length=255)] = None) -> list[dict]:
    kind = tag_type(kind)
    _tag_scope(caller, kind, False, "GET /console/api/tags")
    return await tags.list_tags(ctx.db, caller, kind, keyword)


@router.post("/tags")
async def create_tag(ctx: Ctx, caller: Caller, body: TagBody) -> dict:
    kind = _body_type(body)
    _tag_scope(caller, kind, True, "POST /console/api/tags")
    return await tags.create(ctx.db, caller, kind, body.get("name"))


@router.patch("/tags/{tag_id}")
async def rename_tag(ctx: Ctx, caller: Caller, tag_id: str, body: TagBody) -> dict:
    kind = await tags.kind_of(ctx.db, caller, tag_id)
    _tag_scope(caller, kind, True, "PATCH /console/api/tags/{tag_id}")
    return await tags.rename(ctx.db, caller, kind, tag_id, body.get("name"))


@router.delete("/tags/{tag_id}")
async def delete_tag(ctx: Ctx, caller: Caller, tag_id: str) -> dict:
    kind = await tags.kind_of(ctx.db, caller, tag_id)
    _tag_scope(caller, kind, True, "DELETE /console/api/tags/{tag_id}")
    await tags.delete(ctx.db, caller, kind, tag_id)
    return SUCCESS


@router.post("/tag-bindings/create")
@router.post("/tag-bindings")  # newer Dify consoles
async def bind_tags(request: Request, ctx: Ctx, caller: Caller, body: TagBody) -> dict:
    kind = _body_type(body)
    _tag_scope(caller, kind, True, f"POST {request.url.path}")
    await tags.bind(ctx.db, caller, kind, body)
    return SUCCESS


@router.post("/tag-bindings/remove")
async def unbind_tags(ctx: Ctx, caller: Caller, body: TagBody) -> dict:
    kind = _body_type(body)
    _tag_scope(caller, kind, True, "POST /console/api/tag-bindings/remove")
    await tags.unbind(ctx.db, caller, kind, body)
    return SUCCESS


# ---- app logs (Dify's console log pages: services/console/service/logs.py) --------------------------------

SortBy = Literal["created_at", "-created_at", "updated_at", "-updated_at"]
Minute = Annotated[str | None, Query(max_length=32)]  # "YYYY-MM-DD HH:MM", UTC
LogPage = Annotated[int, Query(ge=1, le=99999)]
LogLimit = Annotated[int, Query(ge=1, le=100)]
Keyword = Annotated[str | None, Query(max_length=255)]


@router.get("/apps/{app_id}/chat-conversations")
async def chat_conversations(ctx: Ctx, caller: Caller, app_id: str, page: LogPage = 1, limit: LogLimit = 20,
                             keyword: Keyword = None, start: Minute = None, end: Minute = None,
                             sort_by: SortBy = "-updated_at") -> dict:
    return await logs.conversations(ctx.db, caller, app_id, completion=False, page=page, limit=limit,
                                    keyword=keyword, start=start, end=end, sort_by=sort_by)


@router.get("/apps/{app_id}/completion-conversations")
async def completion_conversations(ctx: Ctx, caller: Caller, app_id: str, page: LogPage = 1, limit: LogLimit = 20,
                                   keyword: Keyword = None, start: Minute = None, end: Minute = None,
                                   sort_by: SortBy = "-created_at") -> dict:
    return await logs.conversations(ctx.db, caller, app_id, completion=True, page=page, limit=limit,
                                    keyword=keyword, start=start, end=end, sort_by=sort_by)


@router.get("/apps/{app_id}/chat-messages")
async def chat_messages(ctx: Ctx, caller: Caller, app_id: str,
                        conversation_id: Annotated[str | None, Query(max_length=64)] = None,
                        first_id: Annotated[str | None, Query(max_length=64)] = None,
                        limit: LogLimit = 20) -> dict:
    return await logs.messages(ctx.db, caller, app_id, conversation_id=conversation_id, first_id=first_id,
                               limit=limit, files_base=ctx.settings.public_api_base.rstrip("/"))


@router.get("/apps/{app_id}/workflow-app-logs")
async def workflow_app_logs(ctx: Ctx, caller: Caller, app_id: str, keyword: Keyword = None,
                            status: Annotated[str | None, Query(max_length=32)] = None,
                            page: LogPage = 1, limit: LogLimit = 20,
                            created_at__before: datetime | None = None, created_at__after: datetime | None = None,
                            created_by_end_user_session_id: Annotated[str | None, Query(max_length=255)] = None,
                            ) -> dict:
    return await logs.workflow_app_logs(ctx.db, caller, app_id, keyword=keyword, status=status, page=page,
                                        limit=limit, before=created_at__before, after=created_at__after,
                                        session_id=created_by_end_user_session_id)


# ---- app API keys (optional body {name, permissions}: see services/console/service/keys.py) --------------


def _grace(ctx: Context, body: RotateBody | None) -> int:
    given = body.grace_seconds if body is not None else None
    return ctx.settings.auth.key_rotation_grace_seconds if given is None else given


@router.get("/apps/{app_id}/api-keys")
async def list_keys(ctx: Ctx, caller: Caller, app_id: str) -> dict:
    return {"data": [_key_json(k) for k in await apps.list_keys(ctx.db, caller, app_id)]}


@router.post("/apps/{app_id}/api-keys", status_code=201)
async def create_key(ctx: Ctx, caller: Caller, app_id: str, body: KeyCreateBody | None = None) -> dict:
    key, token = await keys.create_key(ctx, caller.tenant_id, "app", app_id, name=body and body.name,
                                       permissions=body and body.permissions, created_by=caller.account_id or None)
    return _key_json(key, token, full=body is not None)


@router.post("/apps/{app_id}/api-keys/{key_id}/rotate", status_code=201)
async def rotate_key(ctx: Ctx, caller: Caller, app_id: str, key_id: str, body: RotateBody | None = None) -> dict:
    key, token, old = await keys.rotate_key(ctx, caller.tenant_id, "app", key_id, _grace(ctx, body), app_id,
                                            created_by=caller.account_id or None)
    return {**_key_json(key, token), "rotated": _key_json(old)}


@router.delete("/apps/{app_id}/api-keys/{key_id}", status_code=204)
async def delete_key(ctx: Ctx, caller: Caller, app_id: str, key_id: str) -> Response:
    await keys.delete_key(ctx, caller.tenant_id, "app", key_id, app_id)
    return Response(status_code=204)


# ---- knowledge API keys (workspace-wide `dataset-` keys) -------------------------------------------


@router.get("/datasets/api-keys")
async def list_dataset_keys(ctx: Ctx, caller: Caller) -> dict:
    return {"data": [_key_json(k) for k in await keys.list_keys(ctx.db, caller.tenant_id, "dataset")]}


@router.post("/datasets/api-keys", status_code=201)
async def create_dataset_key(ctx: Ctx, caller: Caller, body: KeyCreateBody | None = None) -> dict:
    key, token = await keys.create_key(ctx, caller.tenant_id, "dataset", name=body and body.name,
                                       permissions=body and body.permissions, created_by=caller.account_id or None)
    return _key_json(key, token, full=body is not None)


@router.post("/datasets/api-keys/{key_id}/rotate", status_code=201)
async def rotate_dataset_key(ctx: Ctx, caller: Caller, key_id: str, body: RotateBody | None = None) -> dict:
    key, token, old = await keys.rotate_key(ctx, caller.tenant_id, "dataset", key_id, _grace(ctx, body),
                                            created_by=caller.account_id or None)
    return {**_key_json(key, token), "rotated": _key_json(old)}


@router.delete("/datasets/api-keys/{key_id}", status_code=204)
async def delete_dataset_key(ctx: Ctx, caller: Caller, key_id: str) -> Response:
    await keys.delete_key(ctx, caller.tenant_id, "dataset", key_id)
    return Response(status_code=204)


# ---- workspace admin keys (`admin-`: Bearer on /console/api/*, limited to scopes) --------------------------


@router.get("/api-keys")
async def list_admin_keys(ctx: Ctx, caller: Caller) -> dict:
    return {"data": [_key_json(k) for k in await keys.list_keys(ctx.db, caller.tenant_id, "admin")],
            "scopes": keys.ADMIN_SCOPES}


@router.post("/api-keys", status_code=201)
async def create_admin_key(ctx: Ctx, caller: Caller, body: AdminKeyCreateBody) -> dict:
    key, token = await keys.create_key(ctx, caller.tenant_id, "admin", name=body.name, permissions=body.permissions,
                                       created_by=caller.account_id)
    return _key_json(key, token)


@router.post("/api-keys/{key_id}/rotate", status_code=201)
async def rotate_admin_key(ctx: Ctx, caller: Caller, key_id: str, body: RotateBody | None = None) -> dict:
    key, token, old = await keys.rotate_key(ctx, caller.tenant_id, "admin", key_id, _grace(ctx, body),
                                            created_by=caller.account_id)
    return {**_key_json(key, token), "rotated": _key_json(old)}


@router.delete("/api-keys/{key_id}", status_code=204)
async def delete_admin_key(ctx: Ctx, caller: Caller, key_id: str) -> Response:
    await keys.delete_key(ctx, caller.tenant_id, "admin", key_id)
    return Response(status_code=204)


@router.get("/datasets/api-base-info")
async def dataset_api_base(request: Request, ctx: Ctx, caller: Caller) -> dict:
    return {"api_base_url": f"{_base(request, ctx)}/v1"}


# ---- workspace plan (per-app default limits; only the owner changes it) ------------------------------


@router.get("/workspaces/current/plan")
async def get_plan(ctx: Ctx, caller: Caller) -> dict:
    return await plans.get_plan(ctx.db, caller)


@router.put("/workspaces/current/plan")
async def set_plan(ctx: Ctx, caller: Caller, body: Annotated[dict[str, Any], Body()]) -> dict:
    return await plans.set_plan(ctx, caller, body)


# ---- model providers (provider may be a plugin id with slashes, e.g. langgenius/openai/openai) ------

# A model's own credentials. Declared before the provider's routes: their {provider:path} would take
# ".../openai/models/credentials/validate" for the credentials of a provider "openai/models".
MODELS = "/workspaces/current/model-providers/{provider:path}/models"


@router.get(MODELS)
async def list_provider_models(ctx: Ctx, caller: Caller, provider: str) -> dict:
    return {"data": [{"model": v.model, "label": {"en_US": v.model}, "model_type": v.model_type,
                      "fetch_from": "customizable-model", "status": "active", "model_properties": {},
                      "deprecated": False, "load_balancing_enabled": False, "features": []}
                     for v in await providers.list_models(ctx, caller, provider)]}


@router.get(MODELS + "/credentials")
async def get_model_credentials(ctx: Ctx, caller: Caller, provider: str,
                                model: Annotated[str, Query(max_length=255)],
                                model_type: Annotated[str, Query(max_length=32)]) -> dict:
    creds = await providers.model_credentials(ctx, caller, provider, model.strip(), model_type)
    return {"credentials": creds}


@router.post(MODELS + "/credentials/validate")
async def validate_model_credentials(ctx: Ctx, caller: Caller, provider: str, body: ModelCredentialsBody
                                     ) -> dict:
    error = await providers.validate_model_credentials(ctx, caller, provider, body.model, body.model_type,
                                                       body.credentials)
    return SUCCESS if error is None else {"result": "error", "error": error}


@router.post(MODELS)
async def save_model_credentials(ctx: Ctx, caller: Caller, provider: str, body: ModelCredentialsBody
                                 ) -> dict:
    await providers.save_model_credentials(ctx, caller, provider, body.model, body.model_type,
                                           body.credentials)
    return SUCCESS


@router.delete(MODELS, status_code=204)
async def delete_model_credentials(ctx: Ctx, caller: Caller, provider: str, body: ModelBody) -> Response:
    await providers.delete_model_credentials(ctx, caller, provider, body.model, body.model_type)
    return Response(status_code=204)


@router.get("/workspaces/current/model-providers")
async def list_providers(ctx: Ctx, caller: Caller) -> dict:
    return {"data": [{"provider": v.provider, "has_credentials": v.has_credentials, "credentials": v.credentials,
                      "models": list(v.models), "updated_at": ts(v.updated_at)}
                     for v in await providers.list_providers(ctx, caller)]}


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


# ---- workspace default models (the audio endpoints' speech2text and tts models; docs/audio.md) ---------


# ---- API-based extensions (docs/extensions.md) ------------------------------------------------------------


def _extensions(request: Request) -> Extensions:
    return request.app.state.extensions


@router.get("/api-based-extension")
async def list_extensions(request: Request, caller: Caller) -> list:
    return await _extensions(request).list(caller)


@router.post("/api-based-extension", status_code=201)
async def create_extension(request: Request, caller: Caller, body: Annotated[dict[str, Any], Body()]) -> dict:
    return await _extensions(request).save(caller, body)


@router.get("/api-based-extension/{extension_id}")
async def get_extension(request: Request, caller: Caller, extension_id: str) -> dict:
    return await _extensions(request).get(caller, extension_id)


@router.post("/api-based-extension/{extension_id}")
async def update_extension(request: Request, caller: Caller, extension_id: str,
                           body: Annotated[dict[str, Any], Body()]) -> dict:
    return await _extensions(request).save(caller, body, extension_id)


@router.delete("/api-based-extension/{extension_id}", status_code=204)
async def delete_extension(request: Request, caller: Caller, extension_id: str) -> Response:
    await _extensions(request).delete(caller, extension_id)
    return Response(status_code=204)


@router.get("/workspaces/current/default-model")
async def get_default_model(ctx: Ctx, caller: Caller, model_type: str | None = None) -> dict:
    return await default_models.get_default(ctx, caller, model_type)


@router.post("/workspaces/current/default-model")
async def set_default_model(ctx: Ctx, caller: Caller, body: DefaultModelBody) -> dict:
    await default_models.set_defaults(ctx, caller, body.model_settings)
    return SUCCESS


class PluginInstallBody(BaseModel):
    plugin_unique_identifiers: Annotated[list[Annotated[str, StringConstraints(max_length=512)]],
                                         Field(min_length=1, max_length=50)]


@router.post("/workspaces/current/plugin/install/marketplace")
async def install_plugins(caller: Caller, body: PluginInstallBody) -> dict:
    """Dify 1.x installs a model provider, the agent strategies or a tool provider as marketplace plugins;
    Plexus has them built in (litellm; the workflow agent node; its built-in tools). Such a plugin is reported installed (Dify's ``all_installed``, so
    clients skip the install task); any other plugin is refused, by name."""
    missing = [i for i in body.plugin_unique_identifiers
               if llm.provider_of_plugin(i) is None and not is_agent_strategy_plugin(i) and builtin_provider(i) is None]
    if missing:
        raise invalid_param(f"Plexus runs no plugins; its model providers, agent strategies and built-in tools "
                            f"are built in. "
                            f"Not available: "
                            f"{', '.join(m.split(':', 1)[0] for m in missing)}.", params="plugin_unique_identifiers")
    return {"all_installed": True, "task_id": ""}


@router.get("/workspaces/current/models/model-types/{model_type}")
async def models_of_type(ctx: Ctx, caller: Caller, model_type: str) -> dict:
    credentials.check_model_type(model_type)
    async with ctx.db.session() as s:
        return {"data": await credentials.models_of_type(s, ctx.settings.secret_key, caller.tenant_id, model_type)}


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


# ---- workspaces and members (Dify's console shapes; member_id is the account id) --------------------------


def _member_json(a: Account, m: TenantMember) -> dict[str, Any]:
    return {"id": a.id, "name": a.name, "email": a.email, "avatar": None, "avatar_url": None,
            "last_login_at": ts(a.last_login_at), "last_active_at": ts(a.last_login_at),
            "created_at": ts(m.created_at), "role": m.role,
            "status": "pending" if m.status == "pending" else a.status}


@router.get("/workspaces")
async def list_workspaces(ctx: Ctx, caller: Caller) -> dict:
    return {"workspaces": await members.list_workspaces(ctx.db, caller)}


@router.post("/workspaces/switch")
async def switch_workspace(ctx: Ctx, caller: Caller, body: SwitchBody) -> dict:
    return {**SUCCESS, "new_tenant": await members.switch_workspace(ctx.db, caller, body.tenant_id)}


@router.get("/workspaces/current")
@router.post("/workspaces/current")
async def current_workspace(ctx: Ctx, caller: Caller) -> dict:
    return await members.current_workspace(ctx.db, caller)


@router.post("/workspaces/info")
async def rename_workspace(ctx: Ctx, caller: Caller, body: WorkspaceInfoBody) -> dict:
    return {**SUCCESS, "tenant": await members.rename_workspace(ctx.db, caller, body.name)}


@router.get("/workspaces/current/members")
async def list_members(ctx: Ctx, caller: Caller) -> dict:
    return {**SUCCESS, "accounts": [_member_json(a, m) for a, m in await members.list_members(ctx.db, caller)]}


@router.post("/workspaces/current/members/invite-email", status_code=201)
async def invite_members(request: Request, ctx: Ctx, caller: Caller, body: InviteBody) -> dict:
    results = await members.invite(ctx, caller, body.emails, body.role, _base(request, ctx))
    return {**SUCCESS, "invitation_results": results, "tenant_id": caller.tenant_id}


@router.put("/workspaces/current/members/{member_id}/update-role")
async def update_member_role(ctx: Ctx, caller: Caller, member_id: str, body: RoleBody) -> dict:
    await members.update_role(ctx, caller, member_id, body.role)
    return SUCCESS


@router.delete("/workspaces/current/members/{member_id}")
async def remove_member(ctx: Ctx, caller: Caller, member_id: str) -> dict:
    await members.remove(ctx, caller, member_id)
    return {**SUCCESS, "tenant_id": caller.tenant_id}


@router.post("/workspaces/current/members/{member_id}/owner-transfer")
async def transfer_owner(ctx: Ctx, caller: Caller, member_id: str) -> dict:
    await members.transfer_owner(ctx, caller, member_id)
    return SUCCESS


@router.get("/activate/check")
async def check_activation(ctx: Ctx, token: Annotated[str, Query(max_length=255)],
                           email: Annotated[str | None, Query(max_length=255)] = None,
                           workspace_id: Annotated[str | None, Query(max_length=255)] = None) -> dict:
    return await members.check_invitation(ctx.db, token, email, workspace_id)


@router.post("/activate")
async def activate(response: Response, ctx: Ctx, auth: AuthDep, body: ActivateBody) -> dict:
    pair = await members.activate(ctx.db, auth, token=body.token, name=body.name, password=body.password,
                                  email=body.email, workspace_id=body.workspace_id)
    return _signed_in(response, ctx, auth, pair)


# ---- the app ----------------------------------------------------------------------------------------


def create_app(ctx: Context) -> FastAPI:
    checks = {"database": ctx.db.ping, "nats": ctx.bus.ping}
    if ctx.redis is not None:
        checks["redis"] = ctx.redis.ping
    app = create_base_app("console", checks=checks)
    app.state.ctx = ctx
    app.state.auth = Auth.from_settings(ctx.settings, ctx.redis)
    app.state.extensions = Extensions(ctx)  # its egress client is closed by handlers.stop
    app.include_router(router)
    return app

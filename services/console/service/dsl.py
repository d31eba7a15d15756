"""Apps as YAML documents in Dify's DSL shape (``kind: app``, ``version``, ``app``, and ``workflow`` for graph
apps or ``model_config`` for basic ones), so an app moves between workspaces or from Dify itself.

Import (``POST /apps/imports``, Dify's AppDslService) takes the document from the body (``mode: yaml-content``)
or from an http(s) URL (``yaml-url``: fetched through the SSRF guard with the tools' egress allowlist, at most
MAX_DSL_BYTES within FETCH_TIMEOUT; a GitHub ``blob`` page is read from raw.githubusercontent.com). Its
``version`` against DSL_VERSION decides (``check_version``): unparseable → ``failed``; newer, or of an older
major → ``pending`` (202: the document and the request's overrides wait in ``app_imports`` for PENDING_TTL,
and ``POST /apps/imports/{id}/confirm`` on any console replica finishes it); of an older minor →
``completed-with-warnings``; else ``completed``. Import creates the app and its draft (graph apps) or model
config (basic apps), checked like a save; with ``app_id`` it replaces the draft of that workflow or
advanced-chat app instead (same mode as the document; only the request's own name, description and icon
change the app). Nothing is published. Every answer is an import object ``{id, status, app_id, app_mode,
current_dsl_version, imported_dsl_version, error}``; a failed one (400) says why in ``error`` and leaves no
app or draft half made. Copy (``POST /apps/{id}/copy``) is an export with secrets imported at once. Export
leaves secret environment variables empty unless asked for them (which takes ``apps:write`` for an admin key:
the export route in services/console/api.py).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import yaml
from sqlmodel import delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.console.service import apps, workflows
from services.console.service.common import Principal, get_app
from shared.context import Context
from shared.egress import Egress, EgressError, EgressPolicy
from shared.errors import ApiError
from shared.models import App, AppImport, AppModelConfig, Workflow, new_id, utcnow
from shared.site import site_view

# The DSL version of current Dify exports (its CURRENT_DSL_VERSION), which Plexus reads and writes: their graphs
# are reference §6's. A document from an older minor imports with a warning status; one with a node type Plexus
# lacks fails naming it (the draft's own checks); only a newer version waits to be confirmed.
DSL_VERSION = "0.5.0"
MAX_DSL_BYTES = 10 * 1024 * 1024
FETCH_TIMEOUT = 10.0  # seconds for a yaml-url fetch, redirects included
PENDING_TTL = timedelta(minutes=10)  # Dify's IMPORT_INFO_REDIS_EXPIRY
IMPORT_MODES = ("yaml-content", "yaml-url")
ICON_TYPES = ("emoji", "image", "link")
TOO_LARGE = "The DSL document is larger than 10 MB."
GONE = "Import information expired or does not exist."  # Dify's words for an unknown or used import id
_VERSION = re.compile(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _fail(message: str) -> ApiError:
    return ApiError(400, "invalid_param", message)


class ImportFailed(Exception):
    """An import that cannot go on; its message is the failed import object's ``error``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def check_version(imported: str, current: str = DSL_VERSION) -> str:
    """Dify's ``_check_version_compatibility``: the import status a document of DSL version ``imported`` gets."""
    got, have = _VERSION.fullmatch(imported.strip()), _VERSION.fullmatch(current)
    if got is None or have is None:
        return "failed"
    mine, ours = (tuple(int(n or 0) for n in m.groups()) for m in (got, have))
    if mine > ours or mine[0] < ours[0]:
        return "pending"
    if mine[1] < ours[1]:
        return "completed-with-warnings"
    return "completed"


def raw_github_url(url: str) -> str:
    """A GitHub file page (``https://github.com/{owner}/{repo}/blob/{ref}/{path}``) as its raw content's URL,
    as Dify rewrites it; any other URL as it is."""
    u = urlsplit(url)
    parts = u.path.split("/")  # "", owner, repo, "blob", ref, path...
    if u.scheme == "https" and u.hostname in ("github.com", "www.github.com") and len(parts) > 5 \
            and parts[3] == "blob":
        return urlunsplit(("https", "raw.githubusercontent.com", "/".join(parts[:3] + parts[4:]), "", ""))
    return url


def _result(import_id: str, status: str, *, app_id: str | None = None, app_mode: str | None = None,
            version: str = "", error: str = "") -> dict[str, Any]:
    return {"id": import_id, "status": status, "app_id": app_id, "app_mode": app_mode,
            "current_dsl_version": DSL_VERSION, "imported_dsl_version": version, "error": error}


async def import_app(ctx: Context, p: Principal, body: dict[str, Any]) -> dict[str, Any]:
    """The import object of ``POST /apps/imports`` (its status picks the HTTP status: services/console/api.py)."""
    import_id, version = new_id(), ""
    try:
        overrides = _overrides(body)
        target_id = body.get("app_id") or None
        if target_id is not None and (not isinstance(target_id, str) or len(target_id) > 36):
            raise ImportFailed("App not found.")
        doc = await asyncio.to_thread(_parse, await _source(ctx, body))
        version = doc["version"]
        status = check_version(version)
        if status == "failed":
            raise ImportFailed(f"The DSL version {version!r} is not a version number such as {DSL_VERSION}.")
        target = await _target(ctx, p, target_id, doc) if target_id else None
        if status == "pending":  # another DSL version: created once the caller confirms
            await _hold(ctx, p, import_id, doc, overrides, target_id, version)
            return _result(import_id, status, app_id=target_id, version=version)
        app = await _apply(ctx, p, doc, overrides, target)
    except ImportFailed as e:
        return _result(import_id, "failed", version=version, error=e.message)
    return _result(import_id, status, app_id=app.id, app_mode=app.mode, version=version)


async def confirm_import(ctx: Context, p: Principal, import_id: str) -> dict[str, Any]:
    """``POST /apps/imports/{id}/confirm``: a pending import of the workspace, carried out (once); failed if it
    is unknown, expired or confirmed already. A confirmation that fails can be retried until it expires."""
    now = utcnow()
    async with ctx.db.session() as s:
        await s.exec(delete(AppImport).where(AppImport.expires_at <= now))
        row = (await s.exec(select(AppImport).where(AppImport.id == import_id,
                                                    AppImport.tenant_id == p.tenant_id))).first()
        # the delete claims it: of two confirmations at once, one goes on
        claimed = row is not None and (await s.exec(delete(AppImport).where(AppImport.id == import_id))).rowcount == 1
        await s.commit()
    if not claimed or row is None:
        return _result(import_id, "failed", error=GONE)
    try:
        target = await _target(ctx, p, row.app_id, row.document) if row.app_id else None
        app = await _apply(ctx, p, row.document, row.overrides, target)
    except ImportFailed as e:
        async with ctx.db.session() as s:
            s.add(AppImport(**row.model_dump()))
            await s.commit()
        return _result(import_id, "failed", version=row.imported_dsl_version, error=e.message)
    return _result(import_id, "completed", app_id=app.id, app_mode=app.mode, version=row.imported_dsl_version)


def _overrides(body: dict[str, Any]) -> dict[str, str]:
    """The request's name, description and icon fields that are set (Dify: an empty one is as absent)."""
    out: dict[str, str] = {}
    for key, limit in (("name", 40), ("description", 200), ("icon_type", 16), ("icon", 255),
                       ("icon_background", 255)):
        value = body.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise ImportFailed(f"{key} must be a string.")
        value = value.strip()[:limit] if key in ("name", "description") else value
        if len(value) > limit:
            raise ImportFailed(f"{key} must be at most {limit} characters.")
        if value:
            out[key] = value
    if out.get("icon_type", "emoji") not in ICON_TYPES:
        raise ImportFailed(f"icon_type must be one of {list(ICON_TYPES)}.")
    return out


async def _source(ctx: Context, body: dict[str, Any]) -> str:
    """The document's text: from the body, or fetched from its URL."""
    mode = body.get("mode") or "yaml-content"
    if mode == "yaml-content":
        text = body.get("yaml_content")
        if not isinstance(text, str) or not text.strip():
            raise ImportFailed("yaml_content is required when mode is yaml-content.")
        if len(text.encode()) > MAX_DSL_BYTES:
            raise ImportFailed(TOO_LARGE)
        return text
    if mode == "yaml-url":
        url = body.get("yaml_url")
        if not isinstance(url, str) or not url.strip():
            raise ImportFailed("yaml_url is required when mode is yaml-url.")
        return await fetch_document(url.strip(), ctx.settings.tools.egress_allowlist)
    raise ImportFailed(f"mode must be one of {list(IMPORT_MODES)}.")


async def fetch_document(url: str, allowlist: Iterable[str]) -> str:
    """The text at ``url`` (a GitHub page's raw file), through the SSRF guard letting ``allowlist`` (the tools'
    egress allowlist) through: ImportFailed if it is refused, unreachable, not 200, empty or over MAX_DSL_BYTES."""
    egress = Egress(EgressPolicy.from_allowlist(allowlist), user_agent="Plexus-Console/1.0")
    try:
        resp = await egress.request("GET", raw_github_url(url), timeout=FETCH_TIMEOUT, max_bytes=MAX_DSL_BYTES)
    except EgressError as e:
        raise ImportFailed(TOO_LARGE if e.code == "response_too_large"
                           else f"Error fetching the DSL document from {url:.200}: {e.message}") from None
    finally:
        await egress.close()
    if resp.status != 200:
        raise ImportFailed(f"Error fetching the DSL document from {url:.200}: HTTP status {resp.status}.")
    text = resp.text()
    if not text.strip():
        raise ImportFailed(f"The DSL document at {url:.200} is empty.")
    return text


def _parse(text: str) -> dict[str, Any]:
    """The document as plain JSON data, checked to be an app of a known mode, ``version`` a string (Dify's
    default 0.1.0 when absent). Runs in a thread: a 10 MB document takes a while."""
    try:
        doc = yaml.load(text, Loader=_LOADER)  # the safe loader (its C build when there is one)
    except yaml.YAMLError as e:
        raise ImportFailed(f"The DSL document is not valid YAML: {e}") from None
    except RecursionError:
        raise ImportFailed("The DSL document is nested too deeply.") from None
    if not isinstance(doc, dict):
        raise ImportFailed("The DSL document must be a YAML mapping (kind, version, app, ...).")
    # aliases share objects: what they expand to is bounded before it is stored (a "billion laughs" document)
    if _weight(doc, {}) > 2 * MAX_DSL_BYTES:
        raise ImportFailed("The DSL document expands to more than 20 MB (YAML aliases).")
    try:  # JSON as the tables store it: dates become strings, keys strings
        doc = orjson.loads(orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS))
    except orjson.JSONEncodeError as e:
        raise ImportFailed(f"The DSL document cannot be stored: {e}") from None
    if doc.get("kind", "app") != "app" or not isinstance(doc.get("app"), dict):
        raise ImportFailed("Not an app DSL document (expected kind: app and an app section).")
    if doc["app"].get("mode") not in apps.MODES:
        raise ImportFailed(f"app.mode must be one of {list(apps.MODES)}.")
    doc["version"] = doc.get("version") or "0.1.0"
    if not isinstance(doc["version"], str):
        raise ImportFailed(f"The DSL version must be a string such as {DSL_VERSION!r}, not {doc['version']!r}.")
    return doc


def _weight(node: Any, seen: dict[int, int | None]) -> int:
    """Nodes plus characters of ``node`` with every alias expanded, in time linear in the distinct nodes."""
    key = id(node)
    if key in seen:
        known = seen[key]
        if known is None:
            raise ImportFailed("The DSL document contains itself (a recursive YAML alias).")
        return known
    if isinstance(node, dict | list):
        seen[key] = None
        items = [x for kv in node.items() for x in kv] if isinstance(node, dict) else node
        try:
            weight = 1 + sum(_weight(x, seen) for x in items)
        except RecursionError:
            raise ImportFailed("The DSL document is nested too deeply.") from None
    else:
        weight = 1 + (len(node) if isinstance(node, str | bytes) else 0)
    seen[key] = weight
    return weight


async def _target(ctx: Context, p: Principal, app_id: str, doc: dict[str, Any]) -> App:
    """The app whose draft the document replaces: a workflow or advanced-chat app of the workspace, of the
    document's mode."""
    async with ctx.db.session() as s:
        try:
            app = await get_app(s, p.tenant_id, app_id)
        except ApiError as e:
            raise ImportFailed(e.message) from None
    if app.mode not in workflows.GRAPH_MODES:
        raise ImportFailed("Only workflow or advanced-chat apps can be overwritten.")
    if app.mode != doc["app"]["mode"]:
        raise ImportFailed(f"The document's app mode is {doc['app']['mode']}, app {app.id}'s is {app.mode}: "
                           "they must match.")
    return app


async def _hold(ctx: Context, p: Principal, import_id: str, doc: dict[str, Any], overrides: dict[str, str],
                target_id: str | None, version: str) -> None:
    now = utcnow()
    async with ctx.db.session() as s:
        await s.exec(delete(AppImport).where(AppImport.expires_at <= now))  # expired ones go by the way
        s.add(AppImport(id=import_id, tenant_id=p.tenant_id, app_id=target_id, document=doc, overrides=overrides,
                        imported_dsl_version=version, created_by=p.account_id, created_at=now,
                        expires_at=now + PENDING_TTL))
        await s.commit()


async def _apply(ctx: Context, p: Principal, doc: dict[str, Any], overrides: dict[str, str],
                 target: App | None) -> App:
    """A new app from the document, or ``target``'s draft replaced by the document's; ImportFailed if the
    document does not hold up, nothing changed then."""
    try:
        if target is None:
            meta = doc["app"]
            icon_type = overrides.get("icon_type") or meta.get("icon_type")
            return await _create_from(
                ctx, p, doc, name=overrides.get("name") or str(meta.get("name") or "").strip()[:40] or "Imported app",
                description=overrides.get("description") or str(meta.get("description") or "")[:200],
                icon_type=icon_type if icon_type in ICON_TYPES else "emoji",
                icon=overrides.get("icon") or _short(meta.get("icon")),
                icon_background=overrides.get("icon_background") or _short(meta.get("icon_background")))
        name = overrides.get("name")
        if name is not None:  # checked first: the draft is not replaced for an import that fails
            async with ctx.db.session() as s:
                if await apps.name_taken(s, p.tenant_id, name, target.id):
                    raise ImportFailed(apps.duplicate(name).message)
        try:
            await workflows.save_draft(ctx, p, target.id, _draft_body(doc))
        except ApiError as e:
            raise ImportFailed(f"the app in the document is invalid: {e.message}") from None
        if overrides:
            target, _ = await apps.update_app(ctx, p, target.id, dict(overrides))
        return target
    except ApiError as e:
        raise ImportFailed(e.message) from None


def _short(value: Any) -> str | None:
    """A document's icon field as the 255-character column takes it."""
    return str(value)[:255] if value not in (None, "") else None


def _draft_body(doc: dict[str, Any]) -> dict[str, Any]:
    wf = doc.get("workflow") or {}
    if not isinstance(wf, dict):
        raise _fail("workflow must be a mapping with graph and features")
    return {"graph": wf.get("graph"), "features": wf.get("features") or {},
            "environment_variables": wf.get("environment_variables") or [],
            "conversation_variables": wf.get("conversation_variables") or []}


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
            await workflows.save_draft(ctx, p, app.id, _draft_body(doc))
        elif doc.get("model_config"):
            if not isinstance(doc["model_config"], dict):
                raise _fail("model_config must be a mapping")
            await apps.save_model_config(ctx, p, app.id, doc["model_config"])
    except Exception as e:  # the document does not hold up: no half-imported app is left behind
        await apps.delete_app(ctx, p, app.id)
        if isinstance(e, ApiError):
            raise _fail(f"the app in the document is invalid: {e.message}") from None
        raise
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
                                   "use_icon_as_answer_icon": site_view(app)["use_icon_as_answer_icon"]},
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

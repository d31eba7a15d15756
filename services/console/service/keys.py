"""API keys of one resource: an app's ``app-`` keys, the workspace's ``dataset-`` keys (reference §1.1) and the
workspace's ``admin-`` keys (Plexus: automation on /console/api, see docs/access.md).

The token is returned in full only at creation; the database keeps its SHA-256 hash. At most 10 live keys per
resource (keys being rotated out do not count). A key may be limited to ``permissions`` (None: all of its type)
and rotated: a new key with the same name and permissions, the old one refused after a grace period.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from sqlalchemy import func
from sqlmodel import col, select

from services.console.service.common import publish_change
from shared.context import Context
from shared.crypto import generate_api_key, hash_token, token_hint
from shared.db import Database
from shared.errors import ApiError, invalid_param, not_found
from shared.models import ApiToken, App, Tenant, utcnow

MAX_KEYS = 10
KeyType = Literal["app", "dataset", "admin"]
ADMIN_PREFIX = "admin-"  # admin tokens: "admin-" + 32 letters/digits
_TOKEN_LENGTH = {"app": 24, "dataset": 24, "admin": 32}

# What an app key may be limited to; the gateway maps every public route to one of them (or to none:
# /parameters, /info, /meta, /site serve any key of the app).
APP_PERMISSIONS = ("chat", "completion", "workflow", "files", "feedback", "history")
# What an admin key may be limited to on /console/api (the route table is services/console/api.py ACCESS).
# Members, admin keys and workspace settings are never open to a key, whatever it holds.
ADMIN_SCOPES = {
    "apps:read": "list and read apps, their model config, workflows and DSL export (without secrets)",
    "apps:write": "create, change, import, publish and delete apps and workflows; export with secrets",
    "logs:read": "read app logs (conversations, messages, workflow runs)",
    "keys:read": "list app and knowledge API keys",
    "keys:write": "create, rotate and delete app and knowledge API keys",
    "providers:read": "list model providers",
    "providers:write": "save, check and delete model provider credentials",
    "tools:read": "list tool providers and their tools",
    "tools:write": "add, change, test and delete tool providers",
    "datasets:read": "list and read knowledge bases, their documents and segments; test retrieval",
    "datasets:write": "create, change and delete knowledge bases, documents and segments; upload their files",
}


def check_permissions(key_type: KeyType, permissions: list[str] | None) -> list[str] | None:
    """The permissions to store (sorted, unique), or 400 naming what is not allowed."""
    if permissions is None:
        return None
    allowed = APP_PERMISSIONS if key_type == "app" else tuple(ADMIN_SCOPES) if key_type == "admin" else ()
    if not allowed:
        raise invalid_param("Knowledge API keys cannot be limited to permissions.", params="permissions")
    unknown = [p for p in permissions if p not in allowed]
    if unknown:
        hint = ""
        if key_type == "admin" and set(unknown) <= set(APP_PERMISSIONS):
            hint = " (those are app-key permissions: give them to a key of the app, " \
                   "POST /console/api/apps/{app_id}/api-keys)"
        raise invalid_param(f"Unknown permission {unknown[0]!r}{hint}; allowed: {', '.join(allowed)}.",
                            params="permissions")
    if not permissions:
        raise invalid_param("permissions must name at least one permission (omit it for all).",
                            params="permissions")
    return sorted(set(permissions))


def _scope(tenant_id: str, key_type: KeyType, app_id: str | None) -> list:
    where = [ApiToken.tenant_id == tenant_id, ApiToken.type == key_type]
    if key_type == "app":
        where.append(ApiToken.app_id == app_id)
    return where


def is_expired(key: ApiToken) -> bool:
    return key.expires_at is not None and key.expires_at <= utcnow()


async def list_keys(db: Database, tenant_id: str, key_type: KeyType, app_id: str | None = None) -> list[ApiToken]:
    """Live keys and keys in their grace period (with ``expires_at``); expired ones are left out."""
    async with db.session() as s:
        rows = list(await s.exec(select(ApiToken).where(*_scope(tenant_id, key_type, app_id))
                                 .order_by(col(ApiToken.created_at), col(ApiToken.id))))
    return [k for k in rows if not is_expired(k)]


async def _lock_owner(s, tenant_id: str, key_type: KeyType, app_id: str | None) -> None:
    # Postgres: the row lock serialises concurrent creates for one resource (SQLite omits FOR UPDATE but
    # serialises writers, and the count below runs after our insert took the write lock).
    if key_type == "app":
        owner = (await s.exec(select(App.id).where(App.id == app_id, App.tenant_id == tenant_id)
                              .with_for_update())).first()
        if owner is None:
            raise not_found("App not found.")
    else:
        await s.exec(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())


def _new_key(tenant_id: str, key_type: KeyType, app_id: str | None, name: str | None,
             permissions: list[str] | None, created_by: str | None) -> tuple[ApiToken, str]:
    token = generate_api_key(key_type, _TOKEN_LENGTH[key_type])
    key = ApiToken(tenant_id=tenant_id, app_id=app_id if key_type == "app" else None, type=key_type,
                   token_hash=hash_token(token), token_hint=token_hint(token), name=name,
                   permissions=permissions, created_by=created_by)
    return key, token


async def create_key(ctx: Context, tenant_id: str, key_type: KeyType, app_id: str | None = None, *,
                     name: str | None = None, permissions: list[str] | None = None,
                     created_by: str | None = None) -> tuple[ApiToken, str]:
    permissions = check_permissions(key_type, permissions)
    async with ctx.db.session() as s:
        await _lock_owner(s, tenant_id, key_type, app_id)
        key, token = _new_key(tenant_id, key_type, app_id, name, permissions, created_by)
        s.add(key)
        await s.flush()
        count = (await s.exec(select(func.count()).select_from(ApiToken)
                              .where(*_scope(tenant_id, key_type, app_id), col(ApiToken.expires_at).is_(None)))
                 ).one()
        if count > MAX_KEYS:
            await s.rollback()
            raise ApiError(400, "bad_request", f"Cannot create more than {MAX_KEYS} API keys for this resource type.")
        await s.commit()
    # a gateway that caches unknown keys must forget this one now
    await publish_change(ctx.bus, "apikey", key.id, app_id=key.app_id, token_hash=key.token_hash)
    return key, token


async def rotate_key(ctx: Context, tenant_id: str, key_type: KeyType, key_id: str, grace_seconds: int,
                     app_id: str | None = None, *, created_by: str | None = None
                     ) -> tuple[ApiToken, str, ApiToken]:
    """A successor with the same name and permissions; the old key keeps working for ``grace_seconds``
    (0: refused at once), then every gateway refuses it (401) without further notice."""
    limit = ctx.settings.auth.key_rotation_max_grace_seconds
    if not 0 <= grace_seconds <= limit:
        raise invalid_param(f"grace_seconds must be between 0 and {limit}.", params="grace_seconds")
    async with ctx.db.session() as s:
        await _lock_owner(s, tenant_id, key_type, app_id)
        old = (await s.exec(select(ApiToken).where(ApiToken.id == key_id, *_scope(tenant_id, key_type, app_id)))
               ).first()
        if old is None or is_expired(old):
            raise not_found("API key not found.")
        if old.expires_at is not None:
            raise ApiError(409, "key_already_rotated",
                           "This API key has already been rotated; rotate its successor instead.")
        now = utcnow()
        # keys whose grace period is over are dead weight: drop them here
        for dead in await s.exec(select(ApiToken).where(*_scope(tenant_id, key_type, app_id),
                                                        col(ApiToken.expires_at).is_not(None))):
            if dead.expires_at <= now:
                await s.delete(dead)
        old.expires_at = now + timedelta(seconds=grace_seconds)
        key, token = _new_key(tenant_id, key_type, old.app_id, old.name, old.permissions, created_by)
        s.add(key)
        await s.commit()
        await s.refresh(old)
    # gateways reload both: the old key's entry now carries its expiry
    await publish_change(ctx.bus, "apikey", old.id, app_id=old.app_id, token_hash=old.token_hash)
    await publish_change(ctx.bus, "apikey", key.id, app_id=key.app_id, token_hash=key.token_hash)
    return key, token, old


async def delete_key(ctx: Context, tenant_id: str, key_type: KeyType, key_id: str, app_id: str | None = None
                     ) -> None:
    async with ctx.db.session() as s:
        key = (await s.exec(select(ApiToken).where(ApiToken.id == key_id, *_scope(tenant_id, key_type, app_id)))
               ).first()
        if key is None:
            raise not_found("API key not found.")
        await s.delete(key)
        await s.commit()
    await publish_change(ctx.bus, "apikey", key.id, app_id=key.app_id, token_hash=key.token_hash)

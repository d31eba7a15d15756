"""API keys of one resource: an app's ``app-`` keys, or the workspace's ``dataset-`` keys (reference §1.1).
The token is returned in full only at creation; the database keeps its SHA-256 hash. At most 10 per
resource."""

from __future__ import annotations

from typing import Literal

from sqlalchemy import func
from sqlmodel import col, select

from services.console.service.common import publish_change
from shared.context import Context
from shared.crypto import generate_api_key, hash_token, token_hint
from shared.db import Database
from shared.errors import ApiError, not_found
from shared.models import ApiToken, App, Tenant

MAX_KEYS = 10
KeyType = Literal["app", "dataset"]


def _scope(tenant_id: str, key_type: KeyType, app_id: str | None) -> list:
    where = [ApiToken.tenant_id == tenant_id, ApiToken.type == key_type]
    if key_type == "app":
        where.append(ApiToken.app_id == app_id)
    return where


async def list_keys(db: Database, tenant_id: str, key_type: KeyType, app_id: str | None = None) -> list[ApiToken]:
    async with db.session() as s:
        return list(await s.exec(select(ApiToken).where(*_scope(tenant_id, key_type, app_id))
                                 .order_by(col(ApiToken.created_at), col(ApiToken.id))))


async def create_key(ctx: Context, tenant_id: str, key_type: KeyType, app_id: str | None = None
                     ) -> tuple[ApiToken, str]:
    token = generate_api_key(key_type)
    async with ctx.db.session() as s:
        # Postgres: the row lock serialises concurrent creates for one resource (SQLite omits FOR UPDATE but
        # serialises writers, and the count below runs after our insert took the write lock).
        if key_type == "app":
            owner = (await s.exec(select(App.id).where(App.id == app_id, App.tenant_id == tenant_id)
                                  .with_for_update())).first()
            if owner is None:
                raise not_found("App not found.")
        else:
            await s.exec(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
        key = ApiToken(tenant_id=tenant_id, app_id=app_id if key_type == "app" else None, type=key_type,
                       token_hash=hash_token(token), token_hint=token_hint(token))
        s.add(key)
        await s.flush()
        count = (await s.exec(select(func.count()).select_from(ApiToken)
                              .where(*_scope(tenant_id, key_type, app_id)))).one()
        if count > MAX_KEYS:
            await s.rollback()
            raise ApiError(400, "bad_request", f"Cannot create more than {MAX_KEYS} API keys for this resource type.")
        await s.commit()
    # a gateway that caches unknown keys must forget this one now
    await publish_change(ctx.bus, "apikey", key.id, app_id=key.app_id, token_hash=key.token_hash)
    return key, token


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

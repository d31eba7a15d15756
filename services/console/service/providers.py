"""Model-provider credentials of a workspace: stored encrypted, shown masked, checked with a real call."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from cryptography.fernet import InvalidToken
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.console.service.common import Principal, publish_change
from shared import llm
from shared.context import Context
from shared.crypto import decrypt_json, encrypt_json
from shared.errors import invalid_param
from shared.models import ProviderCredential, utcnow

log = structlog.get_logger("plexus.console.providers")

# Values of these keys are secrets: listed masked, and a masked value sent back means "unchanged".
SECRET_KEY_RE = re.compile(r"key|secret|token|password", re.IGNORECASE)
HIDDEN = "[__HIDDEN__]"  # what Dify's web UI sends for a secret the user did not touch


@dataclass(frozen=True, slots=True)
class ProviderView:
    provider: str
    credentials: dict[str, Any]  # masked
    updated_at: datetime


def mask(value: Any) -> Any:
    if not isinstance(value, str) or not value:
        return value
    return f"{value[:3]}***{value[-2:]}" if len(value) > 8 else "***"


def mask_credentials(creds: dict[str, Any]) -> dict[str, Any]:
    return {k: mask(v) if SECRET_KEY_RE.search(k) else v for k, v in creds.items()}


def merge_hidden(new: dict[str, Any], stored: dict[str, Any] | None) -> dict[str, Any]:
    """Keep a stored secret where the client echoed its masked form (or Dify's placeholder)."""
    if not stored:
        return new
    merged = dict(new)
    for k, v in new.items():
        if SECRET_KEY_RE.search(k) and k in stored and v in (HIDDEN, mask(stored[k])):
            merged[k] = stored[k]
    return merged


def _check_provider(provider: str) -> None:
    if not llm.is_known_provider(provider):
        raise invalid_param(f"Unknown model provider '{provider}'.", params="provider")


def _decrypt(ctx: Context, row: ProviderCredential) -> dict[str, Any] | None:
    try:
        return decrypt_json(ctx.settings.secret_key, row.encrypted_credentials)
    except InvalidToken:  # encrypted under an earlier secret key: treat as absent
        log.warning("provider_credentials_undecryptable", provider=row.provider, tenant_id=row.tenant_id)
        return None


async def _row(s: AsyncSession, tenant_id: str, provider: str) -> ProviderCredential | None:
    return (await s.exec(select(ProviderCredential).where(
        ProviderCredential.tenant_id == tenant_id, ProviderCredential.provider == provider))).first()


async def _stored(ctx: Context, tenant_id: str, provider: str) -> ProviderCredential | None:
    async with ctx.db.session() as s:
        return await _row(s, tenant_id, provider)


async def list_providers(ctx: Context, p: Principal) -> list[ProviderView]:
    async with ctx.db.session() as s:
        rows = list(await s.exec(select(ProviderCredential).where(ProviderCredential.tenant_id == p.tenant_id)
                                 .order_by(col(ProviderCredential.provider))))
    return [ProviderView(r.provider, mask_credentials(_decrypt(ctx, r) or {}), r.updated_at) for r in rows]


async def save_credentials(ctx: Context, p: Principal, provider: str, credentials: dict[str, Any]) -> None:
    _check_provider(provider)
    row = await _stored(ctx, p.tenant_id, provider)
    creds = merge_hidden(credentials, _decrypt(ctx, row) if row else None)
    blob = encrypt_json(ctx.settings.secret_key, creds)
    for attempt in range(2):  # upsert; a concurrent first save makes the insert fail once, then we update
        async with ctx.db.session() as s:
            row = await _row(s, p.tenant_id, provider)
            if row is None:
                s.add(ProviderCredential(tenant_id=p.tenant_id, provider=provider, encrypted_credentials=blob))
            else:
                row.encrypted_credentials = blob
                row.updated_at = utcnow()
            try:
                await s.commit()
                break
            except IntegrityError:
                await s.rollback()
                if attempt:
                    raise
    await publish_change(ctx.bus, "provider", p.tenant_id, provider=provider)


async def delete_credentials(ctx: Context, p: Principal, provider: str) -> None:
    _check_provider(provider)
    async with ctx.db.session() as s:
        row = await _row(s, p.tenant_id, provider)
        if row is None:
            return  # already gone: deleting is idempotent
        await s.delete(row)
        await s.commit()
    await publish_change(ctx.bus, "provider", p.tenant_id, provider=provider)


async def validate_credentials(ctx: Context, p: Principal, provider: str, credentials: dict[str, Any],
                               model: str | None) -> str | None:
    """One real call with these credentials; the provider's error message, or None when they work."""
    _check_provider(provider)
    row = await _stored(ctx, p.tenant_id, provider)
    creds = merge_hidden(credentials, _decrypt(ctx, row) if row else None)
    # the first litellm import takes seconds: do it off the event loop, which serves every service
    await asyncio.to_thread(llm.litellm)
    try:
        await llm.validate_credentials(provider, creds, model)
    except Exception as e:  # noqa: BLE001 - any failure is the answer, reported like Dify (HTTP 200)
        log.info("provider_credentials_invalid", provider=provider, error_type=type(e).__name__)
        return str(e) or type(e).__name__
    return None

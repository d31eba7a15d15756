"""Model-provider credentials of a workspace, and models' own credentials (Dify's "Add model" on a provider,
which a call to that model uses instead of the provider's): stored encrypted, shown masked, checked with a
real call."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.console.service.common import Principal, publish_change
from shared import llm
from shared.context import Context
from shared.credentials import check_model_type
from shared.crypto import encrypt_json, try_decrypt_json
from shared.errors import ApiError, invalid_param, not_found
from shared.models import ProviderCredential, ProviderModelCredential, utcnow

log = structlog.get_logger("plexus.console.providers")

# Values of these keys are secrets: listed masked, and a masked value sent back means "unchanged".
SECRET_KEY_RE = re.compile(r"key|secret|token|password", re.IGNORECASE)
HIDDEN = "[__HIDDEN__]"  # what Dify's web UI sends for a secret the user did not touch


@dataclass(frozen=True, slots=True)
class ProviderView:
    provider: str
    credentials: dict[str, Any]  # masked; {} when only some of its models have credentials of their own
    updated_at: datetime | None
    has_credentials: bool = True  # provider-level credentials
    models: tuple[dict[str, str], ...] = ()  # {model, model_type} of its models with their own credentials


@dataclass(frozen=True, slots=True)
class ModelView:
    model: str
    model_type: str
    credentials: dict[str, Any]  # masked


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


def _decrypt(ctx: Context, row: ProviderCredential | ProviderModelCredential) -> dict[str, Any] | None:
    found = try_decrypt_json(ctx.settings.secret_key, row.encrypted_credentials)
    if found is None:  # encrypted under an earlier secret key: treat as absent
        log.warning("provider_credentials_undecryptable", provider=row.provider, tenant_id=row.tenant_id)
    return found


async def _row(s: AsyncSession, tenant_id: str, provider: str) -> ProviderCredential | None:
    return (await s.exec(select(ProviderCredential).where(
        ProviderCredential.tenant_id == tenant_id, ProviderCredential.provider == provider))).first()


async def _stored(ctx: Context, tenant_id: str, provider: str) -> ProviderCredential | None:
    async with ctx.db.session() as s:
        return await _row(s, tenant_id, provider)


async def list_providers(ctx: Context, p: Principal) -> list[ProviderView]:
    """Every provider with credentials: its own, or only some of its models' (listed in ``models``)."""
    async with ctx.db.session() as s:
        rows = list(await s.exec(select(ProviderCredential).where(ProviderCredential.tenant_id == p.tenant_id)))
        own = list(await s.exec(
            select(ProviderModelCredential.provider, ProviderModelCredential.model, ProviderModelCredential.model_type)
            .where(ProviderModelCredential.tenant_id == p.tenant_id)
            .order_by(col(ProviderModelCredential.model), col(ProviderModelCredential.model_type))))
    models: dict[str, list[dict[str, str]]] = {}
    for provider, model, model_type in own:
        models.setdefault(provider, []).append({"model": model, "model_type": model_type})
    views = {r.provider: ProviderView(r.provider, mask_credentials(_decrypt(ctx, r) or {}), r.updated_at,
                                      models=tuple(models.get(r.provider, ()))) for r in rows}
    for provider, listed in models.items():
        views.setdefault(provider, ProviderView(provider, {}, None, has_credentials=False, models=tuple(listed)))
    return [views[k] for k in sorted(views)]


async def save_credentials(ctx: Context, p: Principal, provider: str, credentials: dict[str, Any]) -> None:
    _check_provider(provider)
    row = await _stored(ctx, p.tenant_id, provider)
    creds = merge_hidden(credentials, _decrypt(ctx, row) if row else None)
    await _upsert(ctx, lambda s: _row(s, p.tenant_id, provider),
                  lambda blob: ProviderCredential(tenant_id=p.tenant_id, provider=provider, encrypted_credentials=blob),
                  encrypt_json(ctx.settings.secret_key, creds))
    await publish_change(ctx.bus, "provider", p.tenant_id, provider=provider)


async def _upsert(ctx: Context, find: Callable[[AsyncSession], Awaitable[Any]], make: Callable[[str], Any],
                  blob: str) -> None:
    """Store encrypted credentials in the row ``find`` finds, else in a new one ``make`` builds: a concurrent
    first save makes the insert fail once, then the row it made is updated."""
    for attempt in range(2):
        async with ctx.db.session() as s:
            row = await find(s)
            if row is None:
                s.add(make(blob))
            else:
                row.encrypted_credentials = blob
                row.updated_at = utcnow()
            try:
                await s.commit()
                return
            except IntegrityError:
                await s.rollback()
                if attempt:
                    raise


async def delete_credentials(ctx: Context, p: Principal, provider: str) -> None:
    _check_provider(provider)
    async with ctx.db.session() as s:
        row = await _row(s, p.tenant_id, provider)
        if row is None:
            return  # already gone: deleting is idempotent
        await s.delete(row)
        await s.commit()
    await publish_change(ctx.bus, "provider", p.tenant_id, provider=provider)


async def _test_call(provider: str, creds: dict[str, Any], model: str | None, model_type: str = "llm"
                     ) -> str | None:
    """One real call with these credentials; the provider's error message, or None when they work."""
    # the first litellm import takes seconds: do it off the event loop, which serves every service
    await asyncio.to_thread(llm.litellm)
    try:
        await llm.validate_credentials(provider, creds, model, model_type=model_type)
    except Exception as e:  # noqa: BLE001 - any failure is the answer, reported like Dify (HTTP 200)
        log.info("provider_credentials_invalid", provider=provider, model_type=model_type,
                 error_type=type(e).__name__)
        return str(e) or type(e).__name__
    return None


async def validate_credentials(ctx: Context, p: Principal, provider: str, credentials: dict[str, Any],
                               model: str | None) -> str | None:
    """One real call with these credentials; the provider's error message, or None when they work."""
    _check_provider(provider)
    row = await _stored(ctx, p.tenant_id, provider)
    creds = merge_hidden(credentials, _decrypt(ctx, row) if row else None)
    return await _test_call(provider, creds, model)


# ---- a model's own credentials (POST|DELETE|GET …/model-providers/{provider}/models) -----------------


def _check_model(provider: str, model: str, model_type: str) -> None:
    _check_provider(provider)
    check_model_type(model_type)
    if not model:
        raise invalid_param("model is required.", params="model")


def _no_model_credentials(provider: str, model: str, model_type: str) -> ApiError:
    return not_found(f"Model '{model}' ({model_type}) of provider '{provider}' has no credentials of its "
                     "own.")


async def _model_row(s: AsyncSession, tenant_id: str, provider: str, model: str, model_type: str
                     ) -> ProviderModelCredential | None:
    return (await s.exec(select(ProviderModelCredential).where(
        ProviderModelCredential.tenant_id == tenant_id, ProviderModelCredential.provider == provider,
        ProviderModelCredential.model == model, ProviderModelCredential.model_type == model_type))).first()


async def _model_creds(ctx: Context, tenant_id: str, provider: str, model: str, model_type: str,
                       credentials: dict[str, Any]) -> dict[str, Any]:
    """``credentials`` with the model's stored secrets where the client sent them back masked."""
    async with ctx.db.session() as s:
        row = await _model_row(s, tenant_id, provider, model, model_type)
    return merge_hidden(credentials, _decrypt(ctx, row) if row else None)


async def list_models(ctx: Context, p: Principal, provider: str) -> list[ModelView]:
    """The provider's models that have their own credentials."""
    _check_provider(provider)
    async with ctx.db.session() as s:
        rows = list(await s.exec(select(ProviderModelCredential).where(
            ProviderModelCredential.tenant_id == p.tenant_id, ProviderModelCredential.provider == provider)
            .order_by(col(ProviderModelCredential.model_type), col(ProviderModelCredential.model))))
    return [ModelView(r.model, r.model_type, mask_credentials(_decrypt(ctx, r) or {})) for r in rows]


async def model_credentials(ctx: Context, p: Principal, provider: str, model: str, model_type: str
                            ) -> dict[str, Any]:
    """The model's own credentials, masked; 404 when it has none."""
    _check_model(provider, model, model_type)
    async with ctx.db.session() as s:
        row = await _model_row(s, p.tenant_id, provider, model, model_type)
    if row is None:
        raise _no_model_credentials(provider, model, model_type)
    return mask_credentials(_decrypt(ctx, row) or {})


async def validate_model_credentials(ctx: Context, p: Principal, provider: str, model: str, model_type: str,
                                     credentials: dict[str, Any]) -> str | None:
    """One real call to the model with these credentials; the provider's error message, or None."""
    _check_model(provider, model, model_type)
    creds = await _model_creds(ctx, p.tenant_id, provider, model, model_type, credentials)
    return await _test_call(provider, creds, model, model_type)


async def save_model_credentials(ctx: Context, p: Principal, provider: str, model: str, model_type: str,
                                 credentials: dict[str, Any]) -> None:
    """Check the credentials with a real call to the model (400 with the provider's error, nothing stored),
    then store them as the model's own."""
    _check_model(provider, model, model_type)
    creds = await _model_creds(ctx, p.tenant_id, provider, model, model_type, credentials)
    error = await _test_call(provider, creds, model, model_type)
    if error is not None:
        raise invalid_param(error, params="credentials")
    await _upsert(ctx, lambda s: _model_row(s, p.tenant_id, provider, model, model_type),
                  lambda blob: ProviderModelCredential(tenant_id=p.tenant_id, provider=provider, model=model,
                                                       model_type=model_type, encrypted_credentials=blob,
                                                       created_by=p.key_id or p.account_id),
                  encrypt_json(ctx.settings.secret_key, creds))
    await publish_change(ctx.bus, "provider", p.tenant_id, provider=provider, model=model,
                         model_type=model_type)


async def delete_model_credentials(ctx: Context, p: Principal, provider: str, model: str, model_type: str
                                   ) -> None:
    """Remove the model's own credentials (it uses the provider's again); 404 when it has none."""
    _check_model(provider, model, model_type)
    async with ctx.db.session() as s:
        row = await _model_row(s, p.tenant_id, provider, model, model_type)
        if row is None:
            raise _no_model_credentials(provider, model, model_type)
        await s.delete(row)
        await s.commit()
    await publish_change(ctx.bus, "provider", p.tenant_id, provider=provider, model=model,
                         model_type=model_type)

"""A workspace's provider credentials, decrypted for a call (the console stores them encrypted), and its default
models (the console's ``/workspaces/current/default-model``), as the other services read them."""

from __future__ import annotations

from typing import Any

import structlog
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from shared.crypto import decrypt_json
from shared.knowledge.models import LOCAL_EMBEDDING_MODEL, LOCAL_EMBEDDING_PROVIDER
from shared.llm import canonical_provider
from shared.models import ProviderCredential, TenantDefaultModel

log = structlog.get_logger("plexus.credentials")


async def provider_credentials(s: AsyncSession, secret_key: str | None, tenant_id: str, provider: str
                               ) -> dict[str, Any] | None:
    """The credentials saved for ``provider`` (or its canonical litellm name); None when there are none
    or they cannot be decrypted (a rotated secret key or a corrupt row: the provider is not usable)."""
    names = {provider, canonical_provider(provider)}
    rows = (await s.exec(
        select(ProviderCredential.provider, ProviderCredential.encrypted_credentials).where(
            ProviderCredential.tenant_id == tenant_id, ProviderCredential.provider.in_(names))
    )).all()
    if not rows or not secret_key:
        return None
    rows = sorted(rows, key=lambda r: r[0] != provider)  # the exact provider name wins over its alias
    try:
        return decrypt_json(secret_key, rows[0][1])
    except Exception:  # noqa: BLE001
        log.warning("provider_credentials_undecryptable", tenant_id=tenant_id, provider=provider)
        return None


async def default_model(s: AsyncSession, tenant_id: str, model_type: str) -> tuple[str, str] | None:
    """The workspace's default (provider, model) of ``model_type`` ("llm", "text-embedding", ...), or None."""
    row = (await s.exec(select(TenantDefaultModel.provider, TenantDefaultModel.model).where(
        TenantDefaultModel.tenant_id == tenant_id, TenantDefaultModel.model_type == model_type))).first()
    return (row[0], row[1]) if row is not None else None


def _model_entry(provider: str, label: str, model: str, model_type: str, **props: Any) -> dict[str, Any]:
    return {"provider": provider, "label": {"en_US": label}, "icon_small": None, "icon_large": None,
            "status": "active",
            "models": [{"model": model, "label": {"en_US": model}, "model_type": model_type, "features": [],
                        "fetch_from": "predefined-model", "model_properties": props, "deprecated": False,
                        "status": "active", "load_balancing_enabled": False}]}


async def models_of_type(s: AsyncSession, secret_key: str | None, tenant_id: str, model_type: str
                         ) -> list[dict[str, Any]]:
    """``GET …/workspaces/current/models/model-types/{type}`` (the console's, and the knowledge API's for dataset
    keys): the workspace's default model of that type when its provider has credentials, and for
    ``text-embedding`` the built-in model, which needs none."""
    data = []
    default = await default_model(s, tenant_id, model_type)
    if default is not None and default[0] != LOCAL_EMBEDDING_PROVIDER \
            and await provider_credentials(s, secret_key, tenant_id, default[0]) is not None:
        data.append(_model_entry(default[0], default[0], default[1], model_type))
    if model_type == "text-embedding":
        data.append(_model_entry(LOCAL_EMBEDDING_PROVIDER, "Plexus built-in", LOCAL_EMBEDDING_MODEL, model_type,
                                 context_size=256))
    return data

"""A workspace's provider credentials and models' own credentials, decrypted for a call (the console stores
them encrypted), and its default models (the console's ``/workspaces/current/default-model``), as the other
services read them."""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy import literal_column, union_all
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from shared.crypto import try_decrypt_json
from shared.errors import invalid_param
from shared.knowledge.models import LOCAL_EMBEDDING_MODEL, LOCAL_EMBEDDING_PROVIDER
from shared.llm import canonical_provider
from shared.models import ProviderCredential, ProviderModelCredential, TenantDefaultModel

log = structlog.get_logger("plexus.credentials")
MODEL_TYPES = ("llm", "text-embedding", "rerank", "speech2text", "tts", "moderation")


def check_model_type(model_type: Any) -> str:
    if model_type not in MODEL_TYPES:
        raise invalid_param(f"model_type must be one of {', '.join(MODEL_TYPES)}.", params="model_type")
    return model_type


async def provider_credentials(s: AsyncSession, secret_key: str | None, tenant_id: str, provider: str,
                               model: str | None = None, model_type: str = "llm") -> dict[str, Any] | None:
    """The credentials a call to ``model`` (of ``model_type``) of ``provider`` uses, decrypted: the model's
    own (saved with ``POST …/model-providers/{provider}/models``) when it has them, else the provider's; under
    each, the exact provider name wins over its canonical litellm name. One query reads both kinds. None when
    there are none or the winning row cannot be decrypted (a rotated secret key or a corrupt row: not
    usable)."""
    names = {provider, canonical_provider(provider)}
    # own: 1 for the model's row, 0 for the provider's (SQL constants, no parameters in the select list)
    query: Any = select(ProviderCredential.provider, literal_column("0").label("own"),
                        ProviderCredential.encrypted_credentials).where(
        ProviderCredential.tenant_id == tenant_id, col(ProviderCredential.provider).in_(names))
    if model:
        query = union_all(query, select(
            ProviderModelCredential.provider, literal_column("1").label("own"),
            ProviderModelCredential.encrypted_credentials).where(
            ProviderModelCredential.tenant_id == tenant_id, col(ProviderModelCredential.provider).in_(names),
            ProviderModelCredential.model == model, ProviderModelCredential.model_type == model_type))
    rows = (await s.execute(query)).all()
    if not rows or not secret_key:
        return None
    best = min(rows, key=lambda r: (not r[1], r[0] != provider))  # the model's own, then the exact name
    found = try_decrypt_json(secret_key, best[2])
    if found is None:
        log.warning("provider_credentials_undecryptable", tenant_id=tenant_id, provider=provider,
                    model=model if best[1] else None)
    return found


async def default_model(s: AsyncSession, tenant_id: str, model_type: str) -> tuple[str, str] | None:
    """The workspace's default (provider, model) of ``model_type`` ("llm", "text-embedding", ...), or None."""
    row = (await s.exec(select(TenantDefaultModel.provider, TenantDefaultModel.model).where(
        TenantDefaultModel.tenant_id == tenant_id, TenantDefaultModel.model_type == model_type))).first()
    return (row[0], row[1]) if row is not None else None


def _add_model(data: dict[str, dict[str, Any]], provider: str, label: str, model: str, model_type: str,
               fetch_from: str = "predefined-model", **props: Any) -> None:
    entry = data.setdefault(provider, {"provider": provider, "label": {"en_US": label}, "icon_small": None,
                                       "icon_large": None, "status": "active", "models": []})
    entry["models"].append({"model": model, "label": {"en_US": model}, "model_type": model_type,
                            "features": [], "fetch_from": fetch_from, "model_properties": props,
                            "deprecated": False, "status": "active", "load_balancing_enabled": False})


async def models_of_type(s: AsyncSession, secret_key: str | None, tenant_id: str, model_type: str
                         ) -> list[dict[str, Any]]:
    """``GET …/workspaces/current/models/model-types/{type}`` (the console's, and the knowledge API's for dataset
    keys), one entry per provider: the workspace's default model of that type when it has credentials (its
    own or its provider's), then the models of that type with their own credentials ("customizable-model"),
    and for ``text-embedding`` the built-in model, which needs none."""
    data: dict[str, dict[str, Any]] = {}
    default = await default_model(s, tenant_id, model_type)
    if default is not None and default[0] != LOCAL_EMBEDDING_PROVIDER and await provider_credentials(
            s, secret_key, tenant_id, default[0], default[1], model_type) is not None:
        _add_model(data, default[0], default[0], default[1], model_type)
    own = (await s.exec(select(ProviderModelCredential).where(
        ProviderModelCredential.tenant_id == tenant_id, ProviderModelCredential.model_type == model_type)
        .order_by(col(ProviderModelCredential.provider), col(ProviderModelCredential.model)))).all()
    for row in own:
        if default is not None and (row.provider, row.model) == default:
            continue
        if try_decrypt_json(secret_key, row.encrypted_credentials) is not None:
            _add_model(data, row.provider, row.provider, row.model, model_type, "customizable-model")
    if model_type == "text-embedding":
        _add_model(data, LOCAL_EMBEDDING_PROVIDER, "Plexus built-in", LOCAL_EMBEDDING_MODEL, model_type,
                   context_size=256)
    return list(data.values())

"""A workspace's default model per model type (Dify's ``/workspaces/current/default-model``): the model the
API uses where a request names none, e.g. speech2text and tts for the app audio endpoints (docs/audio.md).

A default is set only for a model the workspace has saved credentials for (its own or its provider's). The
runtime reads the default per audio request (no cache to drop), so a change here is in force on every replica
at once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from services.console.service.common import Principal
from shared import llm
from shared.context import Context
from shared.credentials import check_model_type, provider_credentials
from shared.errors import invalid_param
from shared.models import TenantDefaultModel, utcnow

MAX_SETTINGS = 32  # entries one request may carry (there are six types)


def view(row: TenantDefaultModel | None) -> dict[str, Any]:
    if row is None:
        return {"data": None}
    return {"data": {"model": row.model, "model_type": row.model_type, "provider": {"provider": row.provider}}}


async def get_default(ctx: Context, p: Principal, model_type: Any) -> dict[str, Any]:
    check_model_type(model_type)
    async with ctx.db.session() as s:
        row = (await s.exec(select(TenantDefaultModel).where(
            TenantDefaultModel.tenant_id == p.tenant_id, TenantDefaultModel.model_type == model_type))).first()
    return view(row)


def _text(entry: dict[str, Any], key: str, i: int) -> str:
    value = entry.get(key)
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 255:
        raise invalid_param(f"model_settings[{i}].{key} must be a string of at most 255 characters.",
                            params=key)
    return value.strip()


async def set_defaults(ctx: Context, p: Principal, model_settings: Any) -> None:
    """Upsert (provider and model given) or remove (neither given) each entry's default; all entries are
    checked before any is written."""
    if not isinstance(model_settings, list) or not model_settings:
        raise invalid_param("model_settings must be a non-empty list.", params="model_settings")
    if len(model_settings) > MAX_SETTINGS:
        raise invalid_param(f"model_settings takes at most {MAX_SETTINGS} entries.", params="model_settings")
    wanted: dict[str, tuple[str, str] | None] = {}  # model_type → (provider, model), None = remove
    for i, entry in enumerate(model_settings):
        if not isinstance(entry, dict):
            raise invalid_param(f"model_settings[{i}] must be an object with model_type, provider and model.",
                                params="model_settings")
        model_type = check_model_type(entry.get("model_type"))
        provider, model = _text(entry, "provider", i), _text(entry, "model", i)
        if bool(provider) != bool(model):
            raise invalid_param(f"model_settings[{i}]: give both provider and model, or neither to remove the "
                                f"{model_type} default.", params="provider" if not provider else "model")
        if provider and not llm.is_known_provider(provider):
            raise invalid_param(f"Unknown model provider '{provider}'.", params="provider")
        wanted[model_type] = (provider, model) if provider else None
    async with ctx.db.session() as s:
        for model_type, chosen in wanted.items():  # usable with the model's own credentials or its provider's
            if chosen is not None and await provider_credentials(s, ctx.settings.secret_key, p.tenant_id,
                                                                 chosen[0], chosen[1], model_type) is None:
                raise invalid_param(f"The workspace has no credentials for model provider '{chosen[0]}' "
                                    f"nor for its model '{chosen[1]}'; save them under Settings -> Model "
                                    "Provider first.", params="provider")
    for attempt in range(2):  # a concurrent first save makes the insert fail once; the retry updates
        async with ctx.db.session() as s:
            for model_type, chosen in wanted.items():
                where = (TenantDefaultModel.tenant_id == p.tenant_id, TenantDefaultModel.model_type == model_type)
                if chosen is None:
                    await s.exec(delete(TenantDefaultModel).where(*where))  # type: ignore[call-overload]
                    continue
                row = (await s.exec(select(TenantDefaultModel).where(*where))).first()
                if row is None:
                    s.add(TenantDefaultModel(tenant_id=p.tenant_id, model_type=model_type,
                                             provider=chosen[0], model=chosen[1]))
                else:
                    row.provider, row.model, row.updated_at = chosen[0], chosen[1], utcnow()
            try:
                await s.commit()
                return
            except IntegrityError:
                await s.rollback()
                if attempt:
                    raise

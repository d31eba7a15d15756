"""A workspace's API-based extensions (Dify's ``/console/api/api-based-extension``): name, endpoint and key,
the key encrypted at rest and shown masked. Saving one pings it (shared.extensions), so an app never
points at an endpoint that does not speak the protocol. Apps name an extension in their model config's
``external_data_tools`` or ``api`` moderation; one in use there cannot be deleted."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.console.service.common import Principal, publish_change
from services.console.service.providers import mask_credentials, merge_hidden
from shared import extensions
from shared.context import Context
from shared.crypto import encrypt_json, try_decrypt_json
from shared.egress import Egress, EgressPolicy
from shared.errors import ApiError, invalid_param, not_found
from shared.models import ApiBasedExtension, App, AppModelConfig, Workflow, ts

PING_TIMEOUT = 10.0


def view(ext: ApiBasedExtension, creds: dict[str, Any]) -> dict[str, Any]:
    """``creds``: the decrypted ``{"api_key"}``, shown masked as provider credentials are."""
    return {"id": ext.id, "name": ext.name, "api_endpoint": ext.api_endpoint,
            "api_key": mask_credentials(creds).get("api_key", ""), "created_at": ts(ext.created_at)}


def _not_found() -> ApiError:
    return not_found("API-based extension not found.")


def _text(body: dict[str, Any], key: str, min_len: int, max_len: int = 255) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not min_len <= len(value.strip()) <= max_len:
        raise invalid_param(f"{key} must be a string of {min_len} to {max_len} characters.", params=key)
    return value.strip()


class Extensions:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.egress = Egress(EgressPolicy.from_allowlist(ctx.settings.tools.egress_allowlist))

    async def close(self) -> None:
        await self.egress.close()

    def _creds(self, ext: ApiBasedExtension) -> dict[str, Any]:
        """The key, or nothing when it cannot be read (an earlier secret key): shown empty, set again on save."""
        return try_decrypt_json(self.ctx.settings.secret_key, ext.encrypted_api_key) or {}

    async def list(self, p: Principal) -> list[dict[str, Any]]:
        async with self.ctx.db.session() as s:
            rows = (await s.exec(select(ApiBasedExtension).where(ApiBasedExtension.tenant_id == p.tenant_id)
                                 .order_by(ApiBasedExtension.created_at.desc()))).all()
        return [view(e, self._creds(e)) for e in rows]

    async def get(self, p: Principal, ext_id: str) -> dict[str, Any]:
        async with self.ctx.db.session() as s:
            ext = await self._get(s, p, ext_id)
        return view(ext, self._creds(ext))

    async def save(self, p: Principal, body: dict[str, Any], ext_id: str | None = None) -> dict[str, Any]:
        """Create (``ext_id`` None) or update; the key may be sent back as ``[__HIDDEN__]`` or as shown to keep
        it. The endpoint is pinged with the key before anything is stored."""
        name = _text(body, "name", 1)
        endpoint = _text(body, "api_endpoint", 5)
        if not endpoint.startswith(("http://", "https://")):
            raise invalid_param("api_endpoint must be an http(s) URL.", params="api_endpoint")
        async with self.ctx.db.session() as s:
            ext = await self._get(s, p, ext_id) if ext_id else None
            creds = merge_hidden({"api_key": body.get("api_key")}, self._creds(ext) if ext is not None else None)
            key = creds["api_key"]
            if not isinstance(key, str) or len(key) < 5 or len(key) > 255:
                raise invalid_param("api_key must be a string of 5 to 255 characters.", params="api_key")
        try:
            await extensions.ping(self.egress, endpoint, key, PING_TIMEOUT)
        except extensions.ExtensionError as e:
            raise invalid_param(str(e), params="api_endpoint") from None
        async with self.ctx.db.session() as s:
            ext = await self._get(s, p, ext_id) if ext_id else ApiBasedExtension(tenant_id=p.tenant_id, name=name,
                                                                                  api_endpoint=endpoint,
                                                                                  encrypted_api_key="")
            ext.name, ext.api_endpoint = name, endpoint
            ext.encrypted_api_key = encrypt_json(self.ctx.settings.secret_key, creds)
            s.add(ext)
            try:
                await s.commit()
            except IntegrityError:
                await s.rollback()
                raise invalid_param(f"An API-based extension named {name!r} exists already.", params="name") from None
            await s.refresh(ext)
        # an api moderator holds the endpoint and key: the runtimes reload the workspace's apps now
        await publish_change(self.ctx.bus, "tenant", p.tenant_id)
        return view(ext, creds)

    async def delete(self, p: Principal, ext_id: str) -> None:
        async with self.ctx.db.session() as s:
            ext = await self._get(s, p, ext_id)
            configs = (await s.exec(select(AppModelConfig.config).join(App, App.app_model_config_id == AppModelConfig.id)
                                    .where(App.tenant_id == p.tenant_id))).all()
            # graph apps: the features of the draft and of the version in service (older versions stay runnable
            # by workflow_id; a run of one then fails on the missing extension)
            features = (await s.exec(select(Workflow.features).join(App, App.id == Workflow.app_id).where(
                App.tenant_id == p.tenant_id,
                or_(Workflow.version == "draft", Workflow.id == App.workflow_id)))).all()
            if any(ext.id in extension_ids(c) for c in [*configs, *features]):
                raise ApiError(400, "invalid_param", "The API-based extension is used by an app's external data "
                                                     "tools or moderation; remove it there first.")
            await s.delete(ext)
            await s.commit()

    async def _get(self, s: AsyncSession, p: Principal, ext_id: str) -> ApiBasedExtension:
        ext = await s.get(ApiBasedExtension, ext_id)
        if ext is None or ext.tenant_id != p.tenant_id:
            raise _not_found()
        return ext


async def check_exist(s: AsyncSession, tenant_id: str, ids: set[str]) -> None:
    """400 naming the first of ``ids`` that is not an extension of the workspace (a model-config save)."""
    if not ids:
        return
    found = set((await s.exec(select(ApiBasedExtension.id).where(
        ApiBasedExtension.tenant_id == tenant_id, col(ApiBasedExtension.id).in_(ids)))).all())
    for missing in sorted(ids - found):
        raise invalid_param(f"API-based extension {missing} does not exist.", params="api_based_extension_id")


def extension_ids(config: Any) -> set[str]:
    """The extensions a model config calls: its enabled external data tools' and its ``api`` moderation's."""
    if not isinstance(config, dict):
        return set()
    uses = [t for t in config.get("external_data_tools") or [] if isinstance(t, dict) and t.get("enabled")]
    swa = config.get("sensitive_word_avoidance")
    if isinstance(swa, dict) and swa.get("enabled") and swa.get("type") == "api":
        uses.append(swa)
    return {str(u["config"]["api_based_extension_id"]) for u in uses
            if isinstance(u.get("config"), dict) and u["config"].get("api_based_extension_id")}

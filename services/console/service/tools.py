"""A workspace's custom tool providers (OpenAPI 3 documents or webhook definitions): stored with their derived
tool specs, credentials encrypted; test calls go through the tools service like an agent's calls."""

from __future__ import annotations

import re
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.console.service.common import Principal, invalid_from, publish_change
from services.console.service.providers import HIDDEN, mask_credentials, merge_hidden
from shared.context import Context
from shared.crypto import decrypt_json, encrypt_json
from shared.errors import ApiError, invalid_param, not_found
from shared.models import ToolProvider, utcnow
from shared.tool_catalog import BUILTIN_TOOLS, ToolCredentials, call_tool, effective_timeout
from shared.tool_schema import ToolSchemaError, ToolSpec, parse_provider_schema

NAME_RE = re.compile(r"^[\w .-]{1,64}$")
SCHEMA_TYPES = ("openapi", "webhook")


def _name(name: Any, field: str = "provider") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name.strip()):
        raise invalid_param(f"{field} must be 1-64 letters, digits, spaces, '.', '_' or '-'", params=field)
    return name.strip()


def _specs(schema_type: Any, schema: Any) -> tuple[str, str, list[ToolSpec]]:
    if schema_type not in SCHEMA_TYPES:
        raise invalid_param(f"schema_type must be one of {list(SCHEMA_TYPES)}", params="schema_type")
    if isinstance(schema, dict):
        schema = orjson.dumps(schema).decode()
    if not isinstance(schema, str) or not schema.strip():
        raise invalid_param("schema is required", params="schema")
    try:
        return schema_type, schema, parse_provider_schema(schema_type, schema)
    except ToolSchemaError as e:
        raise invalid_param(f"invalid schema: {e}", params="schema") from None


def _credentials(raw: Any, stored: dict[str, Any] | None) -> ToolCredentials:
    if not isinstance(raw, dict | None):
        raise invalid_param("credentials must be an object", params="credentials")
    try:
        # a masked secret echoed back by the client means "unchanged", as for model providers
        return ToolCredentials.model_validate(merge_hidden(raw or {}, stored))
    except ValidationError as e:
        raise invalid_from(e) from None


def tool_view(spec: ToolSpec) -> dict[str, Any]:
    return {"name": spec.name, "label": spec.name, "description": spec.description, "method": spec.method,
            "url": spec.url, "parameters": spec.parameters, "timeout": spec.timeout,
            "rate_limit_per_minute": spec.rate_limit_per_minute}


def provider_view(ctx: Context, row: ToolProvider, *, detail: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row.id, "name": row.name, "provider": row.name, "type": "api", "schema_type": row.schema_type,
        "description": row.description, "icon": row.icon or None,
        "tools": [tool_view(ToolSpec.model_validate(t)) for t in row.tools or []],
        "created_at": int(row.created_at.timestamp()), "updated_at": int(row.updated_at.timestamp()),
    }
    if detail:
        secrets = _secrets(ctx, row)
        out["schema"] = row.schema_text
        out["credentials"] = mask_credentials(ToolCredentials.model_validate(secrets.get("auth") or {}).model_dump())
        out["signing"] = bool(secrets.get("signing_secret"))
    return out


def builtin_views() -> list[dict[str, Any]]:
    providers: dict[str, dict[str, Any]] = {}
    for (pid, _), b in BUILTIN_TOOLS.items():
        p = providers.setdefault(pid, {"id": pid, "name": pid, "provider": pid, "type": "builtin", "tools": []})
        p["tools"].append({"name": b.name, "label": b.label, "description": b.description,
                           "parameters": b.parameters, "required_presets": list(b.required_presets)})
    return list(providers.values())


def _secrets(ctx: Context, row: ToolProvider) -> dict[str, Any]:
    try:
        return decrypt_json(ctx.settings.secret_key, row.encrypted_credentials)
    except Exception:  # noqa: BLE001 - encrypted under an earlier secret key: treat as absent
        return {}


async def _by_name(s: AsyncSession, tenant_id: str, name: str) -> ToolProvider:
    row = (await s.exec(select(ToolProvider).where(ToolProvider.tenant_id == tenant_id,
                                                   ToolProvider.name == name))).first()
    if row is None:
        raise not_found(f"Tool provider {name!r} not found.")
    return row


async def list_providers(ctx: Context, p: Principal) -> list[dict[str, Any]]:
    async with ctx.db.session() as s:
        rows = (await s.exec(select(ToolProvider).where(ToolProvider.tenant_id == p.tenant_id)
                             .order_by(col(ToolProvider.name)))).all()
    return builtin_views() + [provider_view(ctx, r) for r in rows]


async def get_provider(ctx: Context, p: Principal, name: str) -> dict[str, Any]:
    async with ctx.db.session() as s:
        return provider_view(ctx, await _by_name(s, p.tenant_id, name), detail=True)


async def save_provider(ctx: Context, p: Principal, body: dict[str, Any], *, original: str | None = None
                        ) -> dict[str, Any]:
    """Create (``original`` None) or update the provider called ``original``."""
    name = _name(body.get("provider"))
    schema_type, schema_text, specs = _specs(body.get("schema_type", "openapi"), body.get("schema"))
    description = body.get("description") or ""
    if not isinstance(description, str) or len(description) > 1000:
        raise invalid_param("description must be a string of at most 1000 characters", params="description")
    icon = body.get("icon") or {}
    if not isinstance(icon, dict):
        raise invalid_param("icon must be an object", params="icon")
    async with ctx.db.session() as s:
        row = await _by_name(s, p.tenant_id, _name(original, "original_provider")) if original else None
        stored = _secrets(ctx, row) if row else {}
        if row is not None and "credentials" not in body:  # an update that does not touch the auth keeps it
            creds = ToolCredentials.model_validate(stored.get("auth") or {})
        else:
            creds = _credentials(body.get("credentials"), stored.get("auth"))
        signing = body.get("signing_secret", HIDDEN if row else None)
        if signing == HIDDEN:
            signing = stored.get("signing_secret")
        if signing is not None and (not isinstance(signing, str) or (signing and len(signing) < 16)):
            raise invalid_param("signing_secret must be a string of at least 16 characters (or empty to sign "
                                "nothing)", params="signing_secret")
        blob = encrypt_json(ctx.settings.secret_key, {"auth": creds.model_dump(), "signing_secret": signing or None})
        if row is None:
            row = ToolProvider(tenant_id=p.tenant_id, name=name, schema_type=schema_type, schema_text=schema_text,
                               encrypted_credentials=blob, created_by=p.account_id)
            s.add(row)
        row.name, row.schema_type, row.schema_text = name, schema_type, schema_text
        row.tools = [spec.model_dump(mode="json") for spec in specs]
        row.description, row.icon, row.encrypted_credentials, row.updated_at = description, icon, blob, utcnow()
        try:
            await s.commit()
        except IntegrityError:
            raise ApiError(400, "provider_name_duplicate", f"A tool provider named {name!r} already exists."
                           ) from None
        await s.refresh(row)
        view = provider_view(ctx, row)
    await publish_change(ctx.bus, "tool_provider", row.id, tenant_id=p.tenant_id)
    return view


async def delete_provider(ctx: Context, p: Principal, name: str) -> None:
    async with ctx.db.session() as s:
        row = await _by_name(s, p.tenant_id, _name(name))
        await s.delete(row)
        await s.commit()
    await publish_change(ctx.bus, "tool_provider", row.id, tenant_id=p.tenant_id)


def preview_schema(body: dict[str, Any]) -> dict[str, Any]:
    schema_type, _, specs = _specs(body.get("schema_type", "openapi"), body.get("schema"))
    return {"schema_type": schema_type, "parameters_schema": [tool_view(t) for t in specs]}


async def test_call(ctx: Context, p: Principal, body: dict[str, Any]) -> dict[str, Any]:
    """Run one tool exactly as an agent would: a saved provider (``provider``) or a draft one (``schema``)."""
    tool_name = body.get("tool_name")
    params = body.get("parameters") or {}
    if not isinstance(tool_name, str) or not tool_name:
        raise invalid_param("tool_name is required", params="tool_name")
    if not isinstance(params, dict):
        raise invalid_param("parameters must be an object", params="parameters")
    payload: dict[str, Any] = {"tenant_id": p.tenant_id, "tool": tool_name, "arguments": params}
    if body.get("schema") is not None:  # a draft: the tools service gets the spec and credentials inline
        _, _, specs = _specs(body.get("schema_type", "openapi"), body.get("schema"))
        spec = next((t for t in specs if t.name == tool_name), None)
        if spec is None:
            raise invalid_param(f"the schema has no tool named {tool_name!r}", params="tool_name")
        stored: dict[str, Any] = {}
        if body.get("provider_name"):
            async with ctx.db.session() as s:
                stored = _secrets(ctx, await _by_name(s, p.tenant_id, _name(body["provider_name"])))
        creds = _credentials(body.get("credentials"), stored.get("auth"))
        signing = body.get("signing_secret")
        payload.update(provider_type="inline", provider_id="inline", spec=spec.model_dump(mode="json"),
                       credentials=creds.model_dump(),
                       signing_secret=stored.get("signing_secret") if signing == HIDDEN else signing)
        provider_id, timeout = "inline", effective_timeout(spec.timeout, ctx.settings.tools)
    else:
        async with ctx.db.session() as s:
            row = await _by_name(s, p.tenant_id, _name(body.get("provider")))
        spec = next((ToolSpec.model_validate(t) for t in row.tools or [] if t.get("name") == tool_name), None)
        if spec is None:
            raise invalid_param(f"tool provider {row.name!r} has no tool named {tool_name!r}", params="tool_name")
        payload.update(provider_type="api", provider_id=row.id)
        provider_id, timeout = row.id, effective_timeout(spec.timeout, ctx.settings.tools)
    result = await call_tool(ctx.bus, provider_id, payload, timeout)
    if result["ok"]:
        return {"result": result["output"], "elapsed": result.get("elapsed")}
    return {"error": result["error"]["message"], "code": result["error"]["code"], "elapsed": result.get("elapsed")}

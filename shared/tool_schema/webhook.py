"""Single JSON-schema webhook definitions → one tool spec (``parse_webhook``), and
``parse_provider_schema``, the entry point for a whole provider of either type, which also enforces
``MAX_TOOLS`` and unique tool names.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

import jsonschema

from shared.tool_schema.document import _check_size, _load_document, _Resolver
from shared.tool_schema.openapi import _parse_openapi_document, parse_openapi
from shared.tool_schema.spec import (
    _HEADER_NAME,
    _NAME_RE,
    _WEBHOOK_FIELDS,
    HTTP_METHODS,
    MAX_TOOLS,
    ToolSchemaError,
    ToolSpec,
    _build_spec,
    _kind,
    _positive_int,
    _positive_number,
    _truncate,
)


def parse_webhook(definition: dict[str, Any] | str) -> ToolSpec:
    """A single tool from ``{"name", "description", "url", "method", "parameters", "headers"?,
    "timeout"?, "rate_limit_per_minute"?}``. GET/DELETE send every parameter in the query string,
    POST/PUT/PATCH as the properties of a JSON body."""
    if isinstance(definition, str):
        definition = _load_document(definition)
    elif isinstance(definition, dict):
        _check_size(definition)
    if not isinstance(definition, dict):
        raise ToolSchemaError(f"webhook: the definition must be an object, got {_kind(definition)}")
    unknown = [str(k) for k in definition if k not in _WEBHOOK_FIELDS]
    if unknown:
        raise ToolSchemaError(f"webhook: unknown field '{unknown[0]}' (allowed: {', '.join(_WEBHOOK_FIELDS)})")

    name = definition.get("name")
    if name is None:
        raise ToolSchemaError("webhook.name: missing")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ToolSchemaError(
            f"webhook.name: {name!r} is not a valid tool name (1-64 characters from a-z, A-Z, 0-9, _ and -)")
    description = definition.get("description", "")
    if not isinstance(description, str):
        raise ToolSchemaError(f"webhook.description: must be a string, got {_kind(description)}")
    url = definition.get("url")
    if url is None:
        raise ToolSchemaError("webhook.url: missing")
    if not isinstance(url, str) or urlsplit(url.strip()).scheme.lower() not in ("http", "https") \
            or not urlsplit(url.strip()).netloc:
        raise ToolSchemaError(f"webhook.url: {url!r} is not an absolute http(s) URL")
    method = definition.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
        raise ToolSchemaError(f"webhook.method: unknown method {method!r} (expected {', '.join(HTTP_METHODS)})")
    method = method.upper()

    raw_params = definition.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(raw_params, dict) or raw_params.get("type") != "object":
        raise ToolSchemaError('webhook.parameters: must be a JSON schema object with "type": "object"')
    raw_props = raw_params.get("properties", {})
    if not isinstance(raw_props, dict):
        raise ToolSchemaError(f"webhook.parameters.properties: must be an object, got {_kind(raw_props)}")
    raw_required = raw_params.get("required", [])
    if not isinstance(raw_required, list) or not all(isinstance(r, str) for r in raw_required):
        raise ToolSchemaError("webhook.parameters.required: must be a list of property names")
    for r in raw_required:
        if r not in raw_props:
            raise ToolSchemaError(f"webhook.parameters.required: '{r}' is not one of the properties")
    try:
        jsonschema.Draft202012Validator.check_schema(raw_params)
    except jsonschema.SchemaError as exc:
        at = "".join(f".{p}" for p in exc.absolute_path)
        raise ToolSchemaError(f"webhook.parameters{at}: {exc.message[:300]}") from None
    except RecursionError:
        raise ToolSchemaError("webhook.parameters: nested too deeply") from None
    cleaned = _Resolver(raw_params).schema(raw_params, "webhook.parameters")
    properties = {k: (v if isinstance(v, dict) else {}) for k, v in cleaned.get("properties", {}).items()}

    headers = definition.get("headers") or {}
    if not isinstance(headers, dict):
        raise ToolSchemaError(f"webhook.headers: must be an object of header names to strings, got {_kind(headers)}")
    for key, value in headers.items():
        if not isinstance(key, str) or not _HEADER_NAME.fullmatch(key):
            raise ToolSchemaError(f"webhook.headers: {key!r} is not a valid header name")
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise ToolSchemaError(f"webhook.headers.{key}: must be a string without line breaks")

    location = "query" if method in ("GET", "DELETE") else "body"
    return _build_spec(
        "webhook",
        name=name,
        description=_truncate(description.strip()),
        parameters={"type": "object", "properties": properties, "required": list(cleaned.get("required", []))},
        method=method,
        url=url.strip(),
        locations=dict.fromkeys(properties, location),
        body_mode="none" if location == "query" else "properties",
        timeout=_positive_number(definition.get("timeout"), "webhook.timeout"),
        rate_limit_per_minute=_positive_int(definition.get("rate_limit_per_minute"),
                                            "webhook.rate_limit_per_minute"),
        headers=dict(headers),
    )


def parse_provider_schema(schema_type: Literal["openapi", "webhook"], schema: str | dict[str, Any], *,
                          server_url: str | None = None) -> list[ToolSpec]:
    """Every tool of a provider; at most ``MAX_TOOLS``, names unique. ``server_url`` is for openapi."""
    if schema_type == "openapi":
        if isinstance(schema, dict):
            _check_size(schema)
            specs = _parse_openapi_document(schema, server_url)
        else:
            specs = parse_openapi(schema, server_url)
    elif schema_type == "webhook":
        specs = [parse_webhook(schema)]
    else:
        raise ToolSchemaError(f"schema_type: unknown {schema_type!r} (expected 'openapi' or 'webhook')")
    if len(specs) > MAX_TOOLS:
        raise ToolSchemaError(f"the provider defines {len(specs)} tools; at most {MAX_TOOLS} are allowed")
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ToolSchemaError(f"duplicate tool name '{spec.name}'")
        seen.add(spec.name)
    return specs

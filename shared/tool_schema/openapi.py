"""OpenAPI 3 documents → tool specs, one per get/post/put/patch/delete operation: the server base
URL (``servers`` at operation, path or document level, or an explicit ``server_url``), path- and
operation-level parameters, the request body (an object schema's properties become top-level
parameters, anything else one ``body`` parameter), and tool names from ``operationId`` or derived from
method and path, made unique.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from shared.tool_schema.document import _is_object_schema, _load_document, _merge_all_of, _Resolver
from shared.tool_schema.spec import (
    _IGNORED_HEADER_PARAMS,
    _OPERATION_KEYS,
    _PLACEHOLDER,
    BodyMode,
    ToolSchemaError,
    ToolSpec,
    _build_spec,
    _check_base_url,
    _derived_name,
    _kind,
    _positive_int,
    _positive_number,
    _sanitize_operation_id,
    _truncate,
    _unique,
)


def _server_base(servers: Any, where: str) -> str:
    if not servers:
        raise ToolSchemaError(
            "servers: missing; add servers[0].url with the API's absolute base URL "
            "(e.g. https://api.example.com/v1) or pass server_url")
    if not isinstance(servers, list) or not isinstance(servers[0], dict):
        raise ToolSchemaError(f"{where}: must be a list of server objects")
    url = servers[0].get("url")
    if not isinstance(url, str) or not url.strip():
        raise ToolSchemaError(f"{where}[0].url: missing; add the API's absolute base URL")
    variables = servers[0].get("variables") or {}

    def substitute(match: re.Match[str]) -> str:
        var = variables.get(match.group(1)) if isinstance(variables, dict) else None
        if not isinstance(var, dict) or "default" not in var:
            raise ToolSchemaError(f"{where}[0].url: server variable '{match.group(1)}' has no default")
        return str(var["default"])

    return _check_base_url(_PLACEHOLDER.sub(substitute, url), f"{where}[0].url")


@dataclass
class _Draft:
    explicit: str | None  # sanitised operationId
    derived: str
    where: str
    fields: dict[str, Any]


def parse_openapi(text: str, server_url: str | None = None) -> list[ToolSpec]:
    """One ToolSpec per operation of an OpenAPI 3 document (JSON or YAML text)."""
    if not isinstance(text, str):
        raise ToolSchemaError(f"the OpenAPI document must be JSON or YAML text, got {_kind(text)}")
    return _parse_openapi_document(_load_document(text), server_url)


def _parse_openapi_document(doc: Any, server_url: str | None) -> list[ToolSpec]:
    if not isinstance(doc, dict):
        raise ToolSchemaError(f"the document must be an object at the top level, got {_kind(doc)}")
    version = doc.get("openapi")
    if version is None:
        if "swagger" in doc:
            raise ToolSchemaError(
                f"swagger: this is a Swagger {doc['swagger']} document; only OpenAPI 3 is supported "
                "(convert it first, e.g. with swagger2openapi or editor.swagger.io)")
        raise ToolSchemaError("openapi: missing; only OpenAPI 3 documents are supported")
    if not str(version).startswith("3."):  # YAML reads an unquoted 3.0 as a float: str() covers it
        raise ToolSchemaError(f"openapi: version {version!r} is not supported; only OpenAPI 3 is")
    override = _check_base_url(server_url, "server_url") if server_url is not None else None

    paths = doc.get("paths") or {}
    if not isinstance(paths, dict):
        raise ToolSchemaError(f"paths: must be an object, got {_kind(paths)}")
    resolver = _Resolver(doc)
    drafts: list[_Draft] = []
    for raw_path, raw_item in paths.items():
        path = str(raw_path)
        if not path.startswith("/"):
            raise ToolSchemaError(f"paths.{path}: a path must start with '/'")
        item, _ = resolver.deref(raw_item, f"paths.{path}")
        if not isinstance(item, dict):
            raise ToolSchemaError(f"paths.{path}: must be an object, got {_kind(item)}")
        for key, op in item.items():
            if key in _OPERATION_KEYS:
                drafts.append(_operation(resolver, doc, override, path, str(key), item, op))
    if not drafts:
        raise ToolSchemaError("paths: no operations found; the document needs at least one "
                              "get/post/put/patch/delete operation")

    # Explicit operationIds claim their names first so they survive verbatim; derived names (and
    # operationIds that collide after sanitising) get _2, _3 … in document order.
    taken: set[str] = set()
    names: list[str] = [""] * len(drafts)
    for explicit_pass in (True, False):
        for i, draft in enumerate(drafts):
            if (draft.explicit is not None) == explicit_pass:
                names[i] = _unique(draft.explicit or draft.derived, taken)
    return [_build_spec(d.where, name=name, **d.fields) for name, d in zip(names, drafts, strict=True)]


def _operation(resolver: _Resolver, doc: dict[str, Any], override: str | None, path: str, method: str,
               item: dict[str, Any], op: Any) -> _Draft:
    where = f"paths.{path}.{method}"
    if not isinstance(op, dict):
        raise ToolSchemaError(f"{where}: must be an object, got {_kind(op)}")
    if override is not None:
        base = override
    elif op.get("servers"):
        base = _server_base(op["servers"], f"{where}.servers")
    elif item.get("servers"):
        base = _server_base(item["servers"], f"paths.{path}.servers")
    else:
        base = _server_base(doc.get("servers"), "servers")

    # Path-level parameters first; an operation-level one with the same name+in replaces it in place.
    declared: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
    for list_where, plist in ((f"paths.{path}.parameters", item.get("parameters")),
                              (f"{where}.parameters", op.get("parameters"))):
        if plist is None:
            continue
        if not isinstance(plist, list):
            raise ToolSchemaError(f"{list_where}: must be a list, got {_kind(plist)}")
        for i, raw in enumerate(plist):
            param, pwhere = resolver.deref(raw, f"{list_where}[{i}]")
            if not isinstance(param, dict):
                raise ToolSchemaError(f"{pwhere}: a parameter must be an object, got {_kind(param)}")
            name, loc = param.get("name"), param.get("in")
            if not isinstance(name, str) or not name:
                raise ToolSchemaError(f"{pwhere}: the parameter's 'name' must be a non-empty string")
            if loc not in ("path", "query", "header", "cookie"):
                raise ToolSchemaError(f"{where}: parameter '{name}' has 'in: {loc}'; "
                                      "expected path, query, header or cookie")
            declared[(name, loc)] = (param, pwhere)

    template_vars = _PLACEHOLDER.findall(path)
    properties: dict[str, Any] = {}
    required: list[str] = []
    locations: dict[str, str] = {}
    for (name, loc), (param, pwhere) in declared.items():
        if loc == "header" and name.lower() in _IGNORED_HEADER_PARAMS:
            continue
        if loc == "path" and name not in template_vars:
            raise ToolSchemaError(f"{where}: path parameter '{name}' does not appear in the path '{path}'")
        if name in locations:
            raise ToolSchemaError(
                f"{where}: {loc} parameter '{name}' clashes with {locations[name]} parameter '{name}'")
        properties[name] = _parameter_schema(resolver, param, pwhere, where, name)
        locations[name] = loc
        if loc == "path" or param.get("required") is True:
            required.append(name)
    for var in template_vars:
        if var not in locations:
            # Undeclared template variable: the request cannot be built without it, so ask for it.
            properties[var], locations[var] = {"type": "string"}, "path"
            required.append(var)
        elif locations[var] != "path":
            raise ToolSchemaError(
                f"{where}: path template variable '{var}' is declared as a {locations[var]} parameter")

    body_mode = "none"
    if op.get("requestBody") is not None:
        body_mode = _request_body(resolver, op["requestBody"], where, properties, required, locations)

    summary, description = op.get("summary"), op.get("description")
    parts = [p.strip() for p in (summary, description) if isinstance(p, str) and p.strip()]
    if len(parts) == 2 and parts[1].startswith(parts[0]):
        parts = parts[1:]
    text = "\n\n".join(parts) or f"{method.upper()} {path}"
    if op.get("deprecated") is True:
        text = "(deprecated) " + text
    return _Draft(
        explicit=_sanitize_operation_id(op.get("operationId")),
        derived=_derived_name(method, path) or method,
        where=where,
        fields={
            "description": _truncate(text),
            "parameters": {"type": "object", "properties": properties, "required": required},
            "method": method.upper(),
            "url": base + path,
            "locations": locations,
            "body_mode": body_mode,
            "timeout": _positive_number(op.get("x-plexus-timeout"), f"{where}.x-plexus-timeout"),
            "rate_limit_per_minute": _positive_int(op.get("x-plexus-rate-limit"),
                                                   f"{where}.x-plexus-rate-limit"),
        },
    )


def _parameter_schema(resolver: _Resolver, param: dict[str, Any], pwhere: str, where: str,
                      name: str) -> dict[str, Any]:
    raw, swhere = param.get("schema"), f"{pwhere}.schema"
    content = param.get("content")
    if raw is None and isinstance(content, dict) and content:  # `content` instead of `schema`
        ctype = next(iter(content))
        media = content[ctype]
        raw, swhere = (media.get("schema") if isinstance(media, dict) else None), f"{pwhere}.content.{ctype}"
    if raw is None:
        raise ToolSchemaError(f"{where}: parameter '{name}' has no schema")
    schema = resolver.schema(raw, swhere)
    if not isinstance(schema, dict):
        schema = {}
    description = param.get("description")
    if isinstance(description, str) and description.strip():
        schema = {**schema, "description": description.strip()}
    return schema


def _is_json(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return base == "application/json" or base.endswith("+json")


def _request_body(resolver: _Resolver, raw: Any, where: str, properties: dict[str, Any],
                  required: list[str], locations: dict[str, str]) -> BodyMode:
    body, bwhere = resolver.deref(raw, f"{where}.requestBody")
    if not isinstance(body, dict):
        raise ToolSchemaError(f"{bwhere}: must be an object, got {_kind(body)}")
    content = body.get("content")
    if not isinstance(content, dict) or not content:
        raise ToolSchemaError(f"{bwhere}.content: missing; declare at least application/json")
    keys = list(content)
    chosen = next((k for k in keys if str(k).split(";", 1)[0].strip().lower() == "application/json"), None)
    if chosen is None:
        chosen = next((k for k in keys if _is_json(str(k))), keys[0])
    media = content[chosen]
    raw_schema = media.get("schema") if isinstance(media, dict) else None
    body_required = body.get("required") is True
    if raw_schema is None:
        schema: Any = {"type": "object"} if _is_json(str(chosen)) else {"type": "string"}
    else:
        schema = resolver.schema(raw_schema, f"{bwhere}.content.{chosen}.schema")
    schema = _merge_all_of(schema if isinstance(schema, dict) else {})

    if _is_object_schema(schema):
        wanted = set(schema.get("required") or []) if body_required else set()
        for name, prop in schema["properties"].items():
            if name in locations:
                raise ToolSchemaError(
                    f"{where}: body property '{name}' clashes with {locations[name]} parameter '{name}'")
            properties[name] = prop if isinstance(prop, dict) else {}
            locations[name] = "body"
            if name in wanted:
                required.append(name)
        return "properties"

    if "body" in locations:
        raise ToolSchemaError(
            f"{where}: the request body (parameter 'body') clashes with {locations['body']} parameter 'body'")
    description = body.get("description")
    if isinstance(description, str) and description.strip() and "description" not in schema:
        schema = {**schema, "description": description.strip()}
    properties["body"], locations["body"] = schema, "body"
    if body_required:
        required.append("body")
    return "whole"

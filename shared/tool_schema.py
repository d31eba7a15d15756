"""Custom tool providers → tool specs, and tool-call arguments → HTTP requests.

A workspace registers custom tools either from an OpenAPI 3 document (one tool per operation) or from
a single JSON-schema webhook definition. Each ``ToolSpec`` is what the LLM sees as an OpenAI function
(``name``, ``description``, ``parameters``) plus where every argument goes in the HTTP request
(``method``, ``url``, ``locations``, ``body_mode``). Specs are plain JSON: the provider row stores
them as a JSON list and ``ToolSpec.model_validate`` reads them back.

Schemas handed to the model are self-contained: local ``$ref``s are expanded (recursive ones cut
after ``MAX_REF_REPEAT`` levels), OpenAPI-only keywords are converted (``nullable``, boolean
``exclusiveMinimum``) or stripped (``example``, ``xml``, ``discriminator``, ``x-*`` …), and
``readOnly`` properties are dropped because a request never sends them.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

import jsonschema
import orjson
import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

ParamLocation = Literal["path", "query", "header", "cookie", "body"]
HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
BodyMode = Literal["none", "properties", "whole"]

MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_TOOLS = 100
MAX_DESCRIPTION = 1024
MAX_REF_REPEAT = 3  # the same $ref expanded at most this often on one branch; deeper → {"type": "object"}
MAX_NESTING = 100  # schema levels; keeps the recursive walk far from Python's recursion limit
MAX_SCHEMA_NODES = 200_000  # output budget: stops YAML alias bombs and $ref fan-out from exploding

HTTP_METHODS: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE")
_OPERATION_KEYS = ("get", "put", "post", "delete", "patch")  # head/options/trace make no sense as tools
_NAME_RE = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_-]+")
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# OpenAPI: header parameters with these names SHALL be ignored (the client / credentials set them).
_IGNORED_HEADER_PARAMS = frozenset({"accept", "content-type", "authorization"})

# Keywords function-calling APIs reject or the model does not need.
_STRIP_KEYWORDS = frozenset({
    "example", "examples", "xml", "externalDocs", "deprecated", "discriminator", "writeOnly",
    "$schema", "$id", "$anchor", "$comment", "$defs", "definitions",  # $refs are already expanded
})
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "dependentSchemas"})
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SCHEMA_SINGLE = frozenset({
    "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else",
    "unevaluatedItems", "unevaluatedProperties", "additionalItems", "contentSchema",
})
_WEBHOOK_FIELDS = ("name", "description", "url", "method", "parameters", "headers", "timeout",
                   "rate_limit_per_minute")


class ToolSchemaError(ValueError):
    """An unusable provider document or call; the message names the exact place."""


class ToolSpec(BaseModel):
    """One tool: the OpenAI function the model sees, plus how to turn a call into an HTTP request."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str = Field(max_length=MAX_DESCRIPTION)
    parameters: dict[str, Any]  # {"type": "object", "properties": {...}, "required": [...]}
    method: HttpMethod
    url: str  # absolute URL template, e.g. "https://api.example.com/v1/orders/{id}"
    locations: dict[str, ParamLocation]  # top-level parameter name → where it goes
    body_mode: BodyMode = "none"
    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    rate_limit_per_minute: int | None = Field(default=None, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)  # fixed headers (webhooks)

    @field_validator("method", mode="before")
    @classmethod
    def _upper_method(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> ToolSpec:
        # Stored specs are read back from the DB: refuse rows prepare_request could not honour.
        properties = self.parameters.get("properties")
        if self.parameters.get("type") != "object" or not isinstance(properties, dict):
            raise ValueError('parameters must be {"type": "object", "properties": {...}}')
        if set(properties) != set(self.locations):
            raise ValueError("locations must name exactly the parameters' properties")
        body = [name for name, loc in self.locations.items() if loc == "body"]
        if self.body_mode == "none" and body:
            raise ValueError(f"body_mode 'none' but {body[0]!r} goes to the body")
        if self.body_mode == "whole" and body != ["body"]:
            raise ValueError("body_mode 'whole' needs exactly one body parameter, named 'body'")
        placeholders = set(_PLACEHOLDER.findall(self.url))
        for name, loc in self.locations.items():
            if loc == "path" and name not in placeholders:
                raise ValueError(f"path parameter {name!r} has no {{{name}}} in the url")
        return self


@dataclass
class PreparedRequest:
    method: str
    url: str
    params: list[tuple[str, str]]  # pairs: a list argument becomes a repeated query parameter
    headers: dict[str, str]
    cookies: dict[str, str]
    json_body: Any | None  # None = no body
    ignored: list[str] = field(default_factory=list)  # arguments the spec does not know (made up)


# --------------------------------------------------------------------------------------------------
# loading


def _load_document(text: str) -> Any:
    # len() counts characters, never more than bytes: the cheap check first, then the exact one.
    if len(text) > MAX_DOCUMENT_BYTES or len(text.encode("utf-8")) > MAX_DOCUMENT_BYTES:
        raise ToolSchemaError(f"the document is larger than {MAX_DOCUMENT_BYTES // 1024} KB (1 MB)")
    if not text.strip():
        raise ToolSchemaError("the document is empty")
    if text.lstrip().startswith(("{", "[")):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # flow-style YAML also starts with "{": let the YAML parser have a go
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # same as yaml.safe_load, in C when available
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        raise ToolSchemaError(f"the document is neither valid JSON nor valid YAML: {exc}") from None
    except RecursionError:
        raise ToolSchemaError("the document is nested too deeply") from None


def _check_size(document: dict[str, Any]) -> None:
    """The 1 MB limit for a document handed over already parsed."""
    try:
        size = len(orjson.dumps(document, default=str, option=orjson.OPT_NON_STR_KEYS))
    except orjson.JSONEncodeError as exc:
        raise ToolSchemaError(f"the document cannot be serialised as JSON: {exc}") from None
    if size > MAX_DOCUMENT_BYTES:
        raise ToolSchemaError(f"the document is larger than {MAX_DOCUMENT_BYTES // 1024} KB (1 MB)")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__)


# --------------------------------------------------------------------------------------------------
# $ref resolution and schema cleaning


class _Resolver:
    """Expands local $refs against ``root`` and cleans schemas; counts every node it produces."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.nodes = 0
        self.active: Counter[str] = Counter()  # $refs being expanded on the current branch

    def _tick(self) -> None:
        self.nodes += 1
        if self.nodes > MAX_SCHEMA_NODES:
            raise ToolSchemaError(
                f"the schemas are too large once $refs are expanded (more than {MAX_SCHEMA_NODES} nodes)")

    def lookup(self, ref: Any, where: str) -> tuple[Any, str]:
        """The target of a local ``#/...`` JSON pointer and a label for errors inside it."""
        if not isinstance(ref, str):
            raise ToolSchemaError(f"{where}: $ref must be a string, got {_kind(ref)}")
        if not ref.startswith("#"):
            raise ToolSchemaError(
                f"{where}: external $ref '{ref}' is not supported; move the definition into "
                "components and refer to it as '#/components/...'")
        if not ref.startswith("#/"):
            raise ToolSchemaError(f"{where}: $ref '{ref}' is not a JSON pointer like '#/components/...'")
        node = self.root
        parts = [unquote(p).replace("~1", "/").replace("~0", "~") for p in ref[2:].split("/")]
        for part in parts:
            if isinstance(node, dict):
                if part in node:
                    node = node[part]
                    continue
                # YAML may have turned a key such as 200 into a number
                match = next((v for k, v in node.items() if str(k) == part), _MISSING)
                if match is not _MISSING:
                    node = match
                    continue
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            raise ToolSchemaError(f"{where}: $ref '{ref}' not found")
        return node, ".".join(parts)

    def deref(self, node: Any, where: str) -> tuple[Any, str]:
        """Follow a chain of $refs to a parameter / requestBody / path item object."""
        for _ in range(16):
            if not (isinstance(node, dict) and "$ref" in node):
                return node, where
            node, where = self.lookup(node["$ref"], where)
        raise ToolSchemaError(f"{where}: circular $ref")

    def schema(self, node: Any, where: str, depth: int = 0) -> Any:
        """A cleaned, $ref-free copy of a schema (a dict, or a JSON Schema boolean)."""
        out = self._schema(node, where, depth)
        if isinstance(out, dict):
            out.pop("readOnly", None)
        return out

    def _schema(self, node: Any, where: str, depth: int) -> Any:
        # Keeps a "readOnly": True marker so the caller (properties) can drop the property.
        if isinstance(node, bool):
            return node
        if not isinstance(node, dict):
            raise ToolSchemaError(f"{where}: a schema must be an object, got {_kind(node)}")
        if depth > MAX_NESTING:
            raise ToolSchemaError(f"{where}: schema nested deeper than {MAX_NESTING} levels")
        self._tick()
        if "$ref" in node:
            ref = node["$ref"]
            if isinstance(ref, str) and self.active[ref] >= MAX_REF_REPEAT:
                return {"type": "object"}  # recursive schema: a few levels are plenty for the model
            target, target_where = self.lookup(ref, where)
            if isinstance(target, bool):
                return target
            if not isinstance(target, dict):
                raise ToolSchemaError(f"{where}: $ref '{ref}' points at {_kind(target)}, not a schema")
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            merged = {**target, **siblings} if siblings else target  # 3.1: siblings refine the target
            self.active[ref] += 1
            try:
                return self._schema(merged, target_where, depth + 1)
            finally:
                self.active[ref] -= 1

        out: dict[str, Any] = {}
        read_only_props: set[str] = set()
        for raw_key, value in node.items():
            key = raw_key if isinstance(raw_key, str) else str(raw_key)
            at = f"{where}.{key}"
            if key in _STRIP_KEYWORDS or key.startswith("x-") or key in ("nullable", "readOnly"):
                continue
            if key == "properties":
                if not isinstance(value, dict):
                    raise ToolSchemaError(f"{at}: must be an object of property schemas, got {_kind(value)}")
                props: dict[str, Any] = {}
                for raw_name, sub in value.items():
                    name = str(raw_name)
                    cleaned = self._schema(sub, f"{at}.{name}", depth + 1)
                    if isinstance(cleaned, dict) and cleaned.pop("readOnly", False) is True:
                        read_only_props.add(name)  # server-set (id, created_at): never sent
                        continue
                    props[name] = cleaned
                out[key] = props
            elif key in _SCHEMA_MAPS:
                if not isinstance(value, dict):
                    raise ToolSchemaError(f"{at}: must be an object of schemas, got {_kind(value)}")
                out[key] = {str(k): self.schema(v, f"{at}.{k}", depth + 1) for k, v in value.items()}
            elif key in _SCHEMA_LISTS or (key == "items" and isinstance(value, list)):
                if not isinstance(value, list):
                    raise ToolSchemaError(f"{at}: must be a list of schemas, got {_kind(value)}")
                out[key] = [self.schema(v, f"{at}[{i}]", depth + 1) for i, v in enumerate(value)]
            elif key in _SCHEMA_SINGLE or key == "items":
                out[key] = self.schema(value, at, depth + 1)
            elif key == "required":
                if isinstance(value, bool):
                    continue  # a common 3.0 mistake (`required: true` on a property): meaningless here
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ToolSchemaError(f"{at}: must be a list of property names")
                out[key] = list(value)
            elif key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
                continue  # OpenAPI 3.0 boolean form: converted below
            else:
                out[key] = self.literal(value, at, depth + 1)

        if read_only_props and "required" in out:
            out["required"] = [r for r in out["required"] if r not in read_only_props]
        for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if node.get(exclusive) is True and bound in out:
                out[exclusive] = out.pop(bound)  # 3.0 {minimum: 5, exclusiveMinimum: true} → 2020-12 form
        if node.get("nullable") is True:
            out = _make_nullable(out)
        if node.get("readOnly") is True:
            out["readOnly"] = True
        return out

    def literal(self, value: Any, where: str, depth: int) -> Any:
        """A JSON-safe copy of a keyword's value (enum, default, description, …)."""
        if depth > MAX_NESTING:
            raise ToolSchemaError(f"{where}: nested deeper than {MAX_NESTING} levels")
        self._tick()
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
            raise ToolSchemaError(f"{where}: integer too large for JSON storage")
        if value is None or isinstance(value, str | bool | int):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ToolSchemaError(f"{where}: {value} is not a valid JSON number")
            return value
        if isinstance(value, dict):
            return {str(k): self.literal(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.literal(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        if isinstance(value, set | frozenset):  # YAML !!set: sort so the output is deterministic
            return [self.literal(v, where, depth + 1) for v in sorted(value, key=repr)]
        if isinstance(value, dt.date):  # YAML turns an unquoted 2024-01-01 into a date
            return value.isoformat()
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        return str(value)


_MISSING = object()


def _make_nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI 3.0 ``nullable: true`` → a JSON-schema type list (or anyOf when there is no type)."""
    if not schema:
        return schema  # {} already accepts null
    kind = schema.get("type")
    if isinstance(kind, str):
        if kind != "null":
            schema["type"] = [kind, "null"]
    elif isinstance(kind, list):
        if "null" not in kind:
            schema["type"] = [*kind, "null"]
    else:
        return {"anyOf": [schema, {"type": "null"}]}
    if isinstance(schema.get("enum"), list) and None not in schema["enum"]:
        schema["enum"] = [*schema["enum"], None]  # else the enum alone would still forbid null
    return schema


def _is_object_schema(schema: Any) -> bool:
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        return False
    kind = schema.get("type")
    return kind is None or kind == "object" or (isinstance(kind, list) and "object" in kind)


_MERGEABLE_KEYS = frozenset({"type", "properties", "required", "description", "title", "additionalProperties"})


def _merge_all_of(schema: Any) -> Any:
    """Flatten ``allOf`` of plain object schemas (the usual "Base + extra fields" pattern) so its
    properties can become top-level tool parameters; anything fancier stays one whole body."""
    if not isinstance(schema, dict) or not isinstance(schema.get("allOf"), list):
        return schema
    parts = [_merge_all_of(part) for part in schema["allOf"]]
    outer = {k: v for k, v in schema.items() if k != "allOf"}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for part in [*parts, outer]:
        if not isinstance(part, dict) or not set(part) <= _MERGEABLE_KEYS or part.get("type", "object") != "object":
            return schema
        properties.update(part.get("properties") or {})
        required.extend(r for r in part.get("required") or [] if r not in required)
    merged = {**outer, "type": "object", "properties": properties}
    if required:
        merged["required"] = required
    return merged


# --------------------------------------------------------------------------------------------------
# small validators


def _check_base_url(url: str, where: str) -> str:
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ToolSchemaError(
            f"{where}: {url!r} is not an absolute http(s) URL; add servers[0].url with the API's full "
            "base URL (e.g. https://api.example.com/v1) or pass server_url")
    return url.rstrip("/")


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


def _positive_number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    # The upper bound is only a sanity check (and keeps float() from overflowing on a huge int).
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1e9:
        raise ToolSchemaError(f"{where}: must be a positive number of seconds, got {value!r}")
    return float(value)


def _positive_int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ToolSchemaError(f"{where}: must be a positive integer, got {value!r}")
    return value


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_DESCRIPTION else text[: MAX_DESCRIPTION - 1] + "…"


def _sanitize_operation_id(raw: Any) -> str | None:
    if not isinstance(raw, str):
        return None
    if _NAME_RE.fullmatch(raw):
        return raw
    return _INVALID_NAME_CHARS.sub("_", raw).strip("_")[:64].strip("_") or None


def _derived_name(method: str, path: str) -> str:
    name = _INVALID_NAME_CHARS.sub("_", f"{method}_{path}")
    return re.sub(r"_{2,}", "_", name).strip("_")[:64].strip("_")


def _unique(base: str, taken: set[str]) -> str:
    name, n = base, 1
    while name in taken:
        n += 1
        suffix = f"_{n}"
        name = base[: 64 - len(suffix)] + suffix
    taken.add(name)
    return name


def _build_spec(where: str, **fields: Any) -> ToolSpec:
    try:
        return ToolSpec(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ToolSchemaError(f"{where}: {loc + ': ' if loc else ''}{first['msg']}") from None


# --------------------------------------------------------------------------------------------------
# OpenAPI


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


# --------------------------------------------------------------------------------------------------
# webhook


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


# --------------------------------------------------------------------------------------------------
# call → request


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()  # objects in a query/header: JSON, not exploded
    return "" if value is None else str(value)


def prepare_request(spec: ToolSpec, arguments: dict[str, Any]) -> PreparedRequest:
    """The HTTP request for one tool call. Arguments the spec does not know are left out and listed in
    ``ignored``; ``None`` for a path/query/header/cookie parameter means "not given"."""
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ToolSchemaError(f"tool '{spec.name}': arguments must be a JSON object, got {_kind(arguments)}")
    path_values: dict[str, Any] = {}
    params: list[tuple[str, str]] = []
    header_args: dict[str, str] = {}
    cookies: dict[str, str] = {}
    body_props: dict[str, Any] = {}
    whole_body: Any = None
    ignored: list[str] = []
    for name, value in arguments.items():
        loc = spec.locations.get(name)
        if loc is None:
            ignored.append(name)
        elif loc == "body":
            if spec.body_mode == "whole":
                whole_body = value
            else:
                body_props[name] = value  # null kept: in a JSON body it can mean "clear this field"
        elif value is None:
            continue
        elif loc == "path":
            path_values[name] = value
        elif loc == "query":
            if isinstance(value, list):  # form/explode, the OpenAPI default: ?tag=a&tag=b
                params.extend((name, _text(v)) for v in value if v is not None)
            else:
                params.append((name, _text(value)))
        elif loc == "header":
            text = _text(value if not isinstance(value, list) else ",".join(map(_text, value)))
            if any(c in text for c in "\r\n\0"):
                raise ToolSchemaError(f"tool '{spec.name}': header parameter '{name}' contains a line break")
            header_args[name] = text
        else:
            cookies[name] = _text(value)

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if spec.locations.get(name) != "path":
            return match.group(0)  # literal braces in a webhook URL: not ours to fill
        if name not in path_values:
            raise ToolSchemaError(f"tool '{spec.name}': missing required path parameter '{name}'")
        value = path_values[name]
        text = ",".join(map(_text, value)) if isinstance(value, list) else _text(value)
        if text == "":
            raise ToolSchemaError(f"tool '{spec.name}': path parameter '{name}' is empty")
        if text in (".", ".."):
            return text.replace(".", "%2E")  # a dot segment would be normalised away: /orders/.. → /
        return quote(text, safe="")  # "a/b c" → "a%2Fb%20c": a value never changes the path's shape

    url = _PLACEHOLDER.sub(fill, spec.url)
    # Fixed headers (webhook auth and the like) win over anything the model supplies.
    fixed = {k.lower() for k in spec.headers}
    headers = {k: v for k, v in header_args.items() if k.lower() not in fixed}
    headers.update(spec.headers)
    if spec.body_mode == "properties":
        json_body: Any = body_props
    elif spec.body_mode == "whole":
        json_body = whole_body
    else:
        json_body = None
    return PreparedRequest(method=spec.method, url=url, params=params, headers=headers, cookies=cookies,
                           json_body=json_body, ignored=ignored)

"""The shared vocabulary of custom tool providers: the limits and name/placeholder patterns, the
``ToolSchemaError`` every refusal raises, the ``ToolSpec`` model a provider document turns into (and the
provider row stores as JSON), the ``PreparedRequest`` a tool call turns into, and the small validators
both the OpenAPI and the webhook parser use (base URL, positive numbers, description truncation, tool
name sanitising and de-duplication, ``_build_spec``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

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
# small validators


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__)


def _check_base_url(url: str, where: str) -> str:
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ToolSchemaError(
            f"{where}: {url!r} is not an absolute http(s) URL; add servers[0].url with the API's full "
            "base URL (e.g. https://api.example.com/v1) or pass server_url")
    return url.rstrip("/")


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

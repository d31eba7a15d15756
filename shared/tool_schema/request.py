"""Tool-call arguments → an HTTP request: ``prepare_request`` places each argument in the path,
query string, headers, cookies or JSON body as the ``ToolSpec`` says, percent-encodes path values so
they never change the path's shape, and lets the spec's fixed headers win over model-supplied ones.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import orjson

from shared.tool_schema.spec import _PLACEHOLDER, PreparedRequest, ToolSchemaError, ToolSpec, _kind


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

"""Custom tool providers → tool specs, and tool-call arguments → HTTP requests.

A workspace registers custom tools either from an OpenAPI 3 document (one tool per operation) or from
a single JSON-schema webhook definition. Each ``ToolSpec`` is what the LLM sees as an OpenAI function
(``name``, ``description``, ``parameters``) plus where every argument goes in the HTTP request
(``method``, ``url``, ``locations``, ``body_mode``). Specs are plain JSON: the provider row stores
them as a JSON list and ``ToolSpec.model_validate`` reads them back.

Layout: ``spec`` (limits, ``ToolSchemaError``, ``ToolSpec``, ``PreparedRequest``, shared validators),
``document`` (loading, ``$ref`` expansion and schema cleaning), ``openapi`` and ``webhook`` (the two
parsers, plus ``parse_provider_schema``) and ``request`` (``prepare_request``). Import from this
package, not from the submodules.
"""

from shared.tool_schema.openapi import parse_openapi
from shared.tool_schema.request import prepare_request
from shared.tool_schema.spec import (
    HTTP_METHODS,
    MAX_DESCRIPTION,
    MAX_DOCUMENT_BYTES,
    MAX_NESTING,
    MAX_REF_REPEAT,
    MAX_SCHEMA_NODES,
    MAX_TOOLS,
    BodyMode,
    HttpMethod,
    ParamLocation,
    PreparedRequest,
    ToolSchemaError,
    ToolSpec,
)
from shared.tool_schema.webhook import parse_provider_schema, parse_webhook

__all__ = [
    "HTTP_METHODS",
    "MAX_DESCRIPTION",
    "MAX_DOCUMENT_BYTES",
    "MAX_NESTING",
    "MAX_REF_REPEAT",
    "MAX_SCHEMA_NODES",
    "MAX_TOOLS",
    "BodyMode",
    "HttpMethod",
    "ParamLocation",
    "PreparedRequest",
    "ToolSchemaError",
    "ToolSpec",
    "parse_openapi",
    "parse_provider_schema",
    "parse_webhook",
    "prepare_request",
]

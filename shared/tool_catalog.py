"""What an agent can call: the built-in tools, and the resolution of an app's ``agent_mode.tools`` entries
(reference §5) into the functions the model sees. The console validates with it on save, the runtime
builds its tool list with it, and the tools service reads the same specs to execute a call."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

import nats.errors
import orjson
from pydantic import BaseModel, ConfigDict, model_validator
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from shared.bus import Bus
from shared.models import ToolProvider
from shared.settings import ToolsSettings
from shared.subjects import tools_invoke
from shared.tool_schema import ToolSpec

# agent_mode.strategy → the loop that runs it (Dify's legacy router names included)
AGENT_STRATEGIES = {"function_call": "function_call", "router": "function_call", "react": "react",
                    "react_router": "react"}
# Dify 1.x's workflow agent node runs a strategy of a plugin; Plexus has the official one built in
# (langgenius/agent): its strategies → the same loops (names matched case-insensitively)
AGENT_STRATEGY_PROVIDERS = ("langgenius/agent/agent", "langgenius/agent", "agent")
AGENT_NODE_STRATEGIES = {"function_calling": "function_call", "react": "react"}
REPLY_GRACE = 2.0  # seconds a caller waits beyond the tool's timeout for the structured timeout reply


@dataclass(frozen=True, slots=True)
class BuiltinTool:
    provider: str
    name: str
    label: str
    description: str
    parameters: dict[str, Any]
    required_presets: tuple[str, ...] = ()  # set by the app builder in tool_parameters, never by the model
    emoji: str = "🔧"

    @property
    def icon(self) -> dict[str, str]:
        return {"background": "#EFF1F5", "content": self.emoji}


def _obj(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


BUILTIN_TOOLS: dict[tuple[str, str], BuiltinTool] = {
    (t.provider, t.name): t
    for t in (
        BuiltinTool("time", "current_time", "Current Time",
                    "Get the current date and time, optionally in a given IANA timezone.",
                    _obj({"timezone": {"type": "string", "description": "IANA timezone, e.g. Asia/Shanghai; UTC if empty"},
                          "format": {"type": "string", "description": "strftime format; ISO 8601 if empty"}}, []),
                    emoji="🕒"),
        BuiltinTool("calculator", "calculator", "Calculator",
                    "Evaluate an arithmetic expression (+ - * / // % **, parentheses, sqrt, log, sin, pi, e …).",
                    _obj({"expression": {"type": "string", "description": "e.g. (3 + 4) * sqrt(2)"}},
                         ["expression"]), emoji="🧮"),
        BuiltinTool("http", "http_request", "HTTP Request",
                    "Fetch a public URL with GET, or POST a JSON body to it; returns the status and the body.",
                    _obj({"url": {"type": "string", "description": "absolute http(s) URL"},
                          "method": {"type": "string", "enum": ["GET", "POST"], "description": "GET if empty"},
                          "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                          "body": {"description": "JSON body for POST"}}, ["url"]), emoji="🌐"),
        BuiltinTool("knowledge", "knowledge_retrieval", "Knowledge Retrieval",
                    "Search the app's knowledge bases for passages relevant to a query.",
                    _obj({"query": {"type": "string", "description": "what to look for"},
                          "dataset_ids": {"type": "array", "items": {"type": "string"}},
                          "top_k": {"type": "integer", "minimum": 1, "maximum": 20}}, ["query", "dataset_ids"]),
                    required_presets=("dataset_ids",), emoji="📚"),
        BuiltinTool("qrcode", "qrcode_generator", "QR Code Generator",
                    "Make a QR code image (PNG) that encodes a text or a URL; the user is shown the image.",
                    _obj({"content": {"type": "string", "minLength": 1, "description": "the text or URL to encode"},
                          "error_correction": {"type": "string", "enum": ["L", "M", "Q", "H"],
                                               "description": "error correction level; M if empty"},
                          "border": {"type": "integer", "minimum": 0, "maximum": 10,
                                     "description": "quiet zone in modules; 2 if empty"}}, ["content"]),
                    emoji="🔳"),
    )
}

# A tool result may carry files (an image a tool made): {"filename", "mime_type", "data": base64}. They travel
# in the NATS reply, whose default limit is 1 MB: a tool keeps its files under this many bytes in all.
TOOL_FILES_MAX_BYTES = 512 * 1024


def is_agent_strategy_plugin(identifier: str) -> bool:
    """A Dify plugin id of the built-in strategy provider (``langgenius/agent:0.0.9@<hash>``)."""
    return identifier.split("@", 1)[0].split(":", 1)[0] == "langgenius/agent"


_BUILTIN_PROVIDER_IDS = frozenset(p for p, _ in BUILTIN_TOOLS)
_TOOL_PLUGIN = re.compile(r"langgenius/([\w.-]+)(?:/([\w.-]+))?")


def builtin_provider(provider_id: str) -> str | None:
    """The built-in tool provider a Dify tool provider id names: its own name (``time``), or the Dify 1.x plugin
    that has it (``langgenius/time/time`` in a tool entry, ``langgenius/time:0.0.4@<hash>`` to install)."""
    if provider_id in _BUILTIN_PROVIDER_IDS:
        return provider_id
    m = _TOOL_PLUGIN.fullmatch(provider_id.split("@", 1)[0].split(":", 1)[0])
    if m is None or m.group(2) not in (None, m.group(1)):
        return None
    return m.group(1) if m.group(1) in _BUILTIN_PROVIDER_IDS else None


_PREFIXES = {"basic": "Basic ", "bearer": "Bearer ", "custom": ""}


class ToolCredentials(BaseModel):
    """A custom tool provider's auth, in Dify's shape (``auth_type`` none | api_key_header | api_key_query,
    legacy ``api_key`` = header), plus ``bearer`` as a shorthand for an Authorization: Bearer header."""

    model_config = ConfigDict(extra="ignore")
    auth_type: str = "none"
    api_key_header: str = "Authorization"
    api_key_header_prefix: str = "custom"  # basic | bearer | custom (the value as is)
    api_key_query_param: str = "key"
    api_key_value: str = ""

    @model_validator(mode="after")
    def _check(self) -> ToolCredentials:
        if self.auth_type not in ("none", "api_key", "api_key_header", "api_key_query", "bearer"):
            raise ValueError("credentials.auth_type must be one of none, api_key_header, api_key_query, bearer")
        if self.auth_type != "none" and not self.api_key_value:
            raise ValueError(f"credentials.api_key_value is required for auth_type {self.auth_type}")
        if self.api_key_header_prefix not in _PREFIXES:
            raise ValueError("credentials.api_key_header_prefix must be basic, bearer or custom")
        if not self.api_key_header.strip() or not self.api_key_query_param.strip():
            raise ValueError("credentials: the header / query parameter name must not be empty")
        return self

    def apply(self, headers: dict[str, str], params: list[tuple[str, str]]) -> None:
        if self.auth_type in ("api_key", "api_key_header"):
            headers[self.api_key_header] = _PREFIXES[self.api_key_header_prefix] + self.api_key_value
        elif self.auth_type == "bearer":
            headers["Authorization"] = "Bearer " + self.api_key_value
        elif self.auth_type == "api_key_query":
            params.append((self.api_key_query_param, self.api_key_value))


class ToolResolutionError(ValueError):
    """An agent_mode.tools entry that cannot be used (the console answers 400 with this message)."""


@dataclass(frozen=True, slots=True)
class AgentTool:
    function: str  # the name the model calls (unique within the app)
    description: str
    parameters: dict[str, Any]  # JSON schema without the preset parameters
    provider_type: str  # builtin | api
    provider_id: str  # builtin provider name or ToolProvider.id
    tool_name: str
    label: str
    timeout: float
    presets: dict[str, Any] = field(default_factory=dict)
    icon: dict[str, str] | str = field(default_factory=dict)  # what GET /v1/meta shows for it

    def openai(self) -> dict[str, Any]:
        return {"type": "function",
                "function": {"name": self.function, "description": self.description, "parameters": self.parameters}}

    def arguments(self, from_model: dict[str, Any]) -> dict[str, Any]:
        return {**from_model, **self.presets}  # the builder's presets win over the model's guesses


def effective_timeout(tool_timeout: float | None, settings: ToolsSettings) -> float:
    return min(tool_timeout or settings.default_timeout, settings.max_timeout)


def _without(schema: dict[str, Any], names: set[str]) -> dict[str, Any]:
    if not names:
        return schema
    props = {k: v for k, v in (schema.get("properties") or {}).items() if k not in names}
    out = {**schema, "properties": props}
    if "required" in schema:
        out["required"] = [r for r in schema["required"] if r not in names]
    return out


def _presets(entry: dict[str, Any]) -> dict[str, Any]:
    raw = entry.get("tool_parameters") or {}
    if not isinstance(raw, dict):
        raise ToolResolutionError(f"tool {entry.get('tool_name')!r}: tool_parameters must be an object")
    # Dify keeps "" for parameters left to the model
    return {k: v for k, v in raw.items() if v not in (None, "")}


async def resolve_agent_tools(s: AsyncSession, tenant_id: str, entries: list[Any], settings: ToolsSettings,
                              *, strict: bool = True) -> list[AgentTool]:
    """The enabled entries of ``agent_mode.tools`` as callable functions. ``strict`` (the console, on save)
    raises ToolResolutionError naming the first entry that does not exist in the workspace or is not
    supported; otherwise (the runtime) such an entry is left out: a provider deleted after the app was
    saved takes its tools away, not the whole app."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ToolResolutionError("agent_mode.tools must be a list of objects")
    # legacy {"dataset": …} entries are served by dataset_configs (RAG), not as tools
    wanted = [e for e in entries if "dataset" not in e and e.get("enabled", True)]
    api_ids = {str(e.get("provider_id") or "") for e in wanted if e.get("provider_type") == "api"}
    providers: dict[str, ToolProvider] = {}
    if api_ids:
        rows = (await s.exec(select(ToolProvider).where(
            ToolProvider.tenant_id == tenant_id,
            (ToolProvider.id.in_(api_ids)) | (ToolProvider.name.in_(api_ids))))).all()
        for p in rows:
            providers[p.id] = p
            providers[p.name] = p
    out: list[AgentTool] = []
    used: set[str] = set()
    for e in wanted:
        try:
            tool = _resolve(e, providers, settings)
        except ToolResolutionError:
            if strict:
                raise
            continue
        function, n = tool.function, 2
        while function in used:
            function, n = f"{tool.tool_name}_{n}", n + 1
        used.add(function)
        out.append(tool if function == tool.function else replace(tool, function=function))
    return out


def _resolve(e: dict[str, Any], providers: dict[str, ToolProvider], settings: ToolsSettings) -> AgentTool:
    ptype, pid, tname = e.get("provider_type"), str(e.get("provider_id") or ""), str(e.get("tool_name") or "")
    presets = _presets(e)
    if ptype == "builtin":
        pid = builtin_provider(pid) or pid  # a Dify 1.x plugin id of a built-in provider is that provider
        b = BUILTIN_TOOLS.get((pid, tname))
        if b is None:
            known = ", ".join(f"{p}/{n}" for p, n in BUILTIN_TOOLS)
            raise ToolResolutionError(f"unknown built-in tool {pid}/{tname}; built-in tools are {known}")
        missing = [p for p in b.required_presets if p not in presets]
        if missing:
            raise ToolResolutionError(f"built-in tool {pid}/{tname} needs tool_parameters {missing}")
        desc, params, label, timeout, provider_id = (b.description, b.parameters, b.label,
                                                     effective_timeout(None, settings), pid)
        icon: dict[str, str] | str = b.icon
    elif ptype == "api":
        p = providers.get(pid)
        if p is None:
            raise ToolResolutionError(f"tool provider {pid!r} does not exist in this workspace")
        spec = next((ToolSpec.model_validate(t) for t in p.tools or [] if t.get("name") == tname), None)
        if spec is None:
            raise ToolResolutionError(f"tool provider {p.name!r} has no tool named {tname!r}")
        desc, params, label, timeout, provider_id = (spec.description, spec.parameters, tname,
                                                     effective_timeout(spec.timeout, settings), p.id)
        icon = p.icon or {"background": "#EFF1F5", "content": "🔧"}
    else:
        raise ToolResolutionError(
            f"tool {tname!r}: provider_type {ptype!r} is not supported (use 'builtin' or 'api')")
    unknown = set(presets) - set(params.get("properties") or {})
    if unknown:
        raise ToolResolutionError(f"tool {tname!r}: tool_parameters {sorted(unknown)} are not parameters of it")
    return AgentTool(function=tname, description=desc, parameters=_without(params, set(presets)),
                     provider_type=ptype, provider_id=provider_id, tool_name=tname, label=label,
                     timeout=timeout, presets=presets, icon=icon)


async def call_tool(bus: Bus, provider_id: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One tool call through the tools service; always a result dict ({"ok", "output"|"error", "elapsed"}).
    ``timeout`` is the tool's own: the reply may take a little longer to travel."""
    t0 = time.perf_counter()
    try:
        msg = await bus.nc.request(tools_invoke(provider_id), orjson.dumps(payload), timeout=timeout + REPLY_GRACE)
    except nats.errors.NoRespondersError:
        error = {"code": "unavailable", "message": "the tools service is not running"}
    except (nats.errors.TimeoutError, TimeoutError):
        error = {"code": "timeout", "message": f"no answer from the tools service within {timeout:g} s"}
    else:
        try:
            reply = orjson.loads(msg.data)
            if isinstance(reply, dict) and isinstance(reply.get("ok"), bool):
                return reply
        except orjson.JSONDecodeError:
            pass
        error = {"code": "internal_error", "message": "the tools service sent an unreadable answer"}
    return {"ok": False, "error": error, "elapsed": round(time.perf_counter() - t0, 6)}

"""Dify 1.x's workflow ``agent`` node ("Agent strategies", the official langgenius/agent plugin, built in):
its node data read once for the console's save checks and the runtime.

Dify keeps the strategy's inputs in ``agent_parameters``, each ``{type: constant|mixed|variable, value}``:
``model`` (``{provider, model (or name), completion_params, ...}``), ``tools`` (Dify's agent tool entries),
``instruction``, ``query`` and ``maximum_iterations``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.tool_catalog import AGENT_NODE_STRATEGIES, AGENT_STRATEGIES, AGENT_STRATEGY_PROVIDERS

DEFAULT_ITERATIONS = 3  # the plugin's default maximum_iterations
_SUPPORTED = "langgenius/agent/agent with strategy function_calling or ReAct"


class AgentNodeConfigError(ValueError):
    """The node's data cannot be run; the message names the field and what is supported."""


@dataclass(frozen=True)
class AgentNodeConfig:
    strategy: str  # function_call | react (shared.tool_catalog.AGENT_STRATEGIES' loops)
    model: dict[str, Any]  # {provider, name, mode, completion_params}: the shape the llm node's model has
    tools: list[Any]
    instruction: Mapping[str, Any] | None  # the agent_parameters entries as given
    query: Mapping[str, Any] | None
    max_iterations: int


def parameter(data: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    """One ``agent_parameters`` entry as ``{type, value}`` (a bare value counts as a constant)."""
    params = data.get("agent_parameters")
    entry = params.get(name) if isinstance(params, Mapping) else None
    if entry is None:
        return None
    if isinstance(entry, Mapping) and "value" in entry:
        return entry
    return {"type": "constant", "value": entry}


def agent_config(data: Mapping[str, Any]) -> AgentNodeConfig:
    """The node's data checked and normalised (AgentNodeConfigError otherwise)."""
    provider = data.get("agent_strategy_provider_name")
    if provider not in (None, "") and provider not in AGENT_STRATEGY_PROVIDERS:
        raise AgentNodeConfigError(f"agent_strategy_provider_name {provider!r} is not supported: Plexus has the official "
                         f"strategies built in ({_SUPPORTED})")
    name = data.get("agent_strategy_name")
    if not isinstance(name, str) or not name.strip():
        raise AgentNodeConfigError(f"agent_strategy_name is required ({_SUPPORTED})")
    key = name.strip().lower()
    strategy = AGENT_NODE_STRATEGIES.get(key) or AGENT_STRATEGIES.get(key)
    if strategy is None:
        raise AgentNodeConfigError(f"agent_strategy_name {name!r} is not supported ({_SUPPORTED})")
    if data.get("agent_parameters") is not None and not isinstance(data.get("agent_parameters"), Mapping):
        raise AgentNodeConfigError("agent_parameters must be a mapping of {type, value} entries")

    model = (parameter(data, "model") or {}).get("value")
    if not isinstance(model, Mapping):
        raise AgentNodeConfigError("agent_parameters.model is required (a model with provider and model)")
    model_name = model.get("model") or model.get("name")
    for field, value in (("provider", model.get("provider")), ("model", model_name)):
        if not isinstance(value, str) or not value.strip():
            raise AgentNodeConfigError(f"agent_parameters.model.{field} is required")
    params = model.get("completion_params") or {}
    if not isinstance(params, Mapping):
        raise AgentNodeConfigError("agent_parameters.model.completion_params must be a mapping")

    tools = (parameter(data, "tools") or {}).get("value") or []
    if not isinstance(tools, list) or not all(isinstance(t, Mapping) for t in tools):
        raise AgentNodeConfigError("agent_parameters.tools must be a list of tools")
    for i, t in enumerate(tools):
        if t.get("enabled", True) and not (t.get("tool_name") and (t.get("provider_id") or t.get("provider_name"))):
            raise AgentNodeConfigError(f"agent_parameters.tools[{i}] needs provider_name and tool_name")

    raw = (parameter(data, "maximum_iterations") or {}).get("value")
    if raw in (None, ""):
        steps = DEFAULT_ITERATIONS
    else:
        try:
            steps = int(str(raw).strip())
        except ValueError:
            raise AgentNodeConfigError(f"agent_parameters.maximum_iterations must be a whole number, not {raw!r}") from None
        if steps < 1:
            raise AgentNodeConfigError("agent_parameters.maximum_iterations must be at least 1")
    return AgentNodeConfig(
        strategy=strategy,
        model={"provider": model["provider"], "name": model_name, "mode": model.get("mode") or "chat",
               "completion_params": dict(params)},
        tools=tools, instruction=parameter(data, "instruction"), query=parameter(data, "query"),
        max_iterations=steps)


def tool_entries(tools: list[Any], value: Callable[[Any], Any]) -> list[dict[str, Any]]:
    """Dify's agent tool entries as ``resolve_agent_tools`` entries: disabled ones left out; a parameter with
    ``auto: 1`` is the model's to fill, any other (and ``settings``) a preset, read through ``value`` (which
    resolves a ``{type, value}`` input against the run's variables)."""
    out = []
    for t in tools:
        if not isinstance(t, Mapping) or t.get("enabled", True) is False:
            continue
        presets: dict[str, Any] = {}
        for source in (t.get("settings"), t.get("parameters")):
            for name, spec in (source or {}).items() if isinstance(source, Mapping) else ():
                if isinstance(spec, Mapping) and "auto" in spec:
                    if str(spec.get("auto")) in ("1", "True", "true"):
                        continue
                    spec = spec.get("value")
                elif isinstance(spec, Mapping) and set(spec) == {"value"}:  # settings: {name: {value}}
                    spec = spec["value"]
                resolved = value(spec)
                if resolved not in (None, ""):
                    presets[name] = resolved
        out.append({"provider_type": t.get("type") or t.get("provider_type"),
                    "provider_id": t.get("provider_id") or t.get("provider_name"),
                    "tool_name": t.get("tool_name"), "tool_parameters": presets, "enabled": True})
    return out

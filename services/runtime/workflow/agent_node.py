"""The workflow ``agent`` node: Dify 1.x's Agent node with the official strategies (langgenius/agent's
function_calling and ReAct) built in. It runs agent-chat's strategy core (services/runtime/service/agent.py)
with a sink of its own:

- ``agent_log`` events (Dify's shape): a log per round (label ``ROUND n``, sent with status ``start`` before the
  model call and again, same id, ``success`` or ``error`` after its tools), and a child log per tool call
  (``CALL <tool>``, ``parent_id`` = its round) with the call's id, name, arguments and output. The final state
  of each log is kept in the execution's ``execution_metadata.agent_log``.
- outputs: ``text`` (what the model wrote to the user, streamed to answer/end nodes while it writes, as an LLM
  node's text), ``files`` (files the tools made, as the tool node gives them), ``json`` (the tools' JSON
  results), ``usage`` (summed over the model calls).

A tool the node names that no longer exists fails the node, as it fails a tool node; a failing tool call is
an observation for the model; a failing model call fails the node with the provider's message (so retries
and error strategies apply).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from services.runtime import llm
from services.runtime.service.agent import AgentCall, AgentCore, AgentPlan, note_files
from services.runtime.workflow import logic
from services.runtime.workflow.engine import NodeError, NodeResult, VariablePool
from services.runtime.workflow.nodes import RunServices, input_value, memory_messages, tool_json
from shared.models import new_id
from shared.tool_catalog import ToolResolutionError, resolve_agent_tools
from shared.workflow import Node
from shared.workflow.agent import agent_config, tool_entries

if TYPE_CHECKING:
    from services.runtime.workflow.engine import Engine


def _input(spec: Any, pool: VariablePool) -> Any:
    """An agent input: a typed ``{type, value}`` as the tool node reads it, except that the agent strategies also
    render the ``{{#node.var#}}`` templates of constants (``query: {type: constant, value: "{{#sys.query#}}"}``);
    any other value as given, a string rendered."""
    if isinstance(spec, Mapping) and "value" in spec and spec.get("type") in ("variable", "mixed", "constant"):
        if spec["type"] != "constant":
            return input_value(dict(spec), pool)
        spec = spec["value"]
    return pool.render(spec) if isinstance(spec, str) else spec


async def run_agent(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    svc: RunServices = eng.services
    try:
        cfg = agent_config(node.data)
    except ValueError as e:
        raise NodeError(str(e)) from None
    binding = await svc.binding(cfg.model)
    entries = tool_entries(cfg.tools, lambda spec: _input(spec, pool))
    async with svc.ctx.db.session() as s:
        try:  # strict, as the tool node: a tool that no longer exists fails the node, naming it
            tools = await resolve_agent_tools(s, svc.tenant_id, entries, svc.ctx.settings.tools)
        except ToolResolutionError as e:
            raise NodeError(str(e)) from None
    plan = AgentPlan.build({"strategy": cfg.strategy, "max_iteration": cfg.max_iterations}, tools,
                           svc.ctx.settings.runtime.agent_max_iterations)
    instruction = logic.to_text(_input(cfg.instruction, pool)) if cfg.instruction else ""
    query = logic.to_text(_input(cfg.query, pool)) if cfg.query else ""
    messages = [{"role": "system", "content": instruction}] if instruction.strip() else []
    messages += memory_messages(node.data.get("memory"), svc.history)  # chatflow: earlier turns, as the llm node
    messages.append({"role": "user", "content": query})

    sink = _LogSink(eng, node, svc, binding, plan)
    usage, started = llm.Usage(), time.perf_counter()
    try:
        await AgentCore(svc.ctx, binding, plan, svc.tenant_id, svc.app_id, sink, usage).execute(messages)
    except Exception as e:  # noqa: BLE001 - the provider's failure, worded for the run
        raise NodeError(llm.error_message(e, binding.provider)) from None
    u = llm.dify_usage(binding, usage.prompt_tokens, usage.completion_tokens, time.perf_counter() - started)
    return NodeResult(
        outputs={"text": "".join(sink.parts), "files": sink.files, "json": sink.json, "usage": u},
        inputs={"instruction": instruction, "query": query, "tools": [t.function for t in plan.tools],
                "maximum_iterations": plan.max_iteration},
        process_data={"agent_strategy": plan.strategy, "model_provider": binding.provider,
                      "model_name": binding.model, "prompts": messages, "usage": u},
        metadata={"total_tokens": u["total_tokens"], "total_price": u["total_price"], "currency": "USD",
                  "agent_log": list(sink.logs.values())})


class _LogSink:
    """The node's AgentSink: agent_log events, the streamed text, the tools' files and JSON."""

    def __init__(self, eng: Engine, node: Node, svc: RunServices, binding: llm.ModelBinding, plan: AgentPlan) -> None:
        self.eng, self.node, self.svc, self.binding, self.plan = eng, node, svc, binding, plan
        self.execution_id = eng.execution().id
        self.parts: list[str] = []
        self.files: list[dict[str, Any]] = []
        self.json: list[Any] = []
        self.logs: dict[str, dict[str, Any]] = {}  # log id → its latest state, in the order they began
        self._round: tuple[str, float, float] = ("", 0.0, 0.0)  # the current round's log id, start (wall, perf)
        self._calls: list[tuple[str, float, float]] = []  # the round's call logs, in the order of its calls

    async def _log(self, log_id: str, label: str, status: str, *, parent: str | None = None,
                   data: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None,
                   error: str | None = None) -> None:
        entry = {"node_execution_id": self.execution_id, "id": log_id, "label": label, "parent_id": parent,
                 "error": error, "status": status, "data": data or {}, "metadata": metadata or {},
                 "node_id": self.node.id}
        self.logs[log_id] = entry
        await self.eng.emit("agent_log", {"data": entry})

    @staticmethod
    def _timing(at: float, t0: float) -> dict[str, Any]:
        return {"started_at": at, "finished_at": time.time(), "elapsed_time": round(time.perf_counter() - t0, 6)}

    # -- AgentSink ----------------------------------------------------------------------------------
    async def say(self, delta: str, *, whole: bool = False) -> None:
        self.parts.append(delta)
        await self.eng.llm_delta(self.node.id, delta)

    async def round_started(self, step: int) -> None:
        self._round = (new_id(), time.time(), time.perf_counter())
        await self._log(self._round[0], f"ROUND {step}", "start",
                        metadata={"started_at": self._round[1], "provider": self.binding.provider})

    async def check_thought(self, thought: str) -> None:
        return None

    async def calls_started(self, step: int, text: str, calls: list[AgentCall]) -> None:
        self._calls = [(new_id(), time.time(), time.perf_counter()) for _ in calls]
        for (log_id, at, _), c in zip(self._calls, calls, strict=True):
            await self._log(log_id, f"CALL {c.name}", "start", parent=self._round[0], data=self._call_data(c),
                            metadata={"started_at": at, "provider": self._provider(c)})

    async def calls_finished(self, step: int, text: str, calls: list[AgentCall]) -> None:
        made = [f for c in calls for f in c.files]
        if made and self.svc.files is not None:  # kept as the run user's files, as the tool node keeps them
            self.files += await self.svc.files.tool_files(self.svc.tenant_id, self.svc.user_id, made)
            note_files(calls, "kept in the agent's files output")
        for (log_id, at, t0), c in zip(self._calls, calls, strict=True):
            if c.ok:
                self.json += tool_json(c.result)
            await self._log(log_id, f"CALL {c.name}", "success" if c.ok else "error", parent=self._round[0],
                            data={**self._call_data(c), "output": c.output},
                            metadata={**self._timing(at, t0), "provider": self._provider(c)},
                            error=None if c.ok else c.output)

    async def round_finished(self, step: int, text: str, calls: list[AgentCall], usage: llm.Usage,
                             error: str | None = None) -> None:
        log_id, at, t0 = self._round
        price = llm.dify_usage(self.binding, usage.prompt_tokens, usage.completion_tokens, 0.0)
        metadata = {**self._timing(at, t0), "total_tokens": price["total_tokens"],
                    "total_price": price["total_price"], "currency": "USD", "provider": self.binding.provider}
        data = {} if error else {"output": {"llm_response": text, "tool_responses": [
            {"tool_call_id": c.call_id, "tool_call_name": c.name, "tool_response": c.output} for c in calls]}}
        await self._log(log_id, f"ROUND {step}", "error" if error else "success", data=data, metadata=metadata,
                        error=error)

    async def answered(self, thought: str) -> None:
        return None

    # -- helpers ------------------------------------------------------------------------------------
    @staticmethod
    def _call_data(c: AgentCall) -> dict[str, Any]:
        return {"tool_call_id": c.call_id, "tool_call_name": c.name,
                "tool_call_args": c.arguments if c.arguments is not None else c.raw_arguments}

    def _provider(self, c: AgentCall) -> str | None:
        tool = self.plan.by_function.get(c.name)
        return tool.provider_id if tool else None

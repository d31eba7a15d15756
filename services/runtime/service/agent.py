"""The agent loop: the model calls tools through the tools service until it can answer. One strategy core
(``AgentCore``) serves agent-chat apps and the workflow ``agent`` node; each reports through its own sink.

Two strategies: ``function_call`` passes the tools as functions (litellm function calling; several calls in
one turn run in parallel), ``react`` describes them in the prompt and reads one JSON action per turn, for
models without native function calling. After ``max_iteration`` tool rounds the model is asked once more
without tools. A failing, unknown or badly called tool is an observation the model can react to; only a
failing model call ends the loop with an error.

Sinks (``AgentSink``): agent-chat (``AgentLoop`` here) turns a round that calls tools into an
``agent_thought`` (sent once when the calls are known, again with the observation) and streams the model's
text as ``agent_message``; the workflow node (services/runtime/workflow/agent_node.py) sends ``agent_log``
events and streams the text to the answer/end nodes that show it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from services.runtime import llm
from services.runtime.service.prompt import estimate_usage
from shared.models import new_id
from shared.tool_catalog import AGENT_STRATEGIES, AgentTool, call_tool

if TYPE_CHECKING:
    from services.runtime.service.runs import Run
    from shared.context import Context

OBSERVATION_CHARS = 16_000  # what one tool result may take of the model's context
REACT_STOP = ["Observation:", "\nObservation"]


@dataclass(frozen=True, slots=True)
class AgentPlan:
    strategy: str  # function_call | react
    max_iteration: int
    tools: tuple[AgentTool, ...]
    by_function: dict[str, AgentTool] = field(default_factory=dict)

    @classmethod
    def build(cls, agent_mode: dict[str, Any], tools: list[AgentTool], limit: int) -> AgentPlan:
        steps = agent_mode.get("max_iteration", 5)
        steps = steps if isinstance(steps, int) and not isinstance(steps, bool) else 5
        return cls(strategy=AGENT_STRATEGIES.get(agent_mode.get("strategy") or "", "function_call"),
                   max_iteration=max(1, min(steps, limit)), tools=tuple(tools),
                   by_function={t.function: t for t in tools})

    def openai_tools(self) -> list[dict[str, Any]]:
        return [t.openai() for t in self.tools]


@dataclass(slots=True)
class AgentCall:
    """One requested call: what the model asked, and what came back."""

    name: str
    raw_arguments: str
    call_id: str = ""
    arguments: dict[str, Any] | None = None
    output: str = ""  # what the model reads (cut at OBSERVATION_CHARS; a sink may add a note on files)
    ok: bool = False
    result: str = ""  # a successful call's whole output, as the tool returned it
    trace: dict[str, Any] = field(default_factory=dict)
    files: list[Any] = field(default_factory=list)  # files the tool made (shared.tool_catalog's wire shape)


class AgentSink(Protocol):
    """What the loop reports, in order: per round ``round_started`` (before the model call), then for a round
    that calls tools ``calls_started`` (the calls known) and ``calls_finished`` (outputs set: a sink may add
    to them before the model reads them), then ``round_finished`` (``error``: the model call failed, which
    then propagates); the answer goes to ``say`` as it is written, and ``answered`` ends the loop."""

    async def say(self, delta: str, *, whole: bool = False) -> None: ...

    async def round_started(self, step: int) -> None: ...

    async def check_thought(self, thought: str) -> None: ...

    async def calls_started(self, step: int, text: str, calls: list[AgentCall]) -> None: ...

    async def calls_finished(self, step: int, text: str, calls: list[AgentCall]) -> None: ...

    async def round_finished(self, step: int, text: str, calls: list[AgentCall], usage: llm.Usage,
                             error: str | None = None) -> None: ...

    async def answered(self, thought: str) -> None: ...


class AgentCore:
    """The strategies: model turns, tool calls through the tools service, the conversation they build."""

    def __init__(self, ctx: Context, binding: llm.ModelBinding, plan: AgentPlan, tenant_id: str, app_id: str,
                 sink: AgentSink, usage: llm.Usage) -> None:
        self.ctx, self.binding, self.plan, self.tenant_id, self.app_id = ctx, binding, plan, tenant_id, app_id
        self.sink = sink
        self.usage = usage  # summed over every model call of the loop
        self.usage.from_provider = True
        self.timeout = ctx.settings.runtime.llm_timeout

    # -- the model ----------------------------------------------------------------------------------
    async def _turn(self, step: int, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None,
                    stream_text: bool, stop: list[str] | None = None
                    ) -> tuple[str, list[llm.ToolCall], llm.Usage]:
        await self.sink.round_started(step)
        usage = llm.Usage()
        calls: list[llm.ToolCall] = []
        parts: list[str] = []
        try:
            deltas = llm.stream_chat(self.binding, messages, self.timeout, usage, tools=tools,
                                     tool_calls=calls, stop=stop)
            async with aclosing(deltas):  # a flagged answer closes the model call at once
                async for delta in deltas:
                    parts.append(delta)
                    if stream_text:
                        await self.sink.say(delta)
        except Exception as e:
            await self.sink.round_finished(step, "".join(parts), [], usage,
                                           error=llm.error_message(e, self.binding.provider))
            raise
        finally:
            self._add_usage(usage, messages, "".join(parts))
        return "".join(parts), calls, usage

    def _add_usage(self, u: llm.Usage, messages: list[dict[str, Any]], text: str) -> None:
        estimate_usage(u, messages, text)
        self.usage.prompt_tokens += u.prompt_tokens
        self.usage.completion_tokens += u.completion_tokens

    # -- tools --------------------------------------------------------------------------------------
    async def _execute(self, call: AgentCall) -> None:
        t0 = time.perf_counter()
        tool = self.plan.by_function.get(call.name)
        call.trace = {"tool": call.name, "arguments": call.arguments if call.arguments is not None
                      else call.raw_arguments}
        if tool is None:
            call.output = f"there is not a tool named {call.name}"
            call.trace.update(ok=False, error={"code": "tool_not_found", "message": call.output})
        elif call.arguments is None:
            call.output = f"tool error: the arguments of {call.name} are not a valid JSON object: {call.raw_arguments!r}"
            call.trace.update(ok=False, error={"code": "invalid_arguments", "message": call.output})
        else:
            payload = {"tenant_id": self.tenant_id, "app_id": self.app_id, "provider_type": tool.provider_type,
                       "provider_id": tool.provider_id, "tool": tool.tool_name,
                       "arguments": tool.arguments(call.arguments)}
            result = await call_tool(self.ctx.bus, tool.provider_id, payload, tool.timeout)
            call.ok = result["ok"]
            if call.ok:
                call.output = call.result = str(result.get("output", ""))
                call.files = list(result.get("files") or [])
            else:
                err = result["error"]
                call.output = f"tool error ({err.get('code')}): {err.get('message')}"
            call.trace.update(provider_type=tool.provider_type, provider_id=tool.provider_id,
                              tool_name=tool.tool_name, ok=call.ok, tools_elapsed=result.get("elapsed"),
                              **({"output": call.output} if call.ok else {"error": result["error"]}))
        if len(call.output) > OBSERVATION_CHARS:
            call.output = call.output[:OBSERVATION_CHARS] + f"\n[truncated at {OBSERVATION_CHARS} characters]"
        call.trace["latency_ms"] = round((time.perf_counter() - t0) * 1000, 2)

    async def _run_calls(self, step: int, text: str, calls: list[AgentCall]) -> None:
        await self.sink.calls_started(step, text, calls)
        await asyncio.gather(*(self._execute(c) for c in calls))
        await self.sink.calls_finished(step, text, calls)

    # -- strategies ---------------------------------------------------------------------------------
    async def execute(self, messages: list[dict[str, Any]]) -> None:
        """Run the strategy on a copy of ``messages`` (the prompt: system, history, the user's turn). Raises
        what the model call raised, and what the sink raises (agent-chat: ``OutputFlagged``,
        ``AgentIncomplete``)."""
        if self.plan.strategy == "react":
            await self._react(list(messages))
        else:
            await self._function_calling(list(messages))

    async def _function_calling(self, messages: list[dict[str, Any]]) -> None:
        tools = self.plan.openai_tools() or None
        for step in range(1, self.plan.max_iteration + 2):
            last = step > self.plan.max_iteration or tools is None
            text, asked, usage = await self._turn(step, messages, tools=None if last else tools, stream_text=True)
            if last or not asked:  # an answer (calls asked for without tools on offer are not run)
                await self.sink.round_finished(step, text, [], usage)
                await self.sink.answered(text)
                return
            calls = []
            for i, a in enumerate(asked):
                call = AgentCall(name=a.name, raw_arguments=a.arguments, call_id=a.id or f"call_{step}_{i}")
                call.arguments = _json_object(a.arguments)
                calls.append(call)
            await self._run_calls(step, text, calls)
            await self.sink.round_finished(step, text, calls, usage)
            messages.append({"role": "assistant", "content": text or None, "tool_calls": [
                {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.raw_arguments}}
                for c in calls]})
            messages.extend({"role": "tool", "tool_call_id": c.call_id, "content": c.output} for c in calls)

    async def _react(self, messages: list[dict[str, Any]]) -> None:
        messages[0:0] = [{"role": "system", "content": react_instructions(self.plan.tools)}]
        if len(messages) > 1 and messages[1].get("role") == "system":  # one system message: merge
            messages[0:2] = [{"role": "system", "content": messages[1]["content"] + "\n\n" + messages[0]["content"]}]
        for step in range(1, self.plan.max_iteration + 2):
            last = step > self.plan.max_iteration
            if last:
                messages.append({"role": "user", "content": "Now give your final answer to the question."})
            text, _, usage = await self._turn(step, messages, tools=None, stream_text=False, stop=REACT_STOP)
            action = parse_react(text)
            if action is None or action[0] == FINAL or last:
                answer = action[1] if action is not None and action[0] == FINAL else _strip_react(text)
                if isinstance(answer, str) and answer:
                    await self.sink.say(answer, whole=True)
                elif answer:
                    await self.sink.say(json.dumps(answer, ensure_ascii=False), whole=True)
                await self.sink.round_finished(step, text, [], usage)
                await self.sink.answered(_thought_part(text))
                return
            name, args = action
            thought = _thought_part(text)
            await self.sink.check_thought(thought)
            call = AgentCall(name=name, raw_arguments=json.dumps(args, ensure_ascii=False), call_id=f"react_{step}")
            call.arguments = args if isinstance(args, dict) else _json_object(args) if isinstance(args, str) else None
            await self._run_calls(step, thought, [call])
            await self.sink.round_finished(step, text, [call], usage)
            messages.append({"role": "assistant", "content": text.rstrip()})
            messages.append({"role": "user", "content": f"Observation: {call.output}"})


class AgentLoop:
    """agent-chat: the strategy core reporting as ``agent_thought`` / ``message_file`` / ``agent_message``
    events of the run, with its thoughts and tool trace kept for the message."""

    def __init__(self, ctx: Context, run: Run, plan: AgentPlan, tenant_id: str,
                 emit: Callable[[bytes], Awaitable[None]], usage: llm.Usage) -> None:
        self.run, self.plan, self.tenant_id = run, plan, tenant_id
        self.emit = emit
        self.core = AgentCore(ctx, run.binding, plan, tenant_id, run.app_id, self, usage)
        self._msg_prefix = orjson.dumps(run.envelope("agent_message") | {"task_id": run.task_id,
                                                                          "id": run.message_id})[:-1] + b',"answer":'
        self._thought: dict[str, Any] = {}  # the round's thought while its tools run

    async def execute(self) -> None:
        """Run the strategy; raises ``OutputFlagged`` when output moderation flags the answer (the final review
        is part of ``answered``)."""
        await self.core.execute(self.run.messages)

    # -- AgentSink ----------------------------------------------------------------------------------
    async def say(self, delta: str, *, whole: bool = False) -> None:
        """One piece of the answer; ``whole``: the complete answer, known before any of it is sent (ReAct),
        so the final review runs before the client sees it."""
        self.run.answer_parts.append(delta)
        review = self.run.review  # output moderation sees every piece before the client does
        if review is not None and (review.feed(delta) or (whole and await review.finish())):
            raise OutputFlagged
        await self.emit(self._msg_prefix + orjson.dumps(delta) + b"}")
        if self.run.speech is not None:
            self.run.speech.feed(delta)

    async def round_started(self, step: int) -> None:
        return None

    async def round_finished(self, step: int, text: str, calls: list[AgentCall], usage: llm.Usage,
                             error: str | None = None) -> None:
        return None

    async def check_thought(self, thought: str) -> None:
        # a ReAct tool round's thought reaches the client only in agent_thought events: reviewed before it is
        # sent (and before its tool runs), as the answer is
        review = self.run.review
        if review is not None and thought and await review.also([thought]):
            raise OutputFlagged

    async def calls_started(self, step: int, text: str, calls: list[AgentCall]) -> None:
        self._thought = self._new_thought(text, calls)
        await self._send_thought(self._thought)

    async def calls_finished(self, step: int, text: str, calls: list[AgentCall]) -> None:
        thought = self._thought
        await self._files(thought, calls)
        for c in calls:
            self.run.tool_trace.append({"thought_id": thought["id"], "position": thought["position"], **c.trace})
        thought["observation"] = json.dumps({c.name: c.output for c in calls}, ensure_ascii=False)
        await self._send_thought(thought)

    async def answered(self, thought: str) -> None:
        # the final review comes first: the last thought repeats the answer, and once sent or stored it could
        # not be taken back
        review = self.run.review
        if review is not None and await review.finish():
            raise OutputFlagged
        await self._send_thought(self._new_thought(thought, []))
        if not self.run.answer:
            raise AgentIncomplete(f"the agent used all {self.plan.max_iteration} tool rounds without answering")

    # -- events -------------------------------------------------------------------------------------
    async def _send_thought(self, thought: dict[str, Any]) -> None:
        event = {**self.run.envelope("agent_thought"), "task_id": self.run.task_id, **thought,
                 "message_files": list(thought.get("files") or [])}
        event.pop("chain_id", None)
        event.pop("files", None)
        await self.emit(orjson.dumps(event))

    async def _files(self, thought: dict[str, Any], calls: list[AgentCall]) -> None:
        """The files the round's tools made: kept with the message, a ``message_file`` event each (before the
        thought that lists them, as Dify sends them), and named in the observation the model reads."""
        made = [f for c in calls for f in c.files]
        if not made or self.run.tool_files is None:
            return
        views = await self.run.tool_files(self.tenant_id, self.run.end_user_id, self.run.message_id, made)
        for v in views:
            event = {**self.run.envelope("message_file"), "task_id": self.run.task_id, "id": v["id"],
                     "type": v["type"], "belongs_to": "assistant", "url": v["url"]}
            await self.emit(orjson.dumps(event))
        thought["files"] = [v["id"] for v in views]
        note_files(calls, "shown to the user")

    def _new_thought(self, text: str, calls: list[AgentCall]) -> dict[str, Any]:
        labels = {}
        for c in calls:
            tool = self.plan.by_function.get(c.name)
            label = tool.label if tool else c.name
            labels[c.name] = {"en_US": label, "zh_Hans": label}
        thought = {
            "id": new_id(), "chain_id": None, "message_id": self.run.message_id,
            "position": len(self.run.thoughts) + 1, "thought": text,
            "tool": ";".join(c.name for c in calls), "tool_labels": labels,
            "tool_input": json.dumps({c.name: c.arguments if c.arguments is not None else c.raw_arguments
                                      for c in calls}, ensure_ascii=False) if calls else "",
            "created_at": int(time.time()), "observation": "", "files": [],
        }
        self.run.thoughts.append(thought)
        return thought


def note_files(calls: list[AgentCall], where: str) -> None:
    """Name the files a call made in the output the model reads (it cannot see them)."""
    for c in calls:
        if c.files:
            names = ", ".join(str(f.get("filename") or "file") for f in c.files)
            c.output += f"\n[{len(c.files)} file(s) {where}: {names}]"


class OutputFlagged(Exception):
    """Output moderation flagged the agent's answer: the run replaces it with the preset answer."""


class AgentIncomplete(Exception):
    """The model never answered: it kept calling tools, or answered with nothing."""


def _json_object(text: str) -> dict[str, Any] | None:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# -- ReAct ------------------------------------------------------------------------------------------
FINAL = "Final Answer"
_BLOB = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.DOTALL)
_ACTION = re.compile(r"Action:\s*(\{.*\})", re.DOTALL)


def react_instructions(tools: tuple[AgentTool, ...]) -> str:
    specs = "\n".join(json.dumps({"name": t.function, "description": t.description, "parameters": t.parameters},
                                 ensure_ascii=False) for t in tools)
    names = ", ".join(json.dumps(t.function) for t in tools)
    return (
        "Answer the user's question as helpfully and accurately as you can. You may use these tools:\n"
        f"{specs}\n\n"
        "To use a tool, reply with a thought and exactly one action as a JSON blob, then stop:\n"
        "Thought: what you will do and why\n"
        "Action:\n```\n{\"action\": <tool name>, \"action_input\": <arguments object>}\n```\n"
        "You will then get \"Observation: <the tool's result>\". Repeat as needed. When you can answer:\n"
        "Thought: I can answer now\n"
        "Action:\n```\n{\"action\": \"Final Answer\", \"action_input\": <your answer to the user>}\n```\n"
        f"Valid actions: \"Final Answer\", {names}."
    )


def parse_react(text: str) -> tuple[str, Any] | None:
    """(action, action_input) from a ReAct turn; None when the turn holds no action (a plain answer)."""
    for pattern in (_BLOB, _ACTION):
        for m in pattern.finditer(text):
            try:
                blob = json.loads(m.group(1))
            except ValueError:
                continue
            if isinstance(blob, dict) and isinstance(blob.get("action"), str):
                return blob["action"], blob.get("action_input", {})
    if "Final Answer:" in text:
        return FINAL, text.split("Final Answer:", 1)[1].strip()
    return None


def _thought_part(text: str) -> str:
    """The thought of a ReAct turn, without the action blob and the "Thought:" label."""
    head = re.split(r"\n?Action:|```", text, maxsplit=1)[0]
    return head.replace("Thought:", "", 1).strip()


def _strip_react(text: str) -> str:
    return re.sub(r"^\s*(Thought|Final Answer):\s*", "", text).strip()

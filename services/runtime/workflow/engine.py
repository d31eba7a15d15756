"""The workflow engine: runs a validated graph (shared.workflow.graph) node by node.

Scheduling: a node becomes ready once every incoming edge is resolved and at least one was taken; a
branch node (if-else, question-classifier, a fail-branch) takes the edges of the handle it chose and
skips the others, and a node whose incoming edges are all skipped is skipped in turn. Ready nodes run
concurrently as tasks, so independent branches overlap. An iteration runs its child sub-graph once per
item (in parallel up to ``parallel_nums``) in a pool layered over the run's. A loop runs its child sub-graph
round after round (at most ``loop_count``) until a loop-end node runs or its break conditions hold; its loop
variables persist across rounds and assigner nodes inside it may write them.

Each node gets ``node_started``/``node_finished`` (and ``node_retry``) events, a timeout, retries, and its
error strategy (fail the run, default values, or the fail branch). Text reaches the client as soon as it
can: answer nodes (advanced-chat) and end nodes fed by an LLM or agent node stream their segments in order while the
model is still writing, once no branch can still skip them. An answer node inside an iteration or loop
sends its whole text each time it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from services.runtime.workflow.logic import evaluate_cases, loop_value, render_template, to_text
from shared.models import new_id
from shared.settings import WorkflowSettings
from shared.workflow import TEMPLATE_RE, Graph, Node

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]
BRANCHING = ("if-else", "question-classifier")
STREAMING = ("llm", "agent")  # nodes whose ``text`` streams to answer/end nodes while the model writes
FILE_IDENTITY = "__dify__file__"  # Dify's marker of a serialized File (workflow/files.py makes them)
ROOTS = ("sys", "env", "conversation")


def is_file_value(value: Any) -> bool:
    return isinstance(value, dict) and value.get("dify_model_identity") == FILE_IDENTITY


def files_in(outputs: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The File values among outputs (a value, or the files of a list value), as Dify's node_finished and
    workflow_finished events list them in ``files``."""
    found = []
    for value in (outputs or {}).values():
        for item in value if isinstance(value, list) else (value,):
            if is_file_value(item):
                found.append(item)
    return found


def answer_files(value: Any) -> list[dict[str, Any]] | None:
    """The files an answer shows for a variable that holds a File or a list of Files; None for anything
    else (rendered as text)."""
    if is_file_value(value):
        return [value]
    if isinstance(value, list) and value and all(is_file_value(v) for v in value):
        return value
    return None


@dataclass(slots=True)
class NodeResult:
    outputs: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    process_data: dict[str, Any] = field(default_factory=dict)
    handle: str = "source"
    metadata: dict[str, Any] = field(default_factory=dict)  # total_tokens, total_price, currency


class NodeError(Exception):
    """A node failed in a way its error strategy may handle."""


class RunFailed(Exception):
    def __init__(self, message: str, node_id: str | None = None) -> None:
        super().__init__(message)
        self.node_id = node_id


class VariablePool:
    """Node outputs by node id, plus the ``sys``/``env``/``conversation`` roots. An iteration's pool is a
    layer over its parent: its children's outputs and the item/index stay inside the iteration."""

    def __init__(self, roots: dict[str, dict[str, Any]] | None = None, parent: VariablePool | None = None) -> None:
        self.values: dict[str, dict[str, Any]] = dict(roots or {})
        self.parent = parent
        self.loop_ended = False  # a loop round's layer: a loop-end node ran in this round

    def layer_of(self, node_id: str) -> VariablePool | None:
        """The nearest layer holding ``node_id``'s values (a loop's current round, for its children)."""
        pool: VariablePool | None = self
        while pool is not None and node_id not in pool.values:
            pool = pool.parent
        return pool

    def node(self, node_id: str) -> dict[str, Any] | None:
        pool: VariablePool | None = self
        while pool is not None:
            found = pool.values.get(node_id)
            if found is not None:
                return found
            pool = pool.parent
        return None

    def get(self, selector: list[str]) -> Any:
        if not isinstance(selector, list | tuple) or len(selector) < 2:
            raise KeyError(f"invalid variable selector {selector!r}")
        outputs = self.node(str(selector[0]))
        if outputs is None or selector[1] not in outputs:
            raise KeyError(".".join(map(str, selector)))
        value = outputs[selector[1]]
        for part in selector[2:]:
            if isinstance(value, dict):
                value = value.get(part)
            elif isinstance(value, list) and str(part).isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return None
        return value

    def maybe(self, selector: list[str] | None) -> Any:
        try:
            return self.get(selector or [])
        except KeyError:
            return None

    def set(self, node_id: str, outputs: dict[str, Any]) -> None:
        self.values[node_id] = outputs

    def render(self, text: str) -> str:
        return render_template(text or "", self.get)


@dataclass(slots=True)
class Execution:
    """One node execution as stored (workflow_node_executions) and shown in events."""

    id: str
    node: Node
    index: int
    predecessor: str | None
    iteration_id: str | None  # the enclosing iteration or loop (stored in the iteration_* columns either way)
    iteration_index: int | None
    started: float
    created_at: int
    status: str = "running"
    result: NodeResult | None = None
    error: str | None = None
    elapsed: float = 0.0
    finished_at: int | None = None
    retry_index: int = 0
    in_loop: bool = False  # the container is a loop: events name it loop_id, not iteration_id

    def base(self) -> dict[str, Any]:
        return {"id": self.id, "node_id": self.node.id, "node_type": self.node.type, "title": self.node.title,
                "index": self.index, "predecessor_node_id": self.predecessor,
                "inputs": self.result.inputs if self.result else None, "created_at": self.created_at,
                "extras": {}, "parallel_id": None, "parallel_start_node_id": None, "parent_parallel_id": None,
                "parent_parallel_start_node_id": None,
                "iteration_id": None if self.in_loop else self.iteration_id,
                "loop_id": self.iteration_id if self.in_loop else None,
                "parallel_run_id": None, "agent_strategy": self._strategy()}

    def _strategy(self) -> dict[str, Any] | None:
        if self.node.type != "agent":
            return None
        return {"name": self.node.data.get("agent_strategy_name"), "icon": None}

    def finished(self) -> dict[str, Any]:
        r = self.result or NodeResult()
        return {**self.base(), "process_data": r.process_data, "outputs": r.outputs, "status": self.status,
                "error": self.error, "elapsed_time": round(self.elapsed, 6),
                "execution_metadata": r.metadata or None, "finished_at": self.finished_at,
                "files": files_in(r.outputs)}


class _Stream:
    """Streams one answer/end node's text: its template cut into literal and variable segments, sent in
    order; a segment fed by an LLM node goes out delta by delta while the model writes."""

    def __init__(self, node: Node, segments: list[tuple[str, Any]], event: str, graph: Graph) -> None:
        self.node, self.segments, self.event = node, segments, event
        # what must finish before the text may go out, worked out once instead of on every pump
        above = [graph.nodes[u] for u in graph.upstream(node.id)]
        self.branches = frozenset(n.id for n in above
                                  if n.type in BRANCHING or n.data.get("error_strategy") == "fail-branch")
        self.assigners = frozenset(n.id for n in above if n.type == "assigner")
        self.pos = 0
        self.sent = 0  # deltas of the current LLM segment already sent
        self.active = False
        self.done = False


def answer_segments(template: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    last = 0
    for m in TEMPLATE_RE.finditer(template or ""):
        if m.start() > last:
            out.append(("text", template[last:m.start()]))
        out.append(("var", m.group(1).strip("#").split(".")))
        last = m.end()
    if last < len(template or ""):
        out.append(("text", template[last:]))
    return out


NodeImpl = Callable[[Node, VariablePool, "Engine"], Awaitable[NodeResult]]
_CURRENT: ContextVar[Execution] = ContextVar("plexus_node_execution")  # set in each node's own task


class Engine:
    def __init__(self, graph: Graph, pool: VariablePool, *, mode: str, settings: WorkflowSettings,
                 impls: dict[str, NodeImpl], emit: Emit, services: Any = None) -> None:
        self.graph, self.pool, self.mode, self.settings = graph, pool, mode, settings
        self.impls, self.emit, self.services = impls, emit, services
        self.executions: list[Execution] = []
        self.steps = 0
        self.tokens = 0
        self.exceptions = 0
        self.outputs: dict[str, Any] = {}
        self.answer_parts: list[str] = []  # advanced-chat: everything the answer streams sent
        self.llm_deltas: dict[str, list[str]] = {}  # LLM node id → deltas so far
        self.llm_done: set[str] = set()
        self.finished_nodes: set[str] = set()
        self.skipped: set[str] = set()
        self.conversation_changed: dict[str, Any] = {}  # advanced-chat: variables the assigner wrote
        self._streams = self._plan_streams()

    # -- streaming text ------------------------------------------------------------------------------
    def _plan_streams(self) -> list[_Stream]:
        streams = []
        for n in self.graph.nodes.values():
            if n.parent_id:
                continue
            if self.mode == "advanced-chat" and n.type == "answer":
                streams.append(_Stream(n, answer_segments(str(n.data.get("answer") or "")), "message", self.graph))
            elif self.mode == "workflow" and n.type == "end":
                segs = [("var", list(o.get("value_selector") or [])) for o in n.data.get("outputs") or []
                        if self._is_llm_text(o.get("value_selector"))]
                if segs:
                    streams.append(_Stream(n, segs, "text_chunk", self.graph))
        return streams

    def _is_llm_text(self, selector: Any) -> bool:
        if not isinstance(selector, list) or len(selector) != 2 or selector[1] != "text":
            return False
        node = self.graph.nodes.get(selector[0])
        return node is not None and node.type in STREAMING

    def _settled(self, ids: frozenset[str]) -> bool:
        return all(i in self.finished_nodes or i in self.skipped for i in ids)

    def execution(self) -> Execution:
        """The execution of the node whose implementation is running (its events name it)."""
        return _CURRENT.get()

    async def llm_delta(self, node_id: str, delta: str) -> None:
        self.llm_deltas.setdefault(node_id, []).append(delta)
        await self._pump()

    async def _pump(self) -> None:
        for st in self._streams:
            if st.done:
                continue
            if not st.active:
                # no branch can skip it any more: every branching node above it has finished
                if st.node.id in self.skipped or not self._settled(st.branches):
                    continue
                st.active = True
            while st.pos < len(st.segments):
                kind, val = st.segments[st.pos]
                root = val[0] if kind == "var" and val else None
                if kind == "text":
                    await self._send(st, val, None)
                elif root in ROOTS:
                    if root == "conversation" and not self._settled(st.assigners):
                        break  # an assigner above may still change it
                    await self._send_value(st, self.pool.maybe(val), val)
                elif self._is_llm_text(val) and (root in self.llm_deltas or root in self.finished_nodes):
                    deltas = self.llm_deltas.get(root, [])
                    if deltas:  # what the model wrote since the last pump
                        await self._send(st, "".join(deltas[st.sent:]), val)
                        st.sent = len(deltas)
                    elif root in self.finished_nodes:  # it did not stream (e.g. a default value)
                        await self._send_value(st, self.pool.maybe(val), val)
                    if root not in self.finished_nodes:
                        break
                elif root in self.finished_nodes:
                    await self._send_value(st, self.pool.maybe(val), val)
                elif root not in self.skipped:  # not there yet; a skipped node's value renders empty
                    break
                st.pos += 1
                st.sent = 0
            if st.pos >= len(st.segments):
                st.done = True

    async def _send(self, st: _Stream, text: str, selector: list[str] | None) -> None:
        await self._say(st.event, text, selector)

    async def _send_value(self, st: _Stream, value: Any, selector: list[str]) -> None:
        """A variable's value in an answer: files are shown as files (``message_file``, as Dify's answer
        stream), anything else as its text."""
        files = answer_files(value) if st.event == "message" else None
        if files is None:
            await self._send(st, to_text(value), selector)
            return
        for f in files:
            await self.emit("message_file", {"file": f})

    async def _say(self, event: str, text: str, selector: list[str] | None) -> None:
        if not text:
            return
        if event == "message":
            self.answer_parts.append(text)
            await self.emit("message", {"answer": text, "from_variable_selector": selector})
        else:
            await self.emit("text_chunk", {"data": {"text": text, "from_variable_selector": selector}})

    # -- running -------------------------------------------------------------------------------------
    async def run(self) -> None:
        top = [n for n in self.graph.nodes.values() if not n.parent_id]
        try:
            async with asyncio.timeout(self.settings.max_execution_time):
                await self._scope(top, self.graph.start_id, self.pool, None, None)
        except TimeoutError:
            raise RunFailed(f"workflow run exceeded {self.settings.max_execution_time:g} s") from None

    async def _scope(self, nodes: list[Node], start_id: str, pool: VariablePool, iteration: Node | None,
                     item_index: int | None) -> None:
        """Run the nodes of one scope (the top level, or one iteration's children for one item)."""
        ids = {n.id for n in nodes}
        edge_state: dict[str, str] = {}
        waiting = {n.id for n in nodes if n.id != start_id}
        tasks: dict[asyncio.Task, tuple[str, str | None]] = {}

        def launch(node_id: str, predecessor: str | None) -> None:
            task = asyncio.create_task(self._node(self.graph.nodes[node_id], pool, predecessor, iteration,
                                                  item_index))
            tasks[task] = (node_id, predecessor)

        def settle(node_id: str, handle: str | None) -> list[tuple[str, str]]:
            """Mark a finished (handle) or skipped (None) node's out-edges; return targets now ready."""
            ready: list[tuple[str, str]] = []
            stack = [(node_id, handle)]
            while stack:
                nid, h = stack.pop()
                for e in self.graph.outgoing(nid):
                    if e.target not in ids:
                        continue
                    taken = h is not None and (e.source_handle == h or
                                               (h == "source" and e.source_handle in ("source", "success-branch")))
                    edge_state[e.id] = "taken" if taken else "skipped"
                    if e.target not in waiting:
                        continue
                    states = [edge_state.get(i.id) for i in self.graph.incoming(e.target) if i.source in ids]
                    if None in states:
                        continue
                    waiting.discard(e.target)
                    if "taken" in states:
                        ready.append((e.target, nid))
                    else:
                        self.skipped.add(e.target)
                        stack.append((e.target, None))
            return ready

        launch(start_id, None)
        try:
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    node_id, _pred = tasks.pop(t)
                    result = t.result()  # a RunFailed propagates and cancels the rest below
                    for target, pred in settle(node_id, result.handle):
                        launch(target, pred)
                await self._pump()
        finally:
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _node(self, node: Node, pool: VariablePool, predecessor: str | None, iteration: Node | None,
                    item_index: int | None) -> NodeResult:
        self.steps += 1
        if self.steps > self.settings.max_steps:
            raise RunFailed(f"workflow run exceeded {self.settings.max_steps} steps", node.id)
        ex = Execution(id=new_id(), node=node, index=self.steps, predecessor=predecessor,
                       iteration_id=iteration.id if iteration else None, iteration_index=item_index,
                       started=time.perf_counter(), created_at=int(time.time()),
                       in_loop=iteration is not None and iteration.type == "loop")
        self.executions.append(ex)
        _CURRENT.set(ex)
        impl = self.impls.get(node.type)
        await self.emit("node_started", {"data": ex.base()})
        retry = node.data.get("retry_config") or {}
        retries = int(retry.get("max_retries") or 0) if retry.get("retry_enabled") else 0
        interval = float(retry.get("retry_interval") or 0) / 1000
        while True:
            try:
                if impl is None:
                    raise NodeError(f"node type {node.type!r} is not supported yet")
                async with asyncio.timeout(self.settings.node_timeout):
                    result = await impl(node, pool, self)
                ex.status = "succeeded"
                break
            except Exception as e:  # noqa: BLE001 - any failure goes through the node's error strategy
                message = f"node timed out after {self.settings.node_timeout:g} s" \
                    if isinstance(e, TimeoutError) else str(e) or type(e).__name__
                if ex.retry_index < retries:
                    ex.retry_index += 1
                    ex.error, ex.status = message, "retry"
                    ex.elapsed, ex.finished_at = time.perf_counter() - ex.started, int(time.time())
                    await self.emit("node_retry", {"data": {**ex.finished(), "retry_index": ex.retry_index}})
                    await asyncio.sleep(interval)
                    continue
                result = self._on_error(node, ex, message)
                break
        ex.result, ex.elapsed, ex.finished_at = result, time.perf_counter() - ex.started, int(time.time())
        self.tokens += int((result.metadata or {}).get("total_tokens") or 0)
        pool.set(node.id, result.outputs)
        if node.type in STREAMING:
            self.llm_done.add(node.id)
        if iteration is None:
            self.finished_nodes.add(node.id)
        elif node.type == "answer" and self.mode == "advanced-chat" and ex.status == "succeeded":
            # an answer inside an iteration or loop says its text each time it runs, as each run finishes
            await self._say("message", to_text(result.outputs.get("answer")), None)
        await self.emit("node_finished", {"data": ex.finished()})
        if ex.status == "failed":
            raise RunFailed(ex.error or "node failed", node.id)
        if node.type == "end" and iteration is None:
            self.outputs.update(result.outputs)
        return result

    def _on_error(self, node: Node, ex: Execution, message: str) -> NodeResult:
        strategy = node.data.get("error_strategy")
        ex.error = message
        if strategy == "default-value":
            ex.status = "exception"
            self.exceptions += 1
            defaults = {d.get("key"): d.get("value") for d in node.data.get("default_value") or [] if d.get("key")}
            return NodeResult(outputs={**defaults, "error_message": message, "error_type": "NodeError"})
        if strategy == "fail-branch":
            ex.status = "exception"
            self.exceptions += 1
            return NodeResult(outputs={"error_message": message, "error_type": "NodeError"}, handle="fail-branch")
        ex.status = "failed"
        return NodeResult()

    # -- iteration -----------------------------------------------------------------------------------
    async def iterate(self, node: Node, pool: VariablePool) -> NodeResult:
        items = pool.get(list(node.data["iterator_selector"]))
        if items is None:
            items = []
        if not isinstance(items, list):
            raise NodeError(f"iterator_selector must point to an array, got {type(items).__name__}")
        out_sel = list(node.data.get("output_selector") or [])
        children = self.graph.children(node.id)
        start_id = str(node.data.get("start_node_id"))
        parallel = bool(node.data.get("is_parallel"))
        width = max(1, min(int(node.data.get("parallel_nums") or 10), self.settings.max_parallelism)) if parallel else 1
        mode = node.data.get("error_handle_mode") or "terminated"
        started = time.perf_counter()
        meta = {"id": new_id(), "node_id": node.id, "node_type": "iteration", "title": node.title,
                "created_at": int(time.time()), "extras": {}, "parallel_id": None, "parallel_start_node_id": None}
        await self.emit("iteration_started", {"data": {**meta, "metadata": {"iterator_length": len(items)},
                                                       "inputs": {"iterator_selector": items}}})
        results: list[Any] = [None] * len(items)
        failed: list[int] = []
        gate = asyncio.Semaphore(width)

        async def one(i: int, item: Any) -> None:
            async with gate:
                layer = VariablePool({node.id: {"item": item, "index": i}}, parent=pool)
                await self.emit("iteration_next", {"data": {**meta, "index": i, "pre_iteration_output": None,
                                                            "parallel_mode_run_id": None, "duration": None}})
                try:
                    await self._scope(children, start_id, layer, node, i)
                    results[i] = layer.maybe(out_sel)
                except RunFailed:
                    if mode == "terminated":
                        raise
                    failed.append(i)

        try:
            await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
        except RunFailed as e:
            await self.emit("iteration_completed", {"data": {
                **meta, "outputs": None, "inputs": {"iterator_selector": items}, "status": "failed",
                "error": str(e), "elapsed_time": round(time.perf_counter() - started, 6), "total_tokens": self.tokens,
                "execution_metadata": None, "finished_at": int(time.time()), "steps": len(items)}})
            raise NodeError(f"iteration failed: {e}") from None
        if mode == "remove-abnormal-output":
            results = [r for i, r in enumerate(results) if i not in failed]
        await self.emit("iteration_completed", {"data": {
            **meta, "outputs": {"output": results}, "inputs": {"iterator_selector": items}, "status": "succeeded",
            "error": None, "elapsed_time": round(time.perf_counter() - started, 6), "total_tokens": self.tokens,
            "execution_metadata": None, "finished_at": int(time.time()), "steps": len(items)}})
        return NodeResult(outputs={"output": results}, inputs={"iterator_selector": items})


    # -- loop -----------------------------------------------------------------------------------------
    async def loop(self, node: Node, pool: VariablePool) -> NodeResult:
        """Dify's loop: the break conditions are checked before the first round and after each one; a round
        that ran a loop-end node is the last. Outputs: the loop variables as the last round left them, and
        ``loop_round``, the number of rounds run."""
        data = node.data
        count = int(data.get("loop_count") or 0)
        if not 0 <= count <= self.settings.max_loop_count:
            raise NodeError(f"loop_count must be between 0 and {self.settings.max_loop_count}, got {count}")
        state: dict[str, Any] = {}  # the loop variables: [loop id, label] inside, written by assigners
        for var in data.get("loop_variables") or []:
            label = var.get("label")
            if not label:
                continue
            raw = pool.maybe(var.get("value")) if var.get("value_type") == "variable" else var.get("value")
            try:
                state[label] = loop_value(raw, var.get("var_type"))
            except ValueError as e:
                raise NodeError(f"loop variable {label!r}: {e}") from None
        children = self.graph.children(node.id)
        start_id = str(data.get("start_node_id"))
        conditions = {"logical_operator": data.get("logical_operator") or "and",
                      "conditions": data.get("break_conditions") or []}
        started = time.perf_counter()
        inputs = {"loop_count": count}
        meta = {"id": new_id(), "node_id": node.id, "node_type": "loop", "title": node.title,
                "created_at": int(time.time()), "extras": {}, "parallel_id": None, "parallel_start_node_id": None}
        await self.emit("loop_started", {"data": {**meta, "metadata": {"loop_length": count}, "inputs": inputs}})

        def broken(layer: VariablePool) -> bool:
            if not conditions["conditions"]:
                return False
            try:
                return evaluate_cases(conditions, layer.get)[1]
            except ValueError:  # Dify: a condition that cannot be evaluated does not break the loop
                return False

        rounds = 0
        try:
            if not broken(VariablePool({node.id: state}, parent=pool)):
                for i in range(count):
                    # the round's node outputs stay in its own layer, and so does its loop-end (parallel copies
                    # of this loop, in an iteration, each have theirs)
                    layer = VariablePool({node.id: state}, parent=pool)
                    await self._scope(children, start_id, layer, node, i)
                    rounds = i + 1
                    if layer.loop_ended or broken(layer):
                        break
                    await self.emit("loop_next", {"data": {**meta, "index": i + 1, "pre_loop_output": dict(state),
                                                           "parallel_mode_run_id": None, "duration": None}})
        except RunFailed as e:
            await self.emit("loop_completed", {"data": {
                **meta, "outputs": None, "inputs": inputs, "status": "failed", "error": str(e),
                "elapsed_time": round(time.perf_counter() - started, 6), "total_tokens": self.tokens,
                "execution_metadata": None, "finished_at": int(time.time()), "steps": rounds}})
            raise NodeError(f"loop failed: {e}") from None
        outputs = {**state, "loop_round": rounds}
        await self.emit("loop_completed", {"data": {
            **meta, "outputs": outputs, "inputs": inputs, "status": "succeeded", "error": None,
            "elapsed_time": round(time.perf_counter() - started, 6), "total_tokens": self.tokens,
            "execution_metadata": None, "finished_at": int(time.time()), "steps": rounds}})
        return NodeResult(outputs=outputs, inputs=inputs)

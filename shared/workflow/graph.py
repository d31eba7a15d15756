"""The Dify workflow graph (``workflows.graph``): parsing, the node/edge model, variable selectors and
the outputs each node declares.

``parse_graph`` checks structure only (ids, ``data.type``, duplicates) and drops sticky notes;
``shared.workflow.validate.validate_graph`` applies the console's save/publish rules. Both raise
``GraphError`` whose message names the node as ``node '<title>' (<id>): ...``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

NODE_TYPES: frozenset[str] = frozenset(
    {
        "start",
        "end",
        "answer",
        "llm",
        "knowledge-retrieval",
        "question-classifier",
        "if-else",
        "code",
        "template-transform",
        "http-request",
        "tool",
        "variable-aggregator",
        "variable-assigner",
        "assigner",
        "iteration",
        "iteration-start",
        "loop",
        "loop-start",
        "loop-end",
        "parameter-extractor",
        "list-operator",
        "document-extractor",
        "agent",
    }
)
CONTAINER_TYPES: frozenset[str] = frozenset({"iteration", "loop"})

# Dify's VariableTemplateParser: {{#node_id.var.path#}}, the path 1..10 segments deep.
TEMPLATE_RE: re.Pattern[str] = re.compile(
    r"\{\{(#[a-zA-Z0-9_]{1,50}(\.[a-zA-Z_][a-zA-Z0-9_]{0,29}){1,10}#)\}\}"
)

SYS_VARIABLES: dict[str, str] = {
    "query": "string",
    "files": "array[file]",
    "conversation_id": "string",
    "user_id": "string",
    "dialogue_count": "number",
    "app_id": "string",
    "workflow_id": "string",
    "workflow_run_id": "string",
}
CHAT_ONLY_SYS: frozenset[str] = frozenset({"query", "conversation_id", "dialogue_count"})

VALUE_TYPES: frozenset[str] = frozenset(
    {
        "string",
        "number",
        "boolean",
        "object",
        "file",
        "array[string]",
        "array[number]",
        "array[object]",
        "array[file]",
        "array[boolean]",
        "array[any]",
        "any",
    }
)
_TYPE_ALIASES = {
    "integer": "number",
    "float": "number",
    "bool": "boolean",
    "secret": "string",
    "select": "string",
    "array[bool]": "array[boolean]",
    "array[integer]": "array[number]",
    "array[float]": "array[number]",
    "array": "array[any]",
}
_START_TYPES = {
    "text-input": "string",
    "paragraph": "string",
    "select": "string",
    "number": "number",
    "checkbox": "boolean",
    "json_object": "object",
    "file": "file",
    "file-list": "array[file]",
}
_SCALAR_TYPES = frozenset({"string", "number", "boolean"})


class GraphError(ValueError):
    """A graph the engine cannot run; ``str(err)`` already names the node (title and id) and the field."""

    def __init__(self, message: str, node_id: str | None = None):
        super().__init__(message)
        self.message = message
        self.node_id = node_id


@dataclass(frozen=True)
class Node:
    id: str
    type: str  # data.type
    title: str
    data: dict = field(hash=False)
    parent_id: str | None = None  # the iteration/loop this node sits in

    @property
    def label(self) -> str:
        return f"node '{self.title}' ({self.id})"


@dataclass(frozen=True)
class Edge:
    id: str
    source: str
    target: str
    source_handle: str = "source"
    target_handle: str = "target"


GRAPH_MODES = frozenset({"workflow", "advanced-chat"})  # the app modes served by a graph


@dataclass
class Graph:
    nodes: dict[str, Node]
    edges: list[Edge]
    start_id: str
    _out: dict[str, list[Edge]] = field(init=False, repr=False, compare=False)
    _in: dict[str, list[Edge]] = field(init=False, repr=False, compare=False)
    _kids: dict[str, list[Node]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._out, self._in, self._kids = {}, {}, {}
        for edge in self.edges:
            self._out.setdefault(edge.source, []).append(edge)
            self._in.setdefault(edge.target, []).append(edge)
        for node in self.nodes.values():
            if node.parent_id is not None:
                self._kids.setdefault(node.parent_id, []).append(node)

    def start_variables(self) -> list[dict[str, Any]]:
        """The start node's input variables (the app's form)."""
        return [v for v in self.nodes[self.start_id].data.get("variables") or [] if isinstance(v, dict)]

    def outgoing(self, node_id: str) -> list[Edge]:
        return list(self._out.get(node_id, ()))

    def incoming(self, node_id: str) -> list[Edge]:
        return list(self._in.get(node_id, ()))

    def children(self, container_id: str) -> list[Node]:
        """The nodes directly inside an iteration/loop, in document order."""
        return list(self._kids.get(container_id, ()))

    def upstream(self, node_id: str) -> set[str]:
        """Every node that can run before ``node_id``: its ancestors through edges and, for a node
        inside a container, the container itself (its item/index) plus the container's own upstream."""
        result: set[str] = set()
        current: str | None = node_id
        while current is not None:
            stack = [current]
            while stack:
                for edge in self._in.get(stack.pop(), ()):
                    if edge.source not in result:
                        result.add(edge.source)
                        stack.append(edge.source)
            node = self.nodes.get(current)
            parent = node.parent_id if node is not None else None
            if parent is None or parent not in self.nodes or parent in result:
                break
            result.add(parent)
            current = parent
        result.discard(node_id)
        return result


# ---------------------------------------------------------------------------------------------- parsing


def parse_graph(raw: Any) -> Graph:
    """``workflows.graph`` (a dict, or its JSON text) → ``Graph``. Structure only: sticky notes
    (node ``"type": "custom-note"``) and edges touching them are dropped, as are edges without a source or
    target (as Dify does); every node needs an id and a known ``data.type``; ids are unique."""
    if isinstance(raw, (str, bytes, bytearray)):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise GraphError(f"the graph is not valid JSON: {exc}") from None
    if not isinstance(raw, Mapping):
        raise GraphError("the graph must be a JSON object with 'nodes' and 'edges'")
    raw_nodes = raw.get("nodes") or []
    raw_edges = raw.get("edges") or []
    if not isinstance(raw_nodes, list):
        raise GraphError("graph 'nodes' must be a list")
    if not isinstance(raw_edges, list):
        raise GraphError("graph 'edges' must be a list")

    nodes: dict[str, Node] = {}
    notes: set[str] = set()
    for index, item in enumerate(raw_nodes):
        if not isinstance(item, Mapping):
            raise GraphError(f"nodes[{index}] is not an object")
        node_id = item.get("id")
        if item.get("type") == "custom-note":
            if isinstance(node_id, str):
                notes.add(node_id)
            continue
        if not isinstance(node_id, str) or not node_id.strip():
            raise GraphError(f"nodes[{index}] has no id")
        data = item.get("data")
        if not isinstance(data, Mapping):
            raise GraphError(f"node {node_id}: missing 'data'", node_id)
        title = data.get("title")
        title = title if isinstance(title, str) and title.strip() else node_id
        label = f"node '{title}' ({node_id})"
        node_type = data.get("type")
        if not isinstance(node_type, str) or not node_type:
            raise GraphError(f"{label}: missing data.type", node_id)
        if node_type not in NODE_TYPES:
            raise GraphError(f"{label}: unsupported node type '{node_type}'", node_id)
        if node_id in nodes:
            raise GraphError(f"{label}: duplicate node id (also used by {nodes[node_id].label})", node_id)
        parent = item.get("parentId") or data.get("iteration_id") or data.get("loop_id") or None
        if parent is not None and not isinstance(parent, str):
            raise GraphError(f"{label}: parentId must be a string", node_id)
        nodes[node_id] = Node(node_id, node_type, title, dict(data), parent if parent != node_id else None)

    edges: list[Edge] = []
    for index, item in enumerate(raw_edges):
        if not isinstance(item, Mapping):
            raise GraphError(f"edges[{index}] is not an object")
        source, target = item.get("source"), item.get("target")
        if not source or not target or source in notes or target in notes:
            continue
        if not isinstance(source, str) or not isinstance(target, str):
            raise GraphError(f"edges[{index}]: source and target must be node ids (strings)")
        source_handle = item.get("sourceHandle") or "source"
        target_handle = item.get("targetHandle") or "target"
        edge_id = item.get("id") or f"{source}-{source_handle}-{target}-{target_handle}"
        edges.append(Edge(str(edge_id), source, target, str(source_handle), str(target_handle)))

    top = [n for n in nodes.values() if n.parent_id is None]
    targets = {e.target for e in edges}
    start = next((n.id for n in top if n.type == "start"), None)
    if start is None:
        start = next((n.id for n in top if n.id not in targets), "")
    return Graph(nodes, edges, start)


# -------------------------------------------------------------------------------------------- selectors


def _as_selector(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _is_selector(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0


def selectors(node: Node) -> list[tuple[list[str], str]]:
    """Every value selector the node's config references, with where it is: a field path such as
    ``outputs[0].value_selector``, or for a template reference ``{{#a.b#}} in answer``. Required selectors are
    listed even when empty (``[]`` = nothing selected); optional ones only when set."""
    found: list[tuple[list[str], str]] = []
    data = node.data

    def sel(value: Any, where: str, *, optional: bool = False) -> None:
        if optional and not _is_selector(value):
            return
        found.append((_as_selector(value), where))

    def text(value: Any, where: str) -> None:
        if isinstance(value, str):
            for match in TEMPLATE_RE.finditer(value):
                found.append((match.group(1)[1:-1].split("."), f"{match.group(0)} in {where}"))
        elif isinstance(value, Mapping):
            for key, item in value.items():
                text(item, f"{where}.{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                text(item, f"{where}[{i}]")

    def named_vars(field_name: str, key: str = "value_selector") -> None:
        for i, var in enumerate(_list(data.get(field_name))):
            if isinstance(var, Mapping):
                sel(var.get(key), f"{field_name}[{i}].{key}")

    def conditions(items: Any, where: str) -> None:
        for j, cond in enumerate(_list(items)):
            if isinstance(cond, Mapping):
                sel(cond.get("variable_selector"), f"{where}[{j}].variable_selector")
                text(cond.get("value"), f"{where}[{j}].value")

    def vision() -> None:
        cfg = _dict(data.get("vision"))
        if cfg.get("enabled"):
            sel(
                _dict(cfg.get("configs")).get("variable_selector"),
                "vision.configs.variable_selector",
                optional=True,
            )

    kind = node.type
    if kind == "end":
        named_vars("outputs")
    elif kind == "answer":
        text(data.get("answer"), "answer")
    elif kind == "llm":
        prompt = data.get("prompt_template")
        messages = prompt if isinstance(prompt, list) else [prompt]
        for i, msg in enumerate(messages):
            if isinstance(msg, Mapping) and msg.get("edition_type") != "jinja2":
                text(
                    msg.get("text"),
                    f"prompt_template[{i}].text" if isinstance(prompt, list) else "prompt_template.text",
                )
        for i, var in enumerate(_list(_dict(data.get("prompt_config")).get("jinja2_variables"))):
            if isinstance(var, Mapping):
                sel(var.get("value_selector"), f"prompt_config.jinja2_variables[{i}].value_selector")
        context = _dict(data.get("context"))
        if context.get("enabled"):
            sel(context.get("variable_selector"), "context.variable_selector", optional=True)
        text(_dict(data.get("memory")).get("query_prompt_template"), "memory.query_prompt_template")
        vision()
    elif kind == "knowledge-retrieval":
        sel(data.get("query_variable_selector"), "query_variable_selector")
    elif kind == "question-classifier":
        sel(data.get("query_variable_selector"), "query_variable_selector")
        text(data.get("instruction"), "instruction")
        vision()
    elif kind == "if-else":
        if isinstance(data.get("cases"), list):
            for i, case in enumerate(data["cases"]):
                if isinstance(case, Mapping):
                    conditions(case.get("conditions"), f"cases[{i}].conditions")
        else:
            conditions(data.get("conditions"), "conditions")
    elif kind in ("code", "template-transform"):
        named_vars("variables")
    elif kind == "http-request":
        for key in ("url", "headers", "params"):
            text(data.get(key), key)
        body = _dict(data.get("body"))
        body_data = body.get("data")
        if isinstance(body_data, list):
            for i, item in enumerate(body_data):
                if not isinstance(item, Mapping):
                    continue
                if item.get("type") == "file" or body.get("type") == "binary":
                    sel(item.get("file"), f"body.data[{i}].file")
                else:
                    text(item.get("key"), f"body.data[{i}].key")
                    text(item.get("value"), f"body.data[{i}].value")
        else:
            text(body_data, "body.data")
        text(_dict(_dict(data.get("authorization")).get("config")), "authorization.config")
    elif kind == "tool":
        for name, param in _dict(data.get("tool_parameters")).items():
            if not isinstance(param, Mapping):
                continue
            if param.get("type") == "variable":
                sel(param.get("value"), f"tool_parameters.{name}.value", optional=True)
            elif param.get("type") != "constant":
                text(param.get("value"), f"tool_parameters.{name}.value")
    elif kind in ("variable-aggregator", "variable-assigner"):
        settings = _dict(data.get("advanced_settings"))
        if settings.get("group_enabled"):
            for i, group in enumerate(_list(settings.get("groups"))):
                for j, value in enumerate(_list(_dict(group).get("variables"))):
                    sel(value, f"advanced_settings.groups[{i}].variables[{j}]")
        else:
            for j, value in enumerate(_list(data.get("variables"))):
                sel(value, f"variables[{j}]")
    elif kind == "assigner":
        if str(data.get("version", "1")) == "1" and "items" not in data:
            sel(data.get("assigned_variable_selector"), "assigned_variable_selector")
            if data.get("write_mode") != "clear":
                sel(data.get("input_variable_selector"), "input_variable_selector")
        else:
            for i, item in enumerate(_list(data.get("items"))):
                if not isinstance(item, Mapping):
                    continue
                sel(item.get("variable_selector"), f"items[{i}].variable_selector")
                if item.get("input_type") == "variable" and item.get("operation") != "clear":
                    sel(item.get("value"), f"items[{i}].value")
    elif kind == "iteration":
        sel(data.get("iterator_selector"), "iterator_selector")
        sel(data.get("output_selector"), "output_selector")
    elif kind == "loop":
        for i, var in enumerate(_list(data.get("loop_variables"))):
            if isinstance(var, Mapping) and var.get("value_type") == "variable":
                sel(var.get("value"), f"loop_variables[{i}].value")
        conditions(data.get("break_conditions"), "break_conditions")
    elif kind == "parameter-extractor":
        sel(data.get("query"), "query")
        text(data.get("instruction"), "instruction")
        vision()
    elif kind == "list-operator":
        sel(data.get("variable"), "variable")
    elif kind == "document-extractor":
        sel(data.get("variable_selector"), "variable_selector")
    elif kind == "agent":
        # every {type, value} input: a variable's selector, or the templates in a constant/mixed one (the tools'
        # preset parameters included, as Dify renders them)
        params = _dict(data.get("agent_parameters"))
        for name, param in params.items():
            if isinstance(param, Mapping) and param.get("type") == "variable":
                sel(param.get("value"), f"agent_parameters.{name}.value", optional=True)
            elif isinstance(param, Mapping) and name != "model":
                text(param.get("value"), f"agent_parameters.{name}.value")
    return found


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> Mapping:
    return value if isinstance(value, Mapping) else {}


# ------------------------------------------------------------------------------------------------ types


def normalize_type(value: Any) -> str:
    """A Dify type name → one of ``VALUE_TYPES`` (``integer`` → number, ``secret`` → string, ...);
    anything unknown is ``any``."""
    if not isinstance(value, str):
        return "any"
    name = value.strip().lower()
    name = _TYPE_ALIASES.get(name, name)
    return name if name in VALUE_TYPES else "any"


def element_type(array_type: str) -> str:
    """``array[x]`` → ``x``; anything else (any/object) → ``any``."""
    if array_type.startswith("array[") and array_type.endswith("]"):
        return array_type[6:-1]
    return "any"


def descend(value_type: str, path: list) -> str | None:
    """The type at ``path`` below a value of ``value_type``; None when the value has no properties
    (a string, number or boolean)."""
    if not path:
        return value_type
    if value_type in _SCALAR_TYPES:
        return None
    return "any"


class TypeResolver:
    """Declared outputs per node (cached) and lenient selector typing: what is unknown is ``any``."""

    def __init__(
        self,
        graph: Graph,
        environment: Mapping[str, str] | None = None,
        conversation: Mapping[str, str] | None = None,
    ):
        self.graph = graph
        self.environment = environment or {}
        self.conversation = conversation or {}
        self._cache: dict[str, dict[str, str]] = {}
        self._busy: set[str] = set()

    def lookup(self, selector: Any) -> str:
        if not isinstance(selector, (list, tuple)) or len(selector) < 2:
            return "any"
        root, name, path = selector[0], selector[1], list(selector[2:])
        if root == "sys":
            base = SYS_VARIABLES.get(name, "any")
        elif root == "env":
            base = normalize_type(self.environment.get(name))
        elif root == "conversation":
            base = normalize_type(self.conversation.get(name))
        elif root in self.graph.nodes:
            base = (
                self.outputs(self.graph.nodes[root]).get(name)
                or self.inner(self.graph.nodes[root]).get(name)
                or "any"
            )
        else:
            base = "any"
        return descend(base, path) or "any"

    def inner(self, container: Node) -> dict[str, str]:
        """What the children of an iteration/loop see as ``[container_id, name]``."""
        if container.type == "iteration":
            items = self._guarded(container.id, lambda: self.lookup(container.data.get("iterator_selector")))
            return {"item": element_type(items or "any"), "index": "number"}
        if container.type == "loop":
            return _loop_variables(container)
        return {}

    def outputs(self, node: Node) -> dict[str, str]:
        cached = self._cache.get(node.id)
        if cached is None:
            cached = self._guarded(node.id, lambda: _declared(self, node))
            if cached is None:
                return {}
            self._cache[node.id] = cached
        return dict(cached)

    def _guarded(self, key: str, fn: Any) -> Any:
        if key in self._busy:
            return None
        self._busy.add(key)
        try:
            return fn()
        finally:
            self._busy.discard(key)


def _loop_variables(node: Node) -> dict[str, str]:
    out: dict[str, str] = {}
    for var in _list(node.data.get("loop_variables")):
        if isinstance(var, Mapping) and isinstance(var.get("label"), str) and var["label"]:
            out[var["label"]] = normalize_type(var.get("var_type"))
    return out


ERROR_OUTPUTS = {"error_message": "string", "error_type": "string"}


def _declared(types: TypeResolver, node: Node) -> dict[str, str]:
    """A node's outputs; with an error strategy it may also carry the error (Dify's error_message/type)."""
    out = _declared_by_type(types, node)
    if node.data.get("error_strategy") in ("fail-branch", "default-value"):
        out = {**out, **ERROR_OUTPUTS}
    return out


def _declared_by_type(types: TypeResolver, node: Node) -> dict[str, str]:
    data, kind = node.data, node.type
    if kind == "start":
        out = {}
        for var in _list(data.get("variables")):
            if isinstance(var, Mapping) and isinstance(var.get("variable"), str) and var["variable"]:
                out[var["variable"]] = _START_TYPES.get(var.get("type"), "any")
        return out
    if kind == "llm":
        return {
            "text": "string",
            "usage": "object",
            "reasoning_content": "string",
            "structured_output": "object",
        }
    if kind == "knowledge-retrieval":
        return {"result": "array[object]"}
    if kind == "question-classifier":
        return {"class_name": "string", "class_id": "string", "usage": "object"}
    if kind == "if-else":
        return {"result": "boolean", "selected_case_id": "string"}
    if kind == "code":
        return {
            name: normalize_type(_dict(spec).get("type"))
            for name, spec in _dict(data.get("outputs")).items()
            if isinstance(name, str)
        }
    if kind == "template-transform":
        return {"output": "string"}
    if kind == "http-request":
        return {"body": "string", "status_code": "number", "headers": "object", "files": "array[file]"}
    if kind == "tool":
        return {"text": "string", "files": "array[file]", "json": "array[object]"}
    if kind == "agent":
        return {"text": "string", "files": "array[file]", "json": "array[object]", "usage": "object"}
    if kind in ("variable-aggregator", "variable-assigner"):
        settings = _dict(data.get("advanced_settings"))
        if settings.get("group_enabled"):
            return {
                group["group_name"]: "object"
                for group in _list(settings.get("groups"))
                if isinstance(group, Mapping) and isinstance(group.get("group_name"), str)
            }
        return {"output": normalize_type(data.get("output_type"))}
    if kind == "iteration":
        item = types.lookup(data.get("output_selector"))
        if item in ("string", "number", "boolean", "object", "file"):
            return {"output": f"array[{item}]"}
        declared = normalize_type(data.get("output_type"))
        return {"output": declared if declared.startswith("array[") else "array[any]"}
    if kind == "loop":
        return {**_loop_variables(node), "loop_round": "number"}
    if kind == "parameter-extractor":
        out = {}
        for param in _list(data.get("parameters")):
            if isinstance(param, Mapping) and isinstance(param.get("name"), str):
                out[param["name"]] = normalize_type(param.get("type"))
        return {**out, "__is_success": "number", "__reason": "string", "__usage": "object"}
    if kind == "list-operator":
        source = types.lookup(data.get("variable"))
        result = source if source.startswith("array[") else "array[any]"
        first = element_type(result)
        return {"result": result, "first_record": first, "last_record": first}
    if kind == "document-extractor":
        return {"text": "array[string]" if data.get("is_array_file") else "string"}
    if kind == "answer":
        return {"answer": "string"}
    return {}  # end, assigner, iteration-start, loop-start, loop-end


def declared_outputs(graph: Graph, node: Node) -> dict[str, str]:
    """Output name → type (one of ``VALUE_TYPES``) that ``node`` writes to the variable pool."""
    return TypeResolver(graph).outputs(node)

"""Save/publish validation of a parsed workflow graph: the console's checklist (one start, an End or Answer
reachable, every node connected, required fields set), the engine's structural rules (edges between existing
nodes, no cycles, known branch handles) and every variable reference (upstream, declared, type-compatible).

The first problem found raises ``GraphError``; its message names the node's title and id and the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Literal

from shared.workflow.agent import agent_config
from shared.workflow.graph import (
    CHAT_ONLY_SYS,
    CONTAINER_TYPES,
    SYS_VARIABLES,
    Graph,
    GraphError,
    Node,
    TypeResolver,
    descend,
    normalize_type,
    selectors,
)

Mode = Literal["workflow", "advanced-chat"]
_EMPTY: Mapping[str, str] = MappingProxyType({})
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CODE_TYPES = frozenset(
    {
        "string",
        "number",
        "object",
        "boolean",
        "array[string]",
        "array[number]",
        "array[object]",
        "array[boolean]",
    }
)
_PARAM_TYPES = frozenset(
    {
        "string",
        "number",
        "bool",
        "boolean",
        "select",
        "array[string]",
        "array[number]",
        "array[object]",
        "array[bool]",
        "array[boolean]",
    }
)
_HTTP_METHODS = frozenset({"get", "post", "put", "patch", "delete", "head", "options"})
_RESERVED_PARAMS = frozenset({"__is_success", "__reason", "__usage"})
_FAIL_HANDLES = frozenset({"fail-branch", "success-branch"})


def validate_graph(
    graph: Graph,
    mode: Mode,
    *,
    environment: Mapping[str, str] = _EMPTY,
    conversation: Mapping[str, str] = _EMPTY,
) -> None:
    """Raise ``GraphError`` for the first rule the graph breaks. ``environment`` and ``conversation`` map the
    app's environment / conversation variable names to their value types."""
    if mode not in ("workflow", "advanced-chat"):
        raise GraphError(f"unknown workflow mode '{mode}' (expected workflow or advanced-chat)")
    if not graph.nodes:
        raise GraphError("a workflow needs at least one node")
    _check_containment(graph)
    _check_start(graph)
    _check_edges(graph)
    for node in graph.nodes.values():
        _CONFIG_CHECKS.get(node.type, _no_check)(graph, node)
    _check_handles(graph)
    for scope in _scopes(graph):
        _check_acyclic(graph, scope)
    _check_reachable(graph, mode)
    _References(graph, mode, environment, conversation).check_all()


# -------------------------------------------------------------------------------------------- structure


def _err(node: Node, problem: str) -> GraphError:
    return GraphError(f"{node.label}: {problem}", node.id)


def _check_containment(graph: Graph) -> None:
    for node in graph.nodes.values():
        parent_id = node.parent_id
        if parent_id is not None:
            parent = graph.nodes.get(parent_id)
            if parent is None:
                raise _err(node, f"it sits inside node {parent_id}, which does not exist")
            if parent.type not in CONTAINER_TYPES:
                raise _err(node, f"it sits inside {parent.label}, which is not an iteration or loop")
            seen = {node.id}
            while parent is not None:
                if parent.id in seen:
                    raise _err(node, "its iteration/loop containers contain each other")
                seen.add(parent.id)
                parent = graph.nodes.get(parent.parent_id) if parent.parent_id else None
        if node.type in ("start", "end") and parent_id is not None:
            raise _err(node, f"a {node.type} node cannot be inside an iteration or loop")
        wanted = {"iteration-start": "iteration", "loop-start": "loop", "loop-end": "loop"}.get(node.type)
        if wanted and (parent_id is None or graph.nodes[parent_id].type != wanted):
            raise _err(node, f"a {node.type} node must be inside a {wanted}")


def _check_start(graph: Graph) -> None:
    starts = [n for n in graph.nodes.values() if n.type == "start" and n.parent_id is None]
    if len(starts) != 1:
        found = ", ".join(f"'{n.title}' ({n.id})" for n in starts)
        raise GraphError(
            f"a workflow needs exactly one start node (found {len(starts)}{': ' + found if found else ''})",
            starts[1].id if starts else None,
        )
    if graph.start_id != starts[0].id:
        raise GraphError(
            f"the graph's start_id {graph.start_id!r} is not its start node {starts[0].label}", starts[0].id
        )


def _check_edges(graph: Graph) -> None:
    for edge in graph.edges:
        for end, node_id in (("source", edge.source), ("target", edge.target)):
            if node_id not in graph.nodes:
                raise GraphError(f"edge {edge.id}: its {end} node {node_id} does not exist", node_id)
        source, target = graph.nodes[edge.source], graph.nodes[edge.target]
        if source.parent_id != target.parent_id:
            where = (
                f"inside {graph.nodes[source.parent_id].label}" if source.parent_id else "at the top level"
            )
            there = (
                f"inside {graph.nodes[target.parent_id].label}" if target.parent_id else "at the top level"
            )
            raise _err(
                source,
                f"edge {edge.id} crosses an iteration/loop boundary: this node is {where}, "
                f"its target {target.label} is {there}",
            )


def _check_handles(graph: Graph) -> None:
    for edge in graph.edges:
        node = graph.nodes[edge.source]
        if node.type == "end":
            raise _err(node, f"an End node cannot have outgoing edges (edge {edge.id})")
        if node.type == "if-else":
            allowed = [*_case_ids(node), "false"]
        elif node.type == "question-classifier":
            allowed = [str(c.get("id")) for c in node.data.get("classes") or [] if isinstance(c, Mapping)]
        else:
            allowed = ["source"]
        if node.data.get("error_strategy") == "fail-branch":
            allowed += sorted(_FAIL_HANDLES - set(allowed))
        if edge.source_handle not in allowed:
            raise _err(
                node,
                f"edge {edge.id} leaves through unknown handle '{edge.source_handle}' "
                f"(expected one of: {', '.join(allowed)})",
            )


def _scopes(graph: Graph) -> list[str | None]:
    return [None, *(n.id for n in graph.nodes.values() if n.type in CONTAINER_TYPES)]


def _check_acyclic(graph: Graph, scope: str | None) -> None:
    members = [n.id for n in graph.nodes.values() if n.parent_id == scope]
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done
    for root in members:
        if root in state:
            continue
        path: list[str] = [root]
        iters = [iter(graph.outgoing(root))]
        state[root] = 1
        while iters:
            edge = next(iters[-1], None)
            if edge is None:
                state[path.pop()] = 2
                iters.pop()
                continue
            nxt = edge.target
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                shown = " → ".join(graph.nodes[i].label.removeprefix("node ") for i in cycle)
                raise _err(graph.nodes[nxt], f"it is on a cycle: {shown}")
            if nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(graph.outgoing(nxt)))


def _reach(graph: Graph, root: str) -> set[str]:
    seen, stack = {root}, [root]
    while stack:
        for edge in graph.outgoing(stack.pop()):
            if edge.target not in seen:
                seen.add(edge.target)
                stack.append(edge.target)
    return seen


def _check_reachable(graph: Graph, mode: Mode) -> None:
    start = graph.nodes[graph.start_id]
    reached = _reach(graph, start.id)
    for node in graph.nodes.values():
        if node.parent_id is None and node.id not in reached:
            raise _err(node, f"it is not connected: it cannot be reached from the start {start.label}")
    for container in graph.nodes.values():
        if container.type not in CONTAINER_TYPES:
            continue
        inside = _reach(graph, container.data["start_node_id"])
        for child in graph.children(container.id):
            if child.id not in inside:
                raise _err(
                    child, f"it is not connected: it cannot be reached from the start of {container.label}"
                )
    top = [n for n in graph.nodes.values() if n.parent_id is None]
    if mode == "advanced-chat":
        for node in top:
            if node.type == "end":
                raise _err(
                    node,
                    "End nodes are not allowed in advanced-chat apps (Dify chatflows have no End "
                    "node; reply with an Answer node)",
                )
        if not any(n.type == "answer" for n in graph.nodes.values()):
            raise GraphError("an advanced-chat workflow needs an Answer node reachable from the start node")
    elif not any(n.type == "end" for n in top):
        raise GraphError("a workflow needs an End node reachable from the start node")


# ------------------------------------------------------------------------------------- required config


def _no_check(graph: Graph, node: Node) -> None:
    return None


def _text(node: Node, key: str, *, where: str | None = None, allow_empty: bool = False) -> str:
    value = node.data.get(key)
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise _err(node, f"{where or key} is required")
    return value


def _model(node: Node) -> None:
    model = node.data.get("model")
    if not isinstance(model, Mapping):
        raise _err(node, "model is required (model.provider and model.name)")
    for key in ("provider", "name"):
        if not isinstance(model.get(key), str) or not model[key].strip():
            raise _err(node, f"model.{key} is required")


def _selector_set(node: Node, key: str) -> None:
    value = node.data.get(key)
    if not isinstance(value, list) or not value:
        raise _err(node, f"{key} is required (no variable selected)")


def _nonempty_list(node: Node, key: str, what: str) -> list:
    value = node.data.get(key)
    if not isinstance(value, list) or not value:
        raise _err(node, f"{key} needs at least one {what}")
    return value


def _unique_names(node: Node, items: Iterable[Any], field: str, key: str) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        name = item.get(key) if isinstance(item, Mapping) else None
        if not isinstance(name, str) or not name.strip():
            raise _err(node, f"{field}[{i}] needs {_article(key)}")
        if name in seen:
            raise _err(node, f"{field}[{i}]: duplicate {key} '{name}'")
        seen.add(name)


def _case_ids(node: Node) -> list[str]:
    cases = node.data.get("cases")
    if isinstance(cases, list):
        return [str(c.get("case_id")) for c in cases if isinstance(c, Mapping)]
    return ["true"]  # legacy single-case form


def _check_start_node(graph: Graph, node: Node) -> None:
    variables = node.data.get("variables") or []
    if not isinstance(variables, list):
        raise _err(node, "variables must be a list")
    _unique_names(node, variables, "variables", "variable")


def _check_end(graph: Graph, node: Node) -> None:
    outputs = node.data.get("outputs") or []
    if not isinstance(outputs, list):
        raise _err(node, "outputs must be a list of {variable, value_selector}")
    _unique_names(node, outputs, "outputs", "variable")
    for i, out in enumerate(outputs):
        if not isinstance(out.get("value_selector"), list) or not out["value_selector"]:
            raise _err(node, f"outputs[{i}] '{out['variable']}' needs a value_selector")


def _check_answer(graph: Graph, node: Node) -> None:
    _text(node, "answer")


def _check_llm(graph: Graph, node: Node) -> None:
    _model(node)
    if node.data.get("reasoning_format", "tagged") not in ("tagged", "separated"):
        raise _err(node, "reasoning_format must be tagged (thinking stays in text) or separated")
    prompt = node.data.get("prompt_template")
    if isinstance(prompt, Mapping):
        if not isinstance(prompt.get("text", prompt.get("jinja2_text")), str):
            raise _err(node, "prompt_template.text is required")
        return
    if not isinstance(prompt, list):
        raise _err(node, "prompt_template is required (a list of messages, or {text} in completion mode)")
    if not prompt and not node.data.get("memory"):
        raise _err(node, "prompt_template has no messages")
    for i, msg in enumerate(prompt):
        if not isinstance(msg, Mapping) or msg.get("role") not in ("system", "user", "assistant"):
            raise _err(node, f"prompt_template[{i}] needs a role (system, user or assistant)")


def _check_knowledge(graph: Graph, node: Node) -> None:
    ids = node.data.get("dataset_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
        raise _err(node, "dataset_ids needs at least one knowledge base id")
    _selector_set(node, "query_variable_selector")


def _check_classifier(graph: Graph, node: Node) -> None:
    _model(node)
    classes = _nonempty_list(node, "classes", "class")
    _unique_names(node, classes, "classes", "id")
    _selector_set(node, "query_variable_selector")


def _check_if_else(graph: Graph, node: Node) -> None:
    cases = node.data.get("cases")
    if cases is None and isinstance(node.data.get("conditions"), list):
        cases, key = [{"case_id": "true", "conditions": node.data["conditions"]}], "conditions"
    else:
        cases, key = _nonempty_list(node, "cases", "case"), "cases"
    _unique_names(node, cases, "cases", "case_id")
    for i, case in enumerate(cases):
        conditions = case.get("conditions")
        where = "conditions" if key == "conditions" else f"cases[{i}].conditions"
        if not isinstance(conditions, list) or not conditions:
            raise _err(node, f"{where} needs at least one condition")
        for j, cond in enumerate(conditions):
            if not isinstance(cond, Mapping) or not cond.get("comparison_operator"):
                raise _err(node, f"{where}[{j}] needs a comparison_operator")


def _check_code(graph: Graph, node: Node) -> None:
    language = node.data.get("code_language")
    if language == "javascript":
        raise _err(node, "code_language 'javascript' is not supported (only python3)")
    if language != "python3":
        raise _err(node, f"code_language must be python3 (got {language!r})")
    _text(node, "code")
    _unique_names(node, node.data.get("variables") or [], "variables", "variable")
    outputs = node.data.get("outputs")
    if not isinstance(outputs, Mapping) or not outputs:
        raise _err(node, "outputs needs at least one declared output ({name: {type}})")
    for name, spec in outputs.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise _err(node, f"outputs: invalid output name {name!r}")
        kind = spec.get("type") if isinstance(spec, Mapping) else None
        if kind not in _CODE_TYPES:
            raise _err(
                node,
                f"outputs.{name}: invalid type {kind!r} (expected one of: {', '.join(sorted(_CODE_TYPES))})",
            )


def _check_template(graph: Graph, node: Node) -> None:
    _text(node, "template", allow_empty=True)
    _unique_names(node, node.data.get("variables") or [], "variables", "variable")


def _check_http(graph: Graph, node: Node) -> None:
    method = node.data.get("method")
    if not isinstance(method, str) or method.lower() not in _HTTP_METHODS:
        raise _err(node, f"method is required (one of {', '.join(sorted(_HTTP_METHODS))}; got {method!r})")
    _text(node, "url")


def _check_tool(graph: Graph, node: Node) -> None:
    for key in ("provider_id", "provider_type", "tool_name"):
        _text(node, key)


def _check_agent(graph: Graph, node: Node) -> None:
    try:
        agent_config(node.data)
    except ValueError as e:
        raise _err(node, str(e)) from None


def _check_container(graph: Graph, node: Node) -> None:
    if node.type == "iteration":
        _selector_set(node, "iterator_selector")
        _selector_set(node, "output_selector")
    start = node.data.get("start_node_id")
    if not isinstance(start, str) or not start:
        raise _err(node, "start_node_id is required")
    child = graph.nodes.get(start)
    if child is None or child.parent_id != node.id:
        raise _err(node, f"start_node_id {start} is not a node inside this {node.type}")


def _check_extractor(graph: Graph, node: Node) -> None:
    _model(node)
    _selector_set(node, "query")
    params = _nonempty_list(node, "parameters", "parameter")
    _unique_names(node, params, "parameters", "name")
    for i, param in enumerate(params):
        name = param["name"]
        if not _NAME_RE.match(name) or name in _RESERVED_PARAMS:
            raise _err(
                node,
                f"parameters[{i}]: invalid name '{name}' (letters, digits and _; not "
                f"{', '.join(sorted(_RESERVED_PARAMS))})",
            )
        if param.get("type") not in _PARAM_TYPES:
            raise _err(node, f"parameters[{i}] '{name}': invalid type {param.get('type')!r}")


def _check_list_operator(graph: Graph, node: Node) -> None:
    _selector_set(node, "variable")


def _check_document_extractor(graph: Graph, node: Node) -> None:
    _selector_set(node, "variable_selector")


def _check_aggregator(graph: Graph, node: Node) -> None:
    settings = node.data.get("advanced_settings")
    if isinstance(settings, Mapping) and settings.get("group_enabled"):
        groups = settings.get("groups")
        if not isinstance(groups, list) or not groups:
            raise _err(node, "advanced_settings.groups needs at least one group")
        _unique_names(node, groups, "advanced_settings.groups", "group_name")
        for i, group in enumerate(groups):
            if not isinstance(group.get("variables"), list) or not group["variables"]:
                raise _err(
                    node, f"advanced_settings.groups[{i}] '{group['group_name']}' needs at least one variable"
                )
        return
    _nonempty_list(node, "variables", "variable")


_CONFIG_CHECKS = {
    "start": _check_start_node,
    "end": _check_end,
    "answer": _check_answer,
    "llm": _check_llm,
    "knowledge-retrieval": _check_knowledge,
    "question-classifier": _check_classifier,
    "if-else": _check_if_else,
    "code": _check_code,
    "template-transform": _check_template,
    "http-request": _check_http,
    "tool": _check_tool,
    "agent": _check_agent,
    "iteration": _check_container,
    "loop": _check_container,
    "parameter-extractor": _check_extractor,
    "list-operator": _check_list_operator,
    "document-extractor": _check_document_extractor,
    "variable-aggregator": _check_aggregator,
    "variable-assigner": _check_aggregator,
}


# ------------------------------------------------------------------------------------------ references


def _describe(selector: list, where: str) -> str:
    if where.startswith("{{#"):
        return where
    return f"{where} ({'.'.join(map(str, selector))})"


def _compatible(source: str, expected: str) -> bool:
    if expected == "any" or source in ("any", "object") or source == expected:
        return True
    if expected == "array":
        return source.startswith("array[")
    return (
        source.startswith("array[") and expected.startswith("array[") and "array[any]" in (source, expected)
    )


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


class _References:
    def __init__(
        self, graph: Graph, mode: Mode, environment: Mapping[str, str], conversation: Mapping[str, str]
    ):
        self.graph, self.mode = graph, mode
        self.environment, self.conversation = environment, conversation
        self.types = TypeResolver(graph, environment, conversation)
        self._upstream: dict[str, set[str]] = {}

    def upstream(self, node_id: str) -> set[str]:
        if node_id not in self._upstream:
            self._upstream[node_id] = self.graph.upstream(node_id)
        return self._upstream[node_id]

    def enclosing(self, node: Node) -> list[str]:
        chain, parent = [], node.parent_id
        while parent is not None:
            chain.append(parent)
            parent = self.graph.nodes[parent].parent_id
        return chain

    def check_all(self) -> None:
        for node in self.graph.nodes.values():
            required = self.required_types(node)
            for selector, where in selectors(node):
                found = self.resolve(node, selector, where)
                expected = required.get(where)
                if expected and not _compatible(found, expected):
                    raise _err(
                        node,
                        f"{_describe(selector, where)} is {_article(found)}, but "
                        f"{_article(expected)} is required",
                    )

    def required_types(self, node: Node) -> dict[str, str]:
        if node.type == "iteration":
            return {"iterator_selector": "array"}
        if node.type == "list-operator":
            return {"variable": "array"}
        if node.type == "knowledge-retrieval":
            return {"query_variable_selector": "string"}
        if node.type == "end":
            return {
                f"outputs[{i}].value_selector": normalize_type(out.get("value_type"))
                for i, out in enumerate(node.data.get("outputs") or [])
                if out.get("value_type")
            }
        return {}

    def resolve(self, node: Node, selector: list, where: str) -> str:
        """The type ``selector`` has when read by ``node``; GraphError when it cannot be read there."""
        described = _describe(selector, where)
        if not selector:
            raise _err(node, f"{where}: no variable selected")
        if len(selector) < 2 or not all(isinstance(part, str) and part for part in selector):
            raise _err(node, f"{where} is not a valid variable selector: {selector!r}")
        root, name, path = selector[0], selector[1], selector[2:]
        if root == "sys":
            if name not in SYS_VARIABLES:
                raise _err(
                    node,
                    f"{described} refers to unknown system variable sys.{name} "
                    f"(known: {', '.join(SYS_VARIABLES)})",
                )
            if name in CHAT_ONLY_SYS and self.mode != "advanced-chat":
                raise _err(node, f"{described}: sys.{name} only exists in advanced-chat apps")
            base = SYS_VARIABLES[name]
        elif root == "env":
            if name not in self.environment:
                raise _err(
                    node,
                    f"{described} refers to environment variable '{name}', which is not defined"
                    f"{_known(self.environment)}",
                )
            base = normalize_type(self.environment[name])
        elif root == "conversation":
            if self.mode != "advanced-chat":
                raise _err(node, f"{described}: conversation variables only exist in advanced-chat apps")
            if name not in self.conversation:
                raise _err(
                    node,
                    f"{described} refers to conversation variable '{name}', which is not defined"
                    f"{_known(self.conversation)}",
                )
            base = normalize_type(self.conversation[name])
        else:
            base = self._node_output(node, selector, where, described)
        found = descend(base, list(path))
        if found is None:
            raise _err(node, f"{described}: '{name}' is {_article(base)} and has no property '{path[0]}'")
        return found

    def _node_output(self, node: Node, selector: list, where: str, described: str) -> str:
        graph, root, name = self.graph, selector[0], selector[1]
        target = graph.nodes.get(root)
        if target is None:
            raise _err(node, f"{described} refers to node {root}, which does not exist")
        enclosing = self.enclosing(node)
        visible = self.upstream(node.id)
        if node.type == "iteration" and where == "output_selector":
            if target.parent_id != node.id:
                raise _err(
                    node, f"{described} must refer to a node inside this iteration, not {target.label}"
                )
            enclosing, visible = [], {target.id}
        elif node.type == "loop" and where.startswith("break_conditions"):
            enclosing = [node.id, *enclosing]
            visible = visible | {node.id} | {c.id for c in graph.children(node.id)}
        if target.id in enclosing:
            outputs, kind = self.types.inner(target), "variable"
        elif target.id in visible:
            outputs, kind = self.types.outputs(target), "output"
        elif target.parent_id is not None and target.parent_id not in enclosing:
            container = graph.nodes[target.parent_id]
            raise _err(
                node,
                f"{described} refers to {target.label}, which is inside {container.label} and "
                f"not visible here (use the {container.type}'s output)",
            )
        else:
            raise _err(node, f"{described} refers to {target.label}, which is not upstream of this node")
        if name not in outputs:
            listed = f"{kind}s: {', '.join(outputs)}" if outputs else f"it has no {kind}s"
            raise _err(node, f"{described} refers to {target.label}, which has no {kind} '{name}' ({listed})")
        return outputs[name]


def _known(names: Mapping[str, str]) -> str:
    return f" (defined: {', '.join(names)})" if names else " (none are defined)"

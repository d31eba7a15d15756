"""Every validation rule of shared.workflow on the example graphs of tests/workflow_graphs.py, each broken in
one way: the error names the node (and its id) and the problem, as the console's 400 shows it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from shared.workflow import GraphError, parse_graph, validate_graph
from tests import workflow_graphs as g

Graph = dict[str, Any]


def _without(graph: Graph, node_type: str) -> Graph:
    ids = {n["id"] for n in graph["nodes"] if n["data"]["type"] == node_type}
    graph["nodes"] = [n for n in graph["nodes"] if n["id"] not in ids]
    graph["edges"] = [e for e in graph["edges"] if e["source"] not in ids and e["target"] not in ids]
    return graph


def _second_start(graph: Graph) -> Graph:
    twin = copy.deepcopy(graph["nodes"][0])
    twin["id"] = "s2"
    graph["nodes"].append(twin)
    return graph


def _prompt(text: str) -> Callable[[Graph], Graph]:
    def change(graph: Graph) -> Graph:
        graph["nodes"][1]["data"]["prompt_template"][1]["text"] = text
        return graph
    return change


def _data(index: int, **changes: Any) -> Callable[[Graph], Graph]:
    def change(graph: Graph) -> Graph:
        for k, v in changes.items():
            if v is None:
                graph["nodes"][index]["data"].pop(k, None)
            else:
                graph["nodes"][index]["data"][k] = v
        return graph
    return change


CASES: list[tuple[str, Callable[[], Graph], Callable[[Graph], Graph], str | None, list[str]]] = [
    ("no start node", g.linear_llm, lambda x: _without(x, "start"), None, ["exactly one start node", "found 0"]),
    ("two start nodes", g.linear_llm, _second_start, "s2", ["exactly one start node", "found 2"]),
    ("edge to a missing node", g.linear_llm, lambda x: {**x, "edges": [*x["edges"], g.edge(g.LLM, "ghost")]},
     "ghost", ["target node ghost does not exist"]),
    ("no end node", g.linear_llm, lambda x: _without(x, "end"), None, ["End node reachable"]),
    ("a cycle", g.linear_llm, lambda x: {**x, "edges": [*x["edges"], g.edge(g.LLM, g.START)]},
     g.START, ["cycle", "'Writer'"]),
    ("an unreachable node", g.linear_llm, lambda x: {**x, "nodes": [*x["nodes"], g.node(
        "lonely", "template-transform", "Lonely", template="x", variables=[])]}, "lonely", ["not connected"]),
    ("a template to a missing node", g.linear_llm, _prompt("{{#nowhere.text#}}"), g.LLM,
     ["'Writer'", "nowhere", "does not exist"]),
    ("a template to a downstream node", g.linear_llm, _prompt("{{#" + g.END + ".text#}}"), g.LLM,
     ["not upstream"]),
    ("a missing output", g.linear_llm, _data(2, outputs=[{"variable": "x", "value_selector": [g.LLM, "txt"]}]),
     g.END, ["no output 'txt'", "text"]),
    ("sys.query in a workflow", g.linear_llm, _prompt("{{#sys.query#}}"), g.LLM, ["advanced-chat"]),
    ("an undefined environment variable", g.linear_llm, _prompt("{{#env.missing#}}"), g.LLM, ["'missing'"]),
    ("llm without a model", g.linear_llm, _data(1, model={}), g.LLM, ["model.provider is required"]),
    ("llm without a prompt", g.linear_llm, _data(1, prompt_template=None), g.LLM, ["prompt_template"]),
    ("an unknown if-else handle", g.branching, lambda x: {**x, "edges": [*x["edges"], g.edge(g.IF, g.A, "nope")]},
     g.IF, ["unknown handle 'nope'", "big, negative, false"]),
    ("iterating over a string", g.iteration, _data(2, iterator_selector=[g.START, "csv"]), g.ITER,
     ["array is required"]),
    ("javascript code", g.iteration, _data(1, code_language="javascript"), g.CODE, ["not supported"]),
    ("a tool without a name", g.tool_graph, _data(1, tool_name=None), g.TOOL, ["tool_name is required"]),
    ("knowledge without datasets", lambda: g.knowledge_llm("ds"), _data(1, dataset_ids=[]), g.KR, ["dataset_ids"]),
    ("a classifier without classes", g.classify_extract_list, _data(1, classes=[]), g.QC, ["classes"]),
    ("an http node without a url", lambda: g.code_template_http("https://example.com"), _data(2, url=None), g.HTTP,
     ["url"]),
    ("a template node without a template", g.branching, _data(2, template=None), g.A, ["template"]),
    ("an extractor without parameters", g.classify_extract_list, _data(2, parameters=[]), g.PE, ["parameters"]),
]


@pytest.mark.parametrize(("name", "make", "breaks", "node_id", "words"), CASES, ids=[c[0] for c in CASES])
def test_each_rule_names_the_node_and_the_problem(name: str, make: Callable[[], Graph],
                                                  breaks: Callable[[Graph], Graph], node_id: str | None,
                                                  words: list[str]) -> None:
    graph = make()
    validate_graph(parse_graph(copy.deepcopy(graph)), "workflow")  # the unbroken graph is valid
    with pytest.raises(GraphError) as e:
        validate_graph(parse_graph(breaks(graph)), "workflow")
    assert e.value.node_id == node_id, str(e.value)
    for word in words:
        assert word in str(e.value), (word, str(e.value))


def test_advanced_chat_rules() -> None:
    with pytest.raises(GraphError, match="End nodes are not allowed in advanced-chat"):
        validate_graph(parse_graph(g.linear_llm()), "advanced-chat")
    with pytest.raises(GraphError, match="conversation variable 'turns', which is not defined"):
        validate_graph(parse_graph(g.chatflow()), "advanced-chat")
    validate_graph(parse_graph(g.chatflow()), "advanced-chat", conversation={"turns": "number"})


def test_structure_errors() -> None:
    with pytest.raises(GraphError, match="JSON object with 'nodes' and 'edges'"):
        parse_graph([])
    with pytest.raises(GraphError, match="at least one node"):
        validate_graph(parse_graph({"nodes": [], "edges": []}), "workflow")
    notes = g.linear_llm()
    notes["nodes"].append({"id": "note", "type": "custom-note", "data": {"type": "", "text": "a sticky note"}})
    assert "note" not in parse_graph(notes).nodes  # UI sticky notes are not part of the graph


def test_error_strategy_outputs_are_declared() -> None:
    graph = g.failing_http("https://example.com/x", "fail-branch")
    validate_graph(parse_graph(graph), "workflow")  # the fail branch reads the HTTP node's error_message
    graph["nodes"][1]["data"]["error_strategy"] = "default-value"  # no fail branch, but the outputs stay
    graph["edges"] = [e for e in graph["edges"] if e["sourceHandle"] != "fail-branch"] + [g.edge(g.HTTP, g.T)]
    validate_graph(parse_graph(graph), "workflow")
    graph["nodes"][1]["data"].pop("error_strategy")
    with pytest.raises(GraphError, match="no output 'error_message'"):
        validate_graph(parse_graph(graph), "workflow")


def test_agent_node_config_and_tool_entries() -> None:
    """Dify's agent node data: the strategy names case-insensitively, the model's ``model`` or ``name``, a
    template in the query checked as any reference, and the tools as resolve_agent_tools entries."""
    from shared.workflow.agent import agent_config, tool_entries

    graph = g.agent_graph(strategy="REACT", model={**g.AGENT_MODEL, "model": None, "name": "scripted"})
    validate_graph(parse_graph(graph), "workflow")
    cfg = agent_config(graph["nodes"][1]["data"])
    assert (cfg.strategy, cfg.model["name"], cfg.max_iterations) == ("react", "scripted", 3)
    for query, problem in (("{{#sys.query#}}", "only exists in advanced-chat"), ("{{#" + g.START + ".nope#}}",
                                                                                    "no output 'nope'")):
        broken = g.agent_graph()
        broken["nodes"][1]["data"]["agent_parameters"]["query"]["value"] = query
        with pytest.raises(GraphError, match=problem):
            validate_graph(parse_graph(broken), "workflow")
    tools = [g.calculator_tool(), g.calculator_tool(enabled=False),
             {"type": "api", "provider_name": "shop", "provider_id": "p1", "tool_name": "lookup",
              "settings": {"region": {"value": "eu"}},
              "parameters": {"id": {"auto": 1, "value": None}, "verbose": {"auto": 0, "value": "{{#x.y#}}"},
                             "empty": {"auto": 0, "value": ""}}}]
    assert tool_entries(tools, lambda v: v.replace("{{#x.y#}}", "yes") if isinstance(v, str) else v) == [
        {"provider_type": "builtin", "provider_id": "calculator", "tool_name": "calculator", "tool_parameters": {},
         "enabled": True},
        {"provider_type": "api", "provider_id": "p1", "tool_name": "lookup",
         "tool_parameters": {"region": "eu", "verbose": "yes"}, "enabled": True}]

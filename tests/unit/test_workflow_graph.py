"""Dify workflow graphs: parsing (notes dropped, structure errors), the Graph model (edges, children,
upstream), declared outputs, selectors, and every validate_graph rule with a message naming the node."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from shared.workflow import (
    NODE_TYPES,
    SYS_VARIABLES,
    TEMPLATE_RE,
    Edge,
    Graph,
    GraphError,
    Node,
    declared_outputs,
    parse_graph,
    selectors,
    validate_graph,
)

# ------------------------------------------------------------------------------------------- builders

START, LLM, END = "1757611990947", "1757612004471", "1757612019183"
KR, QC, IE, CODE = "1757612031001", "1757612042002", "1757612053003", "1757612064004"
IT, IT_START, IT_TT = "1757612075005", "1757612075005start", "1757612086006"
LO, HTTP, TOOL, PE = "1757612097007", "1757612108008", "1757612119009", "1757612130010"
DE, AGG, TT = "1757612141011", "1757612152012", "1757612163013"
LP, LP_START, LP_CODE, LP_ASSIGN, LP_END = (
    "1757612174014",
    "1757612174014start",
    "1757612185015",
    "1757612196016",
    "1757612207017",
)
ANSWER, ASSIGN = "1757612218018", "1757612229019"

MODEL = {
    "provider": "langgenius/openai/openai",
    "name": "gpt-4o",
    "mode": "chat",
    "completion_params": {"temperature": 0.7},
}


def node(
    node_id: str,
    kind: str,
    title: str,
    *,
    parent: str | None = None,
    parent_type: str = "iteration",
    **data: Any,
) -> dict:
    body: dict[str, Any] = {"type": kind, "title": title, "desc": "", "selected": False, **data}
    item: dict[str, Any] = {
        "id": node_id,
        "type": "custom",
        "data": body,
        "position": {"x": 80, "y": 282},
        "width": 244,
        "height": 90,
    }
    if parent:
        item["parentId"] = parent
        flag, key = (
            ("isInIteration", "iteration_id") if parent_type == "iteration" else ("isInLoop", "loop_id")
        )
        body[flag], body[key] = True, parent
        item["zIndex"] = 1002
    if kind in ("iteration-start", "loop-start"):
        item["type"] = f"custom-{kind}"
    return item


def edge(src: str, dst: str, handle: str = "source", *, inside: str | None = None) -> dict:
    return {
        "id": f"{src}-{handle}-{dst}-target",
        "source": src,
        "sourceHandle": handle,
        "target": dst,
        "targetHandle": "target",
        "type": "custom",
        "data": {
            "sourceType": "x",
            "targetType": "y",
            "isInIteration": inside is not None,
            "iteration_id": inside,
            "isInLoop": False,
        },
    }


def graph(nodes: list[dict], edges: list[dict]) -> dict:
    return {"nodes": nodes, "edges": edges, "viewport": {"x": 0, "y": 0, "zoom": 0.7}}


def start_node(*variables: dict) -> dict:
    return node(
        START,
        "start",
        "Start",
        variables=list(variables)
        or [
            {"variable": "query", "label": "Query", "type": "paragraph", "required": True, "max_length": 4000}
        ],
    )


def var(name: str, kind: str) -> dict:
    return {"variable": name, "label": name, "type": kind, "required": False, "options": []}


def llm_node(
    node_id: str = LLM, title: str = "LLM", prompt: str = f"Answer: {{{{#{START}.query#}}}}", **extra: Any
) -> dict:
    fields: dict[str, Any] = {
        "model": MODEL,
        "context": {"enabled": False, "variable_selector": []},
        "vision": {"enabled": False},
        "prompt_template": [
            {"id": "p1", "role": "system", "text": "You are helpful."},
            {"id": "p2", "role": "user", "text": prompt},
        ],
    }
    return node(node_id, "llm", title, **{**fields, **extra})


def end_node(*outputs: tuple[str, list[str]] | tuple[str, list[str], str]) -> dict:
    return node(
        END,
        "end",
        "End",
        outputs=[
            {"variable": o[0], "value_selector": o[1], **({"value_type": o[2]} if len(o) > 2 else {})}
            for o in outputs
        ],
    )


def linear() -> dict:
    return graph(
        [start_node(), llm_node(), end_node(("answer", [LLM, "text"]))], [edge(START, LLM), edge(LLM, END)]
    )


def chatflow() -> dict:
    answer = node(
        ANSWER,
        "answer",
        "Answer",
        answer=f"{{{{#{LLM}.text#}}}} (turn {{{{#sys.dialogue_count#}}}}, {{{{#conversation.topic#}}}})",
    )
    assign = node(
        ASSIGN,
        "assigner",
        "Remember",
        version="2",
        items=[
            {
                "variable_selector": ["conversation", "topic"],
                "input_type": "variable",
                "operation": "over-write",
                "value": [LLM, "text"],
            },
            {
                "variable_selector": ["conversation", "history"],
                "input_type": "constant",
                "operation": "clear",
                "value": None,
            },
        ],
    )
    llm = llm_node(
        prompt="{{#sys.query#}} (key {{#env.API_KEY#}})",
        memory={"window": {"enabled": True, "size": 10}, "query_prompt_template": "{{#sys.query#}}"},
    )
    return graph(
        [start_node(), llm, answer, assign], [edge(START, LLM), edge(LLM, ANSWER), edge(ANSWER, ASSIGN)]
    )


CHAT_VARS = {"topic": "string", "history": "array[object]"}
ENV = {"API_KEY": "secret", "LIMIT": "number"}


def kitchen_sink() -> dict:
    """A valid workflow with every supported node type: kr → llm → qc ⇉ if-else ⇉ code → iteration{tt}
    → list-operator → http → tool → parameter-extractor → document-extractor → aggregator → template
    → loop{code, assigner, loop-end} → end."""
    nodes = [
        start_node(
            var("query", "paragraph"),
            var("n", "number"),
            var("doc", "file"),
            var("docs", "file-list"),
            var("flag", "checkbox"),
            var("meta", "json_object"),
            var("lang", "select"),
            var("name", "text-input"),
        ),
        node(
            KR,
            "knowledge-retrieval",
            "Knowledge",
            query_variable_selector=[START, "query"],
            dataset_ids=["6f1c2f0e-aaaa-bbbb-cccc-000000000001"],
            retrieval_mode="multiple",
            multiple_retrieval_config={"top_k": 4, "reranking_enable": False},
        ),
        llm_node(
            context={"enabled": True, "variable_selector": [KR, "result"]},
            prompt=f"{{{{#context#}}}} {{{{#{START}.query#}}}} {{{{#{START}.meta.author.name#}}}}",
        ),
        node(
            QC,
            "question-classifier",
            "Classifier",
            model=MODEL,
            query_variable_selector=[START, "query"],
            classes=[{"id": "1", "name": "billing"}, {"id": "2", "name": "other"}],
            instruction=f"Reply in {{{{#{START}.lang#}}}}",
        ),
        node(
            IE,
            "if-else",
            "IF/ELSE",
            cases=[
                {
                    "case_id": "billing",
                    "logical_operator": "and",
                    "conditions": [
                        {
                            "id": "c1",
                            "varType": "string",
                            "variable_selector": [QC, "class_name"],
                            "comparison_operator": "is",
                            "value": "billing",
                        }
                    ],
                },
                {
                    "case_id": "long",
                    "logical_operator": "or",
                    "conditions": [
                        {
                            "id": "c2",
                            "varType": "number",
                            "variable_selector": [START, "n"],
                            "comparison_operator": ">",
                            "value": f"{{{{#{START}.n#}}}}",
                        }
                    ],
                },
            ],
        ),
        node(
            CODE,
            "code",
            "Code",
            code_language="python3",
            code="def main(text: str) -> dict:\n    return {'items': text.split(), 'count': 1}\n",
            variables=[{"variable": "text", "value_selector": [LLM, "text"]}],
            outputs={
                "items": {"type": "array[string]", "children": None},
                "count": {"type": "number", "children": None},
            },
        ),
        node(
            IT,
            "iteration",
            "Iteration",
            iterator_selector=[CODE, "items"],
            output_selector=[IT_TT, "output"],
            output_type="array[string]",
            start_node_id=IT_START,
            is_parallel=False,
            error_handle_mode="terminated",
        ),
        node(IT_START, "iteration-start", "", parent=IT),
        node(
            IT_TT,
            "template-transform",
            "Format item",
            parent=IT,
            template="{{ i }}: {{ item }}",
            variables=[
                {"variable": "item", "value_selector": [IT, "item"]},
                {"variable": "i", "value_selector": [IT, "index"]},
                {"variable": "q", "value_selector": [START, "query"]},
            ],
        ),
        node(
            LO,
            "list-operator",
            "List",
            variable=[IT, "output"],
            filter_by={"enabled": False, "conditions": []},
            order_by={"enabled": False},
            limit={"enabled": True, "size": 3},
        ),
        node(
            HTTP,
            "http-request",
            "HTTP",
            method="post",
            url=f"https://api.example.com/{{{{#{LO}.first_record#}}}}",
            headers="Authorization:Bearer {{#env.API_KEY#}}",
            params="",
            body={"type": "json", "data": [{"type": "text", "value": f'{{"q": "{{{{#{START}.query#}}}}"}}'}]},
            authorization={"type": "no-auth", "config": None},
            timeout={"connect": 10},
        ),
        node(
            TOOL,
            "tool",
            "Search",
            provider_id="websearch",
            provider_type="builtin",
            provider_name="websearch",
            tool_name="search",
            tool_configurations={},
            tool_parameters={
                "query": {"type": "mixed", "value": f"{{{{#{HTTP}.body#}}}}"},
                "limit": {"type": "variable", "value": [CODE, "count"]},
                "safe": {"type": "constant", "value": True},
                "extra": {"type": "variable", "value": []},
            },
        ),
        node(
            PE,
            "parameter-extractor",
            "Extract",
            model=MODEL,
            query=[TOOL, "text"],
            reasoning_mode="prompt",
            parameters=[
                {"name": "city", "type": "string", "description": "", "required": True},
                {"name": "days", "type": "number", "description": "", "required": False},
            ],
            instruction=f"Known: {{{{#{START}.name#}}}}",
        ),
        node(DE, "document-extractor", "Doc", variable_selector=[START, "doc"], is_array_file=False),
        node(
            AGG,
            "variable-aggregator",
            "Aggregate",
            output_type="string",
            variables=[[PE, "city"], [DE, "text"]],
        ),
        node(
            TT,
            "template-transform",
            "Template",
            template="{{ a }} / {{ b }}",
            variables=[
                {"variable": "a", "value_selector": [AGG, "output"]},
                {"variable": "b", "value_selector": [PE, "__reason"]},
            ],
        ),
        node(
            LP,
            "loop",
            "Loop",
            loop_count=5,
            start_node_id=LP_START,
            logical_operator="and",
            loop_variables=[
                {"id": "v1", "label": "counter", "var_type": "number", "value_type": "constant", "value": 0},
                {
                    "id": "v2",
                    "label": "seed",
                    "var_type": "string",
                    "value_type": "variable",
                    "value": [TT, "output"],
                },
            ],
            break_conditions=[
                {
                    "id": "b1",
                    "varType": "number",
                    "variable_selector": [LP, "counter"],
                    "comparison_operator": "≥",
                    "value": "3",
                },
                {
                    "id": "b2",
                    "varType": "number",
                    "variable_selector": [LP_CODE, "next"],
                    "comparison_operator": ">",
                    "value": "9",
                },
            ],
        ),
        node(LP_START, "loop-start", "", parent=LP, parent_type="loop"),
        node(
            LP_CODE,
            "code",
            "Step",
            parent=LP,
            parent_type="loop",
            code_language="python3",
            code="def main(c: int) -> dict:\n    return {'next': c + 1}\n",
            variables=[{"variable": "c", "value_selector": [LP, "counter"]}],
            outputs={"next": {"type": "number", "children": None}},
        ),
        node(
            LP_ASSIGN,
            "assigner",
            "Set counter",
            parent=LP,
            parent_type="loop",
            version="2",
            items=[
                {
                    "variable_selector": [LP, "counter"],
                    "input_type": "variable",
                    "operation": "over-write",
                    "value": [LP_CODE, "next"],
                }
            ],
        ),
        node(LP_END, "loop-end", "Exit", parent=LP, parent_type="loop"),
        end_node(
            ("result", [TT, "output"], "string"),
            ("rounds", [LP, "counter"], "number"),
            ("items", [IT, "output"], "array[string]"),
            ("top", [LO, "first_record"]),
            ("status", [HTTP, "status_code"], "integer"),
            ("hits", [KR, "result"], "array[object]"),
        ),
    ]
    edges = [
        edge(START, KR),
        edge(KR, LLM),
        edge(LLM, QC),
        edge(QC, IE, "1"),
        edge(QC, IE, "2"),
        edge(IE, CODE, "billing"),
        edge(IE, CODE, "long"),
        edge(IE, CODE, "false"),
        edge(CODE, IT),
        edge(IT_START, IT_TT, inside=IT),
        edge(IT, LO),
        edge(LO, HTTP),
        edge(HTTP, TOOL),
        edge(TOOL, PE),
        edge(PE, DE),
        edge(DE, AGG),
        edge(AGG, TT),
        edge(TT, LP),
        edge(LP_START, LP_CODE),
        edge(LP_CODE, LP_ASSIGN),
        edge(LP_ASSIGN, LP_END),
        edge(LP, END),
    ]
    return graph(nodes, edges)


def data_of(raw: dict, node_id: str) -> dict:
    return next(n["data"] for n in raw["nodes"] if n["id"] == node_id)


def check(raw: dict, mode: str = "workflow", **kw: Any) -> Graph:
    parsed = parse_graph(raw)
    validate_graph(parsed, mode, **kw)  # type: ignore[arg-type]
    return parsed


def fails(
    raw: dict, *parts: str, node_id: str | None = None, mode: str = "workflow", **kw: Any
) -> GraphError:
    with pytest.raises(GraphError) as info:
        check(raw, mode, **kw)
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    if node_id is not None:
        assert info.value.node_id == node_id, message
    return info.value


# --------------------------------------------------------------------------------- parsing and the model


def test_linear_graph_parses_and_validates() -> None:
    g = check(linear())
    assert g.start_id == START
    assert list(g.nodes) == [START, LLM, END]
    llm = g.nodes[LLM]
    assert (llm.type, llm.title, llm.parent_id) == ("llm", "LLM", None)
    assert llm.data["model"]["name"] == "gpt-4o"
    assert g.outgoing(START) == [Edge(f"{START}-source-{LLM}-target", START, LLM)]
    assert [e.source for e in g.incoming(END)] == [LLM]
    assert g.outgoing(END) == [] and g.incoming(START) == []
    assert g.upstream(END) == {START, LLM} and g.upstream(START) == set()
    assert declared_outputs(g, llm) == {
        "text": "string",
        "usage": "object",
        "reasoning_content": "string",
        "structured_output": "object",
    }
    assert declared_outputs(g, g.nodes[START]) == {"query": "string"}
    assert declared_outputs(g, g.nodes[END]) == {}
    assert selectors(llm) == [([START, "query"], f"{{{{#{START}.query#}}}} in prompt_template[1].text")]
    assert selectors(g.nodes[END]) == [([LLM, "text"], "outputs[0].value_selector")]


def test_parse_accepts_json_text_and_defaults_handles() -> None:
    raw = linear()
    for e in raw["edges"]:
        del e["sourceHandle"], e["targetHandle"], e["id"]
    g = parse_graph(json.dumps(raw))
    assert g.edges[0] == Edge(f"{START}-source-{LLM}-target", START, LLM, "source", "target")
    with pytest.raises(GraphError, match="not valid JSON"):
        parse_graph("{nodes:")
    with pytest.raises(GraphError, match="JSON object"):
        parse_graph([1, 2])


def test_custom_notes_and_dangling_edges_are_dropped() -> None:
    raw = linear()
    raw["nodes"].append(
        {
            "id": "1757613000000",
            "type": "custom-note",
            "data": {"type": "", "title": "", "text": "remember to...", "theme": "blue"},
        }
    )
    raw["edges"].append(edge("1757613000000", LLM))
    raw["edges"].append({"id": "half", "source": START, "target": None})
    g = check(raw)
    assert "1757613000000" not in g.nodes and len(g.edges) == 2


def test_node_is_hashable_and_labelled() -> None:
    n = Node("a1", "answer", "Answer", {"answer": "x"})
    assert n.label == "node 'Answer' (a1)" and {n: 1}[n] == 1


@pytest.mark.parametrize(
    ("mutate", "parts"),
    [
        (lambda r: r["nodes"][1].pop("id"), ["nodes[1] has no id"]),
        (lambda r: r["nodes"][1]["data"].pop("type"), [f"node 'LLM' ({LLM})", "missing data.type"]),
        (
            lambda r: r["nodes"][1]["data"].update(type="human-input"),
            [f"node 'LLM' ({LLM})", "unsupported node type 'human-input'"],
        ),
        (lambda r: r["nodes"][2].update(id=LLM), [f"node 'End' ({LLM})", "duplicate node id", "'LLM'"]),
        (lambda r: r["nodes"][1].pop("data"), [LLM, "missing 'data'"]),
        (lambda r: r.update(nodes="x"), ["'nodes' must be a list"]),
        (lambda r: r["nodes"].append("x"), ["nodes[3] is not an object"]),
    ],
)
def test_parse_structure_errors(mutate: Any, parts: list[str]) -> None:
    raw = linear()
    mutate(raw)
    with pytest.raises(GraphError) as info:
        parse_graph(raw)
    for part in parts:
        assert part in str(info.value)


def test_node_types_and_sys_variables() -> None:
    assert {
        "start",
        "end",
        "answer",
        "llm",
        "iteration-start",
        "loop-end",
        "list-operator",
        "document-extractor",
        "assigner",
        "variable-assigner",
    } <= NODE_TYPES
    assert len(NODE_TYPES) == 23 and "agent" in NODE_TYPES and "human-input" not in NODE_TYPES
    assert SYS_VARIABLES["files"] == "array[file]" and SYS_VARIABLES["dialogue_count"] == "number"
    assert set(SYS_VARIABLES) == {
        "query",
        "files",
        "conversation_id",
        "user_id",
        "dialogue_count",
        "app_id",
        "workflow_id",
        "workflow_run_id",
    }


def test_template_regex_matches_dify() -> None:
    text = (
        "{{#1757611990947.query#}} {{#sys.query#}} {{#a.b.c.d#}} {{#context#}} {{#a.1b#}} {{ x }} {{#a-b.c#}}"
    )
    assert [m.group(1) for m in TEMPLATE_RE.finditer(text)] == [
        "#1757611990947.query#",
        "#sys.query#",
        "#a.b.c.d#",
    ]
    deep = "{{#n." + ".".join(["x"] * 10) + "#}}"
    assert TEMPLATE_RE.fullmatch(deep) and not TEMPLATE_RE.fullmatch("{{#n." + ".".join(["x"] * 11) + "#}}")
    assert not TEMPLATE_RE.fullmatch("{{#" + "n" * 51 + ".x#}}")


# ------------------------------------------------------------------------------------ realistic graphs


def test_if_else_branches_with_two_cases_and_else() -> None:
    a, b, c = "1757612300001", "1757612300002", "1757612300003"
    ie = node(
        IE,
        "if-else",
        "IF/ELSE",
        cases=[
            {
                "case_id": "true",
                "logical_operator": "and",
                "conditions": [
                    {
                        "id": "x",
                        "varType": "string",
                        "variable_selector": [START, "query"],
                        "comparison_operator": "contains",
                        "value": "refund",
                    }
                ],
            },
            {
                "case_id": "f3a1c9e2",
                "logical_operator": "or",
                "conditions": [
                    {
                        "id": "y",
                        "varType": "string",
                        "variable_selector": [START, "query"],
                        "comparison_operator": "empty",
                        "value": "",
                    }
                ],
            },
        ],
    )
    raw = graph(
        [
            start_node(),
            ie,
            llm_node(a, "Refund"),
            llm_node(b, "Empty"),
            llm_node(c, "Other"),
            end_node(
                ("r", [a, "text"]), ("e", [b, "text"]), ("o", [c, "text"]), ("case", [IE, "selected_case_id"])
            ),
        ],
        [
            edge(START, IE),
            edge(IE, a, "true"),
            edge(IE, b, "f3a1c9e2"),
            edge(IE, c, "false"),
            edge(a, END),
            edge(b, END),
            edge(c, END),
        ],
    )
    g = check(raw)
    assert sorted(e.source_handle for e in g.outgoing(IE)) == ["f3a1c9e2", "false", "true"]
    assert g.upstream(END) == {START, IE, a, b, c}
    assert declared_outputs(g, g.nodes[IE]) == {"result": "boolean", "selected_case_id": "string"}
    assert [w for _, w in selectors(g.nodes[IE])] == [
        "cases[0].conditions[0].variable_selector",
        "cases[1].conditions[0].variable_selector",
    ]


def test_legacy_if_else_uses_true_and_false() -> None:
    ie = node(
        IE,
        "if-else",
        "IF",
        logical_operator="and",
        conditions=[
            {
                "id": "x",
                "variable_selector": [START, "query"],
                "comparison_operator": "not empty",
                "value": "",
            }
        ],
    )
    raw = graph(
        [start_node(), ie, end_node(("q", [START, "query"]))],
        [edge(START, IE), edge(IE, END, "true"), edge(IE, END, "false")],
    )
    check(raw)
    raw["edges"].append(edge(IE, END, "billing"))
    fails(raw, "node 'IF'", "unknown handle 'billing'", "expected one of: true, false", node_id=IE)


def test_question_classifier_routes_by_class_id() -> None:
    a, b = "1757612400001", "1757612400002"
    qc = node(
        QC,
        "question-classifier",
        "Classifier",
        model=MODEL,
        query_variable_selector=["sys", "query"],
        classes=[{"id": "1", "name": "Sales"}, {"id": "1757612401234", "name": "Support"}],
        instruction="",
        memory={"window": {"enabled": False}},
    )
    answer_a = node(a, "answer", "Sales answer", answer=f"Sales: {{{{#{QC}.class_name#}}}}")
    answer_b = node(b, "answer", "Support answer", answer="Support")
    raw = graph(
        [start_node(), qc, answer_a, answer_b],
        [edge(START, QC), edge(QC, a, "1"), edge(QC, b, "1757612401234")],
    )
    g = check(raw, "advanced-chat")
    assert declared_outputs(g, g.nodes[QC]) == {
        "class_name": "string",
        "class_id": "string",
        "usage": "object",
    }
    raw["edges"].append(edge(QC, b, "source"))
    fails(
        raw,
        "node 'Classifier'",
        "unknown handle 'source'",
        "expected one of: 1, 1757612401234",
        mode="advanced-chat",
        node_id=QC,
    )


def test_iteration_children_see_item_and_index() -> None:
    g = check(kitchen_sink(), environment=ENV)
    assert [n.id for n in g.children(IT)] == [IT_START, IT_TT]
    assert g.nodes[IT_TT].parent_id == IT and g.nodes[IT_START].type == "iteration-start"
    assert g.children(START) == []
    assert g.upstream(IT_TT) == {IT_START, IT} | g.upstream(IT)
    assert CODE in g.upstream(IT_TT) and IT_TT not in g.upstream(LO)
    assert declared_outputs(g, g.nodes[IT]) == {"output": "array[string]"}
    assert declared_outputs(g, g.nodes[LO]) == {
        "result": "array[string]",
        "first_record": "string",
        "last_record": "string",
    }


def test_iteration_with_code_child_using_item() -> None:
    inner = "1757612500001"
    raw = graph(
        [
            start_node(var("files", "file-list")),
            node(
                IT,
                "iteration",
                "Each file",
                iterator_selector=[START, "files"],
                output_selector=[inner, "summary"],
                output_type="array[object]",
                start_node_id=IT_START,
            ),
            node(IT_START, "iteration-start", "", parent=IT),
            node(
                inner,
                "code",
                "Describe",
                parent=IT,
                code_language="python3",
                code="def main(f, i): ...",
                variables=[
                    {"variable": "f", "value_selector": [IT, "item"]},
                    {"variable": "i", "value_selector": [IT, "index"]},
                    {"variable": "n", "value_selector": [IT, "item", "name"]},
                ],
                outputs={"summary": {"type": "object", "children": None}},
            ),
            end_node(("summaries", [IT, "output"], "array[object]")),
        ],
        [edge(START, IT), edge(IT_START, inner, inside=IT), edge(IT, END)],
    )
    g = check(raw)
    assert declared_outputs(g, g.nodes[IT]) == {"output": "array[object]"}
    assert g.upstream(inner) == {IT_START, IT, START}


def test_kitchen_sink_declared_outputs() -> None:
    g = check(kitchen_sink(), environment=ENV)
    out = {nid: declared_outputs(g, g.nodes[nid]) for nid in g.nodes}
    assert out[START] == {
        "query": "string",
        "n": "number",
        "doc": "file",
        "docs": "array[file]",
        "flag": "boolean",
        "meta": "object",
        "lang": "string",
        "name": "string",
    }
    assert out[KR] == {"result": "array[object]"}
    assert out[CODE] == {"items": "array[string]", "count": "number"}
    assert out[HTTP] == {
        "body": "string",
        "status_code": "number",
        "headers": "object",
        "files": "array[file]",
    }
    assert out[TOOL] == {"text": "string", "files": "array[file]", "json": "array[object]"}
    assert out[PE] == {
        "city": "string",
        "days": "number",
        "__is_success": "number",
        "__reason": "string",
        "__usage": "object",
    }
    assert out[DE] == {"text": "string"}
    assert out[AGG] == {"output": "string"} and out[TT] == {"output": "string"}
    assert out[LP] == {"counter": "number", "seed": "string", "loop_round": "number"}
    for empty in (END, IT_START, LP_START, LP_END, LP_ASSIGN):
        assert out[empty] == {}
    tool_refs = selectors(g.nodes[TOOL])
    assert ([CODE, "count"], "tool_parameters.limit.value") in tool_refs
    assert ([HTTP, "body"], f"{{{{#{HTTP}.body#}}}} in tool_parameters.query.value") in tool_refs
    assert len(tool_refs) == 2  # constants and empty optional variables are not references
    http_refs = [w for _, w in selectors(g.nodes[HTTP])]
    assert http_refs == [
        f"{{{{#{LO}.first_record#}}}} in url",
        "{{#env.API_KEY#}} in headers",
        f"{{{{#{START}.query#}}}} in body.data[0].value",
    ]


def test_grouped_aggregator_and_list_operator_on_conversation_variable() -> None:
    raw = chatflow()
    raw["nodes"].append(
        node(
            AGG,
            "variable-aggregator",
            "Groups",
            advanced_settings={
                "group_enabled": True,
                "groups": [
                    {
                        "group_name": "first",
                        "output_type": "string",
                        "variables": [[LLM, "text"]],
                        "groupId": "g1",
                    },
                    {
                        "group_name": "second",
                        "output_type": "string",
                        "variables": [["sys", "query"]],
                        "groupId": "g2",
                    },
                ],
            },
        )
    )
    raw["nodes"].append(node(LO, "list-operator", "Recent", variable=["conversation", "history"]))
    data_of(raw, ANSWER)["answer"] = f"{{{{#{AGG}.first.output#}}}} {{{{#{LO}.last_record.role#}}}}"
    raw["edges"][1:2] = [edge(LLM, AGG), edge(AGG, LO), edge(LO, ANSWER)]
    g = check(raw, "advanced-chat", environment=ENV, conversation=CHAT_VARS)
    assert declared_outputs(g, g.nodes[AGG]) == {"first": "object", "second": "object"}
    assert (
        declared_outputs(g, g.nodes[LO])["result"] == "array[any]"
    )  # no conversation types without validate


def test_advanced_chat_with_answer_and_conversation_variables() -> None:
    g = check(chatflow(), "advanced-chat", environment=ENV, conversation=CHAT_VARS)
    assert declared_outputs(g, g.nodes[ANSWER]) == {"answer": "string"}
    assert declared_outputs(g, g.nodes[ASSIGN]) == {}
    refs = selectors(g.nodes[ASSIGN])
    assert refs == [
        (["conversation", "topic"], "items[0].variable_selector"),
        ([LLM, "text"], "items[0].value"),
        (["conversation", "history"], "items[1].variable_selector"),
    ]


def test_fail_branch_edges_are_allowed_with_error_strategy() -> None:
    fallback = "1757612600001"
    raw = linear()
    raw["nodes"].append(node(fallback, "template-transform", "Fallback", template="sorry", variables=[]))
    raw["edges"] += [edge(LLM, fallback, "fail-branch"), edge(fallback, END)]
    fails(raw, "node 'LLM'", "unknown handle 'fail-branch'", node_id=LLM)
    data_of(raw, LLM)["error_strategy"] = "fail-branch"
    data_of(raw, fallback)["variables"] = [{"variable": "why", "value_selector": [LLM, "error_message"]}]
    g = check(raw)
    assert declared_outputs(g, g.nodes[LLM])["error_type"] == "string"
    assert "error_message" not in declared_outputs(g, g.nodes[END])
    data_of(raw, LLM).pop("error_strategy")
    fails(raw, "unknown handle 'fail-branch'", node_id=LLM)


# ------------------------------------------------------------------------------------ structural errors


def test_graph_needs_nodes_and_exactly_one_start() -> None:
    fails(graph([], []), "at least one node")
    fails(
        graph([llm_node(), end_node(("a", [LLM, "text"]))], [edge(LLM, END)]),
        "exactly one start node (found 0)",
    )
    raw = linear()
    raw["nodes"].append({**start_node(), "id": "1757619999999"})
    raw["nodes"][-1]["data"]["title"] = "Start 2"
    fails(raw, "exactly one start node (found 2", "'Start 2' (1757619999999)", node_id="1757619999999")


def test_edge_endpoints_must_exist() -> None:
    raw = linear()
    raw["edges"].append(edge(LLM, "1757610000000"))
    fails(
        raw,
        f"edge {LLM}-source-1757610000000-target",
        "target node 1757610000000 does not exist",
        node_id="1757610000000",
    )


def test_edge_cannot_cross_container_boundary() -> None:
    raw = kitchen_sink()
    raw["edges"].append(edge(CODE, IT_TT))
    fails(
        raw,
        f"node 'Code' ({CODE})",
        "crosses an iteration/loop boundary",
        f"'Format item' ({IT_TT})",
        environment=ENV,
        node_id=CODE,
    )


def test_workflow_needs_an_end_node() -> None:
    raw = graph([start_node(), llm_node()], [edge(START, LLM)])
    fails(raw, "needs an End node reachable from the start node")


def test_advanced_chat_rejects_end_and_needs_answer() -> None:
    fails(
        linear(),
        f"node 'End' ({END})",
        "not allowed in advanced-chat",
        "no End node",
        "Answer",
        mode="advanced-chat",
        node_id=END,
    )
    raw = graph([start_node(), llm_node()], [edge(START, LLM)])
    fails(raw, "needs an Answer node", mode="advanced-chat")


def test_unreachable_node_is_named() -> None:
    raw = linear()
    raw["nodes"].append(llm_node("1757612700001", "Orphan"))
    fails(
        raw, "node 'Orphan' (1757612700001)", "not connected", f"'Start' ({START})", node_id="1757612700001"
    )


def test_unreachable_child_inside_iteration() -> None:
    raw = kitchen_sink()
    raw["nodes"].append(
        node(
            "1757612700002",
            "code",
            "Stray",
            parent=IT,
            code_language="python3",
            code="x",
            variables=[],
            outputs={"x": {"type": "string"}},
        )
    )
    fails(
        raw,
        "node 'Stray' (1757612700002)",
        "not connected",
        f"start of node 'Iteration' ({IT})",
        environment=ENV,
        node_id="1757612700002",
    )


def test_top_level_cycle_is_rejected() -> None:
    raw = linear()
    second = "1757612800001"
    raw["nodes"].append(llm_node(second, "LLM 2"))
    raw["edges"] += [edge(LLM, second), edge(second, LLM)]
    err = fails(raw, "on a cycle", f"'LLM' ({LLM}) → 'LLM 2' ({second}) → 'LLM' ({LLM})")
    assert err.node_id == LLM


def test_self_loop_is_a_cycle() -> None:
    raw = linear()
    raw["edges"].append(edge(LLM, LLM))
    fails(raw, f"node 'LLM' ({LLM})", "on a cycle", node_id=LLM)


def test_cycle_inside_iteration_is_rejected() -> None:
    raw = kitchen_sink()
    other = "1757612800002"
    raw["nodes"].append(node(other, "template-transform", "Again", parent=IT, template="x", variables=[]))
    raw["edges"] += [edge(IT_TT, other, inside=IT), edge(other, IT_TT, inside=IT)]
    fails(raw, "on a cycle", f"'Format item' ({IT_TT})", f"'Again' ({other})", environment=ENV)


def test_end_node_has_no_outgoing_edges() -> None:
    raw = linear()
    raw["nodes"].append(llm_node("1757612900001", "After"))
    raw["edges"].append(edge(END, "1757612900001"))
    fails(raw, f"node 'End' ({END})", "cannot have outgoing edges", node_id=END)


def test_containment_errors() -> None:
    raw = kitchen_sink()
    data_of(raw, IT_TT)["iteration_id"] = CODE
    next(n for n in raw["nodes"] if n["id"] == IT_TT)["parentId"] = CODE
    fails(
        raw,
        f"node 'Format item' ({IT_TT})",
        f"inside node 'Code' ({CODE})",
        "not an iteration or loop",
        environment=ENV,
        node_id=IT_TT,
    )
    raw = kitchen_sink()
    next(n for n in raw["nodes"] if n["id"] == IT_TT)["parentId"] = "1757600000000"
    fails(raw, "node 1757600000000, which does not exist", environment=ENV, node_id=IT_TT)
    raw = kitchen_sink()
    next(n for n in raw["nodes"] if n["id"] == LP_END)["parentId"] = IT
    fails(raw, f"node 'Exit' ({LP_END})", "must be inside a loop", environment=ENV)


# -------------------------------------------------------------------------------------- required config


def _set(node_id: str, **changes: Any) -> Any:
    def apply(raw: dict) -> None:
        data = data_of(raw, node_id)
        for key, value in changes.items():
            if value is _DELETE:
                data.pop(key, None)
            else:
                data[key] = value

    return apply


_DELETE = object()


@pytest.mark.parametrize(
    ("mutate", "node_id", "title", "problem"),
    [
        (_set(LLM, model={"provider": "openai"}), LLM, "LLM", "model.name is required"),
        (_set(LLM, model={"name": "gpt-4o"}), LLM, "LLM", "model.provider is required"),
        (_set(LLM, prompt_template=_DELETE), LLM, "LLM", "prompt_template is required"),
        (_set(LLM, prompt_template=[]), LLM, "LLM", "prompt_template has no messages"),
        (_set(LLM, prompt_template=[{"text": "hi"}]), LLM, "LLM", "prompt_template[0] needs a role"),
        (_set(KR, dataset_ids=[]), KR, "Knowledge", "dataset_ids needs at least one"),
        (_set(KR, query_variable_selector=[]), KR, "Knowledge", "query_variable_selector is required"),
        (_set(QC, model=_DELETE), QC, "Classifier", "model is required"),
        (_set(QC, classes=[]), QC, "Classifier", "classes needs at least one class"),
        (
            _set(QC, classes=[{"id": "1", "name": "a"}, {"id": "1", "name": "b"}]),
            QC,
            "Classifier",
            "classes[1]: duplicate id '1'",
        ),
        (_set(QC, query_variable_selector=_DELETE), QC, "Classifier", "query_variable_selector is required"),
        (_set(IE, cases=[]), IE, "IF/ELSE", "cases needs at least one case"),
        (
            _set(IE, cases=[{"logical_operator": "and", "conditions": []}]),
            IE,
            "IF/ELSE",
            "cases[0] needs a case_id",
        ),
        (
            _set(IE, cases=[{"case_id": "a", "conditions": []}]),
            IE,
            "IF/ELSE",
            "cases[0].conditions needs at least one condition",
        ),
        (
            _set(CODE, code_language="javascript"),
            CODE,
            "Code",
            "'javascript' is not supported (only python3)",
        ),
        (_set(CODE, code_language="ruby"), CODE, "Code", "code_language must be python3"),
        (_set(CODE, code=""), CODE, "Code", "code is required"),
        (_set(CODE, outputs={}), CODE, "Code", "outputs needs at least one declared output"),
        (_set(CODE, outputs={"x": {"type": "date"}}), CODE, "Code", "outputs.x: invalid type 'date'"),
        (_set(TT, template=_DELETE), TT, "Template", "template is required"),
        (_set(HTTP, method="fetch"), HTTP, "HTTP", "method is required"),
        (_set(HTTP, url=""), HTTP, "HTTP", "url is required"),
        (_set(TOOL, provider_id=_DELETE), TOOL, "Search", "provider_id is required"),
        (_set(TOOL, provider_type=""), TOOL, "Search", "provider_type is required"),
        (_set(TOOL, tool_name=None), TOOL, "Search", "tool_name is required"),
        (_set(IT, iterator_selector=[]), IT, "Iteration", "iterator_selector is required"),
        (_set(IT, output_selector=_DELETE), IT, "Iteration", "output_selector is required"),
        (_set(IT, start_node_id=""), IT, "Iteration", "start_node_id is required"),
        (
            _set(IT, start_node_id=CODE),
            IT,
            "Iteration",
            f"start_node_id {CODE} is not a node inside this iteration",
        ),
        (_set(LP, start_node_id=IT_START), LP, "Loop", "is not a node inside this loop"),
        (_set(PE, model={}), PE, "Extract", "model.provider is required"),
        (_set(PE, query=[]), PE, "Extract", "query is required"),
        (_set(PE, parameters=[]), PE, "Extract", "parameters needs at least one parameter"),
        (
            _set(PE, parameters=[{"name": "my city", "type": "string"}]),
            PE,
            "Extract",
            "invalid name 'my city'",
        ),
        (
            _set(PE, parameters=[{"name": "__reason", "type": "string"}]),
            PE,
            "Extract",
            "invalid name '__reason'",
        ),
        (
            _set(PE, parameters=[{"name": "city", "type": "date"}]),
            PE,
            "Extract",
            "'city': invalid type 'date'",
        ),
        (_set(LO, variable=_DELETE), LO, "List", "variable is required"),
        (_set(END, outputs=[{"variable": "x"}]), END, "End", "outputs[0] 'x' needs a value_selector"),
        (
            _set(END, outputs=[{"value_selector": [START, "query"]}]),
            END,
            "End",
            "outputs[0] needs a variable",
        ),
        (_set(AGG, variables=[]), AGG, "Aggregate", "variables needs at least one variable"),
        (
            _set(
                AGG,
                advanced_settings={"group_enabled": True, "groups": [{"group_name": "g", "variables": []}]},
            ),
            AGG,
            "Aggregate",
            "groups[0] 'g' needs at least one variable",
        ),
        (
            _set(START, variables=[var("q", "paragraph"), var("q", "number")]),
            START,
            "Start",
            "variables[1]: duplicate variable 'q'",
        ),
    ],
)
def test_required_config(mutate: Any, node_id: str, title: str, problem: str) -> None:
    raw = kitchen_sink()
    mutate(raw)
    fails(raw, f"node '{title}' ({node_id}): ", problem, environment=ENV, node_id=node_id)


def test_answer_needs_text() -> None:
    raw = chatflow()
    data_of(raw, ANSWER)["answer"] = "  "
    fails(
        raw,
        f"node 'Answer' ({ANSWER}): answer is required",
        mode="advanced-chat",
        environment=ENV,
        conversation=CHAT_VARS,
        node_id=ANSWER,
    )


# ------------------------------------------------------------------------------------------ references


def test_template_to_missing_node() -> None:
    raw = chatflow()
    data_of(raw, ANSWER)["answer"] = "{{#llm9.text#}}"
    fails(
        raw,
        f"node 'Answer' ({ANSWER}): {{{{#llm9.text#}}}} in answer refers to node llm9, which does not exist",
        mode="advanced-chat",
        environment=ENV,
        conversation=CHAT_VARS,
        node_id=ANSWER,
    )


def test_reference_to_missing_output_lists_outputs() -> None:
    raw = chatflow()
    data_of(raw, ANSWER)["answer"] = f"{{{{#{LLM}.txt#}}}}"
    fails(
        raw,
        f"node 'Answer' ({ANSWER})",
        f"refers to node 'LLM' ({LLM}), which has no output 'txt'",
        "(outputs: text, usage, reasoning_content, structured_output)",
        mode="advanced-chat",
        environment=ENV,
        conversation=CHAT_VARS,
    )


def test_reference_to_downstream_node() -> None:
    raw = linear()
    data_of(raw, LLM)["prompt_template"][1]["text"] = f"{{{{#{END}.answer#}}}}"
    fails(raw, f"node 'LLM' ({LLM})", f"refers to node 'End' ({END}), which is not upstream", node_id=LLM)


def test_reference_to_parallel_branch_is_not_upstream() -> None:
    a, b = "1757613100001", "1757613100002"
    raw = graph(
        [
            start_node(),
            llm_node(a, "A"),
            llm_node(b, "B", prompt=f"{{{{#{a}.text#}}}}"),
            end_node(("a", [a, "text"]), ("b", [b, "text"])),
        ],
        [edge(START, a), edge(START, b), edge(a, END), edge(b, END)],
    )
    fails(raw, f"node 'B' ({b})", f"refers to node 'A' ({a}), which is not upstream", node_id=b)


def test_node_with_no_outputs() -> None:
    raw = chatflow()
    raw["nodes"].append(node("1757613200001", "answer", "Echo", answer=f"{{{{#{ASSIGN}.value#}}}}"))
    raw["edges"].append(edge(ASSIGN, "1757613200001"))
    fails(
        raw,
        "which has no output 'value' (it has no outputs)",
        mode="advanced-chat",
        environment=ENV,
        conversation=CHAT_VARS,
        node_id="1757613200001",
    )


def test_end_value_selector_reference_is_named() -> None:
    raw = linear()
    data_of(raw, END)["outputs"][0]["value_selector"] = [START, "question"]
    fails(
        raw,
        f"node 'End' ({END}): outputs[0].value_selector ({START}.question)",
        "has no output 'question'",
        "(outputs: query)",
        node_id=END,
    )


def test_empty_and_malformed_selectors() -> None:
    raw = kitchen_sink()
    data_of(raw, CODE)["variables"][0]["value_selector"] = []
    fails(raw, f"node 'Code' ({CODE}): variables[0].value_selector: no variable selected", environment=ENV)
    raw = kitchen_sink()
    data_of(raw, CODE)["variables"][0]["value_selector"] = f"{LLM}.text"
    fails(raw, "variables[0].value_selector is not a valid variable selector", environment=ENV, node_id=CODE)


def test_sys_variables_by_mode() -> None:
    raw = linear()
    data_of(raw, LLM)["prompt_template"][1]["text"] = "{{#sys.query#}}"
    fails(
        raw,
        "{{#sys.query#}} in prompt_template[1].text",
        "sys.query only exists in advanced-chat",
        node_id=LLM,
    )
    data_of(raw, LLM)["prompt_template"][1]["text"] = (
        "{{#sys.user_id#}} {{#sys.files#}} {{#sys.workflow_run_id#}}"
    )
    check(raw)
    data_of(raw, LLM)["prompt_template"][1]["text"] = "{{#sys.tenant#}}"
    fails(raw, "unknown system variable sys.tenant", node_id=LLM)


def test_environment_variables_must_be_defined() -> None:
    raw = linear()
    data_of(raw, LLM)["prompt_template"][1]["text"] = "{{#env.TOKEN#}}"
    fails(
        raw,
        f"node 'LLM' ({LLM}): {{{{#env.TOKEN#}}}} in prompt_template[1].text",
        "environment variable 'TOKEN', which is not defined (defined: API_KEY, LIMIT)",
        environment=ENV,
    )
    fails(raw, "(none are defined)")
    check(raw, environment={"TOKEN": "secret"})


def test_conversation_variables_only_in_advanced_chat() -> None:
    raw = linear()
    data_of(raw, LLM)["prompt_template"][1]["text"] = "{{#conversation.topic#}}"
    fails(raw, "conversation variables only exist in advanced-chat apps", conversation=CHAT_VARS, node_id=LLM)
    chat = chatflow()
    fails(
        chat,
        f"node 'Answer' ({ANSWER})",
        "conversation variable 'topic', which is not defined",
        mode="advanced-chat",
        environment=ENV,
        conversation={"history": "array[object]"},
    )


def test_iteration_item_is_only_visible_inside() -> None:
    raw = kitchen_sink()
    data_of(raw, LO)["variable"] = [IT, "item"]
    fails(
        raw,
        f"node 'List' ({LO}): variable ({IT}.item)",
        f"refers to node 'Iteration' ({IT}), which has no output 'item' (outputs: output)",
        environment=ENV,
        node_id=LO,
    )
    raw = kitchen_sink()
    data_of(raw, IT_TT)["variables"][0]["value_selector"] = [IT, "output"]
    fails(
        raw,
        f"node 'Format item' ({IT_TT})",
        "which has no variable 'output' (variables: item, index)",
        environment=ENV,
        node_id=IT_TT,
    )


def test_iteration_child_is_not_visible_outside() -> None:
    raw = kitchen_sink()
    data_of(raw, END)["outputs"][0]["value_selector"] = [IT_TT, "output"]
    fails(
        raw,
        f"node 'End' ({END})",
        f"refers to node 'Format item' ({IT_TT}), which is inside node 'Iteration' ({IT})",
        "use the iteration's output",
        environment=ENV,
        node_id=END,
    )


def test_iteration_output_selector_must_be_a_child() -> None:
    raw = kitchen_sink()
    data_of(raw, IT)["output_selector"] = [CODE, "items"]
    fails(
        raw,
        f"node 'Iteration' ({IT}): output_selector ({CODE}.items) must refer to a node inside this iteration",
        environment=ENV,
        node_id=IT,
    )


def test_loop_variables_and_break_conditions() -> None:
    raw = kitchen_sink()
    data_of(raw, LP)["break_conditions"][0]["variable_selector"] = [LP, "count"]
    fails(
        raw,
        f"node 'Loop' ({LP}): break_conditions[0].variable_selector ({LP}.count)",
        "has no variable 'count' (variables: counter, seed)",
        environment=ENV,
        node_id=LP,
    )
    raw = kitchen_sink()
    data_of(raw, LP)["loop_variables"][1]["value"] = [LP_CODE, "next"]
    fails(raw, "loop_variables[1].value", "which is inside node 'Loop'", environment=ENV, node_id=LP)


def test_scalar_has_no_properties_but_object_paths_are_any() -> None:
    raw = linear()
    data_of(raw, END)["outputs"][0]["value_selector"] = [LLM, "text", "first"]
    fails(
        raw,
        f"outputs[0].value_selector ({LLM}.text.first): 'text' is a string and has no property 'first'",
        node_id=END,
    )
    data_of(raw, END)["outputs"][0]["value_selector"] = [LLM, "usage", "total_tokens"]
    check(raw)


# --------------------------------------------------------------------------------------------- types


def test_iterator_must_be_an_array() -> None:
    raw = kitchen_sink()
    data_of(raw, IT)["iterator_selector"] = [LLM, "text"]
    fails(
        raw,
        f"node 'Iteration' ({IT}): iterator_selector ({LLM}.text) is a string, but an array is required",
        environment=ENV,
        node_id=IT,
    )


def test_list_operator_needs_an_array() -> None:
    raw = kitchen_sink()
    data_of(raw, LO)["variable"] = [CODE, "count"]
    fails(
        raw,
        f"node 'List' ({LO}): variable ({CODE}.count) is a number, but an array is required",
        environment=ENV,
        node_id=LO,
    )


def test_knowledge_query_must_be_a_string() -> None:
    raw = kitchen_sink()
    data_of(raw, KR)["query_variable_selector"] = [START, "n"]
    fails(
        raw,
        f"node 'Knowledge' ({KR}): query_variable_selector ({START}.n) is a number, but a string is required",
        environment=ENV,
        node_id=KR,
    )


def test_end_output_value_type_must_match() -> None:
    raw = kitchen_sink()
    data_of(raw, END)["outputs"][1]["value_type"] = "string"
    fails(
        raw,
        f"node 'End' ({END}): outputs[1].value_selector ({LP}.counter) is a number, but a string is required",
        environment=ENV,
        node_id=END,
    )


@pytest.mark.parametrize("selector", [[START, "meta"], [START, "meta", "list"], [LLM, "usage"]])
def test_any_and_object_sources_are_accepted_anywhere(selector: list[str]) -> None:
    raw = kitchen_sink()
    data_of(raw, IT)["iterator_selector"] = selector
    data_of(raw, KR)["query_variable_selector"] = [START, "meta"]
    check(raw, environment=ENV)


def test_env_and_conversation_types_are_checked() -> None:
    raw = kitchen_sink()
    data_of(raw, LO)["variable"] = ["env", "LIMIT"]
    fails(raw, "variable (env.LIMIT) is a number, but an array is required", environment=ENV)
    chat = chatflow()
    chat["nodes"].append(node(LO, "list-operator", "Recent", variable=["conversation", "topic"]))
    chat["edges"].append(edge(ASSIGN, LO))
    fails(
        chat,
        "variable (conversation.topic) is a string, but an array is required",
        mode="advanced-chat",
        environment=ENV,
        conversation=CHAT_VARS,
    )
    data_of(chat, LO)["variable"] = ["conversation", "history"]
    check(chat, "advanced-chat", environment=ENV, conversation=CHAT_VARS)


def test_validation_does_not_mutate_input() -> None:
    raw = kitchen_sink()
    before = copy.deepcopy(raw)
    check(raw, environment=ENV)
    assert raw == before

"""A library of Dify-shaped workflow graphs (reference §6) for the engine, console and end-to-end tests.

Node ids look like the UI's (millisecond timestamps), nodes are ``"type": "custom"`` with the node type in
``data.type``, and edge ids are ``<source>-<handle>-<target>-target``, as Dify's editor writes them.
"""

from __future__ import annotations

from typing import Any

MODEL = {"provider": "openai-compatible", "name": "scripted", "mode": "chat", "completion_params": {}}

START, LLM, END, IF, A, B, AGG, CODE, ITER, ITER_START, T, HTTP, KR, TOOL, LIST, QC, PE = (
    "1711000000001", "1711000000002", "1711000000003", "1711000000004", "1711000000005", "1711000000006",
    "1711000000007", "1711000000008", "1711000000009", "1711000000010", "1711000000011", "1711000000012",
    "1711000000013", "1711000000014", "1711000000015", "1711000000016", "1711000000017")


def node(node_id: str, type_: str, title: str | None = None, parent: str | None = None, *, in_loop: bool = False,
         **data: Any) -> dict[str, Any]:
    n: dict[str, Any] = {"id": node_id, "type": "custom", "position": {"x": 0, "y": 0},
                         "data": {"type": type_, "title": title or type_, "selected": False, **data}}
    if parent and in_loop:
        n["parentId"] = parent
        n["data"].update(isInLoop=True, loop_id=parent)
    elif parent:
        n["parentId"] = parent
        n["data"].update(isInIteration=True, iteration_id=parent)
    return n


def edge(source: str, target: str, handle: str = "source") -> dict[str, Any]:
    return {"id": f"{source}-{handle}-{target}-target", "source": source, "sourceHandle": handle,
            "target": target, "targetHandle": "target", "type": "custom", "data": {}}


def graph(nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> dict[str, Any]:
    return {"nodes": nodes, "edges": edges, "viewport": {"x": 0, "y": 0, "zoom": 1}}


def start(*variables: dict[str, Any]) -> dict[str, Any]:
    return node(START, "start", "Start", variables=list(variables))


def text_var(name: str, required: bool = True, **kw: Any) -> dict[str, Any]:
    return {"variable": name, "label": name, "type": "text-input", "required": required, "max_length": 256, **kw}


def end(**outputs: list[str]) -> dict[str, Any]:
    return node(END, "end", "End", outputs=[{"variable": k, "value_selector": v} for k, v in outputs.items()])


def linear_llm(**llm_data: Any) -> dict[str, Any]:
    """start(topic) → llm → end(text) (``reasoning=True``: end(text, reasoning_content) too)."""
    outputs = {"text": [LLM, "text"]}
    if llm_data.pop("reasoning", False):
        outputs["reasoning"] = [LLM, "reasoning_content"]
    return graph([
        start(text_var("topic")),
        node(LLM, "llm", "Writer", model=MODEL, context={"enabled": False, "variable_selector": []},
             prompt_template=[{"role": "system", "text": "You write one line."},
                              {"role": "user", "text": "Write about {{#" + START + ".topic#}}."}], **llm_data),
        end(**outputs),
    ], [edge(START, LLM), edge(LLM, END)])


def branching() -> dict[str, Any]:
    """start(n) → if-else (n > 10 → A, n < 0 → B, else → B') → aggregator → end; A and B are templates."""
    return graph([
        start({"variable": "n", "label": "n", "type": "number", "required": True}),
        node(IF, "if-else", "Size?", cases=[
            {"case_id": "big", "logical_operator": "and", "conditions": [
                {"id": "c1", "variable_selector": [START, "n"], "comparison_operator": ">", "value": "10"}]},
            {"case_id": "negative", "logical_operator": "and", "conditions": [
                {"id": "c2", "variable_selector": [START, "n"], "comparison_operator": "<", "value": "0"}]}]),
        node(A, "template-transform", "Big", template="big: {{ n }}",
             variables=[{"variable": "n", "value_selector": [START, "n"]}]),
        node(B, "template-transform", "Not big", template="not big: {{ n }}",
             variables=[{"variable": "n", "value_selector": [START, "n"]}]),
        node(AGG, "variable-aggregator", "Pick", output_type="string", variables=[[A, "output"], [B, "output"]]),
        end(result=[AGG, "output"]),
    ], [edge(START, IF), edge(IF, A, "big"), edge(IF, B, "negative"), edge(IF, B, "false"),
        edge(A, AGG), edge(B, AGG), edge(AGG, END)])


def iteration(parallel: bool = False) -> dict[str, Any]:
    """start(csv) → code (split) → iteration over the parts (template per item) → end(list)."""
    return graph([
        start(text_var("csv")),
        node(CODE, "code", "Split", code_language="python3",
             code="def main(csv: str) -> dict:\n    return {'parts': [p.strip() for p in csv.split(',') if p.strip()]}\n",
             variables=[{"variable": "csv", "value_selector": [START, "csv"]}],
             outputs={"parts": {"type": "array[string]", "children": None}}),
        node(ITER, "iteration", "Each", iterator_selector=[CODE, "parts"], output_selector=[T, "output"],
             output_type="array[string]", start_node_id=ITER_START, is_parallel=parallel, parallel_nums=3,
             error_handle_mode="terminated"),
        node(ITER_START, "iteration-start", "", parent=ITER),
        node(T, "template-transform", "Shout", parent=ITER, template="{{ x | upper }}#{{ i }}",
             variables=[{"variable": "x", "value_selector": [ITER, "item"]},
                        {"variable": "i", "value_selector": [ITER, "index"]}]),
        end(items=[ITER, "output"]),
    ], [edge(START, CODE), edge(CODE, ITER), edge(ITER_START, T), edge(ITER, END)])


def code_template_http(url: str) -> dict[str, Any]:
    """start(city) → code (payload) → http POST (json body from the payload) → template → end."""
    return graph([
        start(text_var("city")),
        node(CODE, "code", "Payload", code_language="python3",
             code="import json\ndef main(city: str) -> dict:\n    return {'payload': json.dumps({'city': city.title()})}\n",
             variables=[{"variable": "city", "value_selector": [START, "city"]}],
             outputs={"payload": {"type": "string", "children": None}}),
        node(HTTP, "http-request", "Weather", method="post", url=url, headers="X-Trace:{{#" + START + ".city#}}",
             params="units:metric", authorization={"type": "no-auth", "config": None},
             body={"type": "json", "data": "{{#" + CODE + ".payload#}}"},
             timeout={"connect": 5, "read": 5, "write": 5}),
        node(T, "template-transform", "Format", template="{{ status }}: {{ body }}",
             variables=[{"variable": "status", "value_selector": [HTTP, "status_code"]},
                        {"variable": "body", "value_selector": [HTTP, "body"]}]),
        end(report=[T, "output"]),
    ], [edge(START, CODE), edge(CODE, HTTP), edge(HTTP, T), edge(T, END)])


def knowledge_llm(dataset_id: str) -> dict[str, Any]:
    """start(q) → knowledge-retrieval → llm (context) → end."""
    return graph([
        start(text_var("q")),
        node(KR, "knowledge-retrieval", "Search", query_variable_selector=[START, "q"], dataset_ids=[dataset_id],
             retrieval_mode="multiple", multiple_retrieval_config={"top_k": 2, "reranking_enable": False}),
        node(LLM, "llm", "Answer", model=MODEL, context={"enabled": True, "variable_selector": [KR, "result"]},
             prompt_template=[{"role": "system", "text": "Context: {{#context#}}"},
                              {"role": "user", "text": "{{#" + START + ".q#}}"}]),
        end(answer=[LLM, "text"], sources=[KR, "result"]),
    ], [edge(START, KR), edge(KR, LLM), edge(LLM, END)])


def tool_graph(provider_id: str = "calculator") -> dict[str, Any]:
    """start(expr) → tool (built-in calculator; ``provider_id`` as Dify 1.x writes a plugin's) → end."""
    return graph([
        start(text_var("expr")),
        node(TOOL, "tool", "Calc", provider_id=provider_id, provider_type="builtin", provider_name=provider_id,
             tool_name="calculator", tool_configurations={},
             tool_parameters={"expression": {"type": "mixed", "value": "{{#" + START + ".expr#}}"}}),
        end(value=[TOOL, "text"]),
    ], [edge(START, TOOL), edge(TOOL, END)])


def qrcode_tool(content: str) -> dict[str, Any]:
    """A tool node of the QR code built-in (a tool that makes a file) encoding the template ``content``."""
    return node(TOOL, "tool", "QR", provider_id="qrcode", provider_type="builtin", provider_name="qrcode",
                tool_name="qrcode_generator", tool_configurations={},
                tool_parameters={"content": {"type": "mixed", "value": content}})


def qrcode_graph() -> dict[str, Any]:
    """start(url) → tool (QR code) → end(image: its files, note: its text)."""
    return graph([start(text_var("url")), qrcode_tool("{{#" + START + ".url#}}"),
                  end(image=[TOOL, "files"], note=[TOOL, "text"])], [edge(START, TOOL), edge(TOOL, END)])


def qrcode_chatflow() -> dict[str, Any]:
    """advanced-chat: start → tool (QR code of sys.query) → answer "Scan this: <the tool's files>"."""
    return graph([start(), qrcode_tool("{{#sys.query#}}"),
                  node(ANSWER, "answer", "Answer", answer="Scan this: {{#" + TOOL + ".files#}}")],
                 [edge(START, TOOL), edge(TOOL, ANSWER)])


def classify_extract_list() -> dict[str, Any]:
    """start(text) → question-classifier → (order) parameter-extractor → list-operator → end | (other) end."""
    return graph([
        start(text_var("text")),
        node(QC, "question-classifier", "Kind", model=MODEL, query_variable_selector=[START, "text"],
             classes=[{"id": "order", "name": "Order question"}, {"id": "other", "name": "Anything else"}]),
        node(PE, "parameter-extractor", "Extract", model=MODEL, query=[START, "text"], reasoning_mode="prompt",
             parameters=[{"name": "skus", "type": "array[string]", "description": "SKUs", "required": True},
                         {"name": "qty", "type": "number", "description": "quantity", "required": False}]),
        node(LIST, "list-operator", "Top SKUs", variable=[PE, "skus"],
             filter_by={"enabled": True, "conditions": [{"key": "", "comparison_operator": "start with",
                                                         "value": "SKU"}]},
             order_by={"enabled": True, "key": "", "value": "desc"}, limit={"enabled": True, "size": 2},
             extract_by={"enabled": False, "serial": "1"}),
        node(END, "end", "End", outputs=[{"variable": "skus", "value_selector": [LIST, "result"]},
                                         {"variable": "qty", "value_selector": [PE, "qty"]},
                                         {"variable": "kind", "value_selector": [QC, "class_name"]}]),
        node(A, "end", "Other", outputs=[{"variable": "kind", "value_selector": [QC, "class_name"]}]),
    ], [edge(START, QC), edge(QC, PE, "order"), edge(QC, A, "other"), edge(PE, LIST), edge(LIST, END)])


def parallel_branches(url: str) -> dict[str, Any]:
    """start → two slow HTTP calls on independent branches → aggregator-free end (both outputs)."""
    return graph([
        start(),
        node(A, "http-request", "Left", method="get", url=url + "?side=left", headers="", params="",
             authorization={"type": "no-auth"}, body={"type": "none", "data": []}),
        node(B, "http-request", "Right", method="get", url=url + "?side=right", headers="", params="",
             authorization={"type": "no-auth"}, body={"type": "none", "data": []}),
        end(left=[A, "body"], right=[B, "body"]),
    ], [edge(START, A), edge(START, B), edge(A, END), edge(B, END)])


def failing_http(url: str, strategy: str | None, retries: int = 0) -> dict[str, Any]:
    """start → http (500) with an error strategy → end (fail-branch goes to a template)."""
    data: dict[str, Any] = {"method": "get", "url": url, "headers": "", "params": "",
                            "authorization": {"type": "no-auth"}, "body": {"type": "none", "data": []}}
    if strategy:
        data["error_strategy"] = strategy
    if strategy == "default-value":
        data["default_value"] = [{"key": "body", "type": "string", "value": "fallback"},
                                 {"key": "status_code", "type": "number", "value": 0}]
    if retries:
        data["retry_config"] = {"retry_enabled": True, "max_retries": retries, "retry_interval": 10}
    nodes = [start(), node(HTTP, "http-request", "Flaky", **data),
             end(body=[HTTP, "body"])]
    edges = [edge(START, HTTP), edge(HTTP, END)]
    if strategy == "fail-branch":
        nodes.append(node(T, "template-transform", "Sorry", template="failed: {{ e }}",
                          variables=[{"variable": "e", "value_selector": [HTTP, "error_message"]}]))
        nodes.append(node(A, "end", "Failed", outputs=[{"variable": "body", "value_selector": [T, "output"]}]))
        edges += [edge(HTTP, T, "fail-branch"), edge(T, A)]
    return graph(nodes, edges)


ANSWER, ASSIGN = "1711000000018", "1711000000019"
CONVERSATION_VARIABLES = [{"id": "5f1c7b1e-0000-4000-8000-000000000001", "name": "turns", "value_type": "number",
                           "value": 0, "description": "messages so far"}]


def chatflow() -> dict[str, Any]:
    """advanced-chat: start → assigner (turns += 1) → llm (memory) → answer "Turn N: <llm text>"."""
    return graph([
        start(),
        node(ASSIGN, "assigner", "Count", version="2", items=[
            {"variable_selector": ["conversation", "turns"], "input_type": "constant", "operation": "+=",
             "value": 1}]),
        node(LLM, "llm", "Chat", model=MODEL, context={"enabled": False, "variable_selector": []},
             memory={"window": {"enabled": True, "size": 10}, "query_prompt_template": "{{#sys.query#}}"},
             prompt_template=[{"role": "system", "text": "You are terse."}]),
        node(ANSWER, "answer", "Answer", answer="Turn {{#conversation.turns#}}: {{#" + LLM + ".text#}}"),
    ], [edge(START, ASSIGN), edge(ASSIGN, LLM), edge(LLM, ANSWER)])


LOOP, LOOP_START, LOOP_END, L_ASSIGN, L_IF = (
    "1711000000020", "1711000000021", "1711000000022", "1711000000023", "1711000000024")


def loop_graph(*, loop_count: int = 10, step: int = 2, stop_at: int | None = 6, end_at: int | None = None,
               start_total: Any = 0) -> dict[str, Any]:
    """start → loop(total: number = start_total, seen: array[string] = []) whose rounds add ``step`` to total and
    append "r" to seen, breaking when total ≥ ``stop_at`` (break conditions) or, with ``end_at``, by an if-else
    that reaches a loop-end node once total ≥ ``end_at`` → end(total, seen, rounds)."""
    children = [
        node(LOOP_START, "loop-start", "", parent=LOOP, in_loop=True),
        node(L_ASSIGN, "assigner", "Step", parent=LOOP, in_loop=True, version="2", items=[
            {"variable_selector": [LOOP, "total"], "input_type": "constant", "operation": "+=", "value": step},
            {"variable_selector": [LOOP, "seen"], "input_type": "constant", "operation": "append", "value": "r"}]),
    ]
    edges = [edge(START, LOOP), edge(LOOP_START, L_ASSIGN), edge(LOOP, END)]
    if end_at is not None:
        children += [
            node(L_IF, "if-else", "Enough?", parent=LOOP, in_loop=True, cases=[{
                "case_id": "true", "logical_operator": "and", "conditions": [
                    {"id": "c1", "variable_selector": [LOOP, "total"], "comparison_operator": "≥",
                     "value": str(end_at), "varType": "number"}]}]),
            node(LOOP_END, "loop-end", "Stop", parent=LOOP, in_loop=True),
        ]
        edges += [edge(L_ASSIGN, L_IF), edge(L_IF, LOOP_END, "true")]
    breaks = [] if stop_at is None else [{"id": "b1", "variable_selector": [LOOP, "total"],
                                          "comparison_operator": "≥", "value": str(stop_at), "varType": "number"}]
    return graph([
        start(),
        node(LOOP, "loop", "Count up", loop_count=loop_count, logical_operator="and", break_conditions=breaks,
             start_node_id=LOOP_START, loop_variables=[
                 {"id": "v1", "label": "total", "var_type": "number", "value_type": "constant", "value": start_total},
                 {"id": "v2", "label": "seen", "var_type": "array[string]", "value_type": "constant", "value": "[]"}]),
        *children,
        end(total=[LOOP, "total"], seen=[LOOP, "seen"], rounds=[LOOP, "loop_round"]),
    ], edges)


L_ANSWER = "1711000000025"


def chat_loop_graph(rounds: int = 3) -> dict[str, Any]:
    """advanced-chat: start → loop(total = 0, ``rounds`` rounds){loop-start → assigner(total += 1) → answer
    "Round N. "} → answer "<loop_round> rounds." (an answer inside a loop says its text every round)."""
    return graph([
        start(),
        node(LOOP, "loop", "Rounds", loop_count=rounds, logical_operator="and", break_conditions=[],
             start_node_id=LOOP_START, loop_variables=[
                 {"id": "v1", "label": "total", "var_type": "number", "value_type": "constant", "value": 0}]),
        node(LOOP_START, "loop-start", "", parent=LOOP, in_loop=True),
        node(L_ASSIGN, "assigner", "Count", parent=LOOP, in_loop=True, version="2", items=[
            {"variable_selector": [LOOP, "total"], "input_type": "constant", "operation": "+=", "value": 1}]),
        node(L_ANSWER, "answer", "Say", parent=LOOP, in_loop=True, answer="Round {{#" + LOOP + ".total#}}. "),
        node(ANSWER, "answer", "Answer", answer="{{#" + LOOP + ".loop_round#}} rounds."),
    ], [edge(START, LOOP), edge(LOOP_START, L_ASSIGN), edge(L_ASSIGN, L_ANSWER), edge(LOOP, ANSWER)])


AGENT = "1711000000026"
AGENT_MODEL = {"provider": "openai-compatible", "model": "scripted", "model_type": "llm", "mode": "chat",
               "completion_params": {}}


def calculator_tool(**extra: Any) -> dict[str, Any]:
    """The built-in calculator as a Dify agent node lists a tool (its expression left to the model)."""
    return {"enabled": True, "type": "builtin", "provider_name": "calculator", "provider_show_name": "calculator",
            "tool_name": "calculator", "tool_label": "Calculator", "settings": {},
            "parameters": {"expression": {"auto": 1, "value": None}}, "extra": {"description": ""}, **extra}


def agent_node(query: str, *, tools: list[dict[str, Any]] | None = None, strategy: str = "function_calling",
               instruction: str = "You are a careful assistant.", max_iterations: Any = 3,
               provider: str = "langgenius/agent/agent", model: dict[str, Any] | None = AGENT_MODEL,
               **data: Any) -> dict[str, Any]:
    """A Dify 1.x Agent node (the official strategies plugin) as the editor exports it."""
    params: dict[str, Any] = {
        "tools": {"type": "constant", "value": [calculator_tool()] if tools is None else tools},
        "instruction": {"type": "constant", "value": instruction},
        "query": {"type": "constant", "value": query},
        "maximum_iterations": {"type": "constant", "value": max_iterations},
    }
    if model is not None:
        params["model"] = {"type": "constant", "value": model}
    return node(AGENT, "agent", "Agent", agent_strategy_provider_name=provider, agent_strategy_name=strategy,
                agent_strategy_label="FunctionCalling" if strategy == "function_calling" else strategy,
                plugin_unique_identifier="langgenius/agent:0.0.17@4f2a", agent_parameters=params,
                output_schema=None, **data)


def agent_graph(**agent: Any) -> dict[str, Any]:
    """start(q) → agent (query: q) → end(text, json)."""
    return graph([start(text_var("q")), agent_node("{{#" + START + ".q#}}", **agent),
                  end(text=[AGENT, "text"], json=[AGENT, "json"])],
                 [edge(START, AGENT), edge(AGENT, END)])


def agent_chatflow(**agent: Any) -> dict[str, Any]:
    """advanced-chat: start → agent (query: sys.query, memory of 10 turns) → answer "Agent: <its text>"."""
    return graph([start(), agent_node("{{#sys.query#}}", memory={"window": {"enabled": True, "size": 10}}, **agent),
                  node(ANSWER, "answer", "Answer", answer="Agent: {{#" + AGENT + ".text#}}")],
                 [edge(START, AGENT), edge(AGENT, ANSWER)])

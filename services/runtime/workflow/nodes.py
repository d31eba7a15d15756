"""Node implementations: each reads its config (reference §6) and the variable pool and returns a
NodeResult. Failures raise NodeError with a message for the node's error strategy and the run's error."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nats.errors
import orjson

from services.runtime import llm
from services.runtime.service.prompt import estimate_usage, with_images
from services.runtime.thinking import ThinkingSplitter
from services.runtime.workflow import logic
from services.runtime.workflow.engine import NodeError, NodeResult, VariablePool
from shared.context import Context
from shared.credentials import provider_credentials
from shared.egress import Egress, EgressError
from shared.knowledge.models import segment_text
from shared.subjects import KNOWLEDGE_RETRIEVE
from shared.tool_catalog import ToolResolutionError, call_tool, resolve_agent_tools
from shared.workflow import Node
from shared.workflow.graph import normalize_type

if TYPE_CHECKING:
    from services.runtime.workflow.engine import Engine


@dataclass
class RunServices:
    """What nodes reach beyond the pool: connections, the workspace, and per-run caches."""

    ctx: Context
    tenant_id: str
    app_id: str
    user_id: str
    egress: Egress
    bindings: dict[tuple[str, str, str], llm.ModelBinding] = field(default_factory=dict)
    history: list[tuple[str, str]] = field(default_factory=list)  # advanced-chat: earlier (query, answer) turns
    conversation_types: dict[str, str] = field(default_factory=dict)  # conversation variable → value_type
    files: Any = None  # services.runtime.workflow.files.WorkflowFiles: file bytes for document-extractor, vision

    async def binding(self, model: dict[str, Any]) -> llm.ModelBinding:
        provider, name = str(model.get("provider") or ""), str(model.get("name") or "")
        params = model.get("completion_params") or {}
        key = (provider, name, json.dumps(params, sort_keys=True))
        found = self.bindings.get(key)
        if found is None:
            async with self.ctx.db.session() as s:
                creds = await provider_credentials(s, self.ctx.settings.secret_key, self.tenant_id, provider,
                                                   name)
            if creds is None:
                raise NodeError(f"Provider {provider} credentials are not initialized (model {name}).")
            found = self.bindings[key] = llm.bind_model(provider, name, creds, params)
        return found


def _services(eng: Engine) -> RunServices:
    return eng.services


# -- simple nodes -----------------------------------------------------------------------------------
async def start(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    values = dict(pool.node(node.id) or {})
    return NodeResult(outputs=values, inputs=values)


async def end(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    outputs = {o["variable"]: pool.maybe(o.get("value_selector")) for o in node.data.get("outputs") or []}
    return NodeResult(outputs=outputs, inputs=outputs)


async def answer(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    return NodeResult(outputs={"answer": pool.render(str(node.data.get("answer") or ""))})


async def iteration_start(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    return NodeResult()


async def iteration(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    return await eng.iterate(node, pool)


async def loop(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    return await eng.loop(node, pool)


async def loop_start(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    return NodeResult()


async def loop_end(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    """Reached: the enclosing loop's current round is its last."""
    layer = pool.layer_of(str(node.parent_id))
    if layer is not None:
        layer.loop_ended = True
    return NodeResult()


async def if_else(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    handle, result, cases = logic.evaluate_cases(node.data, pool.get)
    return NodeResult(outputs={"result": result, "selected_case_id": handle}, handle=handle,
                      process_data={"cases": cases})


async def aggregator(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    return NodeResult(outputs=logic.aggregate(node.data, pool.get))


async def list_operator(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    items = pool.maybe(node.data.get("variable"))
    if items is None:
        items = []
    if not isinstance(items, list):
        raise NodeError(f"list-operator needs an array, got {type(items).__name__}")
    try:
        return NodeResult(outputs=logic.list_operator(node.data, items, get=pool.get), inputs={"variable": items})
    except ValueError as e:
        raise NodeError(str(e)) from None


def _variables(node: Node, pool: VariablePool) -> dict[str, Any]:
    return {v["variable"]: pool.maybe(v.get("value_selector")) for v in node.data.get("variables") or []
            if v.get("variable")}


async def template_transform(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    variables = _variables(node, pool)
    try:
        text = logic.render_jinja(str(node.data.get("template") or ""), variables)
    except logic.TemplateError as e:
        raise NodeError(str(e)) from None
    return NodeResult(outputs={"output": text}, inputs=variables)


async def code(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    from services.runtime.workflow.sandbox import SandboxError, SandboxLimits, run_python

    ws = eng.settings
    variables = _variables(node, pool)
    limits = SandboxLimits(cpu_seconds=ws.code_cpu_seconds, wall_seconds=ws.code_wall_seconds,
                           memory_bytes=ws.code_memory_mb * 2**20)
    try:
        result = await run_python(str(node.data.get("code") or ""), variables, limits)
    except SandboxError as e:
        raise NodeError(f"{e.code}: {e.message}") from None
    outputs: dict[str, Any] = {}
    for name, spec in (node.data.get("outputs") or {}).items():
        if name not in result:
            raise NodeError(f"output {name!r} is missing from the dict main() returned")
        try:
            outputs[name] = logic.coerce(result[name], (spec or {}).get("type", "string"))
        except ValueError as e:
            raise NodeError(f"output {name!r}: {e}") from None
    return NodeResult(outputs=outputs, inputs=variables)


# -- model nodes -------------------------------------------------------------------------------------
def _usage(binding: llm.ModelBinding, u: llm.Usage, messages: list[dict[str, Any]], text: str,
           started: float) -> dict[str, Any]:
    estimate_usage(u, messages, text)
    return llm.dify_usage(binding, u.prompt_tokens, u.completion_tokens, time.perf_counter() - started)


def _meta(usage: dict[str, Any]) -> dict[str, Any]:
    return {"total_tokens": usage["total_tokens"], "total_price": usage["total_price"], "currency": "USD"}


def _context_text(value: Any) -> str:
    if isinstance(value, list):  # knowledge-retrieval results
        return "\n".join(str(v.get("content", "")) if isinstance(v, dict) else str(v) for v in value)
    return logic.to_text(value)


def memory_messages(memory: Any, history: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """A node's chatflow ``memory: {window: {enabled, size}}``: the conversation's earlier turns it sees."""
    if not isinstance(memory, dict) or not history:
        return []
    window = memory.get("window") or {}
    turns = history[-int(window.get("size") or 50):] if window.get("enabled") else history
    return [m for q, a in turns for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]


def _prompt(node: Node, pool: VariablePool, history: list[tuple[str, str]]) -> list[dict[str, Any]]:
    d = node.data
    context = ""
    if (d.get("context") or {}).get("enabled"):
        context = _context_text(pool.maybe((d.get("context") or {}).get("variable_selector")))
    jinja_vars = {v["variable"]: pool.maybe(v.get("value_selector"))
                  for v in (d.get("prompt_config") or {}).get("jinja2_variables") or [] if v.get("variable")}

    def render(part: dict[str, Any]) -> str:
        text = str(part.get("text") or "")
        if part.get("edition_type") == "jinja2":
            try:
                text = logic.render_jinja(str(part.get("jinja2_text") or text), jinja_vars)
            except logic.TemplateError as e:
                raise NodeError(str(e)) from None
        else:
            text = pool.render(text)
        return text.replace("{{#context#}}", context)

    pt = d.get("prompt_template")
    if isinstance(pt, dict):  # completion models
        return [{"role": "user", "content": render(pt)}]
    messages = [{"role": p.get("role", "user"), "content": render(p)} for p in pt or []]
    memory = d.get("memory")
    if memory and history:  # chatflow memory: the last turns of the conversation before the user's turn
        first_user = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
        messages[first_user:first_user] = memory_messages(memory, history)
    query = pool.maybe(["sys", "query"])
    if memory and query and not any("sys.query" in str(p.get("text")) for p in pt or []):
        messages.append({"role": "user", "content": str(query)})  # chatflow: the user's turn
    return [m for m in messages if m["content"] or m["role"] == "user"]


async def _vision(node: Node, pool: VariablePool, eng: Engine, messages: list[dict[str, Any]]
                  ) -> list[dict[str, Any]]:
    """``vision: {enabled, configs: {variable_selector, detail}}``: the image files of that variable go to the
    model with the last user message, as chat sends images (other files are left out, as Dify)."""
    vision = node.data.get("vision") or {}
    if not isinstance(vision, dict) or not vision.get("enabled"):
        return messages
    configs = vision.get("configs") or {}
    value = pool.maybe(configs.get("variable_selector") or ["sys", "files"])
    svc = _services(eng)
    urls = []
    for f in value if isinstance(value, list) else [value] if value is not None else []:
        url = await svc.files.image_url(svc.tenant_id, svc.app_id, f)
        if url is not None:
            urls.append(url)
    detail = configs.get("detail") if configs.get("detail") in ("high", "low", "auto") else "high"
    return with_images(messages, urls, detail)


def _stored(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The prompts as kept with the run: an image's data URL (megabytes) becomes a short placeholder."""
    def part(p: Any) -> Any:
        if isinstance(p, dict) and p.get("type") == "image_url":
            return {**p, "image_url": {**p["image_url"], "url": "[image]"}}
        return p

    return [{**m, "content": [part(p) for p in m["content"]]} if isinstance(m.get("content"), list) else m
            for m in messages]


async def llm_node(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    binding = await _services(eng).binding(node.data.get("model") or {})
    messages = await _vision(node, pool, eng, _prompt(node, pool, _services(eng).history))
    usage, parts, started = llm.Usage(), [], time.perf_counter()
    # a reasoning model's thinking: in `text` between <think> tags (Dify's default), or apart (separated)
    splitter = ThinkingSplitter() if node.data.get("reasoning_format") == "separated" else None
    try:
        async for delta in llm.stream_chat(binding, messages, eng.services.ctx.settings.runtime.llm_timeout, usage):
            if splitter is not None and not (delta := splitter.feed(delta)):
                continue
            parts.append(delta)
            await eng.llm_delta(node.id, delta)
        if splitter is not None and (rest := splitter.close()):
            parts.append(rest)
            await eng.llm_delta(node.id, rest)
    except Exception as e:  # noqa: BLE001 - the provider's failure, worded for the run
        raise NodeError(llm.error_message(e, binding.provider)) from None
    text = "".join(parts)
    reasoning = splitter.reasoning if splitter is not None else ""
    u = _usage(binding, usage, messages, text + reasoning, started)  # the thinking was generated too
    return NodeResult(outputs={"text": text, "reasoning_content": reasoning, "usage": u, "finish_reason": "stop"},
                      process_data={"model_mode": (node.data.get("model") or {}).get("mode", "chat"),
                                    "prompts": _stored(messages), "usage": u, "model_provider": binding.provider,
                                    "model_name": binding.model},
                      metadata=_meta(u))


async def _complete(eng: Engine, node: Node, messages: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    binding = await _services(eng).binding(node.data.get("model") or {})
    started = time.perf_counter()
    try:
        text = await llm.complete_text(binding, messages, eng.services.ctx.settings.runtime.llm_timeout,
                                       max_tokens=512)
    except Exception as e:  # noqa: BLE001
        raise NodeError(llm.error_message(e, binding.provider)) from None
    return text, _usage(binding, llm.Usage(), messages, text, started)


def _json_in(text: str) -> Any:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        return json.loads(text[start:end + 1])
    except ValueError:
        return None


async def question_classifier(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    d = node.data
    query = _context_text(pool.maybe(d.get("query_variable_selector")))
    classes = [c for c in d.get("classes") or [] if isinstance(c, dict)]
    listing = "\n".join(f'- id "{c.get("id")}": {c.get("name")}' for c in classes)
    system = ("Classify the user's input into exactly one of these categories. Reply only with JSON "
              '{"category_id": "<id>", "category_name": "<name>"}.\n' + listing)
    if d.get("instruction"):
        system += "\nInstructions: " + pool.render(str(d["instruction"]))
    messages = [{"role": "system", "content": system}, {"role": "user", "content": query}]
    text, usage = await _complete(eng, node, messages)
    picked = _json_in(text) or {}
    chosen = next((c for c in classes if str(c.get("id")) == str(picked.get("category_id"))), None) \
        or next((c for c in classes if str(c.get("name")) == str(picked.get("category_name"))), None) \
        or next((c for c in classes if str(c.get("name")) and str(c.get("name")) in text), None) or classes[0]
    return NodeResult(outputs={"class_name": chosen.get("name"), "class_id": chosen.get("id"), "usage": usage},
                      inputs={"query": query}, handle=str(chosen.get("id")),
                      process_data={"model_output": text}, metadata=_meta(usage))


async def parameter_extractor(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    d = node.data
    query = _context_text(pool.maybe(d.get("query")))
    params = [p for p in d.get("parameters") or [] if isinstance(p, dict)]
    schema = {p["name"]: {"type": p.get("type", "string"), "description": p.get("description", ""),
                          "required": bool(p.get("required")), **({"options": p["options"]} if p.get("options") else {})}
              for p in params}
    system = ("Extract these parameters from the user's text and reply only with one JSON object that has "
              f"exactly these keys (null when absent):\n{json.dumps(schema, ensure_ascii=False)}")
    if d.get("instruction"):
        system += "\nInstructions: " + pool.render(str(d["instruction"]))
    text, usage = await _complete(eng, node, [{"role": "system", "content": system},
                                              {"role": "user", "content": query}])
    found = _json_in(text)
    outputs: dict[str, Any] = {"__usage": usage}
    reason = ""
    if not isinstance(found, dict):
        found, reason = {}, "the model did not return a JSON object"
    for p in params:
        value = found.get(p["name"])
        if value is None:
            if p.get("required") and not reason:
                reason = f"required parameter {p['name']!r} was not extracted"
            outputs[p["name"]] = None
            continue
        try:
            outputs[p["name"]] = logic.coerce(value, p.get("type", "string"))
        except ValueError as e:
            outputs[p["name"]] = None
            reason = reason or f"parameter {p['name']!r}: {e}"
    outputs["__is_success"] = 0 if reason else 1
    outputs["__reason"] = reason or None
    return NodeResult(outputs=outputs, inputs={"query": query}, process_data={"model_output": text},
                      metadata=_meta(usage))


# -- nodes that reach out -------------------------------------------------------------------------------
def _pairs(text: str, pool: VariablePool) -> list[tuple[str, str]]:
    out = []
    for line in pool.render(text or "").splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            if k.strip():
                out.append((k.strip(), v.strip()))
    return out


async def http_request(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    d, ws = node.data, eng.settings
    method = str(d.get("method") or "get").upper()
    url = pool.render(str(d.get("url") or ""))
    headers = dict(_pairs(str(d.get("headers") or ""), pool))
    params = _pairs(str(d.get("params") or ""), pool)
    auth = d.get("authorization") or {}
    if auth.get("type") == "api-key":
        cfg = auth.get("config") or {}
        key = pool.render(str(cfg.get("api_key") or ""))
        kind = cfg.get("type", "bearer")
        if kind == "basic":
            headers["Authorization"] = f"Basic {key}"
        elif kind == "bearer":
            headers["Authorization"] = f"Bearer {key}"
        else:
            headers[str(cfg.get("header") or "Authorization")] = key
    body = d.get("body") or {}
    btype, content = body.get("type", "none"), None
    data = body.get("data")
    if btype in ("json", "raw-text"):
        raw = data if isinstance(data, str) else "".join(
            str(i.get("value", "")) for i in data or [] if isinstance(i, dict))
        content = pool.render(raw).encode()
        headers.setdefault("Content-Type", "application/json" if btype == "json" else "text/plain")
    elif btype in ("x-www-form-urlencoded", "form-data"):
        from urllib.parse import urlencode

        fields = [(pool.render(str(i.get("key", ""))), pool.render(str(i.get("value", ""))))
                  for i in data or [] if isinstance(i, dict) and i.get("key")] if isinstance(data, list) \
            else _pairs(str(data or ""), pool)
        content = urlencode(fields).encode()
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    timeouts = d.get("timeout") or {}
    timeout = float(timeouts.get("read") or timeouts.get("max_read_timeout") or ws.http_timeout)
    try:
        resp = await _services(eng).egress.request(method, url, headers=headers, params=params or None,
                                                   content=content, timeout=min(timeout, ws.node_timeout),
                                                   max_bytes=ws.http_max_response_bytes)
    except EgressError as e:
        raise NodeError(f"{e.code}: {e}") from None
    text = resp.body.decode("utf-8", errors="replace")
    # as Dify: an error status fails the node only when it has an error strategy or retries to use
    if resp.status >= 400 and (d.get("error_strategy") or (d.get("retry_config") or {}).get("retry_enabled")):
        raise NodeError(f"HTTP request failed with status code {resp.status}: {text[:200]}")
    return NodeResult(outputs={"status_code": resp.status, "body": text, "headers": {str(k): v for k, v in resp.headers.items()}, "files": []},
                      process_data={"request": f"{method} {url}"}, inputs={"url": url, "method": method})


def tool_json(text: str) -> list[Any]:
    """A tool's output in the ``json`` output of the tool and agent nodes: its JSON object or array; [] else."""
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return []
    return [parsed] if isinstance(parsed, dict) else parsed if isinstance(parsed, list) else []


def input_value(spec: Any, pool: VariablePool) -> Any:
    """A tool parameter's ``{type: variable|mixed|constant, value}`` as Dify reads it: the variable's value, the
    mixed text with its templates rendered, or the constant; a bare value as given."""
    if not isinstance(spec, dict):
        return spec
    if spec.get("type") == "variable":
        return pool.maybe(spec.get("value"))
    if spec.get("type") == "mixed":
        return pool.render(str(spec.get("value") or ""))
    return spec.get("value")


async def tool(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    d, svc = node.data, _services(eng)
    args = {name: input_value(spec, pool) for name, spec in (d.get("tool_parameters") or {}).items()}
    entry = {"provider_type": d.get("provider_type"), "provider_id": d.get("provider_id"),
             "tool_name": d.get("tool_name"), "tool_parameters": d.get("tool_configurations") or {}}
    async with svc.ctx.db.session() as s:
        try:
            (resolved,) = await resolve_agent_tools(s, svc.tenant_id, [entry], svc.ctx.settings.tools)
        except ToolResolutionError as e:
            raise NodeError(str(e)) from None
    payload = {"tenant_id": svc.tenant_id, "app_id": svc.app_id, "provider_type": resolved.provider_type,
               "provider_id": resolved.provider_id, "tool": resolved.tool_name, "arguments": resolved.arguments(args)}
    result = await call_tool(svc.ctx.bus, resolved.provider_id, payload, resolved.timeout)
    if not result["ok"]:
        raise NodeError(f"tool {resolved.tool_name} failed ({result['error']['code']}): {result['error']['message']}")
    text = str(result.get("output", ""))
    as_json = tool_json(text)
    made = result.get("files") or []
    files = await svc.files.tool_files(svc.tenant_id, svc.user_id, made) if made and svc.files is not None else []
    return NodeResult(outputs={"text": text, "files": files, "json": as_json}, inputs=payload["arguments"],
                      metadata={"tool_info": {"provider_type": resolved.provider_type,
                                              "provider_id": resolved.provider_id}})


async def agent(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    from services.runtime.workflow.agent_node import run_agent  # it builds on this module's helpers

    return await run_agent(node, pool, eng)


async def knowledge_retrieval(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    d, svc = node.data, _services(eng)
    query = _context_text(pool.maybe(d.get("query_variable_selector")))
    cfg = d.get("multiple_retrieval_config") or {}
    model: dict[str, Any] = {k: cfg[k] for k in ("top_k", "score_threshold", "reranking_enable", "reranking_mode",
                                               "weights") if cfg.get(k) is not None}
    if cfg.get("score_threshold") is not None:
        model["score_threshold_enabled"] = True
    payload = {"tenant_id": svc.tenant_id, "dataset_ids": [str(i) for i in d.get("dataset_ids") or []],
               "query": query, "retrieval_model": model or None}
    if not query.strip():
        return NodeResult(outputs={"result": []}, inputs={"query": query})
    try:
        msg = await svc.ctx.bus.nc.request(KNOWLEDGE_RETRIEVE, orjson.dumps(payload),
                                           timeout=svc.ctx.settings.knowledge.retrieve_timeout)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        raise NodeError("knowledge retrieval is unavailable") from None
    reply = orjson.loads(msg.data)
    if "error" in reply:
        raise NodeError(reply["error"].get("message") or "retrieval failed")
    result = []
    for i, rec in enumerate(reply.get("records") or [], 1):
        seg = rec["segment"]
        doc, ds = seg.get("document") or {}, rec.get("dataset") or {}
        result.append({"content": segment_text(seg), "title": doc.get("name"), "metadata": {
            "_source": "knowledge", "position": i, "dataset_id": ds.get("id"), "dataset_name": ds.get("name"),
            "document_id": doc.get("id"), "document_name": doc.get("name"), "segment_id": seg.get("id"),
            "score": rec.get("score"), "doc_metadata": doc.get("doc_metadata") or {}}})
    return NodeResult(outputs={"result": result}, inputs={"query": query})


_EMPTY = {"string": "", "number": 0, "object": {}, "boolean": False}


def _assign(current: Any, operation: str, value: Any, value_type: str) -> Any:
    if operation in ("over-write", "set"):
        return value
    if operation == "clear":
        return [] if value_type.startswith("array") else _EMPTY.get(value_type)
    if operation in ("append", "extend"):
        items = list(current or [])
        return items + list(value or []) if operation == "extend" else [*items, value]
    if operation in ("+=", "-=", "*=", "/="):
        if not isinstance(current, int | float) or not isinstance(value, int | float):
            raise NodeError(f"{operation} needs numbers")
        if operation == "/=" and value == 0:
            raise NodeError("division by zero")
        return {"+=": current + value, "-=": current - value, "*=": current * value, "/=": current / value}[operation]
    if operation in ("remove-first", "remove-last"):
        items = list(current or [])
        return items[1:] if operation == "remove-first" else items[:-1]
    raise NodeError(f"unknown assigner operation {operation!r}")


def _enclosing_loops(node: Node, eng: Engine) -> dict[str, dict[str, str]]:
    """Loop id → its loop variables' types, for every loop ``node`` sits inside."""
    out: dict[str, dict[str, str]] = {}
    parent = eng.graph.nodes.get(node.parent_id) if node.parent_id else None
    while parent is not None:
        if parent.type == "loop":
            out[parent.id] = {v["label"]: normalize_type(v.get("var_type"))
                              for v in parent.data.get("loop_variables") or [] if v.get("label")}
        parent = eng.graph.nodes.get(parent.parent_id) if parent.parent_id else None
    return out


async def assigner(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    """Variable Assigner: writes conversation variables (advanced-chat) and, inside a loop, its loop
    variables; v1 (one write) and v2 (items)."""
    d = node.data
    if d.get("version") == "2":
        items = [(it.get("variable_selector"), it.get("operation", "over-write"),
                  pool.maybe(it.get("value")) if it.get("input_type") == "variable" else it.get("value"))
                 for it in d.get("items") or []]
    else:
        items = [(d.get("assigned_variable_selector"), d.get("write_mode", "over-write"),
                  pool.maybe(d.get("input_variable_selector")))]
    conversation = pool.node("conversation")
    types = getattr(eng.services, "conversation_types", {})
    loops = _enclosing_loops(node, eng)
    changed = {}
    for selector, operation, value in items:
        if isinstance(selector, list) and len(selector) == 2 and selector[0] in loops \
                and selector[1] in loops[selector[0]]:
            # a loop variable of a loop this assigner is inside: its next rounds and outputs see the value
            name, vtype = selector[1], loops[selector[0]][selector[1]]
            target = pool.node(selector[0])
            what = "loop variable"
        elif isinstance(selector, list) and len(selector) == 2 and selector[0] == "conversation" \
                and conversation is not None and selector[1] in conversation:
            name, vtype, target, what = selector[1], types.get(selector[1], "string"), conversation, "conversation variable"
        else:
            raise NodeError("the assigner can only write declared conversation variables or the loop variables of "
                            f"a loop it is inside, not {selector!r}")
        new = _assign(target.get(name), operation, value, vtype)
        try:
            new = logic.coerce(new, vtype) if new is not None and vtype != "any" else new
        except ValueError as e:
            raise NodeError(f"{what} {name!r}: {e}") from None
        target[name] = new
        if target is conversation:
            changed[name] = new
    eng.conversation_changed.update(changed)
    return NodeResult(outputs={}, inputs={"items": [s for s, _, _ in items]}, process_data={"updated": changed})


async def document_extractor(node: Node, pool: VariablePool, eng: Engine) -> NodeResult:
    """Dify's document-extractor: ``variable_selector`` → a file (``text`` is its text) or a list of files
    (``text`` is a list, one text per file), each cut at the workflow's document_extractor_chars."""
    selector = node.data.get("variable_selector")
    value = pool.maybe(selector)
    svc, chars = _services(eng), eng.settings.document_extractor_chars
    if value is None:
        raise NodeError(f"no file in {'.'.join(map(str, selector or []))}")
    if isinstance(value, list):
        text: Any = [await svc.files.text(svc.tenant_id, svc.app_id, f, chars) for f in value]
    else:
        text = await svc.files.text(svc.tenant_id, svc.app_id, value, chars)
    return NodeResult(outputs={"text": text}, inputs={"variable_selector": selector},
                      process_data={"documents": [f.get("filename") if isinstance(f, dict) else None
                                                  for f in (value if isinstance(value, list) else [value])]})


IMPLS = {
    "start": start, "end": end, "answer": answer, "llm": llm_node, "if-else": if_else, "code": code,
    "template-transform": template_transform, "http-request": http_request, "tool": tool,
    "knowledge-retrieval": knowledge_retrieval, "question-classifier": question_classifier,
    "parameter-extractor": parameter_extractor, "variable-aggregator": aggregator, "variable-assigner": aggregator,
    "list-operator": list_operator, "iteration": iteration, "iteration-start": iteration_start, "assigner": assigner,
    "document-extractor": document_extractor, "loop": loop, "loop-start": loop_start, "loop-end": loop_end,
    "agent": agent,
}

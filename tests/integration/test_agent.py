"""Tools and agent-chat end to end through the gateway (`all` stack: real NATS request/reply to the tools
service, SQLite and Postgres, the real litellm path against the scripted model): tool providers in the
console, webhook calls that a real local server verifies (API key and HMAC signature), and agent runs
whose model asks for tools (single, parallel, malformed, unknown, endless, failing), stop and failure."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from sqlmodel import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.models import Message
from shared.settings import ToolsSettings
from tests.conftest import LiveServer, database_url, db_params, make_settings, start_live
from tests.llm_server import ScriptedLLM
from tests.support import Served, console_admin, serve

API_KEY = "k-" + uuid.uuid4().hex
SIGNING = "signing-secret-" + uuid.uuid4().hex


class Webhook:
    """A receiver that checks the API key and the X-Plexus-Signature like a real integration would."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.bad: list[str] = []
        self.release = asyncio.Event()
        self.app = Starlette(routes=[
            Route("/orders/{order_id}", self.order, methods=["GET"]),
            Route("/tickets", self.ticket, methods=["POST"]),
            Route("/slow", self.slow, methods=["POST"]),
            Route("/big", self.big, methods=["POST"]),
            Route("/fail", self.fail, methods=["POST", "PUT"]),
        ])
        self.served: Served | None = None

    async def _check(self, request: Request) -> bytes | None:
        body = await request.body()
        if request.headers.get("x-api-key") != API_KEY:
            self.bad.append("api key")
            return None
        stamp = request.headers.get("x-plexus-timestamp", "")
        want = "v1=" + hmac.new(SIGNING.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, request.headers.get("x-plexus-signature", "")) \
                or abs(time.time() - int(stamp or 0)) > 300:
            self.bad.append("signature")
            return None
        self.calls.append({"path": request.url.path, "query": dict(request.query_params),
                           "body": orjson.loads(body) if body else None})
        return body

    async def order(self, request: Request) -> Response:
        if await self._check(request) is None:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        oid = request.path_params["order_id"]
        return JSONResponse({"order_id": oid, "status": "shipped", "verbose": request.query_params.get("verbose")})

    async def ticket(self, request: Request) -> Response:
        body = await self._check(request)
        if body is None:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        return JSONResponse({"ticket": "T-" + orjson.loads(body)["title"][:8], "created": True})

    async def slow(self, request: Request) -> Response:
        await self._check(request)
        try:
            await asyncio.wait_for(self.release.wait(), 10)
        except TimeoutError:
            pass
        return JSONResponse({"late": True})

    async def big(self, request: Request) -> Response:
        await self._check(request)
        return Response(b"x" * 300_000, media_type="text/plain")

    async def fail(self, request: Request) -> Response:
        await self._check(request)
        return JSONResponse({"error": "database is down"}, status_code=500)


def openapi(base: str) -> str:
    return json.dumps({
        "openapi": "3.0.3",
        "info": {"title": "Shop", "version": "1"},
        "servers": [{"url": base}],
        "paths": {
            "/orders/{order_id}": {"get": {
                "operationId": "lookup_order", "summary": "Look up an order's status",
                "parameters": [{"name": "order_id", "in": "path", "required": True, "schema": {"type": "string"}},
                               {"name": "verbose", "in": "query", "schema": {"type": "boolean"}}]}},
            "/tickets": {"post": {
                "operationId": "create_ticket", "summary": "Open a support ticket",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["title"],
                    "properties": {"title": {"type": "string"}, "priority": {"type": "integer"}}}}}}}},
            "/slow": {"post": {"operationId": "slow_tool", "x-plexus-timeout": 1, "summary": "Slow"}},
            "/big": {"post": {"operationId": "big_tool", "summary": "Big"}},
            "/fail": {"post": {"operationId": "fail_tool", "summary": "Fails"},
                      "put": {"operationId": "limited_tool", "summary": "Fails, twice a minute",
                              "x-plexus-rate-limit": 2}},
        },
    })


@pytest.fixture(scope="module", params=db_params())
async def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, nats_url: str,
                llm: ScriptedLLM) -> AsyncIterator[dict[str, Any]]:
    hook = Webhook()
    hook.served = await serve(hook.app)
    tmp = tmp_path_factory.mktemp("agent")
    settings = make_settings(tmp, database_url(request.param, tmp), nats_url,
                             tools=ToolsSettings(egress_allowlist=["127.0.0.1/32"], max_response_bytes=200_000))
    srv: LiveServer = await start_live(settings)
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=30) as c:
        admin = await console_admin(c)
        r = await c.post("/console/api/workspaces/current/model-providers/openai-compatible/credentials",
                         headers=admin, json={"credentials": {"api_key": "sk-test", "api_base": llm.base_url}})
        assert r.status_code == 200, r.text
        r = await c.post("/console/api/workspaces/current/tool-provider/api/add", headers=admin, json={
            "provider": "shop", "schema_type": "openapi", "schema": openapi(hook.served.url),
            "credentials": {"auth_type": "api_key_header", "api_key_header": "X-Api-Key",
                            "api_key_value": API_KEY},
            "signing_secret": SIGNING})
        assert r.status_code == 200, r.text
        yield {"c": c, "admin": admin, "srv": srv, "hook": hook, "llm": llm, "provider": r.json()}
    await srv.stop()
    await hook.served.stop()


@pytest.fixture
def w(world: dict[str, Any]) -> dict[str, Any]:
    world["llm"].reset()
    world["hook"].calls.clear()
    world["hook"].bad.clear()
    world["hook"].release.clear()
    return world


def api_tool(w: dict[str, Any], name: str, **params: Any) -> dict[str, Any]:
    return {"provider_type": "api", "provider_id": w["provider"]["id"], "tool_name": name,
            "tool_parameters": params, "enabled": True}


def builtin(provider: str, name: str, **params: Any) -> dict[str, Any]:
    return {"provider_type": "builtin", "provider_id": provider, "tool_name": name, "tool_parameters": params,
            "enabled": True}


async def agent_app(w: dict[str, Any], tools: list[dict[str, Any]], **agent: Any) -> str:
    c, admin = w["c"], w["admin"]
    r = await c.post("/console/api/apps", headers=admin, json={"name": f"agent-{uuid.uuid4().hex[:6]}",
                                                               "mode": "agent-chat"})
    assert r.status_code == 201, r.text
    app_id = r.json()["id"]
    cfg = {"model": {"provider": "openai-compatible", "name": "scripted", "mode": "chat"},
           "pre_prompt": "You are the shop's assistant.",
           "agent_mode": {"enabled": True, "strategy": "function_call", "max_iteration": 5, "tools": tools,
                          **agent}}
    r = await c.post(f"/console/api/apps/{app_id}/model-config", headers=admin, json=cfg)
    assert r.status_code == 200, r.text
    r = await c.post(f"/console/api/apps/{app_id}/api-keys", headers=admin)
    return r.json()["token"]


async def stream(w: dict[str, Any], key: str, query: str, **extra: Any) -> list[dict[str, Any]]:
    body = {"inputs": {}, "query": query, "user": "u1", "response_mode": "streaming", **extra}
    async with w["c"].stream("POST", "/v1/chat-messages", headers={"Authorization": f"Bearer {key}"},
                             json=body) as s:
        assert s.status_code == 200, await s.aread()
        return [orjson.loads(line[6:]) async for line in s.aiter_lines() if line.startswith("data: ")]


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


def answer(events: list[dict[str, Any]]) -> str:
    return "".join(e["answer"] for e in events if e["event"] == "agent_message")


async def stored(w: dict[str, Any], message_id: str) -> Message:
    async with w["srv"].ctx.db.session() as s:
        return (await s.exec(select(Message).where(Message.id == message_id))).one()


# ---- console: tool providers ------------------------------------------------------------------------


async def test_provider_crud_and_validation(w: dict[str, Any]) -> None:
    c, admin = w["c"], w["admin"]
    base = "/console/api/workspaces/current/tool-provider/api"
    got = (await c.get(f"{base}/get", params={"provider": "shop"}, headers=admin)).json()
    assert {t["name"] for t in got["tools"]} == {"lookup_order", "create_ticket", "slow_tool", "big_tool",
                                                  "fail_tool", "limited_tool"}
    assert API_KEY not in json.dumps(got) and got["signing"] is True  # secrets never come back
    listed = (await c.get("/console/api/workspaces/current/tool-providers", headers=admin)).json()
    assert {p["name"] for p in listed} >= {"shop", "time", "calculator", "http", "knowledge"}

    r = await c.post(f"{base}/add", headers=admin, json={"provider": "shop", "schema_type": "openapi",
                                                         "schema": openapi("https://example.com")})
    assert r.status_code == 400 and r.json()["code"] == "provider_name_duplicate"
    r = await c.post(f"{base}/add", headers=admin, json={"provider": "broken", "schema_type": "openapi",
                                                         "schema": '{"swagger": "2.0", "paths": {}}'})
    assert r.status_code == 400 and r.json()["code"] == "invalid_param" and "OpenAPI 3" in r.json()["message"]
    r = await c.post(f"{base}/add", headers=admin, json={"provider": "hook", "schema_type": "webhook", "schema": {
        "name": "notify", "description": "Notify", "url": "https://example.com/n",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
        "credentials": {"auth_type": "bearer"}})
    assert r.status_code == 400 and "api_key_value" in r.json()["message"]
    r = await c.post(f"{base}/add", headers=admin, json={"provider": "hook", "schema_type": "webhook", "schema": {
        "name": "notify", "description": "Notify", "url": "https://example.com/n",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}})
    assert r.status_code == 200, r.text
    r = await c.post(f"{base}/update", headers=admin, json={"original_provider": "hook", "provider": "hook2",
                                                            "schema_type": "webhook", "schema": {
        "name": "notify2", "description": "Notify", "url": "https://example.com/n", "method": "GET",
        "parameters": {"type": "object", "properties": {}}}})
    assert r.status_code == 200 and [t["name"] for t in r.json()["tools"]] == ["notify2"]
    assert (await c.post(f"{base}/delete", headers=admin, json={"provider": "hook2"})).status_code == 200
    r = await c.get(f"{base}/get", params={"provider": "hook2"}, headers=admin)
    assert r.status_code == 404


async def test_model_config_rejects_unknown_tools(w: dict[str, Any]) -> None:
    c, admin = w["c"], w["admin"]
    app_id = (await c.post("/console/api/apps", headers=admin, json={"name": "bad-agent", "mode": "agent-chat"})
              ).json()["id"]
    cfg = {"model": {"provider": "openai-compatible", "name": "scripted"},
           "agent_mode": {"enabled": True, "strategy": "function_call", "tools": [api_tool(w, "drop_tables")]}}
    r = await c.post(f"/console/api/apps/{app_id}/model-config", headers=admin, json=cfg)
    assert r.status_code == 400 and "drop_tables" in r.json()["message"]
    cfg["agent_mode"]["tools"] = [builtin("knowledge", "knowledge_retrieval")]
    r = await c.post(f"/console/api/apps/{app_id}/model-config", headers=admin, json=cfg)
    assert r.status_code == 400 and "dataset_ids" in r.json()["message"]


async def test_test_call_signed_webhook_timeout_cap_and_rate_limit(w: dict[str, Any]) -> None:
    c, admin, hook = w["c"], w["admin"], w["hook"]
    url = "/console/api/workspaces/current/tool-provider/api/test"
    r = await c.post(url, headers=admin, json={"provider": "shop", "tool_name": "create_ticket",
                                               "parameters": {"title": "Broken screen", "priority": 2}})
    assert r.status_code == 200 and json.loads(r.json()["result"]) == {"ticket": "T-Broken s", "created": True}
    assert hook.calls[-1]["body"] == {"title": "Broken screen", "priority": 2} and hook.bad == []

    r = await c.post(url, headers=admin, json={"provider": "shop", "tool_name": "create_ticket",
                                               "parameters": {"priority": "high"}})
    assert r.json()["code"] == "invalid_arguments" and "title" in r.json()["error"]

    t0 = time.monotonic()
    r = await c.post(url, headers=admin, json={"provider": "shop", "tool_name": "slow_tool", "parameters": {}})
    assert r.json()["code"] == "timeout" and time.monotonic() - t0 < 5
    hook.release.set()

    r = await c.post(url, headers=admin, json={"provider": "shop", "tool_name": "big_tool", "parameters": {}})
    assert r.json()["code"] == "response_too_large"

    codes = [(await c.post(url, headers=admin, json={"provider": "shop", "tool_name": "limited_tool",
                                                     "parameters": {}})).json()["code"] for _ in range(3)]
    assert codes == ["http_error", "http_error", "rate_limited"]

    # a draft provider (not saved) runs inline, with the stored secrets of the provider it edits
    r = await c.post(url + "/pre", headers=admin, json={
        "provider_name": "shop", "tool_name": "lookup_order", "schema_type": "openapi",
        "schema": openapi(hook.served.url), "parameters": {"order_id": "Z9"},
        "credentials": {"auth_type": "api_key_header", "api_key_header": "X-Api-Key",
                        "api_key_value": "[__HIDDEN__]"}, "signing_secret": "[__HIDDEN__]"})
    assert json.loads(r.json()["result"])["order_id"] == "Z9" and hook.bad == []


# ---- agent-chat ---------------------------------------------------------------------------------------


async def test_single_tool_call_end_to_end(w: dict[str, Any]) -> None:
    llm, hook = w["llm"], w["hook"]
    key = await agent_app(w, [api_tool(w, "lookup_order", verbose=True), builtin("time", "current_time")])
    llm.push(with_tools=True, match="order A1", tool_calls=[{"name": "lookup_order", "arguments": {"order_id": "A1"}}])
    llm.push(match_last="shipped", reply="Your order A1 has shipped.")
    events = await stream(w, key, "Where is my order A1?")
    assert kinds(events)[0] == "agent_thought" and kinds(events)[-1] == "message_end", kinds(events)
    thoughts = [e for e in events if e["event"] == "agent_thought"]
    first, second = thoughts[0], thoughts[1]
    assert first["id"] == second["id"] and first["position"] == 1 and first["tool"] == "lookup_order"
    assert json.loads(first["tool_input"]) == {"lookup_order": {"order_id": "A1"}} and first["observation"] == ""
    assert json.loads(json.loads(second["observation"])["lookup_order"])["status"] == "shipped"
    assert all(isinstance(t[k], str) for t in thoughts for k in ("thought", "observation", "tool", "tool_input"))
    assert answer(events) == "Your order A1 has shipped."
    # the preset parameter reached the webhook; the model never saw it in the schema
    assert hook.calls == [{"path": "/orders/A1", "query": {"verbose": "true"}, "body": None}]
    offered = {t["function"]["name"]: t["function"] for t in llm.requests[0].body["tools"]}
    assert set(offered) == {"lookup_order", "current_time"}
    assert "verbose" not in offered["lookup_order"]["parameters"]["properties"]
    # the model's second turn saw the call and its result
    second_turn = llm.requests[1].messages
    assert second_turn[-2]["tool_calls"][0]["function"]["name"] == "lookup_order"
    assert second_turn[-1]["role"] == "tool" and "shipped" in second_turn[-1]["content"]

    end = events[-1]
    msg = await stored(w, end["message_id"])
    assert msg.status == "normal" and msg.answer == "Your order A1 has shipped."
    assert [t["position"] for t in msg.agent_thoughts] == [1, 2]
    (call,) = msg.trace["tools"]
    assert call["ok"] and call["tool_name"] == "lookup_order" and call["latency_ms"] > 0
    assert call["arguments"] == {"order_id": "A1"}

    meta = (await w["c"].get("/v1/meta", headers={"Authorization": f"Bearer {key}"})).json()
    assert meta["tool_icons"]["current_time"] == {"background": "#EFF1F5", "content": "🕒"}
    assert set(meta["tool_icons"]) == {"lookup_order", "current_time"}

    r = await w["c"].get("/v1/messages", headers={"Authorization": f"Bearer {key}"},
                         params={"conversation_id": end["conversation_id"], "user": "u1"})
    (item,) = r.json()["data"]
    assert [t["tool"] for t in item["agent_thoughts"]] == ["lookup_order", ""]
    assert "shipped" in item["agent_thoughts"][0]["observation"]


async def test_parallel_calls_run_concurrently(w: dict[str, Any]) -> None:
    llm, hook = w["llm"], w["hook"]
    key = await agent_app(w, [api_tool(w, "lookup_order"), api_tool(w, "create_ticket"),
                              builtin("calculator", "calculator")])
    llm.push(with_tools=True, tool_calls=[
        {"name": "lookup_order", "arguments": {"order_id": "B2"}},
        {"name": "create_ticket", "arguments": {"title": "Late parcel"}},
        {"name": "calculator", "arguments": {"expression": "(3 + 4) * 6"}}])
    llm.push(with_tools=True, match_last="42", reply="Done: ticket opened, order shipped, 42.")
    events = await stream(w, key, "Check B2, open a ticket and compute")
    thought = [e for e in events if e["event"] == "agent_thought"][1]
    assert thought["tool"] == "lookup_order;create_ticket;calculator"
    obs = json.loads(thought["observation"])
    assert obs["calculator"] == "42" and "T-Late par" in obs["create_ticket"] and "B2" in obs["lookup_order"]
    assert sorted(c["path"] for c in hook.calls) == ["/orders/B2", "/tickets"]
    assert [m["role"] for m in llm.requests[1].messages[-3:]] == ["tool", "tool", "tool"]
    assert answer(events).startswith("Done")


async def test_malformed_unknown_and_failing_tools_become_observations(w: dict[str, Any]) -> None:
    llm = w["llm"]
    key = await agent_app(w, [api_tool(w, "lookup_order"), api_tool(w, "fail_tool")])
    llm.push(with_tools=True, match="help", tool_calls=[{"name": "lookup_order", "arguments": '{"order_id": "C3"'},
                                                         {"name": "drop_tables", "arguments": "{}"}])
    llm.push(with_tools=True, match_last="drop_tables", tool_calls=[{"name": "fail_tool", "arguments": "{}"}])
    llm.push(with_tools=True, match_last="http_error", reply="Sorry, the shop is having trouble.")
    events = await stream(w, key, "help me")
    thoughts = [e for e in events if e["event"] == "agent_thought" and e["observation"]]
    obs1 = json.loads(thoughts[0]["observation"])
    assert "not a valid JSON object" in obs1["lookup_order"]
    assert obs1["drop_tables"] == "there is not a tool named drop_tables"
    assert "http_error" in json.loads(thoughts[1]["observation"])["fail_tool"]
    assert answer(events) == "Sorry, the shop is having trouble." and kinds(events)[-1] == "message_end"
    msg = await stored(w, events[-1]["message_id"])
    assert [c["ok"] for c in msg.trace["tools"]] == [False, False, False]
    assert {c["error"]["code"] for c in msg.trace["tools"]} == {"invalid_arguments", "tool_not_found", "http_error"}


async def test_endless_tool_loop_stops_at_max_iteration(w: dict[str, Any]) -> None:
    llm = w["llm"]
    key = await agent_app(w, [builtin("time", "current_time")], max_iteration=3)
    llm.push(with_tools=True, times=50, tool_calls=[{"name": "current_time", "arguments": {"timezone": "Asia/Shanghai"}}])
    llm.push(with_tools=False, reply="It is late in Shanghai.")
    events = await stream(w, key, "what time is it, forever?")
    assert answer(events) == "It is late in Shanghai."
    assert [bool(r.body.get("tools")) for r in llm.requests] == [True, True, True, False]
    obs = [e for e in events if e["event"] == "agent_thought" and e["observation"]]
    assert len(obs) == 3 and "+08:00" in json.loads(obs[0]["observation"])["current_time"]


async def test_model_that_never_answers_ends_with_error(w: dict[str, Any]) -> None:
    llm = w["llm"]
    key = await agent_app(w, [builtin("time", "current_time")], max_iteration=1)
    llm.push(times=5, tool_calls=[{"name": "current_time", "arguments": {}}])  # even without tools on offer
    events = await stream(w, key, "loop")
    assert events[-1]["event"] == "error" and "without answering" in events[-1]["message"]
    assert (await stored(w, events[-1]["message_id"])).status == "error"


async def test_llm_failure_mid_agent_is_an_error_event(w: dict[str, Any]) -> None:
    llm = w["llm"]
    key = await agent_app(w, [builtin("calculator", "calculator")])
    llm.push(with_tools=True, match="fail", tool_calls=[{"name": "calculator", "arguments": {"expression": "1+1"}}])
    llm.push(match_last="2", status=500)
    events = await stream(w, key, "fail please")
    assert events[-1]["event"] == "error" and events[-1]["code"] == "completion_request_error"
    assert "task_id" not in events[-1] or events[-1]["status"] == 400
    msg = await stored(w, events[-1]["message_id"])
    assert msg.status == "error" and msg.agent_thoughts and msg.trace["tools"][0]["ok"]


async def test_blocking_mode_is_refused(w: dict[str, Any]) -> None:
    key = await agent_app(w, [])
    r = await w["c"].post("/v1/chat-messages", headers={"Authorization": f"Bearer {key}"},
                          json={"inputs": {}, "query": "hi", "user": "u1", "response_mode": "blocking"})
    assert r.status_code == 400 and r.json() == {
        "code": "invalid_param", "message": "Agent Chat App does not support blocking mode", "status": 400}


async def test_stop_during_a_slow_tool(w: dict[str, Any]) -> None:
    llm, c = w["llm"], w["c"]
    key = await agent_app(w, [api_tool(w, "slow_tool")])
    llm.push(with_tools=True, tool_calls=[{"name": "slow_tool", "arguments": {}}])
    h = {"Authorization": f"Bearer {key}"}
    events: list[dict[str, Any]] = []
    t0 = time.monotonic()
    async with c.stream("POST", "/v1/chat-messages", headers=h, json={
            "inputs": {}, "query": "slow", "user": "u1", "response_mode": "streaming"}) as s:
        async for line in s.aiter_lines():
            if not line.startswith("data: "):
                continue
            events.append(orjson.loads(line[6:]))
            if events[-1]["event"] == "agent_thought":
                r = await c.post(f"/v1/chat-messages/{events[-1]['task_id']}/stop", headers=h, json={"user": "u1"})
                assert r.json() == {"result": "success"}
    w["hook"].release.set()
    assert events[-1]["event"] == "message_end" and time.monotonic() - t0 < 1.0 + 2
    assert (await stored(w, events[-1]["message_id"])).status == "stopped"


async def test_react_strategy(w: dict[str, Any]) -> None:
    llm = w["llm"]
    key = await agent_app(w, [api_tool(w, "lookup_order")], strategy="react")
    llm.push(match="D4", reply='Thought: I should look it up.\nAction:\n```\n'
                               '{"action": "lookup_order", "action_input": {"order_id": "D4"}}\n```')
    llm.push(match="Observation:", reply='Thought: I know.\nAction:\n```\n'
                                         '{"action": "Final Answer", "action_input": "Order D4 has shipped."}\n```')
    events = await stream(w, key, "Where is D4?")
    assert answer(events) == "Order D4 has shipped."
    first = next(e for e in events if e["event"] == "agent_thought")
    assert first["thought"] == "I should look it up." and first["tool"] == "lookup_order"
    assert "tools" not in llm.requests[0].body and "lookup_order" in llm.requests[0].messages[0]["content"]
    assert w["hook"].calls[0]["path"] == "/orders/D4"


async def test_builtin_http_request_is_ssrf_guarded(w: dict[str, Any]) -> None:
    llm = w["llm"]
    key = await agent_app(w, [builtin("http", "http_request")])
    llm.push(with_tools=True, tool_calls=[
        {"name": "http_request", "arguments": {"url": "http://169.254.169.254/latest/meta-data/"}}])
    llm.push(match_last="ssrf_blocked", reply="I cannot reach that address.")
    events = await stream(w, key, "fetch metadata")
    obs = json.loads(next(e for e in events if e["event"] == "agent_thought" and e["observation"])["observation"])
    assert "ssrf_blocked" in obs["http_request"] and "169.254.169.254" in obs["http_request"]
    assert answer(events) == "I cannot reach that address."


async def test_builtin_knowledge_retrieval_searches_the_preset_datasets(w: dict[str, Any]) -> None:
    c, admin, llm = w["c"], w["admin"], w["llm"]
    dk = {"Authorization": "Bearer " + (await c.post("/console/api/datasets/api-keys", headers=admin)).json()["token"]}
    ds = (await c.post("/v1/datasets", headers=dk, json={"name": f"tea-{uuid.uuid4().hex[:6]}"})).json()
    r = await c.post(f"/v1/datasets/{ds['id']}/document/create-by-text", headers=dk, json={
        "name": "tea guide", "text": "Green tea is steeped at 80 degrees for two minutes.",
        "indexing_technique": "high_quality", "process_rule": {"mode": "automatic"}})
    batch = r.json()["batch"]
    deadline = time.monotonic() + 60
    while (st := (await c.get(f"/v1/datasets/{ds['id']}/documents/{batch}/indexing-status", headers=dk)
                  ).json()["data"][0]["indexing_status"]) not in ("completed", "error"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert st == "completed"
    key = await agent_app(w, [builtin("knowledge", "knowledge_retrieval", dataset_ids=[ds["id"]])])
    llm.push(with_tools=True, tool_calls=[{"name": "knowledge_retrieval",
                                           "arguments": {"query": "green tea temperature",
                                                         "dataset_ids": ["someone-elses-dataset"]}}])
    llm.push(match_last="80 degrees", reply="Steep it at 80 degrees.")
    events = await stream(w, key, "How hot for green tea?")
    offered = llm.requests[0].body["tools"][0]["function"]["parameters"]["properties"]
    assert "dataset_ids" not in offered  # fixed by the app, never chosen by the model
    obs = json.loads(next(e for e in events if e["event"] == "agent_thought" and e["observation"])["observation"])
    assert "tea guide" in obs["knowledge_retrieval"] and "80 degrees" in obs["knowledge_retrieval"]
    assert answer(events) == "Steep it at 80 degrees."
    msg = await stored(w, events[-1]["message_id"])
    assert msg.trace["tools"][0]["arguments"] == {"query": "green tea temperature",
                                                  "dataset_ids": ["someone-elses-dataset"]}


async def test_client_disconnect_does_not_stop_the_agent(w: dict[str, Any]) -> None:
    llm, c = w["llm"], w["c"]
    key = await agent_app(w, [builtin("calculator", "calculator")])
    llm.push(with_tools=True, first_delay=0.3, tool_calls=[{"name": "calculator", "arguments": {"expression": "2**8"}}])
    llm.push(match_last="256", reply="It is 256.", delay=0.05)
    async with c.stream("POST", "/v1/chat-messages", headers={"Authorization": f"Bearer {key}"}, json={
            "inputs": {}, "query": "powers", "user": "u1", "response_mode": "streaming"}) as s:
        async for line in s.aiter_lines():
            if line.startswith("data: "):
                message_id = orjson.loads(line[6:])["message_id"]
                break  # the client goes away at the first event
    deadline = time.monotonic() + 10
    while (msg := await stored(w, message_id)).status == "running":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert msg.status == "normal" and msg.answer == "It is 256." and len(msg.agent_thoughts) == 2
    metrics = (await c.get("/metrics")).text
    assert 'plexus_tool_calls_total{outcome="ok",provider_type="builtin"}' in metrics


async def test_a_tool_made_image_reaches_the_user_as_a_message_file(w: dict[str, Any]) -> None:
    from services.tools.builtin import qrcode_png

    llm = w["llm"]
    key = await agent_app(w, [builtin("qrcode", "qrcode_generator")])
    h = {"Authorization": f"Bearer {key}"}
    llm.push(with_tools=True, match="QR code", tool_calls=[
        {"name": "qrcode_generator", "arguments": {"content": "https://plexus.example/menu", "border": 4}}])
    llm.push(match_last="shown to the user", reply="Here is your QR code.")
    events = await stream(w, key, "Make a QR code for our menu page")
    names = kinds(events)
    assert names.count("message_file") == 1 and names[-1] == "message_end", names
    file_event = next(e for e in events if e["event"] == "message_file")
    assert (file_event["type"], file_event["belongs_to"]) == ("image", "assistant")
    assert file_event["message_id"] == events[-1]["message_id"] and file_event["task_id"]
    # the thought that carries the tool's result names the file, after the message_file event (as Dify)
    observed = next(i for i, e in enumerate(events) if e["event"] == "agent_thought" and e["observation"])
    assert events[observed]["message_files"] == [file_event["id"]] and names.index("message_file") < observed
    obs = json.loads(events[observed]["observation"])["qrcode_generator"]
    assert "QR code image" in obs and "qrcode.png" in obs
    assert "1 file(s) shown to the user: qrcode.png" in llm.requests[1].messages[-1]["content"]
    assert answer(events) == "Here is your QR code."
    # the image is the message's: listed by GET /messages and served by its preview URL, byte for byte
    r = await w["c"].get("/v1/messages", headers=h, params={"conversation_id": events[-1]["conversation_id"],
                                                           "user": "u1"})
    (item,) = r.json()["data"]
    (mf,) = item["message_files"]
    assert (mf["id"], mf["belongs_to"], mf["transfer_method"], mf["mime_type"]) == (
        file_event["id"], "assistant", "tool_file", "image/png")
    # the same file; each read signs its URL afresh
    assert mf["url"].split("?")[0] == file_event["url"].split("?")[0] and mf["url"] != file_event["url"]
    assert item["agent_thoughts"][0]["files"] == [mf["id"]]
    # its URL is signed: it opens without a key (an <img> can show it), and only as signed
    path = "/files/tools/" + mf["url"].split("/files/tools/", 1)[1]
    assert path.startswith(f"/files/tools/{mf['upload_file_id']}.png?")
    image = await w["c"].get(path)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png", image.text
    assert image.content == qrcode_png("https://plexus.example/menu", "M", 4).files[0].data
    forged = path.replace("sign=", "sign=x")
    assert (await w["c"].get(forged)).status_code == 403
    other = path.replace(mf["upload_file_id"], str(uuid.uuid4()))
    assert (await w["c"].get(other)).status_code == 403  # a signature is for one file
    # content no QR code holds is the model's to correct
    llm.push(with_tools=True, match="too long", tool_calls=[
        {"name": "qrcode_generator", "arguments": {"content": "x" * 8000}}])
    llm.push(match_last="too long for a QR code", reply="That is too long.")
    events = await stream(w, key, "A QR code of something too long")
    assert "message_file" not in kinds(events) and answer(events) == "That is too long."

"""API-based extensions and external data tools through the gateway of the `all` stack (SQLite and, in CI,
Postgres), against a real extension server speaking Dify's protocol on loopback (allowed by the tools' egress
allowlist): the console's /console/api/api-based-extension routes (ping on save, the key encrypted and shown
masked, errors), and chat and completion apps whose external data tools fill prompt variables."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.settings import ToolsSettings
from tests import workflow_graphs as g
from tests.conftest import LiveServer, live_fixture
from tests.llm_server import ScriptedLLM
from tests.support import Apps, envelope, new_app, scripted_owner, serve

EXT = "/console/api/api-based-extension"
KEY = "ext-key-123456"
MODEL = {"provider": "openai-compatible", "name": "scripted"}


class ExtensionServer:
    """Dify's API-based extension protocol: ping → pong; external data queries → a weather line."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.app = Starlette(routes=[Route("/ext", self.receive, methods=["POST"]),
                                     Route("/not-pong", self.not_pong, methods=["POST"])])

    async def receive(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return JSONResponse({"error": "bad key"}, status_code=401)
        body = orjson.loads(await request.body())
        self.calls.append(body)
        if body["point"] == "ping":
            return JSONResponse({"result": "pong"})
        params = body["params"]
        if body["point"] == "app.moderation.input":
            said = " ".join([params["query"] or "", *map(str, params["inputs"].values())])
            if "crash" in said:
                return JSONResponse({"error": "moderation down"}, status_code=500)
            if "forbidden" in said:
                return JSONResponse({"flagged": True, "action": "direct_output", "preset_response": "Blocked by policy."})
            if "rewrite me" in said:
                return JSONResponse({"flagged": True, "action": "overridden", "inputs": params["inputs"],
                                     "query": "rewritten question"})
            return JSONResponse({"flagged": False})
        if body["point"] == "app.moderation.output":
            if "secret" in params["text"]:
                return JSONResponse({"flagged": True, "action": "direct_output", "preset_response": "[redacted by api]"})
            if "overwrite" in params["text"]:
                return JSONResponse({"flagged": True, "action": "overridden", "text": "clean text"})
            return JSONResponse({"flagged": False})
        location = params["inputs"].get("location", "")
        if location == "nowhere":
            return JSONResponse({"error": "unknown place"}, status_code=500)
        return JSONResponse({"result": f"Weather in {location}: rainy, 10°C"})

    async def not_pong(self, request: Request) -> Response:
        return JSONResponse({"result": "hello"})


# the extension server listens on loopback, which the SSRF guard lets through only when allowlisted
live = live_fixture("extensions", tools=ToolsSettings(egress_allowlist=["127.0.0.1/32"]))


@pytest.fixture(scope="module")
async def extension() -> AsyncIterator[tuple[ExtensionServer, str]]:
    ext = ExtensionServer()
    served = await serve(ext.app)
    yield ext, served.url
    await served.stop()


@pytest.fixture
async def env(live: LiveServer, extension: tuple[ExtensionServer, str], llm: ScriptedLLM
              ) -> AsyncIterator[tuple[httpx.AsyncClient, Apps, ExtensionServer, str]]:
    ext, base = extension
    llm.reset()
    ext.calls.clear()
    async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as c:
        yield c, Apps(c, await scripted_owner(c, llm), prefix="ext"), ext, base


async def create(c: httpx.AsyncClient, h: dict[str, str], base: str, **body: Any) -> httpx.Response:
    return await c.post(EXT, headers=h, json={"name": f"weather-{uuid.uuid4().hex[:6]}",
                                              "api_endpoint": f"{base}/ext", "api_key": KEY, **body})


def weather_config(ext_id: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "pre_prompt": "Answer using this: {{weather}}",
            "user_input_form": [{"text-input": {"variable": "location", "label": "Location", "required": True}}],
            "external_data_tools": [{"enabled": True, "variable": "weather", "type": "api", "label": "Weather",
                                     "config": {"api_based_extension_id": ext_id}}], **extra}


async def test_extension_crud_pings_and_hides_the_key(env: tuple[httpx.AsyncClient, Apps, ExtensionServer, str]
                                                      ) -> None:
    c, apps, ext, base = env
    h = apps.h
    r = await create(c, h, base, name="weather-crud")
    assert r.status_code == 201, r.text
    created = r.json()
    assert set(created) == {"id", "name", "api_endpoint", "api_key", "created_at"}
    assert created["api_key"] == f"{KEY[:3]}***{KEY[-2:]}"  # masked as provider credentials are
    assert ext.calls == [{"point": "ping"}]  # pinged with the key before it was stored
    listed = (await c.get(EXT, headers=h)).json()
    assert created["id"] in [e["id"] for e in listed] and all(e["api_key"] != KEY for e in listed)
    assert (await c.get(f"{EXT}/{created['id']}", headers=h)).json()["name"] == "weather-crud"

    # rename, sending the key back as shown or as Dify's placeholder: the stored key is kept (and pinged)
    for shown in (created["api_key"], "[__HIDDEN__]"):
        r = await c.post(f"{EXT}/{created['id']}", headers=h,
                         json={"name": "weather-renamed", "api_endpoint": f"{base}/ext", "api_key": shown})
        assert r.status_code == 200 and r.json()["name"] == "weather-renamed", r.text
    assert ext.calls[-1] == {"point": "ping"} and len(ext.calls) == 3

    # refused: a taken name, a wrong key, an endpoint that does not answer pong, a metadata address, bad fields
    envelope(await create(c, h, base, name="weather-renamed"), 400, "invalid_param")
    msg = envelope(await create(c, h, base, api_key="wrong-key"), 400, "invalid_param")
    assert "401" in msg
    msg = envelope(await create(c, h, base, api_endpoint=f"{base}/not-pong"), 400, "invalid_param")
    assert "pong" in msg
    envelope(await create(c, h, base, api_endpoint="http://169.254.169.254/latest"), 400, "invalid_param")
    for bad in ({"name": ""}, {"api_endpoint": "ftp://example.com/x"}, {"api_key": "abc"}):
        envelope(await create(c, h, base, **bad), 400, "invalid_param")
    assert len([e for e in (await c.get(EXT, headers=h)).json() if e["id"] == created["id"]]) == 1

    r = await c.delete(f"{EXT}/{created['id']}", headers=h)
    assert r.status_code == 204
    envelope(await c.get(f"{EXT}/{created['id']}", headers=h), 404, "not_found")
    envelope(await c.delete(f"{EXT}/{uuid.uuid4()}", headers=h), 404, "not_found")


async def test_external_data_fills_the_prompt(env: tuple[httpx.AsyncClient, Apps, ExtensionServer, str],
                                              llm: ScriptedLLM) -> None:
    c, apps, ext, base = env
    ext_id = (await create(c, apps.h, base)).json()["id"]
    # a config naming an extension the workspace does not have is refused
    r = await c.post("/console/api/apps", headers=apps.h, json={"name": f"ext-bad-{uuid.uuid4().hex[:6]}",
                                                                "mode": "chat"})
    r = await c.post(f"/console/api/apps/{r.json()['id']}/model-config", headers=apps.h,
                     json=weather_config(str(uuid.uuid4())))
    assert "does not exist" in envelope(r, 400, "invalid_param")

    app_id, k = await apps.create("chat", weather_config(ext_id))
    ext.calls.clear()
    r = await c.post("/v1/chat-messages", headers=k, json={"inputs": {"location": "London"},
                                                           "query": "Do I need an umbrella?", "user": "u1"})
    assert r.status_code == 200, r.text
    system = llm.requests[-1].messages[0]["content"]
    assert system == "Answer using this: Weather in London: rainy, 10°C"
    assert ext.calls == [{"point": "app.external_data_tool.query", "params": {
        "app_id": app_id, "tool_variable": "weather", "inputs": {"location": "London"},
        "query": "Do I need an umbrella?"}}]

    # completion apps too
    _, ck = await apps.create("completion", weather_config(ext_id))
    r = await c.post("/v1/completion-messages", headers=ck, json={"inputs": {"location": "Paris"}, "user": "u1"})
    assert r.status_code == 200 and "Weather in Paris" in llm.requests[-1].messages[0]["content"], r.text

    # a failing tool fails the request, naming it; the model is not called
    before = len(llm.requests)
    r = await c.post("/v1/chat-messages", headers=k, json={"inputs": {"location": "nowhere"}, "query": "hi",
                                                           "user": "u1"})
    msg = envelope(r, 400, "completion_request_error")
    assert "weather" in msg and "500" in msg and len(llm.requests) == before

    # an extension in use cannot be deleted
    envelope(await c.delete(f"{EXT}/{ext_id}", headers=apps.h), 400, "invalid_param")
    # a disabled tool is not called
    await apps.configure(app_id, weather_config(ext_id, external_data_tools=[
        {"enabled": False, "variable": "weather", "type": "api", "config": {"api_based_extension_id": ext_id}}]))
    ext.calls.clear()
    r = await c.post("/v1/chat-messages", headers=k, json={"inputs": {"location": "Oslo"}, "query": "x", "user": "u1"})
    # (the placeholder of a variable nobody set stays as written, as Dify's prompt templates do)
    assert r.status_code == 200 and ext.calls == [] and llm.requests[-1].messages[0]["content"] == \
        "Answer using this: {{weather}}"


def api_moderation(ext_id: str) -> dict[str, Any]:
    return {"model": MODEL, "pre_prompt": "Be brief.", "sensitive_word_avoidance": {
        "enabled": True, "type": "api", "config": {"api_based_extension_id": ext_id,
                                                   "inputs_config": {"enabled": True},
                                                   "outputs_config": {"enabled": True}}}}


async def test_api_moderation(env: tuple[httpx.AsyncClient, Apps, ExtensionServer, str], llm: ScriptedLLM) -> None:
    """The ``api`` moderation type: the extension judges the inputs (direct_output answers its preset without the
    model; overridden rewrites what the model is asked) and the answer (its preset or its rewrite replaces it)."""
    c, apps, ext, base = env
    ext_id = (await create(c, apps.h, base)).json()["id"]
    _, k = await apps.create("chat", api_moderation(ext_id))

    async def ask(query: str) -> httpx.Response:
        return await c.post("/v1/chat-messages", headers=k, json={"inputs": {}, "query": query, "user": "u1"})

    before = len(llm.requests)
    r = await ask("tell me forbidden things")
    assert r.status_code == 200 and r.json()["answer"] == "Blocked by policy.", r.text
    assert len(llm.requests) == before  # the model was not asked
    assert ext.calls[-1] == {"point": "app.moderation.input", "params": {
        "app_id": ext.calls[-1]["params"]["app_id"], "inputs": {}, "query": "tell me forbidden things"}}

    llm.push(match="rewritten question", reply="A fine answer.")
    r = await ask("rewrite me please")
    assert r.status_code == 200 and r.json()["answer"] == "A fine answer.", r.text
    assert llm.requests[-1].last_user == "rewritten question"
    got = (await c.get("/v1/messages", headers=k, params={"user": "u1",
                                                          "conversation_id": r.json()["conversation_id"]})).json()
    assert got["data"][0]["query"] == "rewritten question"  # what went on is what is kept

    llm.push(match="what is it", reply="The secret is 42.")
    r = await ask("what is it")
    assert r.status_code == 200 and r.json()["answer"] == "[redacted by api]", r.text
    assert ext.calls[-1] == {"point": "app.moderation.output", "params": {
        "app_id": ext.calls[-1]["params"]["app_id"], "text": "The secret is 42."}}
    llm.push(match="and now", reply="Please overwrite this.")
    async with c.stream("POST", "/v1/chat-messages", headers=k, json={
            "inputs": {}, "query": "and now", "user": "u1", "response_mode": "streaming"}) as s:
        events = [orjson.loads(line[6:]) async for line in s.aiter_lines() if line.startswith("data: ")]
    replace = next(e for e in events if e["event"] == "message_replace")
    assert replace["answer"] == "clean text" and events[-1]["event"] == "message_end"

    # the extension failing on the inputs fails the request; on the answer, the answer goes out (as Dify)
    envelope(await ask("crash it"), 400, "completion_request_error")
    llm.push(match="plain", reply="Nothing to see.")
    r = await ask("plain")
    assert r.json()["answer"] == "Nothing to see."

    # saving: an api type needs an existing extension; one in use cannot be deleted
    app_id = (await c.post("/console/api/apps", headers=apps.h, json={"name": f"ext-m-{uuid.uuid4().hex[:6]}",
                                                                      "mode": "chat"})).json()["id"]
    bad = api_moderation("")
    r = await c.post(f"/console/api/apps/{app_id}/model-config", headers=apps.h, json=bad)
    assert "api_based_extension_id" in envelope(r, 400, "invalid_param")
    r = await c.post(f"/console/api/apps/{app_id}/model-config", headers=apps.h, json=api_moderation(str(uuid.uuid4())))
    assert "does not exist" in envelope(r, 400, "invalid_param")
    envelope(await c.delete(f"{EXT}/{ext_id}", headers=apps.h), 400, "invalid_param")


async def test_graph_app_moderation_keeps_its_extension(env: tuple[httpx.AsyncClient, Apps, ExtensionServer, str]
                                                        ) -> None:
    """A workflow's ``api`` moderation feature names an extension of the workspace (checked on draft save and on
    publish), which cannot be deleted while the draft or the version in service uses it."""
    c, apps, _, base = env
    ext_id = (await create(c, apps.h, base)).json()["id"]
    app_id = await new_app(c, apps.h, "workflow", prefix="ext-wf")
    draft = f"/console/api/apps/{app_id}/workflows/draft"
    graph = g.graph([g.start(g.text_var("q")), g.end(out=[g.START, "q"])], [g.edge(g.START, g.END)])

    def features(ext: str) -> dict[str, Any]:
        return {"sensitive_word_avoidance": api_moderation(ext)["sensitive_word_avoidance"]}

    r = await c.post(draft, headers=apps.h, json={"graph": graph, "features": features(str(uuid.uuid4()))})
    assert "does not exist" in envelope(r, 400, "invalid_param")
    r = await c.post(draft, headers=apps.h, json={"graph": graph, "features": features(ext_id)})
    assert r.status_code == 200, r.text
    envelope(await c.delete(f"{EXT}/{ext_id}", headers=apps.h), 400, "invalid_param")  # the draft uses it
    r = await c.post(f"/console/api/apps/{app_id}/workflows/publish", headers=apps.h, json={})
    assert r.status_code == 200, r.text
    r = await c.post(draft, headers=apps.h, json={"graph": graph, "features": {}})
    assert r.status_code == 200, r.text
    envelope(await c.delete(f"{EXT}/{ext_id}", headers=apps.h), 400, "invalid_param")  # the published one does
    r = await c.post(f"/console/api/apps/{app_id}/workflows/publish", headers=apps.h, json={})
    assert r.status_code == 200, r.text
    assert (await c.delete(f"{EXT}/{ext_id}", headers=apps.h)).status_code == 204

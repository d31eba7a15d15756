"""Workflow apps end to end through the gateway (`all` stack on SQLite and Postgres, real NATS, the real
litellm path against the scripted model, a real local HTTP server): drafts, validation, publish and
versions in the console; runs of the example graphs in tests/workflow_graphs.py, blocking and streaming,
with their events, persistence, error strategies, stop and logs."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import yaml
from sqlmodel import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.models import UploadFile, WorkflowNodeExecution, WorkflowRun
from shared.settings import ToolsSettings
from tests import workflow_graphs as g
from tests.conftest import LiveServer, database_url, db_params, make_settings, start_live
from tests.llm_server import ScriptedLLM
from tests.support import Served, console_admin, serve


class Upstream:
    """The HTTP service the http-request nodes call."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.fails = 0
        self.in_flight = 0
        self.peak = 0
        self.both = asyncio.Event()
        self.release = asyncio.Event()
        self.app = Starlette(routes=[Route("/weather", self.weather, methods=["POST"]),
                                     Route("/side", self.side, methods=["GET"]),
                                     Route("/fail", self.fail, methods=["GET"]),
                                     Route("/hang", self.hang, methods=["GET"])])
        self.served: Served | None = None

    async def weather(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.seen.append({"body": body, "trace": request.headers.get("x-trace"), "query": dict(request.query_params)})
        return JSONResponse({"city": body["city"], "temp": 21})

    async def side(self, request: Request) -> Response:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.in_flight >= 2:
            self.both.set()
        try:
            await asyncio.wait_for(self.both.wait(), 5)  # answers once both branches are in flight
        except TimeoutError:
            pass
        finally:
            self.in_flight -= 1
        return Response(request.query_params["side"])

    async def fail(self, request: Request) -> Response:
        self.fails += 1
        return JSONResponse({"error": "down"}, status_code=500)

    async def hang(self, request: Request) -> Response:
        try:
            await asyncio.wait_for(self.release.wait(), 10)
        except TimeoutError:
            pass
        return Response("late")


@pytest.fixture(scope="module", params=db_params())
async def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, nats_url: str,
                llm: ScriptedLLM) -> AsyncIterator[dict[str, Any]]:
    up = Upstream()
    up.served = await serve(up.app)
    tmp = tmp_path_factory.mktemp("workflows")
    settings = make_settings(tmp, database_url(request.param, tmp), nats_url,
                             tools=ToolsSettings(egress_allowlist=["127.0.0.1/32"]))
    srv: LiveServer = await start_live(settings)
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=30) as c:
        admin = await console_admin(c)
        r = await c.post("/console/api/workspaces/current/model-providers/openai-compatible/credentials",
                         headers=admin, json={"credentials": {"api_key": "sk-test", "api_base": llm.base_url}})
        assert r.status_code == 200, r.text
        yield {"c": c, "admin": admin, "srv": srv, "up": up, "llm": llm, "base": up.served.url}
    await srv.stop()
    await up.served.stop()


@pytest.fixture
def w(world: dict[str, Any]) -> dict[str, Any]:
    world["llm"].reset()
    up = world["up"]
    up.seen.clear()
    up.fails = 0
    up.peak = 0
    up.both.clear()
    up.release.clear()
    return world


async def new_app(w: dict[str, Any], mode: str = "workflow") -> str:
    r = await w["c"].post("/console/api/apps", headers=w["admin"],
                          json={"name": f"wf-{uuid.uuid4().hex[:8]}", "mode": mode})
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def publish(w: dict[str, Any], graph: dict[str, Any], app_id: str | None = None) -> tuple[str, str]:
    """(app id, app key) of a workflow app whose published version is ``graph``."""
    c, admin = w["c"], w["admin"]
    app_id = app_id or await new_app(w)
    r = await c.post(f"/console/api/apps/{app_id}/workflows/draft", headers=admin, json={"graph": graph, "features": {}})
    assert r.status_code == 200, r.text
    r = await c.post(f"/console/api/apps/{app_id}/workflows/publish", headers=admin, json={})
    assert r.status_code == 200, r.text
    key = (await c.post(f"/console/api/apps/{app_id}/api-keys", headers=admin)).json()["token"]
    return app_id, key


def h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def run(w: dict[str, Any], key: str, inputs: dict[str, Any], path: str = "/v1/workflows/run") -> dict[str, Any]:
    r = await w["c"].post(path, headers=h(key), json={"inputs": inputs, "user": "u1", "response_mode": "blocking"})
    assert r.status_code == 200, r.text
    return r.json()


async def stream(w: dict[str, Any], key: str, inputs: dict[str, Any]) -> list[dict[str, Any]]:
    async with w["c"].stream("POST", "/v1/workflows/run", headers=h(key), json={
            "inputs": inputs, "user": "u1", "response_mode": "streaming"}) as s:
        assert s.status_code == 200, await s.aread()
        return [orjson.loads(line[6:]) async for line in s.aiter_lines() if line.startswith("data: ")]


def started(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["title"] for e in events if e["event"] == "node_started"]


# ---- console ----------------------------------------------------------------------------------------


async def test_draft_validation_publish_and_versions(w: dict[str, Any]) -> None:
    c, admin = w["c"], w["admin"]
    app_id = await new_app(w)
    base = f"/console/api/apps/{app_id}/workflows"
    r = await c.get(base + "/draft", headers=admin)
    assert r.status_code == 404 and r.json()["code"] == "draft_workflow_not_exist"

    bad = g.linear_llm()
    bad["nodes"][2]["data"]["outputs"][0]["value_selector"] = [g.LLM, "txt"]
    r = await c.post(base + "/draft", headers=admin, json={"graph": bad})
    assert r.status_code == 400 and r.json()["code"] == "invalid_param"
    assert "txt" in r.json()["message"] and "End" in r.json()["message"] and r.json()["node_id"] == g.END

    r = await c.post(base + "/draft", headers=admin, json={"graph": g.linear_llm()})
    first_hash = r.json()["hash"]
    r = await c.post(base + "/draft", headers=admin, json={"graph": g.linear_llm(), "hash": "stale"})
    assert r.status_code == 409 and r.json()["code"] == "draft_workflow_not_sync"
    draft = (await c.get(base + "/draft", headers=admin)).json()
    assert draft["hash"] == first_hash and draft["version"] == "draft" and len(draft["graph"]["nodes"]) == 3

    key = (await c.post(f"/console/api/apps/{app_id}/api-keys", headers=admin)).json()["token"]
    r = await c.post("/v1/workflows/run", headers=h(key), json={"inputs": {"topic": "x"}, "user": "u1"})
    assert r.status_code == 400 and r.json()["message"] == "Workflow not published"

    v1 = (await c.post(base + "/publish", headers=admin, json={"marked_name": "first"})).json()
    # change the draft: runs keep using the published version until the next publish
    other = g.tool_graph()
    assert (await c.post(base + "/draft", headers=admin, json={"graph": other, "hash": first_hash})).status_code == 200
    w["llm"].push(reply="published v1")
    assert (await run(w, key, {"topic": "tea"}))["data"]["outputs"] == {"text": "published v1"}
    v2 = (await c.post(base + "/publish", headers=admin, json={})).json()
    assert v2["version"] > v1["version"]
    assert (await run(w, key, {"expr": "6*7"}))["data"]["outputs"] == {"value": "42"}
    w["llm"].push(reply="old version")
    assert (await run(w, key, {"topic": "tea"}, f"/v1/workflows/{v1['id']}/run"))["data"]["outputs"] == {
        "text": "old version"}
    listed = (await c.get(base, headers=admin)).json()
    assert [i["id"] for i in listed["items"]] == [v2["id"], v1["id"]] and listed["items"][0]["is_current"]
    r = await c.post(f"/v1/workflows/{draft['id']}/run", headers=h(key), json={"inputs": {}, "user": "u1"})
    assert r.status_code == 400 and r.json()["code"] == "draft_workflow_error"
    r = await c.post("/v1/workflows/not-a-uuid/run", headers=h(key), json={"inputs": {}, "user": "u1"})
    assert r.status_code == 400 and r.json()["code"] == "workflow_id_format_error"


async def test_inputs_and_mode_errors(w: dict[str, Any]) -> None:
    _, key = await publish(w, g.linear_llm())
    r = await w["c"].post("/v1/workflows/run", headers=h(key), json={"inputs": {}, "user": "u1"})
    assert r.status_code == 400 and r.json()["message"] == "topic is required in input form"
    r = await w["c"].post("/v1/workflows/run", headers=h(key), json={"user": "u1"})
    assert r.status_code == 400 and r.json()["message"] == "inputs is required"
    chat_app = await new_app(w, "chat")
    chat_key = (await w["c"].post(f"/console/api/apps/{chat_app}/api-keys", headers=w["admin"])).json()["token"]
    r = await w["c"].post("/v1/workflows/run", headers=h(chat_key), json={"inputs": {}, "user": "u1"})
    assert r.status_code == 400 and r.json()["code"] == "not_workflow_app"


# ---- runs -----------------------------------------------------------------------------------------------


async def test_linear_llm_streams_text_chunks_and_persists(w: dict[str, Any]) -> None:
    w["llm"].push(match="Write about tea", tokens=["Tea ", "is ", "calm."])
    _, key = await publish(w, g.linear_llm())
    events = await stream(w, key, {"topic": "tea"})
    kinds = [e["event"] for e in events]
    assert kinds[0] == "workflow_started" and kinds[-1] == "workflow_finished", kinds
    assert started(events) == ["Start", "Writer", "End"]
    chunks = [e for e in events if e["event"] == "text_chunk"]
    assert "".join(e["data"]["text"] for e in chunks) == "Tea is calm."
    assert chunks[0]["data"]["from_variable_selector"] == [g.LLM, "text"]
    # the chunks left while the model was writing: before the LLM node finished
    llm_done = next(i for i, e in enumerate(events) if e["event"] == "node_finished" and e["data"]["node_id"] == g.LLM)
    assert kinds.index("text_chunk") < llm_done
    finished = events[-1]["data"]
    assert finished["status"] == "succeeded" and finished["outputs"] == {"text": "Tea is calm."}
    assert finished["total_steps"] == 3 and finished["total_tokens"] > 0
    llm_finished = events[llm_done]["data"]
    assert llm_finished["execution_metadata"]["total_tokens"] > 0 and llm_finished["outputs"]["text"] == "Tea is calm."
    assert all(e["workflow_run_id"] == finished["id"] and e["task_id"] == events[0]["task_id"] for e in events)
    assert w["llm"].requests[-1].messages[-1]["content"] == "Write about tea."

    r = await w["c"].get(f"/v1/workflows/run/{finished['id']}", headers=h(key))
    assert r.json()["status"] == "succeeded" and r.json()["outputs"] == {"text": "Tea is calm."}
    assert r.json()["inputs"] == {"topic": "tea"} and r.json()["total_steps"] == 3
    async with w["srv"].ctx.db.session() as s:
        rows = (await s.exec(select(WorkflowNodeExecution).where(
            WorkflowNodeExecution.workflow_run_id == finished["id"]).order_by(WorkflowNodeExecution.index))).all()
    assert [(x.node_type, x.status) for x in rows] == [("start", "succeeded"), ("llm", "succeeded"),
                                                       ("end", "succeeded")]


@pytest.mark.parametrize("fmt", ["tagged", "separated"])
async def test_llm_node_reasoning_format(w: dict[str, Any], fmt: str) -> None:
    """A reasoning model's thinking: kept in `text` between <think> tags (Dify's default), or, separated, left out
    of `text` and of the streamed chunks and given as `reasoning_content`. Inline tags split across deltas too."""
    _, key = await publish(w, g.linear_llm(reasoning=True, reasoning_format=fmt))
    w["llm"].push(match="Write about tea", reasoning=["Tea is ", "a drink."], tokens=["Tea ", "is ", "calm."])
    events = await stream(w, key, {"topic": "tea"})
    streamed = "".join(e["data"]["text"] for e in events if e["event"] == "text_chunk")
    outputs = events[-1]["data"]["outputs"]
    if fmt == "tagged":
        assert streamed == outputs["text"] == "<think>\nTea is a drink.\n</think>Tea is calm."
        assert outputs["reasoning"] == ""
    else:
        assert streamed == outputs["text"] == "Tea is calm."
        assert outputs["reasoning"] == "Tea is a drink."
    # a model that writes its thinking inline, the tags cut across deltas
    w["llm"].push(match="Write about tea", tokens=["<thi", "nk>\nhm", "m</th", "ink>\n\nGreen ", "tea."])
    outputs = (await run(w, key, {"topic": "tea"}))["data"]["outputs"]
    if fmt == "tagged":
        assert outputs == {"text": "<think>\nhmm</think>\n\nGreen tea.", "reasoning": ""}
    else:
        assert outputs == {"text": "Green tea.", "reasoning": "hmm"}


async def test_llm_node_reasoning_format_is_checked(w: dict[str, Any]) -> None:
    app_id = await new_app(w)
    r = await w["c"].post(f"/console/api/apps/{app_id}/workflows/draft", headers=w["admin"],
                          json={"graph": g.linear_llm(reasoning_format="both")})
    assert r.status_code == 400 and r.json()["code"] == "invalid_param"
    assert "reasoning_format" in r.json()["message"] and r.json()["node_id"] == g.LLM


async def test_branching_takes_one_path(w: dict[str, Any]) -> None:
    _, key = await publish(w, g.branching())
    assert (await run(w, key, {"n": 20}))["data"]["outputs"] == {"result": "big: 20"}
    assert (await run(w, key, {"n": -5}))["data"]["outputs"] == {"result": "not big: -5"}
    events = await stream(w, key, {"n": 3})
    assert events[-1]["data"]["outputs"] == {"result": "not big: 3"}
    assert started(events) == ["Start", "Size?", "Not big", "Pick", "End"]  # "Big" was skipped
    if_done = next(e for e in events if e["event"] == "node_finished" and e["data"]["node_id"] == g.IF)
    assert if_done["data"]["outputs"] == {"result": False, "selected_case_id": "false"}


@pytest.mark.parametrize("parallel", [False, True])
async def test_iteration(w: dict[str, Any], parallel: bool) -> None:
    _, key = await publish(w, g.iteration(parallel))
    events = await stream(w, key, {"csv": "a, b,c"})
    assert events[-1]["data"]["outputs"] == {"items": ["A#0", "B#1", "C#2"]}, events[-1]
    kinds = [e["event"] for e in events]
    assert kinds.count("iteration_next") == 3 and kinds.count("iteration_started") == 1
    done = next(e for e in events if e["event"] == "iteration_completed")["data"]
    assert done["outputs"] == {"output": ["A#0", "B#1", "C#2"]} and done["steps"] == 3
    inner = [e["data"] for e in events if e["event"] == "node_started" and e["data"]["node_id"] == g.T]
    assert len(inner) == 3 and all(d["iteration_id"] == g.ITER for d in inner)


async def test_loop(w: dict[str, Any]) -> None:
    """Dify's loop node: rounds until the break conditions hold, loop variables written by an assigner inside,
    loop_started / loop_next / loop_completed around the children's events (which carry loop_id)."""
    _, key = await publish(w, g.loop_graph(step=2, stop_at=6))
    events = await stream(w, key, {})
    assert events[-1]["data"]["status"] == "succeeded", events[-1]
    assert events[-1]["data"]["outputs"] == {"total": 6, "seen": ["r", "r", "r"], "rounds": 3}
    kinds = [e["event"] for e in events]
    assert kinds.count("loop_started") == 1 and kinds.count("loop_completed") == 1
    assert [e["data"]["index"] for e in events if e["event"] == "loop_next"] == [1, 2]
    done = next(e for e in events if e["event"] == "loop_completed")["data"]
    assert done["outputs"] == {"total": 6, "seen": ["r", "r", "r"], "loop_round": 3} and done["status"] == "succeeded"
    inner = [e["data"] for e in events if e["event"] == "node_started" and e["data"]["node_id"] == g.L_ASSIGN]
    assert len(inner) == 3 and all(d["loop_id"] == g.LOOP and d["iteration_id"] is None for d in inner)

    # a loop-end node reached in a round makes it the last
    _, key = await publish(w, g.loop_graph(step=1, stop_at=None, end_at=3))
    assert (await run(w, key, {}))["data"]["outputs"] == {"total": 3, "seen": ["r", "r", "r"], "rounds": 3}
    # no break: loop_count rounds
    _, key = await publish(w, g.loop_graph(loop_count=4, step=1, stop_at=None))
    assert (await run(w, key, {}))["data"]["outputs"] == {"total": 4, "seen": ["r"] * 4, "rounds": 4}
    # break conditions that already hold: no round
    _, key = await publish(w, g.loop_graph(start_total=10))
    assert (await run(w, key, {}))["data"]["outputs"] == {"total": 10, "seen": [], "rounds": 0}
    # a starting value that is not of its type, a loop_count over the limit: the loop node fails the run
    for graph, message in ((g.loop_graph(start_total="ten"), "total"), (g.loop_graph(loop_count=101), "loop_count")):
        _, key = await publish(w, graph)
        out = await run(w, key, {})
        assert out["data"]["status"] == "failed" and message in out["data"]["error"], out


async def test_app_detail_names_the_published_workflow(w: dict[str, Any]) -> None:
    """Dify's app detail carries the version in service as ``workflow`` (null until one is published)."""
    c, admin = w["c"], w["admin"]
    app_id = await new_app(w)
    assert (await c.get(f"/console/api/apps/{app_id}", headers=admin)).json()["workflow"] is None
    r = await c.post(f"/console/api/apps/{app_id}/workflows/draft", headers=admin,
                     json={"graph": g.linear_llm(), "features": {}})
    assert r.status_code == 200, r.text
    published = (await c.post(f"/console/api/apps/{app_id}/workflows/publish", headers=admin, json={})).json()
    me = (await c.get("/console/api/account/profile", headers=admin)).json()["id"]
    detail = (await c.get(f"/console/api/apps/{app_id}", headers=admin)).json()
    assert detail["workflow"] == {"id": published["id"], "created_by": me, "created_at": published["created_at"],
                                  "updated_by": me, "updated_at": published["created_at"]}
    assert detail["created_by"] == me and detail["use_icon_as_answer_icon"] is False
    listed = (await c.get("/console/api/apps", headers=admin, params={"limit": 100})).json()["data"]
    assert next(a for a in listed if a["id"] == app_id)["workflow"]["id"] == published["id"]


async def test_answers_inside_a_loop_are_part_of_the_chat_answer(w: dict[str, Any]) -> None:
    c, admin = w["c"], w["admin"]
    app_id = await new_app(w, "advanced-chat")
    r = await c.post(f"/console/api/apps/{app_id}/workflows/draft", headers=admin,
                     json={"graph": g.chat_loop_graph(3), "features": {}})
    assert r.status_code == 200, r.text
    assert (await c.post(f"/console/api/apps/{app_id}/workflows/publish", headers=admin, json={})).status_code == 200
    key = (await c.post(f"/console/api/apps/{app_id}/api-keys", headers=admin)).json()["token"]
    body = {"inputs": {}, "query": "count", "user": "u1", "response_mode": "streaming"}
    async with c.stream("POST", "/v1/chat-messages", headers=h(key), json=body) as s:
        events = [json.loads(line[6:]) async for line in s.aiter_lines() if line.startswith("data: ")]
    said = [e["answer"] for e in events if e["event"] == "message"]
    assert "".join(said) == "Round 1. Round 2. Round 3. 3 rounds.", said
    assert [e["event"] for e in events][-2:] == ["message_end", "workflow_finished"]
    r = await c.get("/v1/messages", headers=h(key), params={"conversation_id": events[0]["conversation_id"],
                                                             "user": "u1"})
    assert r.json()["data"][0]["answer"] == "Round 1. Round 2. Round 3. 3 rounds."


async def test_code_template_http(w: dict[str, Any]) -> None:
    _, key = await publish(w, g.code_template_http(w["base"] + "/weather"))
    out = await run(w, key, {"city": "paris"})
    assert out["data"]["status"] == "succeeded", out
    assert out["data"]["outputs"] == {"report": '200: {"city":"Paris","temp":21}'}
    assert w["up"].seen == [{"body": {"city": "Paris"}, "trace": "paris", "query": {"units": "metric"}}]


async def test_tool_node(w: dict[str, Any]) -> None:
    _, key = await publish(w, g.tool_graph())
    assert (await run(w, key, {"expr": "2 ** 10"}))["data"]["outputs"] == {"value": "1024"}
    out = await run(w, key, {"expr": "2 ^ 10"})
    assert out["data"]["status"] == "failed" and "**" in out["data"]["error"]
    # a Dify 1.x export names a built-in tool by its plugin's provider id
    _, key = await publish(w, g.tool_graph("langgenius/calculator/calculator"))
    assert (await run(w, key, {"expr": "6 * 7"}))["data"]["outputs"] == {"value": "42"}
    _, key = await publish(w, g.tool_graph("someone/calculator/calculator"))  # not langgenius's: no such tool
    out = await run(w, key, {"expr": "6 * 7"})
    assert out["data"]["status"] == "failed" and "someone/calculator/calculator" in out["data"]["error"]


async def test_tool_node_files_are_the_runs_files(w: dict[str, Any]) -> None:
    """A tool that makes an image (the QR code built-in) gives the tool node a File in ``files``: an upload of
    the run's user that later nodes read and node_finished / workflow_finished list."""
    _, key = await publish(w, g.qrcode_graph())
    events = await stream(w, key, {"url": "https://plexus.example/"})
    tool_done = next(e for e in events if e["event"] == "node_finished" and e["data"]["node_id"] == g.TOOL)
    (f,) = tool_done["data"]["outputs"]["files"]
    assert (f["type"], f["transfer_method"], f["mime_type"], f["filename"]) == (
        "image", "local_file", "image/png", "qrcode.png")
    assert tool_done["data"]["files"] == [f]
    finished = events[-1]
    assert finished["event"] == "workflow_finished" and finished["data"]["outputs"]["image"] == [f]
    assert "QR code image" in finished["data"]["outputs"]["note"]
    async with w["srv"].ctx.db.session() as s:
        row = await s.get(UploadFile, f["related_id"])
    assert row is not None and row.size == f["size"] and row.mime_type == "image/png"
    image = await w["c"].get("/files/tools/" + f["url"].split("/files/tools/", 1)[1])  # signed: no key
    assert image.status_code == 200 and len(image.content) == f["size"], image.text
    # the stored run keeps the link it had; once that has expired, the run's detail signs its files afresh
    run_id = finished["data"]["id"]
    expired = f["url"].split("?")[0] + "?timestamp=1&nonce=00&sign=old"
    async with w["srv"].ctx.db.session() as s:
        stored = await s.get(WorkflowRun, run_id)
        stored.outputs = {**stored.outputs, "image": [{**stored.outputs["image"][0], "url": expired}]}
        await s.commit()
    assert (await w["c"].get("/files/tools/" + expired.split("/files/tools/", 1)[1])).status_code == 403
    detail = (await w["c"].get(f"/v1/workflows/run/{run_id}", headers=h(key))).json()
    (again,) = detail["outputs"]["image"]
    assert again["url"] != expired and {k: v for k, v in again.items() if k != "url"} == {
        k: v for k, v in f.items() if k != "url"}
    image = await w["c"].get("/files/tools/" + again["url"].split("/files/tools/", 1)[1])
    assert image.status_code == 200 and len(image.content) == f["size"]
    assert detail["outputs"]["note"] == finished["data"]["outputs"]["note"]  # other outputs as stored


async def test_an_answer_shows_files_as_message_files(w: dict[str, Any]) -> None:
    """advanced-chat: a File variable in an answer is sent as a message_file event (not as JSON text), kept on
    the message as the assistant's and served by its preview URL."""
    _, key = await publish(w, g.qrcode_chatflow(), await new_app(w, "advanced-chat"))
    body = {"inputs": {}, "query": "https://plexus.example/wifi", "user": "u1", "response_mode": "streaming"}
    async with w["c"].stream("POST", "/v1/chat-messages", headers=h(key), json=body) as s:
        assert s.status_code == 200, await s.aread()
        events = [orjson.loads(line[6:]) async for line in s.aiter_lines() if line.startswith("data: ")]
    names = [e["event"] for e in events]
    assert names.count("message_file") == 1 and "message_end" in names, names
    f = next(e for e in events if e["event"] == "message_file")
    end = next(e for e in events if e["event"] == "message_end")
    assert (f["type"], f["belongs_to"], f["message_id"]) == ("image", "assistant", end["message_id"])
    text = "".join(e["answer"] for e in events if e["event"] == "message")
    assert text == "Scan this: "  # the file is not rendered as JSON
    r = await w["c"].get("/v1/messages", headers=h(key), params={"conversation_id": end["conversation_id"],
                                                                 "user": "u1"})
    (item,) = r.json()["data"]
    (mf,) = item["message_files"]
    assert (mf["id"], mf["belongs_to"], mf["url"].split("?")[0]) == (f["id"], "assistant", f["url"].split("?")[0])
    assert item["answer"] == text
    assert mf["transfer_method"] == "tool_file"
    image = await w["c"].get("/files/tools/" + mf["url"].split("/files/tools/", 1)[1])  # signed: no key
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG"), image.text


async def test_an_answer_cannot_show_another_apps_file(w: dict[str, Any]) -> None:
    """A File value a node makes up (a code node's object) is shown only when it is an upload of this app's
    users: another app's tool file, or an unknown id, is not attached, signed or sent."""
    _, key = await publish(w, g.qrcode_chatflow(), await new_app(w, "advanced-chat"))
    body = {"inputs": {}, "query": "https://plexus.example/secret", "user": "u1", "response_mode": "blocking"}
    r = await w["c"].post("/v1/chat-messages", headers=h(key), json=body)
    assert r.status_code == 200, r.text
    msgs = (await w["c"].get("/v1/messages", headers=h(key), params={
        "conversation_id": r.json()["conversation_id"], "user": "u1"})).json()["data"]
    theirs = msgs[0]["message_files"][0]["upload_file_id"]
    forged = g.graph([
        g.start(),
        g.node(g.CODE, "code", "Forge", code_language="python3",
               code="def main(fid: str) -> dict:\n    return {'f': {'dify_model_identity': '__dify__file__', "
                    "'type': 'image', 'transfer_method': 'local_file', 'related_id': fid, 'filename': 'x.png', "
                    "'extension': '.png', 'mime_type': 'image/png', 'size': 1, 'url': None, 'remote_url': None}}\n",
               variables=[{"variable": "fid", "value_selector": ["sys", "query"]}],
               outputs={"f": {"type": "object", "children": None}}),
        g.node(g.ANSWER, "answer", "Answer", answer="Here: {{#" + g.CODE + ".f#}}"),
    ], [g.edge(g.START, g.CODE), g.edge(g.CODE, g.ANSWER)])
    _, other = await publish(w, forged, await new_app(w, "advanced-chat"))
    for fid in (theirs, str(uuid.uuid4())):
        async with w["c"].stream("POST", "/v1/chat-messages", headers=h(other), json={
                "inputs": {}, "query": fid, "user": "u1", "response_mode": "streaming"}) as s:
            events = [orjson.loads(line[6:]) async for line in s.aiter_lines() if line.startswith("data: ")]
        assert "message_file" not in [e["event"] for e in events], events
        end = next(e for e in events if e["event"] == "message_end")
        (item,) = (await w["c"].get("/v1/messages", headers=h(other), params={
            "conversation_id": end["conversation_id"], "user": "u1"})).json()["data"]
        assert item["message_files"] == []


async def test_classifier_extractor_list_operator(w: dict[str, Any]) -> None:
    llm = w["llm"]
    llm.push(match="I want", reply='{"category_id": "order", "category_name": "Order question"}')
    llm.push(match="I want", reply='Sure: {"skus": ["SKU-1", "X-2", "SKU-3", "SKU-9"], "qty": "3"}')
    _, key = await publish(w, g.classify_extract_list())
    out = await run(w, key, {"text": "I want SKU-1, X-2, SKU-3 and SKU-9, three each"})
    assert out["data"]["outputs"] == {"skus": ["SKU-9", "SKU-3"], "qty": 3, "kind": "Order question"}, out
    llm.push(match="weather", reply='{"category_id": "other"}')
    out = await run(w, key, {"text": "How is the weather?"})
    assert out["data"]["outputs"] == {"kind": "Anything else"}


async def test_independent_branches_run_concurrently(w: dict[str, Any]) -> None:
    _, key = await publish(w, g.parallel_branches(w["base"] + "/side"))
    out = await run(w, key, {})
    assert out["data"]["outputs"] == {"left": "left", "right": "right"}
    assert w["up"].peak == 2  # both calls were in flight at once


async def test_error_strategies_and_retries(w: dict[str, Any]) -> None:
    url = w["base"] + "/fail"
    up = w["up"]
    _, key = await publish(w, g.failing_http(url, None))
    out = await run(w, key, {})  # as Dify: without a strategy an error status is just the node's output
    assert out["data"]["status"] == "succeeded" and out["data"]["outputs"] == {"body": '{"error":"down"}'}

    _, key = await publish(w, g.failing_http(url, "default-value"))
    out = await run(w, key, {})
    assert out["data"]["status"] == "partial-succeeded" and out["data"]["outputs"] == {"body": "fallback"}

    _, key = await publish(w, g.failing_http(url, "fail-branch"))
    out = await run(w, key, {})
    assert out["data"]["status"] == "partial-succeeded" and out["data"]["outputs"]["body"].startswith("failed: ")

    up.fails = 0
    _, key = await publish(w, g.failing_http(url, "default-value", retries=2))
    events = await stream(w, key, {})
    assert [e["event"] for e in events].count("node_retry") == 2 and up.fails == 3
    assert [e["data"]["retry_index"] for e in events if e["event"] == "node_retry"] == [1, 2]
    assert events[-1]["data"]["outputs"] == {"body": "fallback"}


async def test_http_node_is_ssrf_guarded(w: dict[str, Any]) -> None:
    _, key = await publish(w, g.failing_http("http://169.254.169.254/latest/meta-data/", None))
    out = await run(w, key, {})
    assert out["data"]["status"] == "failed" and "ssrf_blocked" in out["data"]["error"]
    events = await stream(w, key, {})
    assert [e["event"] for e in events][-2:] == ["workflow_finished", "error"]
    assert events[-2]["data"]["status"] == "failed" and events[-1]["message"] == events[-2]["data"]["error"]


async def test_code_node_sandbox_refuses_network(w: dict[str, Any]) -> None:
    graph = g.iteration()
    graph["nodes"][1]["data"]["code"] = (
        "import socket\ndef main(csv: str) -> dict:\n"
        "    socket.create_connection(('127.0.0.1', 9))\n    return {'parts': []}\n")
    _, key = await publish(w, graph)
    out = await run(w, key, {"csv": "a"})
    assert out["data"]["status"] == "failed" and "forbidden" in out["data"]["error"]


async def test_stop_and_logs(w: dict[str, Any]) -> None:
    c, up = w["c"], w["up"]
    _, key = await publish(w, g.failing_http(w["base"] + "/hang", None))
    events: list[dict[str, Any]] = []
    t0 = time.monotonic()
    async with c.stream("POST", "/v1/workflows/run", headers=h(key),
                        json={"inputs": {}, "user": "u1", "response_mode": "streaming"}) as s:
        async for line in s.aiter_lines():
            if not line.startswith("data: "):
                continue
            events.append(orjson.loads(line[6:]))
            if events[-1]["event"] == "node_started" and events[-1]["data"]["node_type"] == "http-request":
                r = await c.post(f"/v1/workflows/tasks/{events[-1]['task_id']}/stop", headers=h(key),
                                 json={"user": "u1"})
                assert r.json() == {"result": "success"}
    up.release.set()
    assert events[-1]["event"] == "workflow_finished" and events[-1]["data"]["status"] == "stopped"
    assert time.monotonic() - t0 < 5
    run_id = events[-1]["data"]["id"]
    assert (await c.get(f"/v1/workflows/run/{run_id}", headers=h(key))).json()["status"] == "stopped"

    w["llm"].push(reply="logged")
    _, key2 = await publish(w, g.linear_llm())
    await run(w, key2, {"topic": "needle-in-inputs"})
    r = await c.post("/v1/workflows/run", headers=h(key2), json={"inputs": {"topic": "x"}, "user": "someone-else"})
    assert r.status_code == 200
    logs = (await c.get("/v1/workflows/logs", headers=h(key2))).json()
    assert logs["total"] == 2 and {d["workflow_run"]["status"] for d in logs["data"]} == {"succeeded"}
    found = (await c.get("/v1/workflows/logs", headers=h(key2), params={"keyword": "needle"})).json()
    assert found["total"] == 1 and found["data"][0]["created_by_end_user"]["session_id"] == "u1"
    mine = (await c.get("/v1/workflows/logs", headers=h(key2),
                        params={"created_by_end_user_session_id": "someone-else"})).json()
    assert mine["total"] == 1
    # runs by console accounts only (Dify's debugger runs): these were all started by end users
    by_account = (await c.get("/v1/workflows/logs", headers=h(key2),
                              params={"created_by_account": "a@example.com"})).json()
    assert by_account["total"] == 0 and by_account["data"] == []
    assert (await c.get("/v1/workflows/logs", headers=h(key2), params={"status": "failed"})).json()["total"] == 0
    r = await c.get("/v1/workflows/logs", headers=h(key2), params={"status": "bogus"})
    assert r.status_code == 400


async def test_knowledge_and_llm(w: dict[str, Any]) -> None:
    c, admin, llm = w["c"], w["admin"], w["llm"]
    dk = h((await c.post("/console/api/datasets/api-keys", headers=admin)).json()["token"])
    ds = (await c.post("/v1/datasets", headers=dk, json={"name": f"kb-{uuid.uuid4().hex[:6]}"})).json()
    r = await c.post(f"/v1/datasets/{ds['id']}/document/create-by-text", headers=dk, json={
        "name": "tea", "text": "Oolong tea is steeped at 90 degrees.", "indexing_technique": "high_quality",
        "process_rule": {"mode": "automatic"}})
    batch = r.json()["batch"]
    deadline = time.monotonic() + 60
    while (await c.get(f"/v1/datasets/{ds['id']}/documents/{batch}/indexing-status", headers=dk)
           ).json()["data"][0]["indexing_status"] != "completed":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    llm.push(match="oolong", reply="90 degrees.")
    _, key = await publish(w, g.knowledge_llm(ds["id"]))
    out = await run(w, key, {"q": "How hot for oolong?"})
    assert out["data"]["outputs"]["answer"] == "90 degrees."
    assert out["data"]["outputs"]["sources"][0]["metadata"]["document_name"].startswith("tea")
    assert "Oolong tea is steeped at 90 degrees." in llm.requests[-1].messages[0]["content"]
    assert json.dumps(out)  # the whole body is JSON-serialisable


# ---- advanced-chat ---------------------------------------------------------------------------------------


async def test_advanced_chat_conversation(w: dict[str, Any]) -> None:
    c, admin, llm = w["c"], w["admin"], w["llm"]
    app_id = await new_app(w, "advanced-chat")
    r = await c.post(f"/console/api/apps/{app_id}/workflows/draft", headers=admin, json={
        "graph": g.chatflow(), "features": {}, "conversation_variables": g.CONVERSATION_VARIABLES})
    assert r.status_code == 200, r.text
    assert (await c.post(f"/console/api/apps/{app_id}/workflows/publish", headers=admin, json={})).status_code == 200
    key = (await c.post(f"/console/api/apps/{app_id}/api-keys", headers=admin)).json()["token"]

    llm.push(match="hello", tokens=["Hi ", "there."])
    async with c.stream("POST", "/v1/chat-messages", headers=h(key), json={
            "inputs": {}, "query": "hello", "user": "u1", "response_mode": "streaming"}) as s:
        events = [orjson.loads(line[6:]) async for line in s.aiter_lines() if line.startswith("data: ")]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "workflow_started" and kinds[-2:] == ["message_end", "workflow_finished"], kinds
    assert "".join(e["answer"] for e in events if e["event"] == "message") == "Turn 1: Hi there."
    conv, msg = events[0]["conversation_id"], events[0]["message_id"]
    assert all(e["conversation_id"] == conv and e["message_id"] == msg for e in events)
    assert events[-2]["metadata"]["usage"]["total_tokens"] > 0

    llm.push(match="again", reply="Still here.")
    r = await c.post("/v1/chat-messages", headers=h(key), json={
        "inputs": {}, "query": "again", "user": "u1", "response_mode": "blocking", "conversation_id": conv})
    body = r.json()
    assert r.status_code == 200 and body["mode"] == "advanced-chat" and body["answer"] == "Turn 2: Still here."
    # memory: the second turn saw the first
    assert [m["role"] for m in llm.requests[-1].messages] == ["system", "user", "assistant", "user"]
    assert llm.requests[-1].messages[2]["content"] == "Turn 1: Hi there."

    r = await c.get(f"/v1/conversations/{conv}/variables", headers=h(key), params={"user": "u1"})
    (var,) = r.json()["data"]
    assert var["name"] == "turns" and var["value"] == "2" and var["value_type"] == "number"
    r = await c.patch(f"/v1/conversations/{conv}/variables/{var['id']}", headers=h(key),
                      json={"value": "not a number", "user": "u1"})
    assert r.status_code == 400 and r.json()["code"] == "bad_request"
    r = await c.put(f"/v1/conversations/{conv}/variables/{var['id']}", headers=h(key), json={"value": 10, "user": "u1"})
    assert r.status_code == 200 and r.json()["value"] == "10"
    llm.push(match="third", reply="ok")
    r = await c.post("/v1/chat-messages", headers=h(key), json={
        "inputs": {}, "query": "third", "user": "u1", "conversation_id": conv})
    assert r.json()["answer"] == "Turn 11: ok"
    r = await c.get(f"/v1/conversations/{conv}/variables", headers=h(key), params={"user": "someone-else"})
    assert r.status_code == 404

    msgs = (await c.get("/v1/messages", headers=h(key), params={"conversation_id": conv, "user": "u1"})).json()
    assert [m["answer"] for m in msgs["data"]] == ["Turn 1: Hi there.", "Turn 2: Still here.", "Turn 11: ok"]
    run_id = events[-1]["workflow_run_id"]
    assert (await c.get(f"/v1/workflows/run/{run_id}", headers=h(key))).json()["status"] == "succeeded"


async def test_dsl_export_import_round_trip(w: dict[str, Any]) -> None:
    c, admin = w["c"], w["admin"]
    app_id = await new_app(w)
    env = [{"name": "api_token", "value_type": "secret", "value": "s3cret"},
           {"name": "units", "value_type": "string", "value": "metric"}]
    r = await c.post(f"/console/api/apps/{app_id}/workflows/draft", headers=admin,
                     json={"graph": g.tool_graph(), "features": {"opening_statement": "hi"},
                           "environment_variables": env})
    assert r.status_code == 200, r.text
    exported = (await c.get(f"/console/api/apps/{app_id}/export", headers=admin)).json()["data"]
    assert "s3cret" not in exported and "kind: app" in exported
    with_secret = (await c.get(f"/console/api/apps/{app_id}/export", headers=admin,
                               params={"include_secret": "true"})).json()["data"]
    assert "s3cret" in with_secret
    r = await c.post("/console/api/apps/imports", headers=admin,
                     json={"mode": "yaml-content", "yaml_content": with_secret, "name": f"copy-{uuid.uuid4().hex[:6]}"})
    assert r.status_code == 200 and r.json()["status"] == "completed" and r.json()["app_mode"] == "workflow"
    copy = r.json()["app_id"]
    draft = (await c.get(f"/console/api/apps/{copy}/workflows/draft", headers=admin)).json()
    assert draft["graph"]["nodes"] == g.tool_graph()["nodes"] and draft["features"] == {"opening_statement": "hi"}
    assert {v["name"] for v in draft["environment_variables"]} == {"api_token", "units"}
    # a broken document is refused and leaves no app behind
    before = (await c.get("/console/api/apps", headers=admin, params={"limit": 100})).json()["total"]
    broken = with_secret.replace(g.TOOL, "nowhere", 1)
    r = await c.post("/console/api/apps/imports", headers=admin, json={"yaml_content": broken, "name": "broken-copy"})
    assert r.status_code == 400 and r.json()["status"] == "failed" and "invalid" in r.json()["error"]
    assert (await c.get("/console/api/apps", headers=admin, params={"limit": 100})).json()["total"] == before
    r = await c.post("/console/api/apps/imports", headers=admin, json={"yaml_content": "a: [unclosed"})
    assert r.status_code == 400 and r.json()["status"] == "failed" and "YAML" in r.json()["error"]


async def test_difys_stress_test_flow(w: dict[str, Any]) -> None:
    """The steps of Dify's own acceptance harness (scripts/stress-test, reference §9) after sign-in: install the
    OpenAI plugin, save its credentials under the plugin's provider id, import a workflow DSL of Dify's current
    version whose LLM node names that provider, publish, make a key, run it streaming."""
    c, admin, llm = w["c"], w["admin"], w["llm"]
    r = await c.post("/console/api/workspaces/current/plugin/install/marketplace", headers=admin,
                     json={"plugin_unique_identifiers": ["langgenius/openai:0.2.1@0d6c1a7e"]})
    assert r.status_code == 200 and r.json()["all_installed"] is True, r.text
    provider = "langgenius/openai/openai"
    r = await c.post(f"/console/api/workspaces/current/model-providers/{provider}/credentials", headers=admin,
                     json={"credentials": {"openai_api_key": "sk-mock", "api_key": "sk-mock",
                                           "api_base": llm.base_url}})
    assert r.status_code == 200, r.text
    graph = g.linear_llm()
    for n in graph["nodes"]:
        if n["id"] == g.LLM:
            n["data"]["model"] = {**g.MODEL, "provider": provider, "name": "gpt-4o-mini"}
    doc = yaml.safe_dump({"kind": "app", "version": "0.5.0", "app": {
        "name": f"workflow_llm-{uuid.uuid4().hex[:6]}", "mode": "workflow", "icon": "🤖",
        "icon_background": "#FFEAD5", "description": "", "use_icon_as_answer_icon": False},
        "workflow": {"graph": graph, "features": {}, "environment_variables": [], "conversation_variables": []}},
        allow_unicode=True)
    r = await c.post("/console/api/apps/imports", headers=admin, json={"mode": "yaml-content", "yaml_content": doc})
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    app_id = r.json()["app_id"]
    assert (await c.post(f"/console/api/apps/{app_id}/workflows/publish", headers=admin, json={})).status_code == 200
    key = (await c.post(f"/console/api/apps/{app_id}/api-keys", headers=admin)).json()["token"]
    llm.push(match="the sea", reply="The sea is wide.")
    events = await stream(w, key, {"topic": "the sea"})
    assert events[-1]["event"] == "workflow_finished" and events[-1]["data"]["status"] == "succeeded", events[-1]
    assert events[-1]["data"]["outputs"] == {"text": "The sea is wide."}
    assert llm.requests[-1].body["model"] == "gpt-4o-mini"  # litellm called the plugin's provider, openai


async def test_copy_an_app(w: dict[str, Any]) -> None:
    """POST /console/api/apps/{id}/copy: a new app with the source's draft, secrets included, and its own name;
    a model-config app keeps its config; keys and runs are not copied."""
    c, admin = w["c"], w["admin"]
    app_id = await new_app(w)
    env = [{"name": "api_token", "value_type": "secret", "value": "s3cret"}]
    r = await c.post(f"/console/api/apps/{app_id}/workflows/draft", headers=admin,
                     json={"graph": g.tool_graph(), "features": {"opening_statement": "hi"},
                           "environment_variables": env})
    assert r.status_code == 200, r.text
    assert (await c.post(f"/console/api/apps/{app_id}/api-keys", headers=admin)).status_code == 201
    source = (await c.get(f"/console/api/apps/{app_id}", headers=admin)).json()

    r = await c.post(f"/console/api/apps/{app_id}/copy", headers=admin, json={})
    assert r.status_code == 201, r.text
    copied = r.json()
    assert copied["id"] != app_id and copied["name"] == f"{source['name']} (copy)"[:40]
    assert (copied["mode"], copied["icon"], copied["description"]) == (source["mode"], source["icon"],
                                                                       source["description"])
    draft = (await c.get(f"/console/api/apps/{copied['id']}/workflows/draft", headers=admin)).json()
    assert draft["graph"]["nodes"] == g.tool_graph()["nodes"] and draft["features"] == {"opening_statement": "hi"}
    exported = (await c.get(f"/console/api/apps/{copied['id']}/export", headers=admin,
                            params={"include_secret": "true"})).json()["data"]
    assert "s3cret" in exported  # the secret came along, as Dify's copy does
    assert (await c.get(f"/console/api/apps/{copied['id']}/api-keys", headers=admin)).json()["data"] == []

    name = f"copy-{uuid.uuid4().hex[:6]}"
    r = await c.post(f"/console/api/apps/{app_id}/copy", headers=admin,
                     json={"name": name, "description": "mine", "icon": "🚀"})
    assert r.status_code == 201 and (r.json()["name"], r.json()["description"], r.json()["icon"]) == (
        name, "mine", "🚀")
    # the name is taken now; a bad body and an unknown app are refused, and no app is left behind
    before = (await c.get("/console/api/apps", headers=admin, params={"limit": 100})).json()["total"]
    r = await c.post(f"/console/api/apps/{app_id}/copy", headers=admin, json={"name": name})
    assert r.status_code == 400 and r.json()["code"] == "invalid_param"
    r = await c.post(f"/console/api/apps/{app_id}/copy", headers=admin, json={"name": "x" * 41})
    assert r.status_code == 400 and r.json()["code"] == "invalid_param"
    r = await c.post(f"/console/api/apps/{uuid.uuid4()}/copy", headers=admin, json={})
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    assert (await c.get("/console/api/apps", headers=admin, params={"limit": 100})).json()["total"] == before

    # a basic app: its model config
    chat_id = (await c.post("/console/api/apps", headers=admin,
                            json={"name": f"chat-{uuid.uuid4().hex[:6]}", "mode": "chat"})).json()["id"]
    config = {"model": {"provider": "openai-compatible", "name": "scripted"}, "pre_prompt": "Be {{tone}}.",
              "user_input_form": [{"text-input": {"variable": "tone", "label": "Tone", "required": False}}]}
    assert (await c.post(f"/console/api/apps/{chat_id}/model-config", headers=admin, json=config)).status_code == 200
    r = await c.post(f"/console/api/apps/{chat_id}/copy", headers=admin)
    assert r.status_code == 201, r.text
    got = (await c.get(f"/console/api/apps/{r.json()['id']}/model-config", headers=admin)).json()
    assert got["pre_prompt"] == "Be {{tone}}." and got["model"]["name"] == "scripted"


async def test_resume_a_workflow_stream(w: dict[str, Any]) -> None:
    c, up = w["c"], w["up"]
    _, key = await publish(w, g.failing_http(w["base"] + "/hang", None))
    seen: list[tuple[int, dict[str, Any]]] = []
    async with c.stream("POST", "/v1/workflows/run", headers=h(key),
                        json={"inputs": {}, "user": "u1", "response_mode": "streaming"}) as s:
        buf = b""
        async for chunk in s.aiter_bytes():
            buf += chunk
            while b"\n\n" in buf:
                frame, buf = buf.split(b"\n\n", 1)
                head, _, data = frame.partition(b"\n")
                if head.startswith(b"id: "):
                    seen.append((int(head[4:]), orjson.loads(data[6:])))
            if seen and seen[-1][1]["event"] == "node_started" and seen[-1][1]["data"]["node_type"] == "http-request":
                break  # the client goes away while the HTTP node waits
    up.release.set()
    run_id = seen[0][1]["workflow_run_id"]
    last = seen[-1][0]
    async with c.stream("GET", f"/v1/workflows/run/{run_id}/events", headers={**h(key), "Last-Event-ID": str(last)},
                        params={"user": "u1"}) as s:
        raw = await s.aread()
    rest = [(int(f.partition(b"\n")[0][4:]), orjson.loads(f.partition(b"\n")[2][6:]))
            for f in raw.split(b"\n\n")[:-1] if f.startswith(b"id: ")]
    assert [i for i, _ in rest] == list(range(last + 1, last + 1 + len(rest)))
    assert [e["event"] for _, e in rest] == ["node_finished", "node_started", "node_finished", "workflow_finished"]
    assert rest[-1][1]["data"]["status"] == "succeeded" and rest[-1][1]["data"]["outputs"] == {"body": "late"}
    r = await c.get(f"/v1/workflows/run/{run_id}/events", headers=h(key), params={"user": "stranger"})
    assert r.status_code == 404
    # Dify's newest path finds the same log by the run's task id
    task_id = seen[0][1]["task_id"]
    r = await c.get(f"/v1/workflow/{task_id}/events", headers={**h(key), "Last-Event-ID": str(last)},
                    params={"user": "u1"})
    assert r.status_code == 200
    assert [(int(f.partition(b"\n")[0][4:]), orjson.loads(f.partition(b"\n")[2][6:]))
            for f in r.content.split(b"\n\n")[:-1] if f.startswith(b"id: ")] == rest
    for who, ident in (("stranger", task_id), ("u1", run_id)):  # another user; a run id is not a task id
        r = await c.get(f"/v1/workflow/{ident}/events", headers=h(key), params={"user": who})
        assert r.status_code == 404 and r.json()["code"] == "not_found"


async def test_a_run_left_by_a_dead_replica_is_marked_failed(w: dict[str, Any]) -> None:
    from datetime import timedelta

    from shared.models import WorkflowRun, new_id, utcnow

    srv = w["srv"]
    app_id, key = await publish(w, g.tool_graph())
    workflow_id = (await w["c"].get(f"/console/api/apps/{app_id}/workflows/publish", headers=w["admin"])).json()["id"]
    stale = utcnow() - timedelta(hours=2)
    run_id = new_id()
    async with srv.ctx.db.session() as s:
        s.add(WorkflowRun(id=run_id, tenant_id="t", app_id=app_id, workflow_id=workflow_id, type="workflow",
                          version="v", task_id=new_id(), created_by=new_id(), created_at=stale, updated_at=stale))
        await s.commit()
    runtime = srv.ctx.local_apps["runtime"].state.runtime
    assert await runtime.sweep() >= 1
    got = (await w["c"].get(f"/v1/workflows/run/{run_id}", headers=h(key))).json()
    assert got["status"] == "failed" and "interrupted" in got["error"]


async def test_parameters_of_graph_apps_come_from_the_start_node_and_features(w: dict[str, Any]) -> None:
    """Reference §2.9: for workflow and advanced-chat apps the form is the Start node's, the features the
    published workflow's; an app with nothing published is 400 app_unavailable."""
    c, admin = w["c"], w["admin"]
    unpublished = await new_app(w)
    key0 = (await c.post(f"/console/api/apps/{unpublished}/api-keys", headers=admin)).json()["token"]
    r = await c.get("/v1/parameters", headers=h(key0))
    assert r.status_code == 400 and r.json()["code"] == "app_unavailable"

    features = {"opening_statement": "Welcome!", "suggested_questions": ["What is tea?"],
                "suggested_questions_after_answer": {"enabled": True}, "speech_to_text": {"enabled": True}}
    first = g.start(g.text_var("topic"), g.text_var("tone", required=False, default="calm"))
    graphs = {
        "workflow": g.graph([first, g.end()], [g.edge(g.START, g.END)]),
        "advanced-chat": g.graph([first, g.node(g.ANSWER, "answer", "Answer", answer="hi")],
                                 [g.edge(g.START, g.ANSWER)]),
    }
    for mode, graph in graphs.items():
        app_id = await new_app(w, mode)
        r = await c.post(f"/console/api/apps/{app_id}/workflows/draft", headers=admin,
                         json={"graph": graph, "features": features})
        assert r.status_code == 200, r.text
        r = await c.post(f"/console/api/apps/{app_id}/workflows/publish", headers=admin, json={})
        assert r.status_code == 200, r.text
        key = (await c.post(f"/console/api/apps/{app_id}/api-keys", headers=admin)).json()["token"]
        r = await c.get("/v1/parameters", headers=h(key))
        assert r.status_code == 200, (mode, r.text)
        p = r.json()
        assert p["opening_statement"] == "Welcome!" and p["suggested_questions"] == ["What is tea?"]
        assert p["suggested_questions_after_answer"] == {"enabled": True}
        assert p["speech_to_text"] == {"enabled": True} and p["text_to_speech"] == {"enabled": False}
        # a feature the workflow lacks is off, retriever_resource included (Dify's get_parameters_from_feature_dict)
        assert p["more_like_this"] == {"enabled": False} and p["retriever_resource"] == {"enabled": False}
        form = p["user_input_form"]
        assert [next(iter(i)) for i in form] == ["text-input", "text-input"]
        assert form[0]["text-input"]["variable"] == "topic" and form[0]["text-input"]["required"] is True
        assert form[1]["text-input"]["variable"] == "tone" and form[1]["text-input"]["default"] == "calm"
        assert p["file_upload"]["image"]["enabled"] is False and p["system_parameters"]["file_size_limit"] > 0


async def test_advanced_chat_runs_a_named_version(w: dict[str, Any]) -> None:
    """`workflow_id` on /v1/chat-messages (reference §2.3): an advanced-chat message runs that published
    version, in a new conversation and in a later turn; the version's errors are those of /workflows/{id}/run."""
    c, admin, llm = w["c"], w["admin"], w["llm"]
    app_id = await new_app(w, "advanced-chat")
    base = f"/console/api/apps/{app_id}/workflows"

    async def publish_version(graph: dict[str, Any]) -> str:
        r = await c.post(base + "/draft", headers=admin, json={
            "graph": graph, "features": {}, "conversation_variables": g.CONVERSATION_VARIABLES})
        assert r.status_code == 200, r.text
        r = await c.post(base + "/publish", headers=admin, json={})
        assert r.status_code == 200, r.text
        return r.json()["id"]

    v1 = await publish_version(g.chatflow())
    v2_graph = g.chatflow()
    next(n for n in v2_graph["nodes"] if n["id"] == g.ANSWER)["data"]["answer"] = "V2: {{#" + g.LLM + ".text#}}"
    await publish_version(v2_graph)
    key = (await c.post(f"/console/api/apps/{app_id}/api-keys", headers=admin)).json()["token"]

    async def ask(query: str, **kw: Any) -> httpx.Response:
        return await c.post("/v1/chat-messages", headers=h(key), json={"inputs": {}, "query": query, "user": "u1",
                                                                       **kw})

    llm.push(reply="current", match="which one")
    assert (await ask("which one")).json()["answer"] == "V2: current"
    llm.push(reply="older", match="the old one")
    r = await ask("the old one", workflow_id=v1)
    assert r.status_code == 200 and r.json()["answer"] == "Turn 1: older", r.text
    conv = r.json()["conversation_id"]
    llm.push(reply="still old", match="again")
    r = await ask("again", workflow_id=v1, conversation_id=conv)
    assert r.json()["answer"] == "Turn 2: still old"
    from shared.models import Message

    async with w["srv"].ctx.db.session() as s:
        run_id = (await s.exec(select(Message.workflow_run_id).where(Message.id == r.json()["message_id"]))).one()
    run = (await c.get(f"/v1/workflows/run/{run_id}", headers=h(key))).json()
    assert run["workflow_id"] == v1
    draft = (await c.get(base + "/draft", headers=admin)).json()["id"]
    for wid, status, code in (("not-a-uuid", 400, "workflow_id_format_error"), (str(uuid.uuid4()), 404, "not_found"),
                              (draft, 400, "draft_workflow_error")):
        r = await ask("errors", workflow_id=wid)
        assert (r.status_code, r.json()["code"]) == (status, code), r.text


async def test_advanced_chat_later_turns_keep_the_required_inputs(w: dict[str, Any]) -> None:
    """Reference §2.3: an existing conversation reuses its stored inputs and ignores the request's, so a later
    turn without the start node's required inputs is answered with the first turn's."""
    c, admin = w["c"], w["admin"]
    app_id = await new_app(w, "advanced-chat")
    graph = g.graph([g.start(g.text_var("name")),
                     g.node(g.ANSWER, "answer", "Answer", answer="Hello {{#" + g.START + ".name#}}: {{#sys.query#}}")],
                    [g.edge(g.START, g.ANSWER)])
    r = await c.post(f"/console/api/apps/{app_id}/workflows/draft", headers=admin, json={"graph": graph, "features": {}})
    assert r.status_code == 200, r.text
    assert (await c.post(f"/console/api/apps/{app_id}/workflows/publish", headers=admin, json={})).status_code == 200
    key = (await c.post(f"/console/api/apps/{app_id}/api-keys", headers=admin)).json()["token"]
    r = await c.post("/v1/chat-messages", headers=h(key), json={"inputs": {}, "query": "one", "user": "u1"})
    assert r.status_code == 400 and r.json()["message"] == "name is required in input form"
    r = await c.post("/v1/chat-messages", headers=h(key), json={"inputs": {"name": "Ann"}, "query": "one", "user": "u1"})
    assert r.status_code == 200 and r.json()["answer"] == "Hello Ann: one", r.text
    conv = r.json()["conversation_id"]
    for inputs in ({}, {"name": "Bob"}):  # later turns: the stored inputs, whatever the request says
        r = await c.post("/v1/chat-messages", headers=h(key), json={
            "inputs": inputs, "query": "two", "user": "u1", "conversation_id": conv})
        assert r.status_code == 200 and r.json()["answer"] == "Hello Ann: two", r.text


# ---- the agent node ----------------------------------------------------------------------------------------


def weather_openapi(base: str) -> str:
    return json.dumps({
        "openapi": "3.0.3", "info": {"title": "Weather", "version": "1"}, "servers": [{"url": base}],
        "paths": {"/weather": {"post": {
            "operationId": "get_weather", "summary": "The current weather of a city",
            "parameters": [{"name": "units", "in": "query", "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}}}}}},
    })


async def weather_tool(w: dict[str, Any]) -> dict[str, Any]:
    """A workspace API tool on the upstream's /weather, as a Dify agent node lists it: ``city`` left to the
    model, ``units`` preset by the builder (auto: 0)."""
    r = await w["c"].post("/console/api/workspaces/current/tool-provider/api/add", headers=w["admin"], json={
        "provider": f"weather-{uuid.uuid4().hex[:6]}", "schema_type": "openapi", "schema": weather_openapi(w["base"]),
        "credentials": {"auth_type": "none"}})
    assert r.status_code == 200, r.text
    p = r.json()
    return {"enabled": True, "type": "api", "provider_name": p["name"], "provider_id": p["id"],
            "tool_name": "get_weather", "settings": {},
            "parameters": {"city": {"auto": 1, "value": None}, "units": {"auto": 0, "value": "metric"}},
            "extra": {"description": "weather"}}


def agent_logs(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "agent_log"]


async def test_agent_node_function_calling(w: dict[str, Any]) -> None:
    """start → agent (function_calling: calculator + an API tool) → end: the model calls both tools in one round,
    reads their results, answers; agent_log events per round and per call, outputs text/json, the log kept in
    the node execution's metadata and in the run's event log (replayed on resume)."""
    llm, up, c = w["llm"], w["up"], w["c"]
    weather = await weather_tool(w)
    _, key = await publish(w, g.agent_graph(tools=[g.calculator_tool(), weather, g.calculator_tool(enabled=False)]))
    llm.push(with_tools=True, match="sums and weather", tool_calls=[
        {"id": "call_calc", "name": "calculator", "arguments": {"expression": "6*7"}},
        {"id": "call_wx", "name": "get_weather", "arguments": {"city": "Paris"}}])
    llm.push(with_tools=True, match_last="temp", tokens=["It is 42", " and 21 degrees", " in Paris."])
    events = await stream(w, key, {"q": "sums and weather, please"})
    finished = events[-1]["data"]
    assert finished["status"] == "succeeded", finished
    assert finished["outputs"] == {"text": "It is 42 and 21 degrees in Paris.",
                                   "json": [{"city": "Paris", "temp": 21}]}
    # the answer streamed to the End node while the model wrote it
    assert "".join(e["data"]["text"] for e in events if e["event"] == "text_chunk") == finished["outputs"]["text"]
    assert up.seen == [{"body": {"city": "Paris"}, "trace": None, "query": {"units": "metric"}}]

    first, second = llm.requests
    assert first.messages == [{"role": "system", "content": "You are a careful assistant."},
                              {"role": "user", "content": "sums and weather, please"}]
    assert sorted(t["function"]["name"] for t in first.body["tools"]) == ["calculator", "get_weather"]
    assert "units" not in json.dumps(first.body["tools"])  # a preset is not the model's to fill
    results = {m["tool_call_id"]: m["content"] for m in second.messages if m["role"] == "tool"}
    assert results["call_calc"] == "42" and json.loads(results["call_wx"]) == {"city": "Paris", "temp": 21}

    agent_started = next(e["data"] for e in events if e["event"] == "node_started" and e["data"]["node_id"] == g.AGENT)
    assert agent_started["agent_strategy"]["name"] == "function_calling"
    logs = agent_logs(events)
    assert all(e["workflow_run_id"] == finished["id"] for e in logs)
    assert all("workflow_run_id" not in e["data"] and e["data"]["node_id"] == g.AGENT
               and e["data"]["node_execution_id"] == agent_started["id"] for e in logs)
    rounds = [e["data"] for e in logs if e["data"]["label"].startswith("ROUND")]
    assert [(r["label"], r["status"]) for r in rounds] == [
        ("ROUND 1", "start"), ("ROUND 1", "success"), ("ROUND 2", "start"), ("ROUND 2", "success")]
    assert rounds[0]["id"] == rounds[1]["id"] != rounds[2]["id"] == rounds[3]["id"]
    assert all(r["parent_id"] is None for r in rounds)
    done = rounds[1]["metadata"]
    assert done["total_tokens"] > 0 and done["elapsed_time"] >= 0 and done["provider"] == "openai-compatible"
    calls = [e["data"] for e in logs if e["data"]["label"].startswith("CALL")]
    assert {(d["label"], d["status"]) for d in calls} == {("CALL calculator", "start"), ("CALL calculator", "success"),
                                                         ("CALL get_weather", "start"), ("CALL get_weather", "success")}
    assert all(d["parent_id"] == rounds[0]["id"] for d in calls)
    calc = next(d for d in calls if d["label"] == "CALL calculator" and d["status"] == "success")
    assert calc["data"] == {"tool_call_id": "call_calc", "tool_call_name": "calculator",
                            "tool_call_args": {"expression": "6*7"}, "output": "42"}
    # no log leaves the round before it starts or after it ends
    order = [e["data"]["id"] for e in logs]
    assert order.index(calc["id"]) > order.index(rounds[0]["id"]) and order.count(rounds[0]["id"]) == 2

    agent_done = next(e["data"] for e in events if e["event"] == "node_finished" and e["data"]["node_id"] == g.AGENT)
    meta = agent_done["execution_metadata"]
    assert meta["total_tokens"] > 0 and meta["currency"] == "USD" and "total_price" in meta
    kept = meta["agent_log"]
    assert [(x["label"], x["status"]) for x in kept][:2] == [("ROUND 1", "success"), ("CALL calculator", "success")]
    assert len(kept) == 4 and {x["id"] for x in kept} == {e["data"]["id"] for e in logs}
    assert agent_done["outputs"]["usage"]["total_tokens"] == meta["total_tokens"] > 0
    async with w["srv"].ctx.db.session() as s:
        row = (await s.exec(select(WorkflowNodeExecution).where(
            WorkflowNodeExecution.workflow_run_id == finished["id"], WorkflowNodeExecution.node_id == g.AGENT))).one()
    assert row.status == "succeeded" and row.execution_metadata["agent_log"] == kept

    # the agent_log events are in the run's event log: a client resuming gets them again
    async with c.stream("GET", f"/v1/workflows/run/{finished['id']}/events",
                        headers={**h(key), "Last-Event-ID": "1"}, params={"user": "u1"}) as s:
        raw = await s.aread()
    replayed = [orjson.loads(f.partition(b"\n")[2][6:]) for f in raw.split(b"\n\n") if f.startswith(b"id: ")]
    assert replayed == events[1:]


async def test_agent_node_react(w: dict[str, Any]) -> None:
    """agent_strategy_name ReAct (any case): the tools are described in the prompt, one JSON action per turn."""
    llm = w["llm"]
    _, key = await publish(w, g.agent_graph(strategy="ReAct"))
    llm.push(match="seven squared", reply='Thought: I should compute it.\nAction:\n```\n'
                                          '{"action": "calculator", "action_input": {"expression": "7**2"}}\n```')
    llm.push(match="Observation:", reply='Thought: I know.\nAction:\n```\n'
                                         '{"action": "Final Answer", "action_input": "It is 49."}\n```')
    out = await stream(w, key, {"q": "seven squared?"})
    assert out[-1]["data"]["status"] == "succeeded", out[-1]
    assert out[-1]["data"]["outputs"] == {"text": "It is 49.", "json": []}
    first, second = llm.requests
    assert "tools" not in first.body and first.messages[0]["role"] == "system"
    assert first.messages[0]["content"].startswith("You are a careful assistant.")  # merged with the ReAct prompt
    assert '"calculator"' in first.messages[0]["content"]
    assert second.messages[-1] == {"role": "user", "content": "Observation: 49"}
    call = next(e["data"] for e in agent_logs(out) if e["data"]["label"] == "CALL calculator"
                and e["data"]["status"] == "success")
    assert call["data"]["tool_call_args"] == {"expression": "7**2"} and call["data"]["output"] == "49"
    assert [e["data"]["label"] for e in agent_logs(out) if e["data"]["status"] == "success"] == [
        "CALL calculator", "ROUND 1", "ROUND 2"]


async def test_agent_node_streams_into_a_chat_answer(w: dict[str, Any]) -> None:
    """advanced-chat: agent → answer streams the agent's text as message events while the model writes it; the
    node's memory gives it the conversation's earlier turns."""
    c, llm = w["c"], w["llm"]
    _, key = await publish(w, g.agent_chatflow(tools=[]), await new_app(w, "advanced-chat"))
    llm.push(match="hello", tokens=["Hi", " from", " the agent."])
    body = {"inputs": {}, "query": "hello", "user": "u1", "response_mode": "streaming"}
    async with c.stream("POST", "/v1/chat-messages", headers=h(key), json=body) as s:
        events = [orjson.loads(line[6:]) async for line in s.aiter_lines() if line.startswith("data: ")]
    kinds = [e["event"] for e in events]
    said = [e["answer"] for e in events if e["event"] == "message"]
    assert "".join(said) == "Agent: Hi from the agent.", said
    agent_done = next(i for i, e in enumerate(events) if e["event"] == "node_finished"
                      and e["data"]["node_id"] == g.AGENT)
    assert kinds.index("message") < agent_done and len(said) >= 3  # delta by delta, before the node finished
    assert "tools" not in llm.requests[0].body  # no tools: the model just answers
    end = next(e for e in events if e["event"] == "message_end")
    assert end["metadata"]["usage"]["total_tokens"] > 0  # the agent's usage is the chat's
    llm.push(match="again", reply="Still me.")
    r = await c.post("/v1/chat-messages", headers=h(key), json={
        "inputs": {}, "query": "again", "user": "u1", "conversation_id": end["conversation_id"]})
    assert r.json()["answer"] == "Agent: Still me.", r.text
    assert [m["content"] for m in llm.requests[-1].messages] == [
        "You are a careful assistant.", "hello", "Agent: Hi from the agent.", "again"]


@pytest.mark.parametrize(("change", "words"), [
    ({"provider": "someone/strategies/agent"}, ["agent_strategy_provider_name", "langgenius/agent/agent"]),
    ({"strategy": "tree_of_thoughts"}, ["agent_strategy_name", "tree_of_thoughts", "ReAct"]),
    ({"model": None}, ["agent_parameters.model is required"]),
    ({"model": {**g.AGENT_MODEL, "model": ""}}, ["agent_parameters.model.model"]),
    ({"max_iterations": "many"}, ["maximum_iterations"]),
])
async def test_agent_node_is_checked_on_save(w: dict[str, Any], change: dict[str, Any], words: list[str]) -> None:
    app_id = await new_app(w)
    r = await w["c"].post(f"/console/api/apps/{app_id}/workflows/draft", headers=w["admin"],
                          json={"graph": g.agent_graph(**change)})
    assert r.status_code == 400 and r.json()["code"] == "invalid_param", r.text
    assert r.json()["node_id"] == g.AGENT and all(x in r.json()["message"] for x in words), r.json()


async def test_agent_node_failures(w: dict[str, Any]) -> None:
    """A failing model call fails the node (and the run) with the provider's message, and its round logs the
    error; with an error strategy the run goes on. A tool that no longer exists fails the node, as a tool
    node's does; a failing tool call is only an observation."""
    llm = w["llm"]
    _, key = await publish(w, g.agent_graph())
    llm.push(match="boom", status=500)
    events = await stream(w, key, {"q": "boom"})
    assert [e["event"] for e in events][-2:] == ["workflow_finished", "error"]
    finished = events[-2]["data"]
    assert finished["status"] == "failed" and "scripted failure 500" in finished["error"], finished
    failed = next(e["data"] for e in events if e["event"] == "node_finished" and e["data"]["node_id"] == g.AGENT)
    assert failed["status"] == "failed" and "scripted failure 500" in failed["error"]
    last = agent_logs(events)[-1]["data"]
    assert (last["label"], last["status"]) == ("ROUND 1", "error") and "scripted failure 500" in last["error"]

    _, key = await publish(w, g.agent_graph(error_strategy="default-value",
                                            default_value=[{"key": "text", "type": "string", "value": "fallback"}]))
    llm.push(match="boom", status=500)
    out = await run(w, key, {"q": "boom"})
    assert out["data"]["status"] == "partial-succeeded" and out["data"]["outputs"]["text"] == "fallback", out

    gone = {"enabled": True, "type": "api", "provider_name": "deleted", "provider_id": str(uuid.uuid4()),
            "tool_name": "get_weather", "parameters": {}}
    _, key = await publish(w, g.agent_graph(tools=[g.calculator_tool(), gone]))
    out = await run(w, key, {"q": "anything"})
    assert out["data"]["status"] == "failed" and "does not exist" in out["data"]["error"], out
    assert llm.requests_matching("anything") == []  # failed before the model was asked

    _, key = await publish(w, g.agent_graph())
    llm.push(with_tools=True, match="bad sum", tool_calls=[{"name": "calculator", "arguments": {"expression": "2 ^ 3"}}])
    llm.push(match_last="**", reply="Use ** for powers.")
    events = await stream(w, key, {"q": "bad sum"})
    assert events[-1]["data"]["outputs"]["text"] == "Use ** for powers.", events[-1]
    call = next(e["data"] for e in agent_logs(events) if e["data"]["label"] == "CALL calculator"
                and e["data"]["status"] != "start")
    assert call["status"] == "error" and "invalid_arguments" in call["error"]


async def test_agent_node_maximum_iterations(w: dict[str, Any]) -> None:
    """After maximum_iterations tool rounds the model is asked once more, without tools, and that is the answer."""
    llm = w["llm"]
    _, key = await publish(w, g.agent_graph(max_iterations=2))
    llm.push(with_tools=True, times=10, tool_calls=[{"name": "calculator", "arguments": {"expression": "1+1"}}])
    llm.push(with_tools=False, reply="Enough: 2.")
    events = await stream(w, key, {"q": "loop forever"})
    assert events[-1]["data"]["outputs"]["text"] == "Enough: 2.", events[-1]
    assert ["tools" in r.body for r in llm.requests] == [True, True, False]
    rounds = [e["data"]["label"] for e in agent_logs(events) if e["data"]["status"] == "success"
              and e["data"]["parent_id"] is None]
    assert rounds == ["ROUND 1", "ROUND 2", "ROUND 3"]


async def test_agent_node_dsl_round_trip(w: dict[str, Any]) -> None:
    """A Dify DSL with an agent node and its langgenius/agent plugin dependency imports (the plugin is built
    in), exports with the node as it was, and runs."""
    c, admin, llm = w["c"], w["admin"], w["llm"]
    r = await c.post("/console/api/workspaces/current/plugin/install/marketplace", headers=admin,
                     json={"plugin_unique_identifiers": ["langgenius/agent:0.0.17@4f2a"]})
    assert r.status_code == 200 and r.json()["all_installed"] is True, r.text
    graph = g.agent_graph()
    doc = yaml.safe_dump({"kind": "app", "version": "0.5.0", "app": {
        "name": f"agent-{uuid.uuid4().hex[:6]}", "mode": "workflow", "icon": "🤖", "description": ""},
        "dependencies": [{"current_identifier": None, "type": "marketplace", "value": {
            "marketplace_plugin_unique_identifier": "langgenius/agent:0.0.17@4f2a"}}],
        "workflow": {"graph": graph, "features": {}, "environment_variables": [], "conversation_variables": []}},
        allow_unicode=True)
    r = await c.post("/console/api/apps/imports", headers=admin, json={"mode": "yaml-content", "yaml_content": doc})
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    app_id = r.json()["app_id"]
    exported = yaml.safe_load((await c.get(f"/console/api/apps/{app_id}/export", headers=admin)).json()["data"])
    assert exported["workflow"]["graph"]["nodes"] == graph["nodes"]
    r = await c.post("/console/api/apps/imports", headers=admin, json={"yaml_content": yaml.safe_dump(exported),
                                                                       "name": f"again-{uuid.uuid4().hex[:6]}"})
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    _, key = await publish(w, graph, r.json()["app_id"])
    llm.push(match="hi there", reply="Hello.")
    assert (await run(w, key, {"q": "hi there"}))["data"]["outputs"] == {"text": "Hello.", "json": []}

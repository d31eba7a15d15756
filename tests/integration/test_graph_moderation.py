"""Sensitive-word moderation of graph apps (advanced-chat and workflow), whose `sensitive_word_avoidance` is a
feature of the published workflow, through the gateway of the `all` stack with the real litellm path against
the scripted model: input review answers the preset without running the graph; output review of an
advanced-chat answer stops the run and ends it with `message_replace`; an unusable stored feature is off."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import structlog
from sqlmodel import select

from shared.models import Message, WorkflowRun
from shared.settings import RuntimeSettings
from tests import workflow_graphs as g
from tests.conftest import LiveServer, live_fixture
from tests.integration.test_moderation import (
    INPUT_PRESET,
    OTHER_TYPE,
    OUTPUT_PRESET,
    keywords_config,
    model_moderation,
)
from tests.llm_server import ScriptedLLM
from tests.support import bearer, new_app, new_app_key, scripted_owner

live = live_fixture("graph-moderation", runtime=RuntimeSettings(moderation_timeout=60))


@pytest.fixture
async def owner(client: httpx.AsyncClient, llm: ScriptedLLM) -> dict[str, str]:
    llm.reset()
    return await scripted_owner(client, llm)


def chat_graph() -> dict[str, Any]:
    """advanced-chat: start(topic?) → llm (the query) → answer "{{llm.text}}"."""
    return g.graph([
        g.start(g.text_var("topic", required=False)),
        g.node(g.LLM, "llm", "Chat", model=g.MODEL, context={"enabled": False, "variable_selector": []},
               memory={"window": {"enabled": False, "size": 10}, "query_prompt_template": "{{#sys.query#}}"},
               prompt_template=[{"role": "system", "text": "You are terse."}]),
        g.node(g.ANSWER, "answer", "Answer", answer="{{#" + g.LLM + ".text#}}"),
    ], [g.edge(g.START, g.LLM), g.edge(g.LLM, g.ANSWER)])


async def graph_app(c: httpx.AsyncClient, h: dict[str, str], mode: str, graph: dict[str, Any],
                    swa: dict[str, Any] | None) -> tuple[str, dict[str, str]]:
    """(app id, key headers) of a ``mode`` app publishing ``graph`` with ``swa`` as its moderation feature."""
    app_id = await new_app(c, h, mode, prefix=f"gmod-{mode}")
    features = {"sensitive_word_avoidance": swa} if swa is not None else {}
    r = await c.post(f"/console/api/apps/{app_id}/workflows/draft", headers=h,
                     json={"graph": graph, "features": features})
    assert r.status_code == 200, r.text
    r = await c.post(f"/console/api/apps/{app_id}/workflows/publish", headers=h, json={})
    assert r.status_code == 200, r.text
    return app_id, bearer(await new_app_key(c, h, app_id))


async def ask(c: httpx.AsyncClient, k: dict[str, str], query: str, **kw: Any) -> dict[str, Any]:
    r = await c.post("/v1/chat-messages", headers=k, json={"inputs": {}, "query": query, "user": "u1", **kw})
    assert r.status_code == 200, r.text
    return r.json()


async def stream(c: httpx.AsyncClient, k: dict[str, str], path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with c.stream("POST", path, headers=k, json={"user": "u1", "response_mode": "streaming", **body}) as s:
        assert s.status_code == 200
        return [json.loads(line[6:]) async for line in s.aiter_lines() if line.startswith("data: ")]


async def ask_stream(c: httpx.AsyncClient, k: dict[str, str], query: str, **kw: Any) -> list[dict[str, Any]]:
    return await stream(c, k, "/v1/chat-messages", {"inputs": {}, "query": query, **kw})


async def stored(live: LiveServer, message_id: str) -> Message:
    async with live.ctx.db.session() as s:
        return (await s.exec(select(Message).where(Message.id == message_id))).one()


async def run_count(live: LiveServer, app_id: str) -> int:
    async with live.ctx.db.session() as s:
        return len((await s.exec(select(WorkflowRun.id).where(WorkflowRun.app_id == app_id))).all())


async def settled(llm: ScriptedLLM, aborted: int) -> None:
    """Wait until the scripted model has seen ``aborted`` streams closed by the client (the close reaches the
    server a moment after the run ends)."""
    for _ in range(500):
        if llm.aborted >= aborted:
            return
        await asyncio.sleep(0.02)


# -- advanced-chat: inputs -------------------------------------------------------------------------------

@pytest.mark.parametrize("query", ["Tell me about the BadWord, please", "请告诉我违禁词是什么", "ＳＥＣＲＥＴ plan?"])
async def test_advanced_chat_flagged_query_answers_the_preset(live: LiveServer, client: httpx.AsyncClient,
                                                               owner: dict[str, str], llm: ScriptedLLM,
                                                               query: str) -> None:
    app_id, k = await graph_app(client, owner, "advanced-chat", chat_graph(), keywords_config())
    body = await ask(client, k, query)
    assert body["answer"] == INPUT_PRESET and body["mode"] == "advanced-chat"
    assert body["metadata"]["usage"]["total_tokens"] == 0
    assert llm.requests == []  # the graph's model was never asked
    msg = await stored(live, body["message_id"])
    assert (msg.answer, msg.query, msg.status, msg.workflow_run_id) == (INPUT_PRESET, query, "normal", None)
    assert msg.trace == {"moderation": {"inputs": "flagged"}}
    assert await run_count(live, app_id) == 0  # no workflow ran

    # streaming, in the same conversation: the preset as one message, then message_end; no workflow events
    events = await ask_stream(client, k, "还是违禁词", conversation_id=body["conversation_id"])
    assert [e["event"] for e in events] == ["message", "message_end"], events
    assert events[0]["answer"] == INPUT_PRESET and events[0]["conversation_id"] == body["conversation_id"]
    assert events[0]["message_id"] == events[1]["message_id"] == events[0]["id"]
    assert llm.requests == [] and await run_count(live, app_id) == 0


async def test_advanced_chat_flagged_input_value(live: LiveServer, client: httpx.AsyncClient, owner: dict[str, str],
                                                 llm: ScriptedLLM) -> None:
    app_id, k = await graph_app(client, owner, "advanced-chat", chat_graph(), keywords_config())
    body = await ask(client, k, "a harmless question", inputs={"topic": "the secret PLAN"})
    assert body["answer"] == INPUT_PRESET and llm.requests == []
    # a clean request of the same app runs the graph as before
    clean = await ask(client, k, "hello there", inputs={"topic": "gardening"})
    assert clean["answer"] == "Echo: hello there" and len(llm.requests) == 1
    assert (await stored(live, clean["message_id"])).workflow_run_id is not None
    assert await run_count(live, app_id) == 1


async def test_inputs_not_reviewed_when_only_outputs_are(client: httpx.AsyncClient, owner: dict[str, str],
                                                         llm: ScriptedLLM) -> None:
    _, k = await graph_app(client, owner, "advanced-chat", chat_graph(), keywords_config(inputs=False))
    llm.push(reply="Nothing to see.", match="badword")
    assert (await ask(client, k, "badword"))["answer"] == "Nothing to see." and len(llm.requests) == 1


# -- advanced-chat: outputs ------------------------------------------------------------------------------

async def test_advanced_chat_output_flagged_mid_stream(live: LiveServer, client: httpx.AsyncClient,
                                                       owner: dict[str, str], llm: ScriptedLLM) -> None:
    app_id, k = await graph_app(client, owner, "advanced-chat", chat_graph(), keywords_config())
    # many tokens after the keyword: the model is still streaming when the review flags the answer
    llm.push(tokens=["Sure. ", "The SEC", "RET P", "LAN is ", "to win."] + [" more"] * 40, delay=0.02,
             match="what is it")
    aborted, completed = llm.aborted, llm.completed
    events = await ask_stream(client, k, "what is it?")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "workflow_started" and kinds[-3:] == ["message_replace", "message_end", "workflow_finished"]
    replace, end, finished = events[-3:]
    assert replace["answer"] == OUTPUT_PRESET and replace["reason"] == "output_moderation"
    assert replace["message_id"] == replace["id"] == end["message_id"] and replace["task_id"] == end["task_id"]
    assert replace["conversation_id"] == end["conversation_id"]
    # the delta completing the keyword and everything after it stay back
    assert "".join(e["answer"] for e in events if e["event"] == "message") == "Sure. The SECRET P"
    assert finished["data"]["status"] == "stopped" and finished["data"]["error"] is None
    msg = await stored(live, end["message_id"])
    assert msg.answer == OUTPUT_PRESET and msg.status == "normal"
    # the run was stopped: the graph's model call was closed before the model finished
    await settled(llm, aborted + 1)
    assert llm.aborted == aborted + 1 and llm.completed == completed
    async with live.ctx.db.session() as s:
        run = (await s.exec(select(WorkflowRun).where(WorkflowRun.app_id == app_id))).one()
    assert run.status == "stopped" and run.id == finished["data"]["id"]


async def test_advanced_chat_output_flagged_blocking_chinese(live: LiveServer, client: httpx.AsyncClient,
                                                             owner: dict[str, str], llm: ScriptedLLM) -> None:
    _, k = await graph_app(client, owner, "advanced-chat", chat_graph(), keywords_config())
    llm.push(tokens=["这是", "关于违", "禁词", "的回答。"], match="问题")
    body = await ask(client, k, "一个问题")
    assert body["answer"] == OUTPUT_PRESET
    assert (await stored(live, body["message_id"])).answer == OUTPUT_PRESET
    # the history shows the preset too
    r = await client.get("/v1/messages", headers=k, params={"conversation_id": body["conversation_id"], "user": "u1"})
    assert [m["answer"] for m in r.json()["data"]] == [OUTPUT_PRESET]


async def test_advanced_chat_clean_answer_is_unchanged(live: LiveServer, client: httpx.AsyncClient,
                                                       owner: dict[str, str], llm: ScriptedLLM) -> None:
    _, k = await graph_app(client, owner, "advanced-chat", chat_graph(), keywords_config())
    llm.push(tokens=["bad ", "words ", "are ", "fine apart; 违", "规 too"], match="clean")
    events = await ask_stream(client, k, "clean")
    kinds = [e["event"] for e in events]
    assert "message_replace" not in kinds and "message_end" in kinds and kinds[-1] == "workflow_finished"
    assert events[-1]["data"]["status"] == "succeeded"
    answer = "".join(e["answer"] for e in events if e["event"] == "message")
    assert answer == "bad words are fine apart; 违规 too"
    end = next(e for e in events if e["event"] == "message_end")
    assert (await stored(live, end["message_id"])).answer == answer


async def test_advanced_chat_output_reviewed_by_the_moderation_model(live: LiveServer, client: httpx.AsyncClient,
                                                                     owner: dict[str, str], llm: ScriptedLLM) -> None:
    """`openai_moderation`: the final review of the whole answer (it is short) replaces it."""
    _, k = await graph_app(client, owner, "advanced-chat", chat_graph(), model_moderation(inputs=False))
    llm.push(tokens=["All about ", "the forbidden-", "topic here."], match="tell me")
    events = await ask_stream(client, k, "tell me")
    kinds = [e["event"] for e in events]
    assert kinds[-3:] == ["message_replace", "message_end", "workflow_finished"], kinds
    assert events[-3]["answer"] == OUTPUT_PRESET
    assert (await stored(live, events[-2]["message_id"])).answer == OUTPUT_PRESET
    assert llm.moderation_requests[-1].inputs == ["All about the forbidden-topic here."]


# -- workflow apps -----------------------------------------------------------------------------------------

async def test_workflow_flagged_input_ends_with_the_preset(live: LiveServer, client: httpx.AsyncClient,
                                                           owner: dict[str, str], llm: ScriptedLLM) -> None:
    app_id, k = await graph_app(client, owner, "workflow", g.linear_llm(), keywords_config())
    r = await client.post("/v1/workflows/run", headers=k,
                          json={"inputs": {"topic": "the BADWORD"}, "user": "u1", "response_mode": "blocking"})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["status"] == "succeeded" and data["outputs"] == {"text": INPUT_PRESET} and data["total_steps"] == 0
    assert llm.requests == []
    got = await client.get(f"/v1/workflows/run/{data['id']}", headers=k)
    assert got.status_code == 200, got.text
    assert got.json()["status"] == "succeeded" and got.json()["outputs"] == {"text": INPUT_PRESET}

    events = await stream(client, k, "/v1/workflows/run", {"inputs": {"topic": "关于违禁词"}})
    assert [e["event"] for e in events] == ["workflow_started", "text_chunk", "workflow_finished"], events
    assert events[1]["data"]["text"] == INPUT_PRESET
    assert events[2]["data"]["status"] == "succeeded" and events[2]["data"]["outputs"] == {"text": INPUT_PRESET}
    assert llm.requests == [] and await run_count(live, app_id) == 2

    # a clean input runs the graph
    r = await client.post("/v1/workflows/run", headers=k,
                          json={"inputs": {"topic": "tea"}, "user": "u1", "response_mode": "blocking"})
    assert r.json()["data"]["status"] == "succeeded" and len(llm.requests) == 1
    assert r.json()["data"]["outputs"]["text"] != INPUT_PRESET


def template_graph() -> dict[str, Any]:
    """start(topic) → template "secret {{ topic }}" → end(text): an output no event streams."""
    return g.graph([
        g.start(g.text_var("topic")),
        g.node(g.T, "template-transform", "Format", template="secret {{ topic }}",
               variables=[{"variable": "topic", "value_selector": [g.START, "topic"]}]),
        g.end(text=[g.T, "output"]),
    ], [g.edge(g.START, g.T), g.edge(g.T, g.END)])


async def run_row(live: LiveServer, run_id: str) -> WorkflowRun:
    async with live.ctx.db.session() as s:
        return (await s.exec(select(WorkflowRun).where(WorkflowRun.id == run_id))).one()


async def test_workflow_output_flagged_mid_stream(live: LiveServer, client: httpx.AsyncClient,
                                                  owner: dict[str, str], llm: ScriptedLLM) -> None:
    """The text the run streams is reviewed as it goes: flagged, the rest is held back, the run stops (its
    model call closed), ``text_replace`` carries the preset and the preset is the run's output."""
    _, k = await graph_app(client, owner, "workflow", g.linear_llm(), keywords_config())
    llm.push(tokens=["Sure. ", "The SEC", "RET P", "LAN is ", "to win."] + [" more"] * 40, delay=0.02,
             match="Write about tea")
    aborted, completed = llm.aborted, llm.completed
    events = await stream(client, k, "/v1/workflows/run", {"inputs": {"topic": "tea"}})
    kinds = [e["event"] for e in events]
    assert kinds[0] == "workflow_started" and kinds[-2:] == ["text_replace", "workflow_finished"], kinds
    assert "".join(e["data"]["text"] for e in events if e["event"] == "text_chunk") == "Sure. The SECRET P"
    replace, finished = events[-2:]
    assert replace["data"] == {"text": OUTPUT_PRESET} and replace["task_id"] == finished["task_id"]
    assert replace["workflow_run_id"] == finished["workflow_run_id"]
    data = finished["data"]
    assert (data["status"], data["error"], data["outputs"]) == ("stopped", None, {"text": OUTPUT_PRESET})
    got = (await client.get(f"/v1/workflows/run/{data['id']}", headers=k)).json()
    assert got["status"] == "stopped" and got["outputs"] == {"text": OUTPUT_PRESET}
    assert (await run_row(live, data["id"])).status == "stopped"
    await settled(llm, aborted + 1)
    assert llm.aborted == aborted + 1 and llm.completed == completed

    # blocking: the same result
    llm.push(tokens=["关于", "违禁", "词的", "回答"], match="Write about 茶")
    r = await client.post("/v1/workflows/run", headers=k,
                          json={"inputs": {"topic": "茶"}, "user": "u1", "response_mode": "blocking"})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["outputs"] == {"text": OUTPUT_PRESET} and r.json()["data"]["status"] == "stopped"


async def test_workflow_outputs_not_streamed_are_reviewed(live: LiveServer, client: httpx.AsyncClient,
                                                          owner: dict[str, str], llm: ScriptedLLM) -> None:
    """An output no event carried (a template's) is reviewed when the graph is done: flagged, the run keeps
    its status and its outputs become the preset."""
    _, k = await graph_app(client, owner, "workflow", template_graph(), keywords_config())
    r = await client.post("/v1/workflows/run", headers=k,
                          json={"inputs": {"topic": "plan"}, "user": "u1", "response_mode": "blocking"})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert (data["status"], data["outputs"]) == ("succeeded", {"text": OUTPUT_PRESET})
    assert (await run_row(live, data["id"])).outputs == {"text": OUTPUT_PRESET}
    events = await stream(client, k, "/v1/workflows/run", {"inputs": {"topic": "PLAN"}})
    kinds = [e["event"] for e in events]
    assert "text_chunk" not in kinds and kinds[-2:] == ["text_replace", "workflow_finished"], kinds
    assert events[-1]["data"]["status"] == "succeeded" and events[-1]["data"]["outputs"] == {"text": OUTPUT_PRESET}
    # a clean one is returned as made
    r = await client.post("/v1/workflows/run", headers=k,
                          json={"inputs": {"topic": "garden"}, "user": "u1", "response_mode": "blocking"})
    assert r.json()["data"]["outputs"] == {"text": "secret garden"}


async def test_workflow_output_reviewed_by_the_moderation_model(live: LiveServer, client: httpx.AsyncClient,
                                                                owner: dict[str, str], llm: ScriptedLLM) -> None:
    """`openai_moderation`: one final review of the streamed text (the output it became is not sent again)."""
    _, k = await graph_app(client, owner, "workflow", g.linear_llm(), model_moderation(inputs=False))
    llm.push(tokens=["All about ", "the forbidden-", "topic here."], match="Write about it")
    before = len(llm.moderation_requests)
    events = await stream(client, k, "/v1/workflows/run", {"inputs": {"topic": "it"}})
    kinds = [e["event"] for e in events]
    assert kinds[-2:] == ["text_replace", "workflow_finished"], kinds
    assert events[-1]["data"]["status"] == "succeeded" and events[-1]["data"]["outputs"] == {"text": OUTPUT_PRESET}
    assert [m.inputs for m in llm.moderation_requests[before:]] == [["All about the forbidden-topic here."]]


# -- an unusable stored feature ----------------------------------------------------------------------------

@pytest.mark.parametrize(("swa", "message"), [
    (OTHER_TYPE, "type must be one of"),
    ({"enabled": True, "type": "keywords", "config": "badword"}, "dictionary"),
    (keywords_config(keywords=" \n "), "keywords is required"),
])
async def test_unusable_feature_is_moderation_off(client: httpx.AsyncClient, owner: dict[str, str],
                                                  llm: ScriptedLLM, swa: dict[str, Any], message: str) -> None:
    app_id, k = await graph_app(client, owner, "advanced-chat", chat_graph(), swa)
    llm.push(reply="Plain badword answer.", match="badword", times=2)
    with structlog.testing.capture_logs() as logs:
        assert (await ask(client, k, "a badword"))["answer"] == "Plain badword answer."
        assert (await ask(client, k, "badword again"))["answer"] == "Plain badword answer."
    assert len(llm.requests) == 2
    ignored = [e for e in logs if e["event"] == "app_config_setting_ignored"]
    assert len(ignored) == 1, ignored  # checked once per published version, not per request
    assert ignored[0]["log_level"] == "warning" and ignored[0]["app_id"] == app_id and ignored[0]["workflow_id"]
    assert "sensitive_word_avoidance" in ignored[0]["error"] and message in ignored[0]["error"]
    # /parameters shows what is served: moderation off, Dify's default shape (as for a model-config app)
    r = await client.get("/v1/parameters", headers=k)
    assert r.status_code == 200 and r.json()["sensitive_word_avoidance"] == {"enabled": False, "type": "",
                                                                             "configs": []}, r.text

    # a workflow app the same
    _, wk = await graph_app(client, owner, "workflow", g.linear_llm(), swa)
    r = await client.post("/v1/workflows/run", headers=wk,
                          json={"inputs": {"topic": "badword"}, "user": "u1", "response_mode": "blocking"})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["outputs"]["text"] != INPUT_PRESET and len(llm.requests) == 3


async def test_moderator_is_built_once_per_published_version(live: LiveServer, client: httpx.AsyncClient,
                                                             owner: dict[str, str], llm: ScriptedLLM) -> None:
    app_id, k = await graph_app(client, owner, "advanced-chat", chat_graph(), keywords_config())
    runtime = live.ctx.local_apps["runtime"].state.runtime
    svc = runtime.chat.moderation
    assert (await ask(client, k, "badword"))["answer"] == INPUT_PRESET
    keys = [key for key in svc._entries._items if key[0] == app_id]
    assert len(keys) == 1
    first = svc._entries.get(keys[0]).mod
    assert (await ask(client, k, "违禁词"))["answer"] == INPUT_PRESET
    assert svc._entries.get(keys[0]).mod is first
    # a new published version without moderation: its requests are not reviewed
    r = await client.post(f"/console/api/apps/{app_id}/workflows/draft", headers=owner,
                          json={"graph": chat_graph(), "features": {}})
    assert r.status_code == 200, r.text
    assert (await client.post(f"/console/api/apps/{app_id}/workflows/publish", headers=owner, json={})).status_code \
        == 200
    for _ in range(200):  # the publish reaches the runtime's app cache through NATS
        body = await ask(client, k, "badword")
        if body["answer"] != INPUT_PRESET:
            break
        await asyncio.sleep(0.02)
    assert body["answer"] == "Echo: badword"

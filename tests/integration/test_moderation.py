"""Sensitive-word moderation (`sensitive_word_avoidance`) through the gateway of the `all` stack, with the real
litellm path against the scripted OpenAI-compatible server: input keywords answer the preset response
without calling the model; output review replaces a streamed answer with `message_replace`; English and
Chinese; the `openai_moderation` type through litellm's moderation API."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from shared.settings import RuntimeSettings
from tests.conftest import LiveServer, database_url, db_params, make_settings, start_live
from tests.llm_server import ScriptedLLM
from tests.support import Apps, new_app, scripted_owner

INPUT_PRESET = "Sorry, I can't talk about that."
OUTPUT_PRESET = "[answer removed]"
FORM = [{"text-input": {"label": "Topic", "variable": "topic", "required": False, "max_length": 60}}]


def keywords_config(keywords: str = "badword\n违禁词\nsecret plan", *, inputs: bool = True,
                    outputs: bool = True) -> dict[str, Any]:
    return {"enabled": True, "type": "keywords", "config": {
        "keywords": keywords,
        "inputs_config": {"enabled": inputs, "preset_response": INPUT_PRESET},
        "outputs_config": {"enabled": outputs, "preset_response": OUTPUT_PRESET}}}


def model_config(swa: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"model": {"provider": "openai-compatible", "name": "scripted"},
                           "pre_prompt": "Be helpful.", "user_input_form": FORM, **extra}
    if swa is not None:
        cfg["sensitive_word_avoidance"] = swa
    return cfg


@pytest.fixture(scope="module", params=db_params())
async def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, nats_url: str):
    """The `all` stack, with room for a first moderation call on a loaded machine (the OpenAI SDK detects the
    platform once per process, which took seconds here)."""
    tmp = tmp_path_factory.mktemp("moderation")
    settings = make_settings(tmp, database_url(request.param, tmp), nats_url,
                             runtime=RuntimeSettings(moderation_timeout=60))
    srv: LiveServer = await start_live(settings)
    yield srv
    await srv.stop()


@pytest.fixture
async def apps(client: httpx.AsyncClient, llm: ScriptedLLM) -> Apps:
    llm.reset()
    return Apps(client, await scripted_owner(client, llm), prefix="mod")


async def chat(c: httpx.AsyncClient, k: dict[str, str], query: str, **kw: Any) -> httpx.Response:
    return await c.post("/v1/chat-messages", headers=k, json={"inputs": {}, "query": query, "user": "u1", **kw})


async def chat_stream(c: httpx.AsyncClient, k: dict[str, str], query: str, path: str = "/v1/chat-messages",
                      **kw: Any) -> list[dict[str, Any]]:
    body = {"inputs": {}, "query": query, "user": "u1", "response_mode": "streaming", **kw}
    async with c.stream("POST", path, headers=k, json=body) as s:
        assert s.status_code == 200
        return [json.loads(line[6:]) async for line in s.aiter_lines() if line.startswith("data: ")]


async def stored_answer(c: httpx.AsyncClient, k: dict[str, str], conversation_id: str) -> dict[str, Any]:
    r = await c.get("/v1/messages", headers=k, params={"conversation_id": conversation_id, "user": "u1"})
    assert r.status_code == 200, r.text
    return r.json()["data"][-1]


# -- config -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("swa", "message"), [
    ({"enabled": True, "type": "api", "config": {}}, "type must be one of ['keywords', 'openai_moderation']"),
    ({"enabled": True, "type": "keywords"}, "config must be a dict"),
    (keywords_config(inputs=False, outputs=False), "At least one of inputs_config or outputs_config must be enabled"),
    (keywords_config(keywords="\n \n"), "keywords is required"),
    (keywords_config(keywords="\n".join(f"w{i}" for i in range(101))),
     "the number of rows for the keywords must be less than 100"),
    (keywords_config(keywords="x" * 10001), "keywords length must be less than 10000"),
    ({"enabled": True, "type": "keywords", "config": {"keywords": "a", "outputs_config": {"enabled": False},
                                                       "inputs_config": {"enabled": True}}},
     "inputs_config.preset_response is required"),
    ({"enabled": True, "type": "openai_moderation", "config": {
        "inputs_config": {"enabled": False}, "outputs_config": {"enabled": True, "preset_response": "x" * 101}}},
     "outputs_config.preset_response must be less than 100 characters"),
])
async def test_bad_moderation_config_is_400(client: httpx.AsyncClient, apps: Apps, swa: dict, message: str) -> None:
    app_id = await new_app(client, apps.h, "chat", prefix="bad-mod")
    r = await client.post(f"/console/api/apps/{app_id}/model-config", headers=apps.h, json=model_config(swa))
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["code"] == "invalid_param" and message in body["message"], body


async def test_parameters_echo_the_moderation_config(client: httpx.AsyncClient, apps: Apps) -> None:
    swa = keywords_config()
    _, k = await apps.create("chat", model_config(swa))
    p = (await client.get("/v1/parameters", headers=k, params={"user": "u1"})).json()
    assert p["sensitive_word_avoidance"] == swa
    _, k = await apps.create("chat", model_config())
    p = (await client.get("/v1/parameters", headers=k, params={"user": "u1"})).json()
    assert p["sensitive_word_avoidance"] == {"enabled": False, "type": "", "configs": []}


# -- keywords: inputs ----------------------------------------------------------------------------

@pytest.mark.parametrize("query", ["Tell me about the BadWord, please", "请告诉我违禁词是什么", "ＢＡＤＷＯＲＤ?"])
async def test_flagged_input_blocking_answers_the_preset(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM,
                                                          query: str) -> None:
    _, k = await apps.create("chat", model_config(keywords_config()))
    r = await chat(client, k, query)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] == INPUT_PRESET
    assert body["metadata"]["usage"]["total_tokens"] == 0
    assert llm.requests == []  # the model was never asked
    stored = await stored_answer(client, k, body["conversation_id"])
    assert stored["answer"] == INPUT_PRESET and stored["query"] == query and stored["status"] == "normal"


async def test_flagged_input_streaming_chinese(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM) -> None:
    _, k = await apps.create("chat", model_config(keywords_config()))
    events = await chat_stream(client, k, "我想了解违禁词")
    assert [e["event"] for e in events] == ["message", "message_end"]
    assert events[0]["answer"] == INPUT_PRESET
    assert events[0]["message_id"] == events[1]["message_id"] and events[1]["conversation_id"]
    assert events[1]["metadata"]["usage"]["total_tokens"] == 0
    assert llm.requests == []


async def test_flagged_form_input_in_a_completion_app(client: httpx.AsyncClient, apps: Apps,
                                                      llm: ScriptedLLM) -> None:
    _, k = await apps.create("completion", model_config(keywords_config()))
    r = await client.post("/v1/completion-messages", headers=k,
                          json={"inputs": {"topic": "the Secret Plan"}, "query": "", "user": "u1"})
    assert r.status_code == 200, r.text
    assert r.json()["answer"] == INPUT_PRESET and llm.requests == []
    events = await chat_stream(client, k, "", path="/v1/completion-messages", inputs={"topic": "违禁词"})
    assert [e["event"] for e in events] == ["message", "message_end"] and events[0]["answer"] == INPUT_PRESET
    # a clean request reaches the model
    r = await client.post("/v1/completion-messages", headers=k,
                          json={"inputs": {"topic": "gardening"}, "query": "tips", "user": "u1"})
    assert r.json()["answer"].startswith("Echo:") and len(llm.requests) == 1


async def test_inputs_not_reviewed_when_only_outputs_are(client: httpx.AsyncClient, apps: Apps,
                                                         llm: ScriptedLLM) -> None:
    _, k = await apps.create("chat", model_config(keywords_config(inputs=False)))
    llm.push(reply="Nothing to see.", match="badword")
    r = await chat(client, k, "badword")
    assert r.json()["answer"] == "Nothing to see." and len(llm.requests) == 1


# -- keywords: outputs ---------------------------------------------------------------------------

async def test_output_keyword_split_across_chunks_is_replaced(client: httpx.AsyncClient, apps: Apps,
                                                              llm: ScriptedLLM) -> None:
    _, k = await apps.create("chat", model_config(keywords_config()))
    llm.push(tokens=["Sure. ", "The SEC", "RET P", "LAN is ", "to win.", " More text."], match="what is it")
    events = await chat_stream(client, k, "what is it?")
    kinds = [e["event"] for e in events]
    assert kinds[-2:] == ["message_replace", "message_end"], kinds
    replace = events[-2]
    assert replace["answer"] == OUTPUT_PRESET and replace["reason"] == "output_moderation"
    assert replace["message_id"] == events[-1]["message_id"] and replace["task_id"]
    forwarded = "".join(e["answer"] for e in events if e["event"] == "message")
    assert forwarded == "Sure. The SECRET P"  # the chunk completing the keyword and all after it stay back
    stored = await stored_answer(client, k, events[-1]["conversation_id"])
    assert stored["answer"] == OUTPUT_PRESET and stored["status"] == "normal"


async def test_output_replaced_blocking_chinese(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM) -> None:
    _, k = await apps.create("chat", model_config(keywords_config()))
    llm.push(tokens=["这是", "关于违", "禁词", "的回答。"], match="问题")
    r = await chat(client, k, "一个问题")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] == OUTPUT_PRESET
    stored = await stored_answer(client, k, body["conversation_id"])
    assert stored["answer"] == OUTPUT_PRESET


async def test_clean_output_streams_unchanged(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM) -> None:
    _, k = await apps.create("chat", model_config(keywords_config()))
    llm.push(tokens=["bad ", "words ", "are ", "fine apart; 违", "规 too"], match="clean")
    events = await chat_stream(client, k, "clean")
    assert [e["event"] for e in events][-1] == "message_end"
    assert "message_replace" not in [e["event"] for e in events]
    assert "".join(e["answer"] for e in events if e["event"] == "message") == "bad words are fine apart; 违规 too"


# -- openai_moderation through litellm --------------------------------------------------------------

def model_moderation(**io: bool) -> dict[str, Any]:
    return {"enabled": True, "type": "openai_moderation", "config": {
        "provider": "openai-compatible", "model": "omni-moderation-latest",
        "inputs_config": {"enabled": io.get("inputs", True), "preset_response": INPUT_PRESET},
        "outputs_config": {"enabled": io.get("outputs", True), "preset_response": OUTPUT_PRESET}}}


async def test_moderation_model_reviews_inputs_and_outputs(client: httpx.AsyncClient, apps: Apps,
                                                           llm: ScriptedLLM) -> None:
    _, k = await apps.create("chat", model_config(model_moderation()))
    r = await chat(client, k, "let us discuss the FORBIDDEN-TOPIC")
    assert r.status_code == 200, r.text
    assert r.json()["answer"] == INPUT_PRESET and llm.requests == []
    assert llm.moderation_requests[-1].body["model"] == "omni-moderation-latest"
    assert "FORBIDDEN-TOPIC" in llm.moderation_requests[-1].inputs[0]

    llm.push(tokens=["It is ", "a forbidden-", "topic indeed."], match="harmless")
    events = await chat_stream(client, k, "a harmless question")
    assert [e["event"] for e in events][-2:] == ["message_replace", "message_end"]
    assert events[-2]["answer"] == OUTPUT_PRESET
    assert (await stored_answer(client, k, events[-1]["conversation_id"]))["answer"] == OUTPUT_PRESET
    # reviewed: the input, then the whole answer once the model was done (shorter than one review buffer)
    assert llm.moderation_requests[-1].inputs == ["It is a forbidden-topic indeed."]

    r = await chat(client, k, "all good")
    assert r.json()["answer"] == "Echo: all good"


async def test_failing_moderation_model(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM) -> None:
    _, k = await apps.create("chat", model_config(model_moderation()))
    llm.push(endpoint="moderations", status=500)
    r = await chat(client, k, "hello")
    assert r.status_code == 400 and r.json()["code"] == "completion_request_error", r.text
    assert llm.requests == []
    # on the output side a failing reviewer lets the answer through (as Dify does)
    _, k = await apps.create("chat", model_config(model_moderation(inputs=False)))
    llm.push(endpoint="moderations", status=500)
    r = await chat(client, k, "hello again")
    assert r.status_code == 200 and r.json()["answer"] == "Echo: hello again"


async def test_agent_answer_is_replaced(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM) -> None:
    """agent-chat: the answer streams as agent_message, reviewed the same way as a chat answer."""
    tools = [{"provider_type": "builtin", "provider_id": "time", "tool_name": "current_time",
              "tool_parameters": {}, "enabled": True}]
    agent = {"enabled": True, "strategy": "function_call", "max_iteration": 3, "tools": tools}
    _, k = await apps.create("agent-chat", model_config(keywords_config(), agent_mode=agent))
    llm.push(tokens=["Here is ", "the 违", "禁词 ", "answer."], match="tell me")
    events = await chat_stream(client, k, "tell me")
    kinds = [e["event"] for e in events]
    assert kinds[-2:] == ["message_replace", "message_end"], kinds
    assert events[-2]["answer"] == OUTPUT_PRESET
    # the piece completing the keyword and everything after it stay back
    assert "".join(e["answer"] for e in events if e["event"] == "agent_message") == "Here is the 违"
    stored = await stored_answer(client, k, events[-1]["conversation_id"])
    assert stored["answer"] == OUTPUT_PRESET and stored["status"] == "normal"

    llm.push(tokens=["A clean ", "answer."], match="again")
    events = await chat_stream(client, k, "again")
    assert "message_replace" not in [e["event"] for e in events]
    assert "".join(e["answer"] for e in events if e["event"] == "agent_message") == "A clean answer."

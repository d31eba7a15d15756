"""Sensitive-word moderation (`sensitive_word_avoidance`) through the gateway of the `all` stack, with the real
litellm path against the scripted OpenAI-compatible server: input keywords answer the preset response
without calling the model; output review replaces a streamed answer with `message_replace`; English and
Chinese; the `openai_moderation` type through litellm's moderation API."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import structlog
from sqlmodel import select

from services.console.service.common import publish_change
from shared.models import App, AppModelConfig
from shared.settings import RuntimeSettings
from tests.conftest import LiveServer, live_fixture
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


# room for a first moderation call on a loaded machine (the OpenAI SDK detects the platform once per process,
# which took seconds here)
live = live_fixture("moderation", runtime=RuntimeSettings(moderation_timeout=60))


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
    ({"enabled": True, "type": "cloud_service", "config": {}},
     "type must be one of ['keywords', 'openai_moderation', 'api']"),
    ({"enabled": True, "type": "api", "config": {"inputs_config": {"enabled": True}, "outputs_config": {}}},
     "api_based_extension_id is required"),
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


# A config Plexus refuses (a Dify code-based extension type) that may be stored by an import or from before the check.
OTHER_TYPE = {"enabled": True, "type": "cloud_service", "config": {
    "cloud_provider": "AWS",
    "inputs_config": {"enabled": True, "preset_response": INPUT_PRESET},
    "outputs_config": {"enabled": False, "preset_response": ""}}}


@pytest.mark.parametrize(("swa", "message"), [
    (OTHER_TYPE, "type must be one of"),
    ({"enabled": True, "type": "keywords", "config": "badword"}, "dictionary"),  # a wrong shape, not just a rule
])
async def test_stored_unusable_moderation_serves_without_moderation(live: LiveServer, client: httpx.AsyncClient,
                                                                     apps: Apps, llm: ScriptedLLM, swa: dict,
                                                                     message: str) -> None:
    """Strict on save, lenient on load: a stored moderation setting the console would refuse does not make
    the app unusable; it is served as moderation off, with a warning."""
    app_id, k = await apps.create("chat", model_config())
    async with live.ctx.db.session() as s:  # bypass the console, as an older save or import would have
        row = (await s.exec(select(AppModelConfig).where(AppModelConfig.app_id == app_id))).one()
        row.config = {**row.config, "sensitive_word_avoidance": swa}
        s.add(row)
        await s.commit()
    await publish_change(live.ctx.bus, "app", app_id)  # the runtime drops any cached entry

    llm.push(reply="Plain answer.", match="badword")
    with structlog.testing.capture_logs() as logs:
        r = await chat(client, k, "tell me a badword")
    assert r.status_code == 200, r.text
    assert r.json()["answer"] == "Plain answer." and len(llm.requests) == 1
    ignored = [e for e in logs if e["event"] == "app_config_setting_ignored"]
    assert ignored and ignored[0]["log_level"] == "warning" and ignored[0]["app_id"] == app_id
    assert "sensitive_word_avoidance" in ignored[0]["error"] and message in ignored[0]["error"]
    p = (await client.get("/v1/parameters", headers=k, params={"user": "u1"})).json()
    assert p["sensitive_word_avoidance"]["enabled"] is False

    r = await client.post(f"/console/api/apps/{app_id}/model-config", headers=apps.h, json=model_config(swa))
    assert r.status_code == 400 and r.json()["code"] == "invalid_param", r.text
    assert message in r.json()["message"]


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


# -- model review beside the stream; agent thoughts; cached moderators ------------------------------

AGENT_TOOLS = [{"provider_type": "builtin", "provider_id": "time", "tool_name": "current_time",
                "tool_parameters": {}, "enabled": True}]


@pytest.mark.parametrize("strategy", ["function_call", "react"])
async def test_flagged_agent_answer_is_not_kept_in_thoughts(client: httpx.AsyncClient, apps: Apps,
                                                            llm: ScriptedLLM, strategy: str) -> None:
    """The final review happens before the answer's thought is sent or stored."""
    agent = {"enabled": True, "strategy": strategy, "max_iteration": 3, "tools": AGENT_TOOLS}
    _, k = await apps.create("agent-chat", model_config(model_moderation(inputs=False), agent_mode=agent))
    text = "It is a forbidden-topic indeed."
    llm.push(reply=text if strategy == "function_call" else f"Final Answer: {text}", match="tell me")
    events = await chat_stream(client, k, "tell me")
    kinds = [e["event"] for e in events]
    assert kinds[-2:] == ["message_replace", "message_end"], kinds
    assert events[-2]["answer"] == OUTPUT_PRESET
    assert not [e for e in events if text in json.dumps(e)], events
    stored = await stored_answer(client, k, events[-1]["conversation_id"])
    assert stored["answer"] == OUTPUT_PRESET
    assert not [t for t in stored["agent_thoughts"] if "forbidden-topic" in t["thought"]], stored["agent_thoughts"]


@pytest.mark.parametrize("moderation", ["keywords", "model"])
async def test_react_tool_round_thought_is_reviewed(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM,
                                                    moderation: str) -> None:
    """A ReAct tool round's thought goes out only in agent_thought events: it is reviewed before it is sent, and
    a flagged one ends the run with the preset answer, its tool not run."""
    agent = {"enabled": True, "strategy": "react", "max_iteration": 3, "tools": AGENT_TOOLS}
    swa = keywords_config(inputs=False) if moderation == "keywords" else model_moderation(inputs=False)
    _, k = await apps.create("agent-chat", model_config(swa, agent_mode=agent))
    thought = "I will look up the 违禁词 time" if moderation == "keywords" else "A forbidden-topic plan"
    llm.push(match="what time", reply=f'Thought: {thought}.\nAction:\n```\n'
                                      '{"action": "current_time", "action_input": {}}\n```')
    before = len(llm.requests)
    events = await chat_stream(client, k, "what time is it")
    kinds = [e["event"] for e in events]
    assert kinds[-2:] == ["message_replace", "message_end"], kinds
    assert events[-2]["answer"] == OUTPUT_PRESET
    assert not [e for e in events if thought in json.dumps(e, ensure_ascii=False)], events
    assert "agent_thought" not in kinds  # the round's tool call was not made
    # one model call: no observation went back to the model
    assert len([r for r in llm.requests[before:] if r.path.endswith("/chat/completions")]) == 1
    stored = await stored_answer(client, k, events[-1]["conversation_id"])
    assert stored["answer"] == OUTPUT_PRESET

    llm.push(match="what day", reply='Thought: I will check the clock.\nAction:\n```\n'
                                     '{"action": "current_time", "action_input": {}}\n```')
    llm.push(match="Observation:", reply='Thought: done.\nAction:\n```\n'
                                         '{"action": "Final Answer", "action_input": "It is Tuesday."}\n```')
    events = await chat_stream(client, k, "what day is it")
    assert "message_replace" not in [e["event"] for e in events]
    assert next(e for e in events if e["event"] == "agent_thought")["thought"] == "I will check the clock."


@contextlib.contextmanager
def held_moderation(llm: ScriptedLLM, release: asyncio.Event, seen: Callable[[], int],
                    wait: float = 10.0) -> Iterator[list[int]]:
    """The scripted server answers moderation requests only once ``release`` is set (or ``wait`` seconds
    passed, which then also releases the rest); yields, per answered request, ``seen()`` (the stream events
    the client had) when the answer was sent."""
    routes = [r for r in llm.app.router.routes if getattr(r, "path", None) in ("/v1/moderations", "/moderations")]
    originals = [r.app for r in routes]
    answered: list[int] = []

    def held(inner: Any) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            try:
                await asyncio.wait_for(release.wait(), wait)
            except TimeoutError:
                release.set()
            await inner(scope, receive, send)
            answered.append(seen())
        return app

    for r, inner in zip(routes, originals, strict=True):
        r.app = held(inner)
    try:
        yield answered
    finally:
        for r, inner in zip(routes, originals, strict=True):
            r.app = inner


async def stream_held(c: httpx.AsyncClient, k: dict[str, str], llm: ScriptedLLM, query: str,
                      tokens: list[str]) -> tuple[list[dict[str, Any]], list[int]]:
    """Streams an answer of ``tokens`` while the moderation model holds its answers until every token
    reached the client."""
    events: list[dict[str, Any]] = []
    release = asyncio.Event()

    def seen() -> int:
        return sum(e["event"] == "message" for e in events)

    body = {"inputs": {}, "query": query, "user": "u1", "response_mode": "streaming"}
    with held_moderation(llm, release, seen) as answered:
        async with c.stream("POST", "/v1/chat-messages", headers=k, json=body) as s:
            assert s.status_code == 200
            async for line in s.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    if seen() == len(tokens):
                        release.set()
    return events, answered


async def test_model_review_does_not_hold_up_the_stream(client: httpx.AsyncClient, apps: Apps,
                                                        llm: ScriptedLLM) -> None:
    _, k = await apps.create("chat", model_config(model_moderation(inputs=False)))
    tokens = [f"word {i:03d} ok " for i in range(150)]  # 12 characters each: 1,800 in all
    whole = "".join(tokens)
    llm.push(tokens=tokens, match="long story")
    events, answered = await stream_held(client, k, llm, "a long story", tokens)
    # every token reached the client before the first review (sent at 300 characters) was answered
    assert answered and answered[0] == len(tokens), answered
    assert "message_replace" not in [e["event"] for e in events]
    assert "".join(e["answer"] for e in events if e["event"] == "message") == whole
    sent = [r.inputs for r in llm.moderation_requests]
    # one review at a time: the periodic one (the first 300 characters, not more), then the final one of the
    # whole answer once the model was done
    assert len(sent) == 2, sent
    assert whole.startswith(sent[0][0]) and 300 <= len(sent[0][0]) < 400
    assert sent[1] == [whole]


@pytest.mark.parametrize("at", [2, 140])  # found by the periodic review, or only by the final one
async def test_model_review_still_replaces_a_long_flagged_answer(client: httpx.AsyncClient, apps: Apps,
                                                                 llm: ScriptedLLM, at: int) -> None:
    _, k = await apps.create("chat", model_config(model_moderation(inputs=False)))
    tokens = [f"word {i:03d} ok " for i in range(150)]
    tokens[at] = "forbidden-topic "
    llm.push(tokens=tokens, match="long story")
    events, _ = await stream_held(client, k, llm, "a long story", tokens)
    assert [e["event"] for e in events][-2:] == ["message_replace", "message_end"]
    assert events[-2]["answer"] == OUTPUT_PRESET
    assert (await stored_answer(client, k, events[-1]["conversation_id"]))["answer"] == OUTPUT_PRESET


async def test_model_review_of_a_long_answer_is_linear_and_complete(client: httpx.AsyncClient, apps: Apps,
                                                                       llm: ScriptedLLM) -> None:
    _, k = await apps.create("chat", model_config(model_moderation(inputs=False)))
    tokens = [f"w{i:04d} " for i in range(2000)]  # 12,000 characters
    llm.push(tokens=tokens, match="longer story")
    events = await chat_stream(client, k, "a longer story")
    assert events[-1]["event"] == "message_end"
    pieces = [t for r in llm.moderation_requests for t in r.inputs]
    whole = "".join(tokens)
    assert all(len(t) <= 2000 and t in whole for t in pieces)  # each piece a part of the answer, bounded
    assert sum(map(len, pieces)) <= 2.5 * len(whole)  # linear: each review sends its new text and an overlap
    covered = [False] * len(whole)
    for t in pieces:
        start = whole.index(t)
        covered[start:start + len(t)] = [True] * len(t)
    assert all(covered)  # and nothing went unreviewed


async def test_moderator_is_resolved_once_reused_across_reloads_and_closed_when_dropped(
        live: LiveServer, client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM,
        monkeypatch: pytest.MonkeyPatch) -> None:
    app_id, k = await apps.create("chat", model_config(model_moderation(inputs=False)))
    runtime = live.ctx.local_apps["runtime"].state.runtime
    svc = runtime.chat.moderation
    resolved: list[str] = []
    real = svc.for_app

    async def counting(app: Any) -> Any:
        resolved.append(app.id)
        return await real(app)

    monkeypatch.setattr(svc, "for_app", counting)
    assert (await chat(client, k, "one")).json()["answer"] == "Echo: one"
    assert resolved == [app_id]  # once per request, before the message row is written

    async with live.ctx.db.session() as s:
        tenant_id = (await s.exec(select(App.tenant_id).where(App.id == app_id))).one()
    mod = await real(await runtime.apps.get(tenant_id, app_id))
    first = mod.model_kwargs["client"]
    runtime.apps.invalidate_app(app_id)  # the app cache loads the app again, as it does every 60 s
    assert (await chat(client, k, "two")).json()["answer"] == "Echo: two"
    again = await real(await runtime.apps.get(tenant_id, app_id))
    assert again is mod and again.model_kwargs["client"] is first and not first.is_closed()

    r = await client.delete(f"/console/api/apps/{app_id}", headers=apps.h)
    assert r.status_code == 204, r.text
    for _ in range(200):  # the deletion reaches the runtime through NATS
        if first.is_closed():
            break
        await asyncio.sleep(0.02)
    assert first.is_closed()

"""The opt-in answer cache (`answer_cache` in the model config) through the gateway of the `all` stack (in-memory
backend), with the real litellm path against the scripted server; and the Redis backend that split-mode
replicas share (when PLEXUS_TEST_REDIS_URL is set)."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from services.runtime.service.answer_cache import AnswerCache, MemoryBackend, normalise_query
from services.runtime.service.cache import AppEntry
from shared.app_config import parse_model_config
from tests.conftest import REDIS_URL, needs_redis
from tests.llm_server import ScriptedLLM
from tests.support import Apps, scripted_owner

FORM = [{"text-input": {"label": "Lang", "variable": "lang", "required": False}}]


def model_config(cache: bool = True, pre_prompt: str = "Answer in {{lang}}.", **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"model": {"provider": "openai-compatible", "name": "scripted"}, "pre_prompt": pre_prompt,
                           "user_input_form": FORM, **extra}
    if cache:
        cfg["answer_cache"] = {"enabled": True, "ttl_seconds": 600}
    return cfg


@pytest.fixture
async def apps(client: httpx.AsyncClient, llm: ScriptedLLM) -> Apps:
    llm.reset()
    return Apps(client, await scripted_owner(client, llm), prefix="cache")


async def chat(c: httpx.AsyncClient, k: dict[str, str], query: str, user: str = "u1", **kw: Any) -> dict[str, Any]:
    body = {"inputs": {"lang": "English"}, "query": query, "user": user, **kw}
    r = await c.post("/v1/chat-messages", headers=k, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_query_normalisation() -> None:
    assert normalise_query("  What is\tPlexus?\n ") == normalise_query("what is plexus?")
    assert normalise_query("ＡＢＣ　ｄｅｆ") == "abc def"  # full-width letters and the ideographic space
    assert normalise_query("Straße") == normalise_query("STRASSE")


async def test_miss_then_hit_blocking(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM) -> None:
    _, k = await apps.create("chat", model_config())
    llm.push(reply="Plexus is a gateway.", match="What is Plexus")
    first = await chat(client, k, "What is Plexus?")
    assert first["answer"] == "Plexus is a gateway." and "cache_hit" not in first["metadata"]
    assert len(llm.requests) == 1

    # another user, spacing and case differ: the same normalised query, inputs and config
    hit = await chat(client, k, "  what IS   plexus? ", user="u2")
    assert len(llm.requests) == 1  # no model call
    assert hit["answer"] == "Plexus is a gateway."
    assert hit["metadata"]["cache_hit"] is True
    assert hit["metadata"]["usage"]["total_tokens"] == 0
    assert hit["conversation_id"] != first["conversation_id"] and hit["message_id"] != first["message_id"]

    # the hit is a real message of u2's own conversation: history and feedback work
    r = await client.get("/v1/messages", headers=k, params={"conversation_id": hit["conversation_id"], "user": "u2"})
    [item] = r.json()["data"]
    assert item["answer"] == "Plexus is a gateway." and item["query"] == "  what IS   plexus? "
    r = await client.post(f"/v1/messages/{hit['message_id']}/feedbacks", headers=k, json={"rating": "like", "user": "u2"})
    assert r.status_code == 200
    convs = (await client.get("/v1/conversations", headers=k, params={"user": "u2"})).json()["data"]
    assert [c["id"] for c in convs] == [hit["conversation_id"]]


async def test_hit_streaming_events(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM) -> None:
    _, k = await apps.create("chat", model_config())
    await chat(client, k, "stream me")
    body = {"inputs": {"lang": "English"}, "query": "Stream me", "user": "u3", "response_mode": "streaming"}
    async with client.stream("POST", "/v1/chat-messages", headers=k, json=body) as s:
        events = [json.loads(line[6:]) async for line in s.aiter_lines() if line.startswith("data: ")]
    assert [e["event"] for e in events] == ["message", "message_end"]
    assert events[0]["answer"] == "Echo: stream me"
    assert events[1]["metadata"]["cache_hit"] is True and events[1]["conversation_id"] == events[0]["conversation_id"]
    assert len(llm.requests) == 1


async def test_what_is_not_shared(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM) -> None:
    _, k = await apps.create("chat", model_config())
    first = await chat(client, k, "hello there")
    assert len(llm.requests) == 1
    # other inputs: another key
    other = await chat(client, k, "hello there", inputs={"lang": "French"})
    assert "cache_hit" not in other["metadata"] and len(llm.requests) == 2
    # a message in a conversation with memory never uses (nor fills) the cache
    follow = await chat(client, k, "hello there", conversation_id=first["conversation_id"])
    assert "cache_hit" not in follow["metadata"] and len(llm.requests) == 3
    # an app that did not opt in
    _, k2 = await apps.create("chat", model_config(cache=False))
    await chat(client, k2, "hello there")
    again = await chat(client, k2, "hello there")
    assert "cache_hit" not in again["metadata"] and len(llm.requests) == 5


async def test_config_change_invalidates(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM) -> None:
    app_id, k = await apps.create("chat", model_config())
    await chat(client, k, "which version?")
    assert (await chat(client, k, "which version?"))["metadata"].get("cache_hit") is True
    assert len(llm.requests) == 1

    await apps.configure(app_id, model_config(pre_prompt="Version two, in {{lang}}."))
    after = await chat(client, k, "which version?")
    assert "cache_hit" not in after["metadata"] and len(llm.requests) == 2
    assert llm.requests[-1].messages[0]["content"] == "Version two, in English."
    assert (await chat(client, k, "which version?"))["metadata"].get("cache_hit") is True
    assert len(llm.requests) == 2

    # turning the cache off applies at once
    await apps.configure(app_id, model_config(cache=False, pre_prompt="Version two, in {{lang}}."))
    assert "cache_hit" not in (await chat(client, k, "which version?"))["metadata"]
    assert len(llm.requests) == 3


async def test_completion_app_and_failures(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM) -> None:
    _, k = await apps.create("completion", model_config())
    body = {"inputs": {"lang": "English"}, "query": "summarise", "user": "u1"}
    llm.push(status=500, match="summarise")  # a failed answer is not cached
    r = await client.post("/v1/completion-messages", headers=k, json=body)
    assert r.status_code == 400
    first = (await client.post("/v1/completion-messages", headers=k, json=body)).json()
    assert first["answer"] == "Echo: Answer in English.\nsummarise" and "cache_hit" not in first["metadata"]
    hit = (await client.post("/v1/completion-messages", headers=k, json=body)).json()
    assert hit["answer"] == first["answer"] and hit["metadata"]["cache_hit"] is True
    assert "conversation_id" not in hit and len(llm.requests) == 2


async def test_moderated_answers_are_not_cached(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM) -> None:
    swa = {"enabled": True, "type": "keywords", "config": {
        "keywords": "classified", "inputs_config": {"enabled": False},
        "outputs_config": {"enabled": True, "preset_response": "[removed]"}}}
    _, k = await apps.create("chat", model_config(sensitive_word_avoidance=swa))
    llm.push(reply="This is classified.", match="tell me")
    assert (await chat(client, k, "tell me"))["answer"] == "[removed]"
    again = await chat(client, k, "tell me")
    assert "cache_hit" not in again["metadata"] and len(llm.requests) == 2


def test_memory_backend_expiry_and_lru() -> None:
    import asyncio

    async def run() -> None:
        b = MemoryBackend(max_entries=2)
        await b.set("a:1", b"x", ttl=600)
        await b.set("a:2", b"y", ttl=600)
        assert await b.get("a:1") == b"x"  # a:1 is now the newest
        await b.set("b:1", b"z", ttl=600)  # evicts a:2, the least recently used
        assert await b.get("a:2") is None and await b.get("a:1") == b"x"
        await b.set("a:1", b"x", ttl=-1)  # already expired
        assert await b.get("a:1") is None
        assert len(b._items) == 1  # the expired entry is dropped on read, b:1 stays
        await b.forget_app("b")
        assert await b.get("b:1") is None

    asyncio.run(run())


@needs_redis
async def test_redis_backend_is_shared_by_split_replicas() -> None:
    import redis.asyncio as aioredis

    redis = aioredis.from_url(REDIS_URL)
    try:
        settings = SimpleNamespace(runtime=SimpleNamespace(answer_cache_max_entries=10))
        replicas = [AnswerCache(SimpleNamespace(redis=redis, mode="split", settings=settings)) for _ in range(2)]
        config = parse_model_config(model_config())
        app = AppEntry(id=f"test-{uuid.uuid4().hex}", tenant_id="t", name="n", description="", mode="chat",
                       author_name="", config=config, binding=None, loaded_at=0.0, config_id="cfg-1")
        ask = {"endpoint": "chat", "new_conversation": True, "query": "Hi", "inputs": {"lang": "en"},
               "system": "Answer in en."}
        miss = await replicas[0].lookup(app, **ask)
        assert miss is not None and miss.answer is None
        await miss.store("Hello!", "m-1")
        hit = await replicas[1].lookup(app, **{**ask, "query": " hi "})
        assert hit is not None and (hit.answer, hit.source_message_id) == ("Hello!", "m-1")
        assert 0 < await redis.ttl("plexus:answers:" + hit.key) <= 600
        assert (await replicas[1].lookup(app, **{**ask, "new_conversation": False})) is None
        await replicas[1].forget_app(app.id)
        assert (await replicas[0].lookup(app, **ask)).answer is None
    finally:
        await redis.aclose()

"""Conversation titles through the gateway of the `all` stack (SQLite and, in CI, Postgres), with the real litellm
path against the scripted model (reference §2.2 ``auto_generate_name``, §2.8 rename with ``auto_generate``).

A new conversation is named after its query's first line at once. After its first answer, the model writes a
title that replaces that name. This does not happen with ``auto_generate_name`` false or null, for a later
message, for a query that input moderation flagged, for a failed run, or over a rename made meanwhile. The
workspace default LLM is asked when one is set (Dify's choice). Otherwise the app's own model is asked; for
advanced-chat that is its first LLM node's model."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest

from tests import workflow_graphs as g
from tests.conftest import LiveServer
from tests.llm_server import ScriptedLLM
from tests.support import Apps, bearer, scripted_owner
from tests.support import chat_ok as chat

MODEL = {"provider": "openai-compatible", "name": "scripted"}
CONFIG = {"model": MODEL, "pre_prompt": "You are helpful."}
DEFAULT_MODEL = "/console/api/workspaces/current/default-model"
MODERATED = {"enabled": True, "type": "keywords", "config": {
    "keywords": "secret plan", "inputs_config": {"enabled": True, "preset_response": "Not that."},
    "outputs_config": {"enabled": False}}}


@pytest.fixture
async def apps(client: httpx.AsyncClient, llm: ScriptedLLM) -> Apps:
    llm.reset()
    return Apps(client, await scripted_owner(client, llm), prefix="titles")


async def settled(live: LiveServer, timeout: float = 20) -> None:
    """Wait until the runtime has no title pending (each either stored or given up)."""
    helper = live.ctx.local_apps["runtime"].state.runtime.helper
    deadline = time.monotonic() + timeout
    while helper.pending and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert helper.pending == 0


async def name_of(c: httpx.AsyncClient, k: dict[str, str], conv: str, user: str = "u1") -> str:
    r = await c.get("/v1/conversations", headers=k, params={"user": user, "limit": 100})
    assert r.status_code == 200, r.text
    return next(x["name"] for x in r.json()["data"] if x["id"] == conv)


def titled(llm: ScriptedLLM, query: str) -> list[Any]:
    return [r for r in llm.title_requests if r.last_user == query]


async def test_first_answer_names_the_conversation(live: LiveServer, client: httpx.AsyncClient, apps: Apps,
                                                   llm: ScriptedLLM) -> None:
    _, k = await apps.create("chat", CONFIG)
    query = f"Tell me about tides {uuid.uuid4().hex[:6]}\nand the moon"
    llm.push(endpoint="title", match=query, reply='"Tides and the Moon."')
    first = await chat(client, k, query)
    await settled(live)
    assert await name_of(client, k, first["conversation_id"]) == "Tides and the Moon"
    call = titled(llm, query)[-1]  # the app's model, asked once, not streamed
    assert len(titled(llm, query)) == 1 and call.body["model"] == "scripted" and not call.body.get("stream")
    assert [r.last_user for r in llm.requests] == [query]  # the answer's call is the only one it sees

    # streamed too, by a reasoning model whose thinking is left out; a later message does not rename it
    q2 = f"How high do tides rise {uuid.uuid4().hex[:6]}"
    llm.push(endpoint="title", match=q2, reply="<think>\nA short name, then.\n</think>\n\nTidal ranges")  # inline thinking
    r = await client.post("/v1/chat-messages", headers=k, json={"inputs": {}, "query": q2, "user": "u1",
                                                                "response_mode": "streaming"})
    assert r.status_code == 200 and "message_end" in r.text
    conv2 = next(line for line in r.text.splitlines() if '"conversation_id"' in line)
    conv2 = conv2.split('"conversation_id":"', 1)[1].split('"', 1)[0]
    await settled(live)
    assert await name_of(client, k, conv2) == "Tidal ranges"
    q3 = "And in the Bay of Fundy?"
    await chat(client, k, q3, conversation_id=first["conversation_id"])
    await settled(live)
    assert titled(llm, q3) == [] and await name_of(client, k, first["conversation_id"]) == "Tides and the Moon"


async def test_off_flagged_failed_and_renamed_keep_their_names(live: LiveServer, client: httpx.AsyncClient,
                                                               apps: Apps, llm: ScriptedLLM) -> None:
    _, k = await apps.create("chat", {**CONFIG, "sensitive_word_avoidance": MODERATED})
    tag = uuid.uuid4().hex[:6]
    off, null = f"no title please {tag}", f"null title {tag}"
    flagged, failed, renamed = f"the secret plan {tag}", f"this will fail {tag}", f"rename me {tag}"
    for q in (off, null, flagged, failed, renamed):
        llm.push(endpoint="title", match=q, reply=f"Title for {q}", first_delay=0.5 if q == renamed else 0)
    convs = {off: (await chat(client, k, off, auto_generate_name=False))["conversation_id"],
             null: (await chat(client, k, null, auto_generate_name=None))["conversation_id"],
             flagged: (await chat(client, k, flagged))["conversation_id"]}
    llm.push(match=failed, status=500)
    r = await client.post("/v1/chat-messages", headers=k, json={"inputs": {}, "query": failed, "user": "u1"})
    assert r.status_code == 400 and r.json()["code"] == "completion_request_error"
    convs[renamed] = (await chat(client, k, renamed))["conversation_id"]
    # renamed while its title is being written (the title call takes 0.5 s): the rename stays
    r = await client.post(f"/v1/conversations/{convs[renamed]}/name", headers=k, json={"name": "Mine", "user": "u1"})
    assert r.status_code == 200, r.text
    await settled(live)
    assert len(titled(llm, renamed)) == 1  # it was asked, and its answer dropped
    assert await name_of(client, k, convs[renamed]) == "Mine"
    for q in (off, null, flagged):
        assert titled(llm, q) == []
        assert await name_of(client, k, convs[q]) == q
    assert titled(llm, failed) == []


async def test_workspace_default_llm_writes_titles_and_suggestions(live: LiveServer, client: httpx.AsyncClient,
                                                                   apps: Apps, llm: ScriptedLLM) -> None:
    _, k = await apps.create("chat", {**CONFIG, "suggested_questions_after_answer": {"enabled": True}})
    r = await client.post(DEFAULT_MODEL, headers=apps.h, json={"model_settings": [
        {"model_type": "llm", "provider": "openai-compatible", "model": "scripted-helper"}]})
    assert r.status_code == 200, r.text
    try:
        query = f"Which planet is largest {uuid.uuid4().hex[:6]}"
        llm.push(endpoint="title", match=query, reply="Largest planet")
        msg = await chat(client, k, query)
        await settled(live)
        assert await name_of(client, k, msg["conversation_id"]) == "Largest planet"
        assert titled(llm, query)[-1].body["model"] == "scripted-helper"
        assert llm.requests[-1].body["model"] == "scripted"  # the answer still comes from the app's model
        llm.push(match="predict the three", reply='["Is it a gas giant?"]')
        r = await client.get(f"/v1/messages/{msg['message_id']}/suggested", headers=k, params={"user": "u1"})
        assert r.status_code == 200 and r.json()["data"] == ["Is it a gas giant?"], r.text
        assert llm.requests[-1].body["model"] == "scripted-helper"
    finally:
        r = await client.post(DEFAULT_MODEL, headers=apps.h, json={"model_settings": [{"model_type": "llm"}]})
        assert r.status_code == 200, r.text


async def test_advanced_chat_title_from_its_llm_node(live: LiveServer, client: httpx.AsyncClient, apps: Apps,
                                                     llm: ScriptedLLM) -> None:
    c, h = client, apps.h
    r = await c.post("/console/api/apps", headers=h, json={"name": f"titles-ac-{uuid.uuid4().hex[:8]}",
                                                           "mode": "advanced-chat"})
    app_id = r.json()["id"]
    r = await c.post(f"/console/api/apps/{app_id}/workflows/draft", headers=h, json={
        "graph": g.chatflow(), "features": {}, "conversation_variables": g.CONVERSATION_VARIABLES})
    assert r.status_code == 200, r.text
    assert (await c.post(f"/console/api/apps/{app_id}/workflows/publish", headers=h, json={})).status_code == 200
    k = bearer((await c.post(f"/console/api/apps/{app_id}/api-keys", headers=h)).json()["token"])
    query = f"flow about rivers {uuid.uuid4().hex[:6]}"
    llm.push(endpoint="title", match=query, reply="Rivers")
    msg = await chat(c, k, query)
    await settled(live)
    assert await name_of(c, k, msg["conversation_id"]) == "Rivers"
    assert titled(llm, query)[-1].body["model"] == g.MODEL["name"]

"""Annotations and annotation reply (reference §2.16) through the gateway of the `all` stack: CRUD with paging,
keyword and errors; enable/disable jobs; chat answered from a close annotation without a model call (blocking
and streaming, hit_count), far queries and disabled reply going to the model; the built-in embedding model and a
workspace embedding model (the scripted server's /v1/embeddings) through litellm; an advanced-chat app answered
from an annotation without running its workflow."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest
from sqlmodel import select

from services.indexer.handlers import _guarded
from services.indexer.service.annotations import AnnotationVectors
from shared.models import App, Message, WorkflowRun
from shared.subjects import ANNOTATION_SEARCH, KNOWLEDGE_QUEUE
from tests import workflow_graphs as g
from tests.conftest import LiveServer
from tests.llm_server import ScriptedLLM
from tests.support import Apps, bearer, new_app, new_app_key, scripted_owner

CONFIG = {"model": {"provider": "openai-compatible", "name": "scripted"}, "pre_prompt": "Be brief."}


@pytest.fixture
async def apps(client: httpx.AsyncClient, llm: ScriptedLLM) -> Apps:
    llm.reset()
    return Apps(client, await scripted_owner(client, llm), prefix="ann")


async def add(c: httpx.AsyncClient, k: dict[str, str], question: str, answer: str) -> dict[str, Any]:
    r = await c.post("/v1/apps/annotations", headers=k, json={"question": question, "answer": answer})
    assert r.status_code == 201, r.text
    return r.json()


async def listing(c: httpx.AsyncClient, k: dict[str, str], **params: Any) -> dict[str, Any]:
    r = await c.get("/v1/apps/annotations", headers=k, params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def reply_job(c: httpx.AsyncClient, k: dict[str, str], action: str, **body: Any) -> dict[str, Any]:
    """Start an enable/disable job and wait until it is no longer waiting or processing."""
    r = await c.post(f"/v1/apps/annotation-reply/{action}", headers=k, json=body)
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["job_status"] == "waiting" and uuid.UUID(job["job_id"])
    deadline = time.monotonic() + 60
    while True:
        r = await c.get(f"/v1/apps/annotation-reply/{action}/status/{job['job_id']}", headers=k)
        assert r.status_code == 200, r.text
        status = r.json()
        assert status["job_id"] == job["job_id"]
        if status["job_status"] not in ("waiting", "processing"):
            return status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.05)


async def chat(c: httpx.AsyncClient, k: dict[str, str], query: str, user: str = "u1",
               conversation_id: str | None = None) -> dict[str, Any]:
    r = await c.post("/v1/chat-messages", headers=k, json={"inputs": {}, "query": query, "user": user,
                                                           "conversation_id": conversation_id})
    assert r.status_code == 200, r.text
    return r.json()


async def stream(c: httpx.AsyncClient, k: dict[str, str], query: str, user: str = "u1",
                 conversation_id: str | None = None) -> list[dict[str, Any]]:
    body = {"inputs": {}, "query": query, "user": user, "response_mode": "streaming",
            "conversation_id": conversation_id}
    async with c.stream("POST", "/v1/chat-messages", headers=k, json=body) as s:
        assert s.status_code == 200
        return [json.loads(line[6:]) async for line in s.aiter_lines() if line.startswith("data: ")]


async def parameters_enabled(c: httpx.AsyncClient, k: dict[str, str]) -> bool:
    r = await c.get("/v1/parameters", headers=k)
    assert r.status_code == 200, r.text
    return r.json()["annotation_reply"]["enabled"]


def error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code and body["status"] == status
    return body["message"]


# -- CRUD ---------------------------------------------------------------------------------------------


async def test_crud_paging_keyword(client: httpx.AsyncClient, apps: Apps) -> None:
    _, k = await apps.create("chat", CONFIG)
    assert await listing(client, k) == {"data": [], "has_more": False, "limit": 20, "total": 0, "page": 1}

    first = await add(client, k, "What is Plexus?", "A Dify-compatible backend.")
    assert set(first) == {"id", "question", "answer", "hit_count", "created_at"}
    assert first["question"] == "What is Plexus?" and first["answer"] == "A Dify-compatible backend."
    assert first["hit_count"] == 0 and isinstance(first["created_at"], int)
    second = await add(client, k, "How do I reset my password?", "Use the 100% secure reset_link page.")
    third = await add(client, k, "如何重置密码？", "请访问设置页面。")

    everything = await listing(client, k)
    assert everything["total"] == 3 and not everything["has_more"]
    assert {a["id"] for a in everything["data"]} == {first["id"], second["id"], third["id"]}

    p1 = await listing(client, k, page=1, limit=2)
    p2 = await listing(client, k, page=2, limit=2)
    assert (p1["page"], p1["limit"], p1["total"], p1["has_more"]) == (1, 2, 3, True)
    assert (p2["page"], p2["total"], p2["has_more"]) == (2, 3, False)
    assert len(p1["data"]) == 2 and len(p2["data"]) == 1
    assert {a["id"] for a in p1["data"] + p2["data"]} == {first["id"], second["id"], third["id"]}

    # keyword: in the question or the answer, any case, % and _ literal
    assert [a["id"] for a in (await listing(client, k, keyword="plexus"))["data"]] == [first["id"]]
    assert [a["id"] for a in (await listing(client, k, keyword="DIFY-COMPATIBLE"))["data"]] == [first["id"]]
    assert [a["id"] for a in (await listing(client, k, keyword="100%"))["data"]] == [second["id"]]
    assert [a["id"] for a in (await listing(client, k, keyword="t_l"))["data"]] == [second["id"]]  # reset_link
    assert (await listing(client, k, keyword="%"))["total"] == 1
    assert [a["id"] for a in (await listing(client, k, keyword="重置"))["data"]] == [third["id"]]
    assert (await listing(client, k, keyword="nothing like this"))["total"] == 0

    r = await client.put(f"/v1/apps/annotations/{first['id']}", headers=k,
                         json={"question": "What is Plexus, really?", "answer": "A backend for LLM apps."})
    assert r.status_code == 200, r.text
    assert r.json() == {**first, "question": "What is Plexus, really?", "answer": "A backend for LLM apps."}

    r = await client.delete(f"/v1/apps/annotations/{second['id']}", headers=k)
    assert r.status_code == 204 and r.content == b""
    after = await listing(client, k)
    assert after["total"] == 2 and second["id"] not in {a["id"] for a in after["data"]}

    # another app of the same workspace sees none of them
    _, k2 = await apps.create("chat", CONFIG)
    assert (await listing(client, k2))["total"] == 0
    r = await client.put(f"/v1/apps/annotations/{first['id']}", headers=k2, json={"question": "q", "answer": "a"})
    assert error(r, 404, "not_found") == "Annotation not found"


async def test_crud_errors(client: httpx.AsyncClient, apps: Apps) -> None:
    _, k = await apps.create("agent-chat", CONFIG)  # every chat mode has annotations
    ann = await add(client, k, "q", "a")
    for body in ({"question": "", "answer": "a"}, {"question": "q"}, {"question": "q", "answer": "   "},
                 {"question": 3, "answer": "a"}, {}):
        assert "required" in error(await client.post("/v1/apps/annotations", headers=k, json=body),
                                   400, "invalid_param")
    r = await client.put(f"/v1/apps/annotations/{ann['id']}", headers=k, json={"question": "q2", "answer": ""})
    assert "answer" in error(r, 400, "invalid_param")
    unknown = str(uuid.uuid4())
    for method in ("PUT", "DELETE"):
        for ident in (unknown, "not-a-uuid"):
            r = await client.request(method, f"/v1/apps/annotations/{ident}", headers=k,
                                     json={"question": "q", "answer": "a"})
            assert error(r, 404, "not_found") == "Annotation not found"
    r = await client.delete(f"/v1/apps/annotations/{ann['id']}", headers=k)
    assert r.status_code == 204
    r = await client.delete(f"/v1/apps/annotations/{ann['id']}", headers=k)
    assert error(r, 404, "not_found") == "Annotation not found"

    for params in ({"page": 0}, {"limit": 0}, {"limit": 101}, {"page": 100000}):
        r = await client.get("/v1/apps/annotations", headers=k, params=params)
        error(r, 400, "invalid_param")
    r = await client.get("/v1/apps/annotations", headers=k, params={"page": "x"})
    error(r, 400, "invalid_param")
    r = await client.post("/v1/apps/annotations", headers={**k, "Content-Type": "application/json"},
                          content=b"{not json")
    assert r.status_code == 400 and r.json()["status"] == 400

    # a key limited to permissions may not manage annotations (docs/access.md): none names them
    app_id = (await apps.create("chat", CONFIG))[0]
    r = await client.post(f"/console/api/apps/{app_id}/api-keys", headers=apps.h,
                          json={"permissions": ["chat", "history"]})
    assert r.status_code == 201, r.text
    scoped = {"Authorization": f"Bearer {r.json()['token']}"}
    for method, path in (("GET", "/v1/apps/annotations"), ("POST", "/v1/apps/annotation-reply/enable")):
        assert "without permission limits" in error(await client.request(method, path, headers=scoped, json={}),
                                                    403, "forbidden")

    # not a chat app
    _, kc = await apps.create("completion", CONFIG)
    for method, path in (("GET", "/v1/apps/annotations"), ("POST", "/v1/apps/annotations"),
                         ("POST", "/v1/apps/annotation-reply/enable")):
        r = await client.request(method, path, headers=kc, json={"question": "q", "answer": "a",
                                                                 "score_threshold": 0.9})
        error(r, 400, "not_chat_app")


async def test_reply_action_errors(client: httpx.AsyncClient, apps: Apps) -> None:
    _, k = await apps.create("chat", CONFIG)
    r = await client.post("/v1/apps/annotation-reply/toggle", headers=k, json={"score_threshold": 0.9})
    assert error(r, 400, "invalid_param") == "Unsupported annotation reply action"
    r = await client.get(f"/v1/apps/annotation-reply/toggle/status/{uuid.uuid4()}", headers=k)
    error(r, 400, "invalid_param")
    r = await client.get(f"/v1/apps/annotation-reply/enable/status/{uuid.uuid4()}", headers=k)
    assert error(r, 400, "invalid_param") == "The job does not exist."
    for body in ({}, {"score_threshold": 1.5}, {"score_threshold": "high"}, {"score_threshold": True},
                 {"score_threshold": 0.9, "embedding_provider_name": "openai-compatible"},
                 {"score_threshold": 0.9, "embedding_model_name": "m"}):
        r = await client.post("/v1/apps/annotation-reply/enable", headers=k, json=body)
        error(r, 400, "invalid_param")
    r = await client.post("/v1/apps/annotation-reply/enable", headers=k, json=[1])
    error(r, 400, "invalid_param")
    # a job of the other action is not this one
    done = await reply_job(client, k, "disable")
    assert done == {"job_id": done["job_id"], "job_status": "completed", "error_msg": ""}
    r = await client.get(f"/v1/apps/annotation-reply/enable/status/{done['job_id']}", headers=k)
    assert error(r, 400, "invalid_param") == "The job does not exist."


# -- annotation reply ------------------------------------------------------------------------------------


async def test_reply_with_builtin_model(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM) -> None:
    _, k = await apps.create("chat", CONFIG)
    plexus = await add(client, k, "What is Plexus?", "Plexus is a Dify-compatible backend.")
    zh = await add(client, k, "如何重置密码？", "请在设置页面点击重置密码。")
    assert await parameters_enabled(client, k) is False

    # off: the model answers even the annotated question
    before = await chat(client, k, "What is Plexus?")
    assert before["answer"] == "Echo: What is Plexus?" and "annotation_reply" not in before["metadata"]
    calls = len(llm.requests)

    done = await reply_job(client, k, "enable", score_threshold=0.85, embedding_provider_name="",
                           embedding_model_name="")
    assert done["job_status"] == "completed" and done["error_msg"] == ""
    assert await parameters_enabled(client, k) is True

    # a close query: the annotation answers, the model is not called
    hit = await chat(client, k, "what is plexus")
    assert len(llm.requests) == calls
    assert hit["answer"] == "Plexus is a Dify-compatible backend."
    # Dify's shape: the account is always an object, "Dify user" when no console account wrote it
    assert hit["metadata"]["annotation_reply"] == {"id": plexus["id"], "account": {"id": None, "name": "Dify user"}}
    assert hit["metadata"]["usage"]["total_tokens"] == 0
    # stored like any answer: the conversation's history shows it
    r = await client.get("/v1/messages", headers=k, params={"conversation_id": hit["conversation_id"], "user": "u1"})
    assert [m["answer"] for m in r.json()["data"]] == ["Plexus is a Dify-compatible backend."]

    events = await stream(client, k, "Tell me what Plexus is")
    assert len(llm.requests) == calls
    assert [e["event"] for e in events] == ["message", "message_end"]
    assert events[0]["answer"] == "Plexus is a Dify-compatible backend."
    assert events[1]["metadata"]["annotation_reply"] == hit["metadata"]["annotation_reply"]

    # a Chinese annotation and query
    zh_hit = await chat(client, k, "如何重置密码？")
    assert zh_hit["answer"] == "请在设置页面点击重置密码。" and len(llm.requests) == calls
    assert zh_hit["metadata"]["annotation_reply"]["id"] == zh["id"]

    hits = {a["id"]: a["hit_count"] for a in (await listing(client, k))["data"]}
    assert hits == {plexus["id"]: 2, zh["id"]: 1}

    # a far query goes to the model
    far = await chat(client, k, "How do I bake sourdough bread?")
    assert far["answer"] == "Echo: How do I bake sourdough bread?" and "annotation_reply" not in far["metadata"]
    zh_far = await chat(client, k, "今天天气怎么样")
    assert zh_far["answer"] == "Echo: 今天天气怎么样" and len(llm.requests) == calls + 2

    # an update changes the reply; a new annotation is searchable at once
    r = await client.put(f"/v1/apps/annotations/{plexus['id']}", headers=k,
                         json={"question": "What is Plexus?", "answer": "Plexus, version two."})
    assert r.status_code == 200
    assert (await chat(client, k, "What is Plexus?"))["answer"] == "Plexus, version two."
    bread = await add(client, k, "How do I bake sourdough bread?", "Feed the starter first.")
    got = await chat(client, k, "how do I bake sourdough bread")
    assert got["answer"] == "Feed the starter first." and got["metadata"]["annotation_reply"]["id"] == bread["id"]
    # a changed question is embedded again: the old one no longer matches it
    r = await client.put(f"/v1/apps/annotations/{bread['id']}", headers=k,
                         json={"question": "Which port does the gateway listen on?", "answer": "Port 8080."})
    assert r.status_code == 200
    assert (await chat(client, k, "how do I bake sourdough bread"))["answer"].startswith("Echo: ")
    assert (await chat(client, k, "which port does the gateway listen on"))["answer"] == "Port 8080."
    calls = len(llm.requests)

    # a deleted annotation no longer answers
    r = await client.delete(f"/v1/apps/annotations/{plexus['id']}", headers=k)
    assert r.status_code == 204
    assert (await chat(client, k, "What is Plexus?"))["answer"] == "Echo: What is Plexus?"
    assert len(llm.requests) == calls + 1

    # disabled: the model again, even for a remaining annotation
    done = await reply_job(client, k, "disable")
    assert done["job_status"] == "completed"
    assert await parameters_enabled(client, k) is False
    off = await chat(client, k, "如何重置密码？")
    assert off["answer"] == "Echo: 如何重置密码？" and "annotation_reply" not in off["metadata"]
    assert len(llm.requests) == calls + 2

    # enabled again: every annotation is embedded again
    assert (await reply_job(client, k, "enable", score_threshold=0.85))["job_status"] == "completed"
    assert (await chat(client, k, "如何重置密码？"))["answer"] == "请在设置页面点击重置密码。"


async def test_reply_is_per_app(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM) -> None:
    _, k1 = await apps.create("chat", CONFIG)
    _, k2 = await apps.create("chat", CONFIG)
    await add(client, k1, "What is the refund policy?", "Thirty days, no questions asked.")
    await add(client, k2, "Where is the office?", "In Lisbon.")
    # more than one embedding batch (32): the enable job pages through all of them
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "black"]
    for i in range(35):
        await add(client, k1, f"Is the {colours[i % 7]} widget model {i} waterproof?", f"Widget {i}: yes.")
    for k in (k1, k2):
        assert (await reply_job(client, k, "enable", score_threshold=0.9))["job_status"] == "completed"
    assert (await chat(client, k1, "is the black widget model 34 waterproof"))["answer"] == "Widget 34: yes."
    assert (await chat(client, k1, "what is the refund policy"))["answer"] == "Thirty days, no questions asked."
    # the other app's annotation is not this app's answer
    assert (await chat(client, k2, "what is the refund policy"))["answer"] == "Echo: what is the refund policy"
    assert (await chat(client, k2, "where is the office"))["answer"] == "In Lisbon."


async def test_reply_with_workspace_model(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM) -> None:
    """A named workspace embedding model (the scripted server's trigram vectors) through litellm."""
    _, k = await apps.create("chat", CONFIG)
    ann = await add(client, k, "reset my password please", "Use the reset link.")
    model = f"embed-{uuid.uuid4().hex[:8]}"
    done = await reply_job(client, k, "enable", score_threshold=0.8, embedding_provider_name="openai-compatible",
                           embedding_model_name=model)
    assert done["job_status"] == "completed", done
    assert [r.inputs for r in llm.embedding_requests if r.body.get("model") == model] == [
        ["reset my password please"]]
    calls = len(llm.requests)
    hit = await chat(client, k, "reset my password please!")
    assert hit["answer"] == "Use the reset link." and hit["metadata"]["annotation_reply"]["id"] == ann["id"]
    assert len(llm.requests) == calls
    assert [r.inputs for r in llm.embedding_requests if r.body.get("model") == model][-1] == [
        "reset my password please!"]
    assert (await chat(client, k, "weather in paris"))["answer"] == "Echo: weather in paris"


async def test_enable_error_and_search_failure(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM,
                                               live: LiveServer) -> None:
    _, k = await apps.create("chat", CONFIG)
    await add(client, k, "What is Plexus?", "A backend.")
    # a provider the workspace has no credentials for: the job ends in error, with the reason
    failed = await reply_job(client, k, "enable", score_threshold=0.9, embedding_provider_name="anthropic",
                             embedding_model_name="none")
    assert failed["job_status"] == "error" and "credentials" in failed["error_msg"]
    assert await parameters_enabled(client, k) is False

    assert (await reply_job(client, k, "enable", score_threshold=0.9))["job_status"] == "completed"
    calls = len(llm.requests)
    assert (await chat(client, k, "What is Plexus?"))["answer"] == "A backend."
    # the indexer stops answering annotation searches: the model answers, the chat does not fail
    indexer = live.ctx.local_apps["indexer"]
    search_sub = indexer.state.annotation_subs[2]
    await search_sub.unsubscribe()
    try:
        got = await chat(client, k, "What is Plexus?")
        assert got["answer"] == "Echo: What is Plexus?" and len(llm.requests) == calls + 1
    finally:  # serve searches again for the rest of the module
        vectors = AnnotationVectors(indexer.state.knowledge)
        indexer.state.annotation_subs[2] = await live.ctx.bus.serve_json(
            ANNOTATION_SEARCH, _guarded(vectors.search), queue=KNOWLEDGE_QUEUE, concurrency=4)
        await live.ctx.bus.sync()
    assert (await chat(client, k, "What is Plexus?"))["answer"] == "A backend."


async def stored_hits(live: LiveServer, app_id: str, query: str, provider: str | None = None,
                      model: str | None = None) -> list[dict[str, Any]]:
    """The app's points in one embedding model's annotation space nearest ``query``, asked of the indexer."""
    async with live.ctx.db.session() as s:
        tenant_id = (await s.exec(select(App.tenant_id).where(App.id == app_id))).one()
    msg = await live.ctx.bus.nc.request(ANNOTATION_SEARCH, orjson.dumps({
        "tenant_id": tenant_id, "app_id": app_id, "provider": provider, "model": model, "query": query,
        "score_threshold": 0.0, "top_k": 5}), timeout=30)
    return orjson.loads(msg.data)["hits"]


async def test_reenable_with_another_model(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM,
                                           live: LiveServer) -> None:
    """Enabling again with another model: a failure leaves the reply in force answering from its vectors; a
    success answers from the new model's vectors and only then removes the old model's."""
    app_id, k = await apps.create("chat", CONFIG)
    ann = await add(client, k, "What is Plexus?", "A backend.")
    assert (await reply_job(client, k, "enable", score_threshold=0.9))["job_status"] == "completed"
    assert [h["id"] for h in await stored_hits(live, app_id, "What is Plexus?")] == [ann["id"]]

    failed = await reply_job(client, k, "enable", score_threshold=0.9, embedding_provider_name="anthropic",
                             embedding_model_name="none")
    assert failed["job_status"] == "error" and "credentials" in failed["error_msg"]
    assert await parameters_enabled(client, k) is True
    calls = len(llm.requests)
    hit = await chat(client, k, "What is Plexus?")
    assert hit["answer"] == "A backend." and hit["metadata"]["annotation_reply"]["id"] == ann["id"]
    assert len(llm.requests) == calls
    assert [h["id"] for h in await stored_hits(live, app_id, "What is Plexus?")] == [ann["id"]]

    model = f"embed-{uuid.uuid4().hex[:8]}"
    done = await reply_job(client, k, "enable", score_threshold=0.8, embedding_provider_name="openai-compatible",
                           embedding_model_name=model)
    assert done["job_status"] == "completed", done
    hit = await chat(client, k, "What is Plexus?")
    assert hit["answer"] == "A backend." and len(llm.requests) == calls
    assert [r.inputs for r in llm.embedding_requests if r.body.get("model") == model][-1] == ["What is Plexus?"]
    assert await stored_hits(live, app_id, "What is Plexus?") == []  # the built-in model's vectors are gone


# -- annotation reply in advanced-chat apps ---------------------------------------------------------------


async def chatflow_app(c: httpx.AsyncClient, apps: Apps) -> tuple[str, dict[str, str]]:
    """An advanced-chat app publishing tests/workflow_graphs.py's chatflow (turns += 1, an LLM with memory)."""
    app_id = await new_app(c, apps.h, "advanced-chat", prefix="ann-chatflow")
    r = await c.post(f"/console/api/apps/{app_id}/workflows/draft", headers=apps.h, json={
        "graph": g.chatflow(), "features": {}, "conversation_variables": g.CONVERSATION_VARIABLES})
    assert r.status_code == 200, r.text
    r = await c.post(f"/console/api/apps/{app_id}/workflows/publish", headers=apps.h, json={})
    assert r.status_code == 200, r.text
    return app_id, bearer(await new_app_key(c, apps.h, app_id))


async def turns(c: httpx.AsyncClient, k: dict[str, str], conversation_id: str) -> str:
    r = await c.get(f"/v1/conversations/{conversation_id}/variables", headers=k, params={"user": "u1"})
    assert r.status_code == 200, r.text
    (var,) = r.json()["data"]
    assert var["name"] == "turns"
    return var["value"]


async def test_reply_in_advanced_chat(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM,
                                      live: LiveServer) -> None:
    app_id, k = await chatflow_app(client, apps)
    ann = await add(client, k, "What is Plexus?", "Plexus is a Dify-compatible backend.")
    assert (await reply_job(client, k, "enable", score_threshold=0.85))["job_status"] == "completed"
    assert await parameters_enabled(client, k) is True
    reply = {"id": ann["id"], "account": {"id": None, "name": "Dify user"}}
    calls = len(llm.requests)

    # streaming, a close query: the annotation answers; no model call and no workflow events (none ran)
    events = await stream(client, k, "what is plexus")
    assert len(llm.requests) == calls
    assert [e["event"] for e in events] == ["message", "message_end"], events
    conv, msg = events[0]["conversation_id"], events[0]["message_id"]
    assert uuid.UUID(conv) and uuid.UUID(msg)
    assert all(e["conversation_id"] == conv and e["message_id"] == msg and e["id"] == msg for e in events)
    assert events[0]["answer"] == "Plexus is a Dify-compatible backend."
    assert events[0]["task_id"] == events[1]["task_id"]
    assert events[1]["metadata"]["annotation_reply"] == reply
    usage = events[1]["metadata"]["usage"]
    assert usage["total_tokens"] == 0 and float(usage["total_price"]) == 0 and len(usage) == 12
    # the new conversation has its conversation variables, at their defaults
    assert await turns(client, k, conv) == "0"

    # blocking: the usual advanced-chat body
    hit = await chat(client, k, "Tell me what Plexus is")
    assert len(llm.requests) == calls
    assert set(hit) == {"event", "task_id", "id", "message_id", "conversation_id", "mode", "answer", "metadata",
                        "created_at"}
    assert hit["event"] == "message" and hit["mode"] == "advanced-chat" and hit["id"] == hit["message_id"]
    assert hit["answer"] == "Plexus is a Dify-compatible backend." and hit["conversation_id"] != conv
    assert hit["metadata"]["annotation_reply"] == reply and hit["metadata"]["usage"]["total_tokens"] == 0

    # a far query in the conversation the hit started runs the workflow; its memory holds the annotated turn
    far = await stream(client, k, "How do I bake sourdough bread?", conversation_id=conv)
    kinds = [e["event"] for e in far]
    assert kinds[0] == "workflow_started" and "workflow_finished" in kinds and "message_end" in kinds, kinds
    assert "".join(e["answer"] for e in far if e["event"] == "message") == \
        "Turn 1: Echo: How do I bake sourdough bread?"
    assert all(e["conversation_id"] == conv for e in far)
    end = next(e for e in far if e["event"] == "message_end")
    assert "annotation_reply" not in end["metadata"]
    assert len(llm.requests) == calls + 1
    sent = llm.requests[-1].messages
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert (sent[1]["content"], sent[2]["content"]) == ("what is plexus", "Plexus is a Dify-compatible backend.")
    assert await turns(client, k, conv) == "1"

    # a hit in the existing conversation keeps it and leaves its variables alone
    again = await chat(client, k, "what is Plexus?", conversation_id=conv)
    assert again["conversation_id"] == conv and again["answer"] == "Plexus is a Dify-compatible backend."
    assert again["metadata"]["annotation_reply"] == reply and len(llm.requests) == calls + 1
    assert await turns(client, k, conv) == "1"
    r = await client.get("/v1/messages", headers=k, params={"conversation_id": conv, "user": "u1"})
    assert r.status_code == 200, r.text
    assert [(m["query"], m["answer"]) for m in r.json()["data"]] == [
        ("what is plexus", "Plexus is a Dify-compatible backend."),
        ("How do I bake sourdough bread?", "Turn 1: Echo: How do I bake sourdough bread?"),
        ("what is Plexus?", "Plexus is a Dify-compatible backend.")]

    assert {a["id"]: a["hit_count"] for a in (await listing(client, k))["data"]} == {ann["id"]: 3}
    # stored final, and only the far query made a workflow run
    async with live.ctx.db.session() as s:
        runs = (await s.exec(select(WorkflowRun.id).where(WorkflowRun.app_id == app_id))).all()
        stored = (await s.exec(select(Message.status, Message.workflow_run_id, Message.message_tokens).where(
            Message.app_id == app_id, Message.id.in_([msg, hit["id"], again["id"]])))).all()
    assert len(runs) == 1 and runs[0] == far[0]["workflow_run_id"]
    assert sorted(stored) == [("normal", None, 0)] * 3

    # reply off: the workflow answers the annotated question
    assert (await reply_job(client, k, "disable"))["job_status"] == "completed"
    off = await chat(client, k, "What is Plexus?")
    assert off["answer"] == "Turn 1: Echo: What is Plexus?" and "annotation_reply" not in off["metadata"]
    assert len(llm.requests) == calls + 2

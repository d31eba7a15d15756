"""The whole `all` stack in one process (real gateway, console, runtime, NATS; SQLite and Postgres): what
an operator changes through the console reaches the gateway and runtime caches at once, over NATS."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.conftest import LiveServer
from tests.support import console_admin


@pytest.fixture
async def chat_app(client: httpx.AsyncClient, llm) -> tuple[dict, str, str]:
    h = await console_admin(client)
    r = await client.post("/console/api/workspaces/current/model-providers/openai-compatible/credentials",
                          headers=h, json={"credentials": {"api_key": "sk-x", "api_base": llm.base_url}})
    assert r.status_code == 200, r.text
    r = await client.post("/console/api/apps", headers=h, json={"name": f"bot-{time.monotonic_ns()}", "mode": "chat"})
    app_id = r.json()["id"]
    r = await client.post(f"/console/api/apps/{app_id}/model-config", headers=h, json={
        "model": {"provider": "openai-compatible", "name": "scripted"}, "pre_prompt": "Version one."})
    assert r.status_code == 200, r.text
    key = (await client.post(f"/console/api/apps/{app_id}/api-keys", headers=h)).json()["token"]
    return h, app_id, key


async def _chat(c: httpx.AsyncClient, key: str, query: str, **kw) -> httpx.Response:
    return await c.post("/v1/chat-messages", headers={"Authorization": f"Bearer {key}"},
                        json={"inputs": {}, "query": query, "user": "u1", **kw})


async def test_model_config_change_applies_on_next_request(client, chat_app, llm) -> None:
    h, app_id, key = chat_app
    assert (await _chat(client, key, "first")).status_code == 200
    assert llm.requests_matching("first")[-1].messages[0]["content"] == "Version one."
    r = await client.post(f"/console/api/apps/{app_id}/model-config", headers=h, json={
        "model": {"provider": "openai-compatible", "name": "scripted"}, "pre_prompt": "Version two."})
    assert r.status_code == 200
    r = await _chat(client, key, "second")
    assert r.status_code == 200, r.text
    assert llm.requests_matching("second")[-1].messages[0]["content"] == "Version two."


async def test_deleted_key_is_rejected_within_a_second(client, chat_app) -> None:
    h, app_id, key = chat_app
    assert (await client.get("/v1/parameters", headers={"Authorization": f"Bearer {key}"})).status_code == 200
    key_id = (await client.get(f"/console/api/apps/{app_id}/api-keys", headers=h)).json()["data"][0]["id"]
    assert (await client.delete(f"/console/api/apps/{app_id}/api-keys/{key_id}", headers=h)).status_code == 204
    deadline = time.monotonic() + 1.0
    status = 200
    while time.monotonic() < deadline:
        status = (await client.get("/v1/parameters", headers={"Authorization": f"Bearer {key}"})).status_code
        if status == 401:
            break
        await asyncio.sleep(0.02)
    assert status == 401


async def test_limits_set_in_console_are_enforced_with_headers(client, chat_app) -> None:
    h, app_id, key = chat_app
    r = await client.put(f"/console/api/apps/{app_id}", headers=h, json={"api_rpm": 3})
    assert r.status_code == 200 and r.json()["api_rpm"] == 3
    k = {"Authorization": f"Bearer {key}"}
    statuses = [(await client.get("/v1/parameters", headers=k)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    r = await client.get("/v1/parameters", headers=k)
    assert r.json()["code"] == "too_many_requests"
    assert int(r.headers["Retry-After"]) >= 1 and r.headers["X-RateLimit-Remaining"] == "0"
    assert "RateLimit-Policy" in r.headers
    # lifting the limit applies at once
    await client.put(f"/console/api/apps/{app_id}", headers=h, json={"api_rpm": 0})
    assert (await client.get("/v1/parameters", headers=k)).status_code == 200


async def test_disabled_api_is_403_and_stream_headers(client, chat_app) -> None:
    h, app_id, key = chat_app
    async with client.stream("POST", "/v1/chat-messages", headers={"Authorization": f"Bearer {key}"},
                             json={"inputs": {}, "query": "s", "user": "u1", "response_mode": "streaming"}) as s:
        assert s.headers["x-accel-buffering"] == "no" and s.headers["cache-control"] == "no-cache"
        events = [json.loads(line[6:]) async for line in s.aiter_lines() if line.startswith("data: ")]
    assert events[-1]["event"] == "message_end"
    r = await client.post(f"/console/api/apps/{app_id}/api-enable", headers=h, json={"enable_api": False})
    assert r.status_code == 200 and r.json()["enable_api"] is False
    r = await _chat(client, key, "blocked")  # the very next request (Bus.sync orders the change before it)
    assert r.status_code == 403 and r.json()["message"] == "The app's API service has been disabled."


async def test_bad_ids_and_validation_in_envelope(client, chat_app) -> None:
    _, _, key = chat_app
    r = await _chat(client, key, "x", conversation_id="not-a-uuid")
    assert r.status_code == 400 and r.json()["message"] == "conversation_id must be a valid UUID"
    r = await client.post("/v1/chat-messages", headers={"Authorization": f"Bearer {key}"}, json={"query": "x"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_param"
    r = await client.post("/v1/chat-messages", headers={"Authorization": f"Bearer {key}",
                                                        "Content-Type": "application/json"}, content=b"{oops")
    assert r.status_code == 400 and r.json()["code"] == "bad_request"
    r = await client.request("DELETE", "/v1/conversations/not-a-uuid", headers={"Authorization": f"Bearer {key}"},
                             json={"user": "u1"})
    assert r.status_code == 404 and r.json()["code"] == "not_found"


async def test_readyz_checks_dependencies(live: LiveServer, client) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"]["database"] == "ok"


async def test_answer_is_stored_when_the_database_is_briefly_unavailable(tmp_path, nats_url, llm) -> None:
    """One pooled connection, a short wait for it: the test holds it while the run finishes, so the
    first writes of the final message fail; the run retries and stores the whole answer."""
    from tests.conftest import make_settings, start_live

    settings = make_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'p.db'}", nats_url,
                             database_pool_size=1, database_max_overflow=0, database_pool_timeout=0.2)
    srv = await start_live(settings)
    try:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=30) as c:
            h = await console_admin(c)
            await c.post("/console/api/workspaces/current/model-providers/openai-compatible/credentials",
                         headers=h, json={"credentials": {"api_key": "k", "api_base": llm.base_url}})
            app_id = (await c.post("/console/api/apps", headers=h, json={"name": "db-blip", "mode": "chat"})).json()["id"]
            await c.post(f"/console/api/apps/{app_id}/model-config", headers=h,
                         json={"model": {"provider": "openai-compatible", "name": "scripted"}})
            key = (await c.post(f"/console/api/apps/{app_id}/api-keys", headers=h)).json()["token"]
            llm.push(tokens=["slow ", "and ", "steady"], delay=0.3, match="blip")
            events = []
            async with c.stream("POST", "/v1/chat-messages", headers={"Authorization": f"Bearer {key}"},
                                json={"inputs": {}, "query": "blip", "user": "u", "response_mode": "streaming"}) as s:
                lines = s.aiter_lines()
                async for line in lines:
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                        break
                # the run is past its inserts: take the only connection while the model finishes (~0.6 s)
                # and the first attempts to store the answer time out
                async with srv.ctx.db.engine.connect():
                    await asyncio.sleep(1.5)
                async for line in lines:
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
            assert events[-1]["event"] == "message_end"
            message_id = events[0]["message_id"]
            from shared.models import Message

            deadline = time.monotonic() + 10
            row = None
            while time.monotonic() < deadline:
                async with srv.ctx.db.session() as s:
                    row = await s.get(Message, message_id)
                if row is not None and row.status != "running":
                    break
                await asyncio.sleep(0.1)
            assert row is not None and row.status == "normal" and row.answer == "slow and steady"
    finally:
        await srv.stop()

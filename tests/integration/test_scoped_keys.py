"""Scoped and rotated API keys through the whole `all` stack (real gateway, console, runtime, NATS, SQLite and,
in CI, Postgres): app keys limited to permissions, workspace admin keys on /console/api, key rotation with a
grace period (checked on a second gateway replica too), and the public API under /api as well as /v1."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from services import gateway as gateway_module
from tests.conftest import LiveServer
from tests.integration.gateway_env import close_context, make_context, service_app
from tests.support import bearer, envelope, new_app, scripted_owner


@pytest.fixture
async def app_env(client: httpx.AsyncClient, llm) -> tuple[dict, str]:
    """The owner's headers and a chat app answering from the scripted model."""
    h = await scripted_owner(client, llm)
    config = {"model": {"provider": "openai-compatible", "name": "scripted"}, "pre_prompt": "Prompt one."}
    return h, await new_app(client, h, "chat", config, prefix="scoped")


async def new_key(client: httpx.AsyncClient, h: dict, app_id: str, **body) -> dict:
    r = await client.post(f"/console/api/apps/{app_id}/api-keys", headers=h, json=body or None)
    assert r.status_code == 201, r.text
    return r.json()


async def chat(client: httpx.AsyncClient, key: str, query: str, prefix: str = "/v1", **kw) -> httpx.Response:
    return await client.post(f"{prefix}/chat-messages", headers=bearer(key),
                             json={"inputs": {}, "query": query, "user": "u1", "response_mode": "blocking", **kw})


# ---- app keys limited to permissions ---------------------------------------------------------------------


async def test_app_key_permissions(client: httpx.AsyncClient, app_env) -> None:
    h, app_id = app_env
    full = await new_key(client, h, app_id)
    assert set(full) == {"id", "type", "token", "last_used_at", "created_at"}  # no body: Dify's exact shape
    chat_only = await new_key(client, h, app_id, name="widget", permissions=["chat"])
    assert chat_only["permissions"] == ["chat"] and chat_only["name"] == "widget"
    reader = await new_key(client, h, app_id, name="history reader", permissions=["history", "feedback"])

    r = await chat(client, chat_only["token"], "hello scoped")
    assert r.status_code == 200, r.text
    conversation_id = r.json()["conversation_id"]
    message_id = r.json()["message_id"]
    assert (await client.get("/v1/parameters", headers=bearer(chat_only["token"]))).status_code == 200

    # outside the key's scope: 403 in the envelope, naming the missing permission
    msg = envelope(await client.get("/v1/conversations", params={"user": "u1"}, headers=bearer(chat_only["token"])),
                   403, "forbidden")
    assert "'history'" in msg and "GET /conversations" in msg
    msg = envelope(await client.post("/v1/workflows/run", headers=bearer(chat_only["token"]),
                                     json={"inputs": {}, "user": "u1"}), 403, "forbidden")
    assert "'workflow'" in msg
    msg = envelope(await client.get(f"/v1/workflow/{uuid.uuid4()}/events", params={"user": "u1"},
                                    headers=bearer(chat_only["token"])), 403, "forbidden")
    assert "'workflow'" in msg
    msg = envelope(await client.get(f"/v1/end-users/{uuid.uuid4()}", headers=bearer(chat_only["token"])), 403,
                   "forbidden")
    assert "'history'" in msg
    msg = envelope(await client.post(f"/v1/messages/{message_id}/feedbacks", headers=bearer(chat_only["token"]),
                                     json={"rating": "like", "user": "u1"}), 403, "forbidden")
    assert "'feedback'" in msg
    msg = envelope(await chat(client, reader["token"], "not allowed"), 403, "forbidden")
    assert "'chat'" in msg and "POST /chat-messages" in msg

    # the reader reads history and gives feedback, but cannot rename a conversation (that is the chat client's)
    r = await client.get("/v1/messages", params={"user": "u1", "conversation_id": conversation_id},
                         headers=bearer(reader["token"]))
    assert r.status_code == 200 and r.json()["data"][0]["id"] == message_id, r.text
    r = await client.get("/v1/conversations", params={"user": "u1"}, headers=bearer(reader["token"]))
    assert r.status_code == 200 and conversation_id in {c["id"] for c in r.json()["data"]}
    r = await client.post(f"/v1/messages/{message_id}/feedbacks", headers=bearer(reader["token"]),
                          json={"rating": "like", "user": "u1"})
    assert r.status_code == 200, r.text
    envelope(await client.post(f"/v1/conversations/{conversation_id}/name", headers=bearer(reader["token"]),
                               json={"name": "x", "user": "u1"}), 403, "forbidden")
    # the unrestricted key does everything
    r = await client.get("/v1/conversations", params={"user": "u1"}, headers=bearer(full["token"]))
    assert r.status_code == 200

    listed = (await client.get(f"/console/api/apps/{app_id}/api-keys", headers=h)).json()["data"]
    assert {k["id"]: k["permissions"] for k in listed} == {
        full["id"]: None, chat_only["id"]: ["chat"], reader["id"]: ["feedback", "history"]}

    # bad permission sets are 400 in the envelope
    for perms in (["chat", "launch-missiles"], [], ["apps:read"]):
        r = await client.post(f"/console/api/apps/{app_id}/api-keys", headers=h, json={"permissions": perms})
        envelope(r, 400, "invalid_param")
    envelope(await client.post("/console/api/datasets/api-keys", headers=h, json={"permissions": ["chat"]}), 400,
             "invalid_param")


# ---- the /api prefix -------------------------------------------------------------------------------------


async def test_api_prefix_serves_the_same_routes(client: httpx.AsyncClient, app_env, llm) -> None:
    h, app_id = app_env
    key = (await new_key(client, h, app_id))["token"]
    assert (await client.get("/api")).json()["welcome"] == "Dify OpenAPI"
    assert (await client.get("/api/parameters", headers=bearer(key))).status_code == 200
    r = await chat(client, key, "via api prefix", prefix="/api")
    assert r.status_code == 200 and r.json()["answer"], r.text
    # streaming through /api: the same SSE as /v1
    async with client.stream("POST", "/api/chat-messages", headers=bearer(key),
                             json={"inputs": {}, "query": "stream via api", "user": "u1",
                                   "response_mode": "streaming"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-accel-buffering"] == "no"
        events = [json.loads(line[6:])["event"] async for line in resp.aiter_lines() if line.startswith("data: ")]
    assert "message_end" in events
    # the key rules hold there too
    envelope(await client.get("/api/parameters"), 401, "unauthorized")
    limited = (await new_key(client, h, app_id, permissions=["history"]))["token"]
    envelope(await chat(client, limited, "nope", prefix="/api"), 403, "forbidden")
    # only the /api segment itself is the prefix
    assert (await client.get("/apixyz/parameters", headers=bearer(key))).status_code == 404


# ---- workspace admin keys on /console/api ------------------------------------------------------------------


async def test_admin_key_automation(client: httpx.AsyncClient, app_env, llm) -> None:
    h, app_id = app_env
    # the seed's body: app-API permission names are refused with a pointer to app keys
    msg = envelope(await client.post("/console/api/api-keys", headers=h, json={
        "name": "My API Key", "permissions": ["chat", "completion", "workflow"]}), 400, "invalid_param")
    assert "app-key permissions" in msg
    r = await client.post("/console/api/api-keys", headers=h,
                          json={"name": "ci", "permissions": ["apps:read", "apps:write"]})
    assert r.status_code == 201, r.text
    ci = r.json()
    assert ci["token"].startswith("admin-") and ci["type"] == "admin" and ci["permissions"] == ["apps:read",
                                                                                                 "apps:write"]
    listed = await client.get("/console/api/api-keys", headers=h)
    assert ci["token"] not in listed.text and "apps:write" in listed.json()["scopes"]
    k = bearer(ci["token"])

    # CI/CD changes the app's prompt without a user login; the next chat uses it
    assert (await client.get(f"/console/api/apps/{app_id}", headers=k)).status_code == 200
    r = await client.post(f"/console/api/apps/{app_id}/model-config", headers=k, json={
        "model": {"provider": "openai-compatible", "name": "scripted"}, "pre_prompt": "Prompt from CI."})
    assert r.status_code == 200, r.text
    app_key = (await new_key(client, h, app_id))["token"]
    assert (await chat(client, app_key, "after ci")).status_code == 200
    assert llm.requests_matching("after ci")[-1].messages[0]["content"] == "Prompt from CI."

    # outside its scopes, and what no key may ever do
    msg = envelope(await client.post(f"/console/api/apps/{app_id}/api-keys", headers=k), 403, "forbidden")
    assert "'keys:write'" in msg
    for method, path, body in (("GET", "/console/api/workspaces/current/members", None),
                               ("POST", "/console/api/api-keys", {"name": "escalate"}),
                               ("POST", "/console/api/workspaces/current/members/invite-email",
                                {"emails": ["x@example.com"], "role": "admin"}),
                               ("GET", "/console/api/account/profile", None)):
        msg = envelope(await client.request(method, path, headers=k, json=body), 403, "forbidden")
        assert "not available to API keys" in msg
    # keys do not cross: an admin key on the app API, an app key on the console
    envelope(await client.get("/v1/parameters", headers=k), 401, "unauthorized")
    envelope(await client.get("/console/api/apps", headers=bearer(app_key)), 401, "unauthorized")

    # an ops key that only reads; members below admin cannot manage admin keys
    ops = (await client.post("/console/api/api-keys", headers=h, json={"name": "ops", "permissions": ["apps:read"]}
                             )).json()
    assert (await client.get("/console/api/apps", headers=bearer(ops["token"]))).status_code == 200
    msg = envelope(await client.put(f"/console/api/apps/{app_id}", headers=bearer(ops["token"]),
                                    json={"description": "x"}), 403, "forbidden")
    assert "'apps:write'" in msg

    # deleted: refused on the next request
    assert (await client.delete(f"/console/api/api-keys/{ops['id']}", headers=h)).status_code == 204
    envelope(await client.get("/console/api/apps", headers=bearer(ops["token"])), 401, "unauthorized")

    # rotated with no grace: the old admin key is refused at once, the new one works
    r = await client.post(f"/console/api/api-keys/{ci['id']}/rotate", headers=h, json={"grace_seconds": 0})
    assert r.status_code == 201, r.text
    rotated = r.json()
    assert rotated["permissions"] == ci["permissions"] and rotated["name"] == "ci"
    envelope(await client.get("/console/api/apps", headers=k), 401, "unauthorized")
    assert (await client.get("/console/api/apps", headers=bearer(rotated["token"]))).status_code == 200


async def test_members_below_admin_cannot_manage_keys(client: httpx.AsyncClient, app_env) -> None:
    h, app_id = app_env
    email = f"ed-{time.monotonic_ns()}@example.com"
    r = await client.post("/console/api/workspaces/current/members/invite-email", headers=h,
                          json={"emails": [email], "role": "editor"})
    token = r.json()["invitation_results"][0]["token"]
    r = await client.post("/console/api/activate", json={"token": token, "name": "Ed", "password": "editor-pass-1"})
    ed = {"Authorization": f"Bearer {r.json()['data']['access_token']}"}
    for method, path in (("POST", "/console/api/api-keys"), ("GET", "/console/api/api-keys"),
                         ("POST", f"/console/api/apps/{app_id}/api-keys")):
        envelope(await client.request(method, path, headers=ed, json={"name": "x"}), 403, "forbidden")
    assert (await client.get(f"/console/api/apps/{app_id}/api-keys", headers=ed)).status_code == 200


# ---- rotation ------------------------------------------------------------------------------------------


@pytest.fixture
async def replica(live: LiveServer, tmp_path, nats_url) -> AsyncIterator[tuple[gateway_module.Gateway,
                                                                               httpx.AsyncClient]]:
    """A second gateway on the same database and NATS, with a cache TTL long enough that only the key's own
    expiry can end an entry (its runtime is a stand-in: the key decision is made before forwarding)."""
    ctx = await make_context(tmp_path, nats_url, db_url=live.ctx.settings.database_url, migrate=False,
                             key_cache_seconds=3600)
    ctx.local_apps["runtime"] = service_app("runtime")
    gw = gateway_module.create_app(ctx)
    await gateway_module.start(ctx, gw)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gw), base_url="http://replica") as c:
        yield gw, c
    await gateway_module.stop(ctx, gw)
    await close_context(ctx)


async def test_rotation_grace_period_on_every_replica(client: httpx.AsyncClient, app_env, replica) -> None:
    h, app_id = app_env
    gw2, other = replica
    old = await new_key(client, h, app_id, name="rotating", permissions=["chat", "history"])

    # a long grace period: both keys work, on both replicas; the listing shows the old key's expiry
    r = await client.post(f"/console/api/apps/{app_id}/api-keys/{old['id']}/rotate", headers=h,
                          json={"grace_seconds": 3600})
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["token"] != old["token"] and (new["name"], new["permissions"]) == ("rotating", ["chat", "history"])
    assert new["expires_at"] is None and new["rotated"]["id"] == old["id"]
    for c in (client, other):
        for key in (old["token"], new["token"]):
            assert (await c.get("/v1/parameters", headers=bearer(key))).status_code == 200
    listed = {k["id"]: k for k in (await client.get(f"/console/api/apps/{app_id}/api-keys", headers=h)).json()["data"]}
    assert listed[new["id"]]["expires_at"] is None
    assert abs(listed[old["id"]]["expires_at"] - (time.time() + 3600)) < 120
    envelope(await client.post(f"/console/api/apps/{app_id}/api-keys/{old['id']}/rotate", headers=h), 409,
             "key_already_rotated")
    envelope(await client.post(f"/console/api/apps/{app_id}/api-keys/{new['id']}/rotate", headers=h,
                               json={"grace_seconds": 10**9}), 400, "invalid_param")

    # a short grace period: once it is over, both replicas refuse the old key from their caches, with no
    # further message from the console
    r = await client.post(f"/console/api/apps/{app_id}/api-keys/{new['id']}/rotate", headers=h,
                          json={"grace_seconds": 2})
    newest = r.json()
    deadline = time.monotonic() + 30
    statuses: dict[str, int] = {}
    while time.monotonic() < deadline:
        statuses = {name: (await c.get("/v1/parameters", headers=bearer(new["token"]))).status_code
                    for name, c in (("live", client), ("replica", other))}
        if set(statuses.values()) == {401}:
            break
        await asyncio.sleep(0.2)
    assert statuses == {"live": 401, "replica": 401}
    for c in (client, other):
        assert (await c.get("/v1/parameters", headers=bearer(newest["token"]))).status_code == 200
    loads = gw2.keys.loads
    for c in (client, other, other):
        msg = envelope(await c.get("/v1/parameters", headers=bearer(new["token"])), 401, "unauthorized")
        assert msg == "Access token has expired."
    assert gw2.keys.loads == loads  # refused from the cached entry: the expiry travels with it
    listed = (await client.get(f"/console/api/apps/{app_id}/api-keys", headers=h)).json()["data"]
    assert new["id"] not in {k["id"] for k in listed} and newest["id"] in {k["id"] for k in listed}


async def test_rotation_does_not_count_against_the_key_limit(client: httpx.AsyncClient, app_env) -> None:
    h, app_id = app_env
    keys = [await new_key(client, h, app_id) for _ in range(10)]
    envelope(await client.post(f"/console/api/apps/{app_id}/api-keys", headers=h), 400, "bad_request")
    r = await client.post(f"/console/api/apps/{app_id}/api-keys/{keys[0]['id']}/rotate", headers=h)
    assert r.status_code == 201, r.text
    assert abs(r.json()["rotated"]["expires_at"] - (time.time() + 86400)) < 120  # the default grace period
    envelope(await client.post(f"/console/api/apps/{app_id}/api-keys/{keys[0]['id']}/rotate", headers=h), 409,
             "key_already_rotated")

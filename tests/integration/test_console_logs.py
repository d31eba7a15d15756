"""App logs on the console (Dify's log pages) over the whole `all` stack (real gateway, console, runtime, NATS,
SQLite; Postgres in CI): conversations are made by chatting through /v1 with the real litellm path against the
scripted model, then read back with /console/api/apps/{app_id}/chat-conversations, completion-conversations,
chat-messages and workflow-app-logs, by the owner, a normal member and workspace admin keys."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import inspect, update
from sqlmodel import SQLModel

from shared.models import App, Conversation, Tenant
from tests import workflow_graphs as g
from tests.conftest import LiveServer
from tests.support import bearer, configure_app, new_app, new_app_key, scripted_owner

MODEL = {"provider": "openai-compatible", "name": "scripted"}


def envelope(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert (body["code"], body["status"]) == (code, status), body
    return body


async def _app(c: httpx.AsyncClient, h: dict, mode: str, pre_prompt: str | None = "You are version one."
               ) -> tuple[str, str]:
    """(app id, app key) of a new app; basic modes get one published model-config version."""
    app_id = await new_app(c, h, mode, prefix="logs")
    if pre_prompt is not None:
        await _save(c, h, app_id, pre_prompt)
    return app_id, await new_app_key(c, h, app_id)


async def _save(c: httpx.AsyncClient, h: dict, app_id: str, pre_prompt: str) -> None:
    await configure_app(c, h, app_id, {"model": MODEL, "pre_prompt": pre_prompt})


async def _versions(c: httpx.AsyncClient, h: dict, app_id: str) -> dict[int, str]:
    r = await c.get(f"/console/api/apps/{app_id}/model-config/versions", headers=h)
    assert r.status_code == 200, r.text
    return {v["version"]: v["id"] for v in r.json()["data"]}


async def _chat(c: httpx.AsyncClient, key: str, query: str, user: str = "u1", conversation_id: str | None = None,
                endpoint: str = "chat-messages") -> dict:
    body: dict[str, Any] = {"inputs": {}, "query": query, "user": user, "response_mode": "blocking"}
    if conversation_id:
        body["conversation_id"] = conversation_id
    r = await c.post(f"/v1/{endpoint}", headers=bearer(key), json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def _feedback(c: httpx.AsyncClient, key: str, message_id: str, rating: str, user: str = "u1") -> None:
    r = await c.post(f"/v1/messages/{message_id}/feedbacks", headers=bearer(key),
                     json={"rating": rating, "user": user, "content": f"{rating}d it"})
    assert r.status_code == 200, r.text


async def _get(c: httpx.AsyncClient, h: dict, app_id: str, route: str, **params: Any) -> dict:
    r = await c.get(f"/console/api/apps/{app_id}/{route}", headers=h, params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def _conversations(c: httpx.AsyncClient, h: dict, app_id: str, **params: Any) -> list[dict]:
    return (await _get(c, h, app_id, "chat-conversations", **params))["data"]


async def _member(c: httpx.AsyncClient, h: dict, role: str) -> dict:
    """Bearer headers of a new member of the owner's workspace with ``role``."""
    email = f"{role}-{uuid.uuid4().hex[:6]}@example.com"
    r = await c.post("/console/api/workspaces/current/members/invite-email", headers=h,
                     json={"emails": [email], "role": role, "language": "en-US"})
    token = r.json()["invitation_results"][0]["token"]
    r = await c.post("/console/api/activate", json={"token": token, "email": email, "name": role.title(),
                                                    "password": f"{role}-pass-1"})
    assert r.status_code == 200, r.text
    return bearer(r.json()["data"]["access_token"])


async def _admin_key(c: httpx.AsyncClient, h: dict, *permissions: str) -> dict:
    """Bearer headers of a new admin key limited to ``permissions`` (none named: every scope)."""
    body: dict[str, Any] = {"name": f"ops-{uuid.uuid4().hex[:6]}"}
    if permissions:
        body["permissions"] = list(permissions)
    r = await c.post("/console/api/api-keys", headers=h, json=body)
    assert r.status_code == 201, r.text
    return bearer(r.json()["token"])


@pytest.fixture(autouse=True)
def _fresh_llm(llm) -> None:
    llm.reset()


async def test_chat_conversations_paging_filters_feedback_and_versions(live: LiveServer, client, llm) -> None:
    c = client
    h = await scripted_owner(c, llm)
    app_id, key = await _app(c, h, "chat")
    v1 = (await _versions(c, h, app_id))[1]

    a1 = await _chat(c, key, "alpha question")
    conv_a = a1["conversation_id"]
    a2 = await _chat(c, key, "second turn", conversation_id=conv_a)
    llm.push(match="bravo", reply="zebra-answer only here")
    b = await _chat(c, key, "bravo", user="u2")
    conv_c = (await _chat(c, key, "charlie", user="zed-user"))["conversation_id"]
    await _save(c, h, app_id, "You are version two.")  # new conversations get version 2
    v2 = (await _versions(c, h, app_id))[2]
    conv_d = (await _chat(c, key, "delta"))["conversation_id"]
    conv_b = b["conversation_id"]
    await _feedback(c, key, a1["message_id"], "like")
    await _feedback(c, key, a2["message_id"], "dislike")
    await _feedback(c, key, b["message_id"], "like", user="u2")
    r = await c.post(f"/v1/conversations/{conv_c}/name", headers=bearer(key),
                     json={"name": "Renamed-KW chat", "user": "zed-user"})
    assert r.status_code == 200, r.text

    page = await _get(c, h, app_id, "chat-conversations", sort_by="created_at")
    assert (page["page"], page["limit"], page["total"], page["has_more"]) == (1, 20, 4, False)
    rows = {d["id"]: d for d in page["data"]}
    assert [d["id"] for d in page["data"]] == [conv_a, conv_b, conv_c, conv_d]
    a = rows[conv_a]
    assert a["summary"] == "alpha question" and a["message_count"] == 2 and a["name"]
    assert a["user_feedback_stats"] == {"like": 1, "dislike": 1}
    assert rows[conv_b]["user_feedback_stats"] == {"like": 1, "dislike": 0}
    assert rows[conv_d]["user_feedback_stats"] == {"like": 0, "dislike": 0} and rows[conv_d]["message_count"] == 1
    assert rows[conv_c]["from_end_user_session_id"] == "zed-user" and rows[conv_c]["name"] == "Renamed-KW chat"
    assert a["from_source"] == "api" and a["status"] == "normal" and a["from_end_user_id"]
    assert isinstance(a["created_at"], int) and isinstance(a["updated_at"], int) and a["updated_at"] >= a["created_at"]
    # the version that served each conversation
    assert [rows[i]["model_config_id"] for i in (conv_a, conv_b, conv_c, conv_d)] == [v1, v1, v1, v2]

    # sorting and paging
    newest = await _conversations(c, h, app_id, sort_by="-created_at")
    assert [d["id"] for d in newest] == [conv_d, conv_c, conv_b, conv_a]
    p1 = await _get(c, h, app_id, "chat-conversations", sort_by="created_at", limit=3)
    p2 = await _get(c, h, app_id, "chat-conversations", sort_by="created_at", limit=3, page=2)
    assert p1["has_more"] and not p2["has_more"] and p1["total"] == p2["total"] == 4
    assert [d["id"] for d in p1["data"] + p2["data"]] == [conv_a, conv_b, conv_c, conv_d]

    # keyword: a message's query, its answer only, the conversation name (any case), the session; % is literal
    async def ids(**params: Any) -> set[str]:
        return {d["id"] for d in await _conversations(c, h, app_id, **params)}

    assert await ids(keyword="second turn") == {conv_a}
    assert await ids(keyword="zebra-answer") == {conv_b}
    assert await ids(keyword="renamed-kw") == {conv_c}
    assert await ids(keyword="zed-user") == {conv_c}
    assert await ids(keyword="%") == set() and await ids(keyword="_") == set()
    assert (await _get(c, h, app_id, "chat-conversations", keyword="alpha"))["total"] == 1

    # time window: whole minutes in UTC, the end minute included, on the sort column
    when = datetime(2024, 5, 1, 10, 30, 30, tzinfo=UTC)
    async with live.ctx.db.session() as s:
        await s.exec(update(Conversation).where(Conversation.id == conv_a).values(created_at=when, updated_at=when))
        await s.commit()
    assert await ids(sort_by="created_at", start="2024-05-01 10:30", end="2024-05-01 10:30") == {conv_a}
    assert await ids(start="2024-05-01 10:30", end="2024-05-01 10:30") == {conv_a}  # -updated_at: updated_at
    assert await ids(sort_by="created_at", start="2024-05-01 10:31", end="2024-05-01 23:59") == set()
    assert await ids(sort_by="created_at", end="2024-05-01 10:29") == set()
    assert await ids(sort_by="created_at", start="2024-05-01 10:31") == {conv_b, conv_c, conv_d}
    # the last minute datetime can hold: no upper bound, not a 500
    assert await ids(end="9999-12-31 23:59") == {conv_a, conv_b, conv_c, conv_d}
    assert await ids(start="9999-12-31 23:59", end="9999-12-31 23:59") == set()

    # a conversation the end user deleted leaves the list (as Dify) but its messages stay readable
    r = await c.request("DELETE", f"/v1/conversations/{conv_d}", headers=bearer(key), json={"user": "u1"})
    assert r.status_code in (200, 204), r.text
    assert await ids() == {conv_a, conv_b, conv_c}
    kept = await _get(c, h, app_id, "chat-messages", conversation_id=conv_d)
    assert [m["query"] for m in kept["data"]] == ["delta"] and kept["data"][0]["model_config_id"] == v2

    # bad input: Dify's envelope, never FastAPI's 422
    path = f"/console/api/apps/{app_id}/chat-conversations"
    for params in ({"start": "yesterday"}, {"end": "2024-05-01"}, {"limit": 0}, {"limit": 101}, {"page": 0},
                   {"sort_by": "name"}):
        envelope(await c.get(path, headers=h, params=params), 400, "invalid_param")
    envelope(await c.get(f"/console/api/apps/{app_id}/completion-conversations", headers=h), 400,
             "not_completion_app")
    envelope(await c.get(f"/console/api/apps/{app_id}/workflow-app-logs", headers=h), 400, "not_workflow_app")


async def test_chat_messages_first_id_paging_and_detail(client, llm) -> None:
    c = client
    h = await scripted_owner(c, llm)
    app_id, key = await _app(c, h, "chat")
    v1 = (await _versions(c, h, app_id))[1]
    conv = None
    sent = []
    for i in range(5):
        out = await _chat(c, key, f"question {i}", conversation_id=conv)
        conv = out["conversation_id"]
        sent.append(out["message_id"])
    await _feedback(c, key, sent[4], "dislike")

    route = "chat-messages"
    last = await _get(c, h, app_id, route, conversation_id=conv, limit=2)
    assert last["limit"] == 2 and last["has_more"]
    assert [m["id"] for m in last["data"]] == sent[3:]  # the newest page, oldest first
    m = last["data"][1]
    assert m["query"] == "question 4" and m["answer"].startswith("Echo: ") and m["status"] == "normal"
    assert m["conversation_id"] == conv and m["error"] is None and m["inputs"] == {}
    assert m["message_tokens"] > 0 and m["answer_tokens"] > 0 and m["latency"] >= 0
    assert m["model_config_id"] == v1 and m["workflow_run_id"] is None
    assert m["feedbacks"] == [{"rating": "dislike", "content": "disliked it",
                               "from_source": "api", "from_end_user_id": m["from_end_user_id"],
                               "from_account": None}]
    assert last["data"][0]["feedbacks"] == []
    for field in ("retriever_resources", "agent_thoughts", "message_files"):
        assert m[field] == []
    assert isinstance(m["created_at"], int)

    middle = await _get(c, h, app_id, route, conversation_id=conv, limit=2, first_id=sent[3])
    assert [x["id"] for x in middle["data"]] == sent[1:3] and middle["has_more"]
    first = await _get(c, h, app_id, route, conversation_id=conv, limit=2, first_id=sent[1])
    assert [x["id"] for x in first["data"]] == sent[:1] and not first["has_more"]
    everything = await _get(c, h, app_id, route, conversation_id=conv)
    assert [x["id"] for x in everything["data"]] == sent and not everything["has_more"]

    base = f"/console/api/apps/{app_id}/chat-messages"
    for cid in (str(uuid.uuid4()), "not-a-uuid"):
        envelope(await c.get(base, headers=h, params={"conversation_id": cid}), 404, "not_found")
    envelope(await c.get(base, headers=h, params={"conversation_id": conv, "first_id": str(uuid.uuid4())}),
             404, "not_found")
    envelope(await c.get(base, headers=h), 400, "invalid_param")
    # a conversation of another app of the same workspace is not this app's
    other_id, _ = await _app(c, h, "chat")
    envelope(await c.get(f"/console/api/apps/{other_id}/chat-messages", headers=h,
                         params={"conversation_id": conv}), 404, "not_found")


async def test_completion_conversations(client, llm) -> None:
    c = client
    h = await scripted_owner(c, llm)
    app_id, key = await _app(c, h, "completion")
    v1 = (await _versions(c, h, app_id))[1]
    llm.push(match="first poem", reply="roses are red")
    one = await _chat(c, key, "first poem", endpoint="completion-messages")
    two = await _chat(c, key, "second poem", user="u2", endpoint="completion-messages")
    page = await _get(c, h, app_id, "completion-conversations")
    assert page["total"] == 2 and not page["has_more"]
    newest, oldest = page["data"]  # newest first by default
    assert (newest["summary"], oldest["summary"]) == ("second poem", "first poem")
    assert oldest["message"] == {"id": one["message_id"], "inputs": {}, "query": "first poem",
                                 "answer": "roses are red"}
    assert newest["message"]["id"] == two["message_id"]
    assert oldest["model_config_id"] == v1 and oldest["message_count"] == 1
    found = await _get(c, h, app_id, "completion-conversations", keyword="ROSES")
    assert [d["summary"] for d in found["data"]] == ["first poem"]
    envelope(await c.get(f"/console/api/apps/{app_id}/chat-conversations", headers=h), 400, "not_chat_app")
    envelope(await c.get(f"/console/api/apps/{app_id}/chat-messages", headers=h,
                         params={"conversation_id": str(uuid.uuid4())}), 400, "not_chat_app")


async def test_workflow_app_logs_match_the_public_logs(client, llm) -> None:
    c = client
    h = await scripted_owner(c, llm)
    app_id, key = await _app(c, h, "workflow", pre_prompt=None)
    r = await c.post(f"/console/api/apps/{app_id}/workflows/draft", headers=h,
                     json={"graph": g.linear_llm(), "features": {}})
    assert r.status_code == 200, r.text
    assert (await c.post(f"/console/api/apps/{app_id}/workflows/publish", headers=h, json={})).status_code == 200
    for topic, user in (("needle-topic", "u1"), ("hay", "someone-else"), ("关于茶的诗", "u3")):
        r = await c.post("/v1/workflows/run", headers=bearer(key),
                         json={"inputs": {"topic": topic}, "user": user, "response_mode": "blocking"})
        assert r.status_code == 200 and r.json()["data"]["status"] == "succeeded", r.text

    # keyword: any case, `%` and `_` literal, non-ASCII text found (JSON stored unescaped)
    for params, total in (({}, 3), ({"keyword": "needle"}, 1), ({"created_by_end_user_session_id": "someone-else"}, 1),
                          ({"status": "failed"}, 0), ({"limit": 1, "page": 2}, 3),
                          ({"keyword": "NEEDLE-Topic"}, 1), ({"keyword": "%"}, 0), ({"keyword": "needle_topic"}, 0),
                          ({"keyword": "茶的"}, 1)):
        console = await _get(c, h, app_id, "workflow-app-logs", **params)
        public = await c.get("/v1/workflows/logs", headers=bearer(key), params=params)
        assert public.status_code == 200 and console == public.json(), params
        assert console["total"] == total, params
    logs = await _get(c, h, app_id, "workflow-app-logs")
    assert logs["total"] == 3 and {d["workflow_run"]["status"] for d in logs["data"]} == {"succeeded"}
    assert (await _get(c, h, app_id, "workflow-app-logs", keyword="needle"))["data"][0][
        "created_by_end_user"]["session_id"] == "u1"
    assert (await _get(c, h, app_id, "workflow-app-logs", keyword="茶的"))["data"][0][
        "created_by_end_user"]["session_id"] == "u3"
    later = datetime.now(UTC).replace(year=datetime.now(UTC).year + 1).isoformat()
    assert (await _get(c, h, app_id, "workflow-app-logs", created_at__after=later))["total"] == 0
    assert (await _get(c, h, app_id, "workflow-app-logs", created_at__before=later))["total"] == 3
    path = f"/console/api/apps/{app_id}/workflow-app-logs"
    envelope(await c.get(path, headers=h, params={"status": "bogus"}), 400, "invalid_param")
    envelope(await c.get(path, headers=h, params={"limit": 500}), 400, "invalid_param")
    envelope(await c.get(f"/console/api/apps/{app_id}/chat-conversations", headers=h), 400, "not_chat_app")


async def test_who_may_read_logs(live: LiveServer, client, llm) -> None:
    c = client
    h = await scripted_owner(c, llm)
    app_id, key = await _app(c, h, "chat")
    conv = (await _chat(c, key, "hello logs"))["conversation_id"]
    wf_id, _ = await _app(c, h, "workflow", pre_prompt=None)
    reads = [(app_id, "chat-conversations", {}), (app_id, "chat-messages", {"conversation_id": conv}),
             (wf_id, "workflow-app-logs", {})]

    # an ops script's admin key with logs:read reads them all
    r = await c.post("/console/api/api-keys", headers=h, json={"name": "ops-logs", "permissions": ["logs:read"]})
    assert r.status_code == 201, r.text
    ops = bearer(r.json()["token"])
    for target, route, params in reads:
        await _get(c, ops, target, route, **params)
    assert (await _get(c, ops, app_id, "chat-conversations"))["data"][0]["id"] == conv

    # a key without the scope is refused, naming it
    r = await c.post("/console/api/api-keys", headers=h, json={"name": "ops-apps", "permissions": ["apps:read"]})
    no_logs = bearer(r.json()["token"])
    for target, route, params in reads:
        body = envelope(await c.get(f"/console/api/apps/{target}/{route}", headers=no_logs, params=params),
                        403, "forbidden")
        assert "logs:read" in body["message"]

    # a normal member reads them too
    viewer = await _member(c, h, "normal")
    for target, route, params in reads:
        await _get(c, viewer, target, route, **params)

    # another workspace's app is a missing app, for people and keys alike
    async with live.ctx.db.session() as s:
        ws = Tenant(name=f"other-{uuid.uuid4().hex[:6]}")
        s.add(ws)
        await s.flush()
        foreign = App(tenant_id=ws.id, name="foreign", mode="chat")
        s.add(foreign)
        await s.commit()
        foreign_id = foreign.id
    for who in (h, ops):
        for route in ("chat-conversations", "completion-conversations", "workflow-app-logs"):
            envelope(await c.get(f"/console/api/apps/{foreign_id}/{route}", headers=who), 404, "not_found")
        envelope(await c.get(f"/console/api/apps/{foreign_id}/chat-messages", headers=who,
                             params={"conversation_id": conv}), 404, "not_found")
    c.cookies.clear()  # the client keeps the cookies /activate set: no credential at all here
    envelope(await c.get(f"/console/api/apps/{app_id}/chat-conversations"), 401, "unauthorized")


async def test_export_with_secrets_needs_apps_write(client, llm) -> None:
    """DSL export is a read (apps:read), but with include_secret=true it hands out secret environment variables
    in clear: an admin key then needs apps:write; members need the editor role either way."""
    c = client
    h = await scripted_owner(c, llm)
    app_id, _ = await _app(c, h, "workflow", pre_prompt=None)
    env = [{"name": "api_token", "value_type": "secret", "value": "s3cret-value"}]
    r = await c.post(f"/console/api/apps/{app_id}/workflows/draft", headers=h,
                     json={"graph": g.linear_llm(), "features": {}, "environment_variables": env})
    assert r.status_code == 200, r.text
    path = f"/console/api/apps/{app_id}/export"

    async def export(who: dict, **params: Any) -> str:
        r = await c.get(path, headers=who, params=params)
        assert r.status_code == 200, r.text
        return r.json()["data"]

    reader = await _admin_key(c, h, "apps:read")
    assert "s3cret-value" not in await export(reader)
    assert "s3cret-value" not in await export(reader, include_secret="false")
    body = envelope(await c.get(path, headers=reader, params={"include_secret": "true"}), 403, "forbidden")
    assert body["message"] == ("This API key lacks the 'apps:write' permission required for "
                               "GET /console/api/apps/{app_id}/export?include_secret=true.")
    writer = await _admin_key(c, h, "apps:read", "apps:write")
    assert "s3cret-value" in await export(writer, include_secret="true")
    unlimited = await _admin_key(c, h)
    assert "s3cret-value" in await export(unlimited, include_secret="true")
    # members: the editor role, with or without secrets
    assert "s3cret-value" in await export(await _member(c, h, "editor"), include_secret="true")
    normal = await _member(c, h, "normal")
    for params in ({}, {"include_secret": "true"}):
        envelope(await c.get(path, headers=normal, params=params), 403, "forbidden")


async def test_log_indexes_are_migrated(live: LiveServer) -> None:
    """The log pages' lookups have indexes (conversations by app and sort column, feedback by conversation), and
    the migrated schema declares the same indexes as the models."""
    wanted = {"conversations": {("app_id", "updated_at"), ("app_id", "created_at")},
              "message_feedbacks": {("conversation_id", "app_id")},
              "message_files": {("upload_file_id",)}}  # the file preview's "is it attached?" check

    def indexes(conn: Any) -> dict[str, set[tuple[str, tuple[str, ...]]]]:
        insp = inspect(conn)
        # unique constraints' own indexes (Postgres lists them) are not Index objects of the models
        return {t: {(i["name"], tuple(i["column_names"])) for i in insp.get_indexes(t)
                    if not i.get("duplicates_constraint")} for t in wanted}

    async with live.ctx.db.engine.connect() as conn:
        migrated = await conn.run_sync(indexes)
    for table, columns in wanted.items():
        declared = {(i.name, tuple(c.name for c in i.columns)) for i in SQLModel.metadata.tables[table].indexes}
        assert migrated[table] == declared, table
        assert columns <= {cols for _, cols in declared}, table

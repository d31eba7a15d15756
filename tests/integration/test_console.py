"""Console service (/console/api) on a real database (SQLite; Postgres when PLEXUS_TEST_DATABASE_URL is set)
and a real NATS server, driven in-process through httpx.ASGITransport. The OpenAI-compatible server the
credential check calls is a real HTTP server on a free port, reached through litellm."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import func
from sqlmodel import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.console.auth import LoginLimiter, RevokedTokens, hash_password
from services.console.service import is_setup_done, setup_account
from shared import subjects
from shared.bus import Bus
from shared.context import Context
from shared.crypto import decrypt_json, hash_token
from shared.db import Database
from shared.errors import ApiError
from shared.migrate import upgrade_async
from shared.models import (
    Account,
    ApiToken,
    App,
    AppModelConfig,
    Conversation,
    ConversationVariable,
    EndUser,
    Message,
    MessageFeedback,
    MessageFile,
    ProviderCredential,
    Tenant,
    TenantMember,
    Workflow,
    WorkflowNodeExecution,
    WorkflowRun,
)
from shared.settings import AuthSettings
from tests.conftest import REDIS_URL, db_params, fresh_database, make_settings, needs_redis
from tests.support import console_in_process, serve

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "s3cret-admin-pass"
SECRET_KEY = "test-secret-key-" + "x" * 48
MAX_ATTEMPTS = 3
API_BASE = "https://api.plexus.test"
GOOD_KEY = "sk-good-key-1234567890"


def assert_envelope(r: httpx.Response, status: int, code: str, message: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert {"code", "message", "status"} <= body.keys(), body
    assert (body["code"], body["status"]) == (code, status), body
    if message is not None:
        assert body["message"] == message
    return body


@dataclass
class Events:
    """Everything published on plexus.config.> as seen by a separate NATS connection."""

    items: list[tuple[str, dict]] = field(default_factory=list)

    async def on(self, subject: str, payload: dict) -> None:
        self.items.append((subject, payload))

    async def wait_for(self, pred: Callable[[str, dict], bool], timeout: float = 5.0) -> tuple[str, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for subject, payload in self.items:
                if pred(subject, payload):
                    return subject, payload
            await asyncio.sleep(0.02)
        raise AssertionError(f"no matching config event; got {self.items}")


@dataclass
class Console:
    ctx: Context
    app: Any
    http: httpx.AsyncClient
    events: Events
    setup_before: dict
    setup_response: httpx.Response

    async def login(self, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> dict:
        r = await self.http.post("/login", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        return r.json()["data"]

    async def headers(self, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> dict:
        return {"Authorization": f"Bearer {(await self.login(email, password))['access_token']}"}

    async def add_account(self, email: str, password: str, role: str = "owner",
                          tenant_id: str | None = None) -> str:
        """An account straight in the database, in a new workspace unless one is given; returns the tenant."""
        async with self.ctx.db.session() as s:
            if tenant_id is None:
                tenant = Tenant(name=f"{email} workspace")
                s.add(tenant)
                tenant_id = tenant.id
            account = Account(email=email, name=email.split("@")[0], password_hash=await hash_password(password))
            s.add(account)
            s.add(TenantMember(tenant_id=tenant_id, account_id=account.id, role=role, current=True))
            await s.commit()
        return tenant_id


@pytest.fixture(scope="module", params=db_params())
async def console(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, nats_url: str
                  ) -> AsyncIterator[Console]:
    tmp = tmp_path_factory.mktemp("console")
    url = await fresh_database(request.param, tmp)
    settings = make_settings(tmp, url, nats_url, secret_key=SECRET_KEY, public_api_base=API_BASE,
                             auth=AuthSettings(login_max_attempts=MAX_ATTEMPTS, login_lockout_seconds=60))
    listener = await Bus.connect(nats_url, name="console-test-listener")
    events = Events()
    await listener.subscribe_json(subjects.CONFIG_WILDCARD, events.on)
    await listener.nc.flush()
    async with console_in_process(settings, "console-test") as (ctx, app, http):
        # the first-run flow, recorded here so test_setup_once can check it whatever order tests run in
        before = (await http.get("/setup")).json()
        resp = await http.post("/setup", json={"email": ADMIN_EMAIL, "name": "Admin", "password": ADMIN_PASSWORD})
        yield Console(ctx, app, http, events, before, resp)
    await listener.close()


async def _create_app(c: Console, h: dict, name: str, mode: str = "chat", **extra: Any) -> dict:
    r = await c.http.post("/apps", headers=h, json={"name": name, "mode": mode, **extra})
    assert r.status_code == 201, r.text
    return r.json()


CHAT_CONFIG = {
    "model": {"provider": "openai", "name": "gpt-4o-mini", "mode": "chat", "completion_params": {"temperature": 0.2}},
    "pre_prompt": "You are {{persona}}.",
    "user_input_form": [{"text-input": {"label": "Persona", "variable": "persona", "required": True, "max_length": 40}}],
    "opening_statement": "Hi",
}


# ---- setup --------------------------------------------------------------------------------------


async def test_setup_once(console: Console) -> None:
    c = console
    assert c.setup_before == {"step": "not_started", "setup_at": None}
    assert c.setup_response.status_code == 201 and c.setup_response.json() == {"result": "success"}
    status = (await c.http.get("/setup")).json()
    assert status["step"] == "finished" and isinstance(status["setup_at"], str)
    assert await is_setup_done(c.ctx.db)

    r = await c.http.post("/setup", json={"email": "intruder@example.com", "name": "X", "password": "abcd1234x"})
    assert_envelope(r, 403, "forbidden")
    with pytest.raises(ApiError) as e:
        await setup_account(c.ctx.db, email="cli@example.com", name="Cli", password="abcd1234x")
    assert e.value.status == 403
    async with c.ctx.db.session() as s:
        assert (await s.exec(select(func.count()).select_from(Account))).one() == 1
        owner = (await s.exec(select(TenantMember))).one()
        assert owner.role == "owner" and owner.current


@pytest.mark.parametrize("body, param", [
    ({"email": "not-an-email", "name": "A", "password": "abcd1234x"}, "email"),
    ({"email": "a@example.com", "name": "A", "password": "short1"}, "password"),
    ({"email": "a@example.com", "name": "A", "password": "lettersonly"}, "password"),
    ({"email": "a@example.com", "name": "A", "password": "1234567890"}, "password"),
    ({"email": "a@example.com", "name": "A"}, "password"),
])
async def test_setup_validation(console: Console, body: dict, param: str) -> None:
    r = await console.http.post("/setup", json=body)
    assert assert_envelope(r, 400, "invalid_param")["params"] == param


async def test_setup_race_creates_one_owner(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'race.db'}"
    await upgrade_async(url)
    db = Database(url)
    try:
        results = await asyncio.gather(
            *(setup_account(db, email=f"owner{i}@example.com", name=f"O{i}", password="abcd1234x") for i in range(3)),
            return_exceptions=True,
        )
        assert sum(not isinstance(r, Exception) for r in results) == 1, results
        assert all(r.status == 403 for r in results if isinstance(r, Exception)), results
        async with db.session() as s:
            assert (await s.exec(select(func.count()).select_from(Account))).one() == 1
    finally:
        await db.close()


# ---- sign-in ------------------------------------------------------------------------------------


async def test_login_refresh_logout(console: Console) -> None:
    c = console
    tokens = await c.login("  Admin@Example.com ", ADMIN_PASSWORD)  # emails are case- and space-insensitive
    access, refresh = tokens["access_token"], tokens["refresh_token"]
    r = await c.http.get("/account/profile", headers={"Authorization": f"Bearer {access}"})
    assert r.status_code == 200 and r.json()["email"] == ADMIN_EMAIL
    assert isinstance(r.json()["last_login_at"], int)

    # a refresh token is not an access token, and the reverse
    assert_envelope(await c.http.get("/account/profile", headers={"Authorization": f"Bearer {refresh}"}),
                    401, "unauthorized")
    assert_envelope(await c.http.post("/refresh-token", json={"refresh_token": access}), 401, "unauthorized")
    # missing, wrong scheme, garbage, expired (without the cookies /login set: test_console_cookies has those)
    c.http.cookies.clear()
    assert_envelope(await c.http.get("/account/profile"), 401, "unauthorized")
    assert_envelope(await c.http.get("/account/profile", headers={"Authorization": f"Basic {access}"}),
                    401, "unauthorized")
    assert_envelope(await c.http.get("/apps", headers={"Authorization": "Bearer not.a.jwt"}), 401, "unauthorized")
    claims = jwt.decode(access, SECRET_KEY, algorithms=["HS256"], options={"verify_aud": False})
    expired = jwt.encode({**claims, "iat": claims["iat"] - 7200, "exp": int(time.time()) - 10}, SECRET_KEY, "HS256")
    assert_envelope(await c.http.get("/apps", headers={"Authorization": f"Bearer {expired}"}),
                    401, "unauthorized", "Token has expired.")
    forged = jwt.encode(claims, "another-key-" + "y" * 40, "HS256")
    assert_envelope(await c.http.get("/apps", headers={"Authorization": f"Bearer {forged}"}), 401, "unauthorized")

    r = await c.http.post("/refresh-token", json={"refresh_token": refresh})
    assert r.status_code == 200 and r.json()["result"] == "success"
    pair = r.json()["data"]
    assert pair["refresh_token"] != refresh
    assert (await c.http.get("/apps", headers={"Authorization": f"Bearer {pair['access_token']}"})).status_code == 200
    # refresh tokens are single-use
    assert_envelope(await c.http.post("/refresh-token", json={"refresh_token": refresh}), 401, "unauthorized")

    h = {"Authorization": f"Bearer {pair['access_token']}"}
    r = await c.http.post("/logout", headers=h, json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 200 and r.json() == {"result": "success"}
    assert_envelope(await c.http.get("/account/profile", headers=h), 401, "unauthorized")
    assert_envelope(await c.http.post("/refresh-token", json={"refresh_token": pair["refresh_token"]}),
                    401, "unauthorized")
    # the first access token was not logged out
    r = await c.http.get("/account/profile", headers={"Authorization": f"Bearer {access}"})
    assert r.status_code == 200


async def test_wrong_password_and_lockout(console: Console) -> None:
    c = console
    email, password = "locked@example.com", "right-pass-123"
    await c.add_account(email, password)
    assert_envelope(await c.http.post("/login", json={"email": "nobody@example.com", "password": "x"}),
                    401, "authentication_failed", "Invalid email or password.")
    for _ in range(MAX_ATTEMPTS):
        r = await c.http.post("/login", json={"email": email, "password": "wrong-pass-1"})
        assert_envelope(r, 401, "authentication_failed", "Invalid email or password.")
    # locked: even the right password is refused, and the response says when to retry
    r = await c.http.post("/login", json={"email": email, "password": password})
    assert_envelope(r, 429, "email_code_login_limit")
    assert 0 < int(r.headers["retry-after"]) <= 61
    # other emails are not affected
    assert (await c.http.post("/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})).status_code == 200


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=needs_redis)])
async def test_limiter_and_revocation_backends(backend: str) -> None:
    redis = None
    if backend == "redis":
        import redis.asyncio as aioredis

        redis = aioredis.from_url(REDIS_URL)
    try:
        email = f"window-{time.time_ns()}@example.com"
        limiter = LoginLimiter(redis, max_attempts=2, window_seconds=1)
        assert await limiter.retry_after(email) == 0
        await limiter.failed(email)
        assert await limiter.retry_after(email) == 0
        await limiter.failed(email)
        assert await limiter.retry_after(email) > 0
        await asyncio.sleep(1.1)  # the window slides past both failures
        assert await limiter.retry_after(email) == 0
        await limiter.failed(email)
        await limiter.failed(email)
        await limiter.reset(email)
        assert await limiter.retry_after(email) == 0

        revoked = RevokedTokens(redis)
        claims = {"jti": f"jti-{time.time_ns()}", "exp": time.time() + 60}
        assert not await revoked.is_revoked(claims)
        await revoked.revoke(claims)
        assert await revoked.is_revoked(claims)
    finally:
        if redis is not None:
            await redis.aclose()


# ---- apps ---------------------------------------------------------------------------------------


async def test_app_create_detail_and_validation(console: Console) -> None:
    c = console
    h = await c.headers()
    app = await _create_app(c, h, "  Detail app  ", "completion", description="does things")
    assert app["name"] == "Detail app"
    assert set(app) == {"id", "name", "description", "mode", "icon_type", "icon", "icon_background", "enable_site",
                        "enable_api", "api_rpm", "api_rph", "api_rpd", "max_active_requests", "effective_limits",
                        "model_config", "created_at", "updated_at", "api_base_url", "site", "workflow",
                        "use_icon_as_answer_icon", "created_by", "tags"}
    assert app["mode"] == "completion" and app["description"] == "does things"
    assert app["workflow"] is None and app["created_by"] == (await c.http.get("/account/profile", headers=h)
                                                             ).json()["id"]
    assert app["model_config"] is None and app["enable_api"] is True and app["api_rpm"] is None
    assert isinstance(app["created_at"], int) and abs(app["created_at"] - time.time()) < 60
    assert app["api_base_url"] == f"{API_BASE}/v1"
    r = await c.http.get(f"/apps/{app['id']}", headers=h)
    assert r.status_code == 200 and r.json() == app

    assert_envelope(await c.http.post("/apps", headers=h, json={"name": "Detail app", "mode": "chat"}),
                    400, "invalid_param")
    assert_envelope(await c.http.post("/apps", headers=h, json={"name": "x" * 41, "mode": "chat"}), 400, "invalid_param")
    assert_envelope(await c.http.post("/apps", headers=h, json={"name": "   ", "mode": "chat"}), 400, "invalid_param")
    body = assert_envelope(await c.http.post("/apps", headers=h, json={"name": "Robot", "mode": "robot"}),
                           400, "invalid_param")
    assert body["params"] == "mode"
    body = assert_envelope(await c.http.post("/apps", headers=h, json={"mode": "chat"}), 400, "invalid_param")
    assert body["message"] == "name is required"
    assert_envelope(await c.http.post("/apps", headers=h, json={"name": "D", "mode": "chat", "description": "d" * 201}),
                    400, "invalid_param")
    assert_envelope(await c.http.post("/apps", headers={**h, "Content-Type": "application/json"}, content=b"{not json"),
                    400, "bad_request")
    assert_envelope(await c.http.post("/apps", headers=h, json=["chat"]), 400, "bad_request")
    assert_envelope(await c.http.get("/apps/00000000-0000-0000-0000-000000000000", headers=h),
                    404, "not_found", "App not found.")


async def test_app_list_paging_and_filters(console: Console) -> None:
    c = console
    h = await c.headers()
    modes = ["chat", "workflow", "chat", "workflow", "agent-chat"]
    for i, mode in enumerate(modes, 1):
        await _create_app(c, h, f"pg-{i}", mode)
    await _create_app(c, h, "unrelated")

    r = await c.http.get("/apps", headers=h, params={"name": "PG-", "limit": 2})
    page1 = r.json()
    assert (page1["page"], page1["limit"], page1["total"], page1["has_more"]) == (1, 2, 5, True)
    assert [a["name"] for a in page1["data"]] == ["pg-5", "pg-4"]  # newest first
    page3 = (await c.http.get("/apps", headers=h, params={"name": "pg-", "limit": 2, "page": 3})).json()
    assert [a["name"] for a in page3["data"]] == ["pg-1"] and page3["has_more"] is False
    beyond = (await c.http.get("/apps", headers=h, params={"name": "pg-", "limit": 2, "page": 9})).json()
    assert beyond["data"] == [] and beyond["total"] == 5 and beyond["has_more"] is False

    wf = (await c.http.get("/apps", headers=h, params={"name": "pg-", "mode": "workflow"})).json()
    assert sorted(a["name"] for a in wf["data"]) == ["pg-2", "pg-4"] and wf["total"] == 2
    everything = (await c.http.get("/apps", headers=h, params={"mode": "all", "limit": 100})).json()
    assert {"pg-1", "unrelated"} <= {a["name"] for a in everything["data"]}
    assert everything["total"] == len(everything["data"])
    # LIKE wildcards in the filter are literal
    assert (await c.http.get("/apps", headers=h, params={"name": "pg_"})).json()["total"] == 0
    assert (await c.http.get("/apps", headers=h, params={"name": "%"})).json()["total"] == 0

    for params in ({"limit": 0}, {"limit": 101}, {"page": 0}, {"mode": "robot"}, {"page": "x"}):
        assert_envelope(await c.http.get("/apps", headers=h, params=params), 400, "invalid_param")


async def test_app_update_and_api_enable(console: Console) -> None:
    c = console
    h = await c.headers()
    app = await _create_app(c, h, "upd-1")
    await _create_app(c, h, "upd-taken")
    r = await c.http.put(f"/apps/{app['id']}", headers=h, json={
        "name": " upd-renamed ", "description": "new", "enable_site": False, "api_rpm": 10, "api_rph": 100,
        "max_active_requests": 5, "icon": "🚀"})
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["name"], got["description"], got["enable_site"], got["api_rpm"], got["api_rph"],
            got["max_active_requests"], got["icon"]) == ("upd-renamed", "new", False, 10, 100, 5, "🚀")
    assert got["enable_api"] is True and got["mode"] == "chat"  # untouched
    await c.events.wait_for(lambda s, p: s == subjects.config_changed("app", app["id"])
                            and p == {"kind": "app", "id": app["id"], "tenant_id": p["tenant_id"]} and p["tenant_id"])

    # explicit null clears max_active_requests; absent fields stay
    got = (await c.http.put(f"/apps/{app['id']}", headers=h, json={"max_active_requests": None})).json()
    assert got["max_active_requests"] is None and got["api_rpm"] == 10 and got["name"] == "upd-renamed"
    # Dify's PUT also takes the site's use_icon_as_answer_icon (kept with the site settings)
    assert got["site"]["use_icon_as_answer_icon"] is False
    got = (await c.http.put(f"/apps/{app['id']}", headers=h, json={"use_icon_as_answer_icon": True})).json()
    assert got["site"]["use_icon_as_answer_icon"] is True
    got = (await c.http.put(f"/apps/{app['id']}", headers=h, json={"description": "again"})).json()
    assert got["site"]["use_icon_as_answer_icon"] is True and got["description"] == "again"
    assert got["use_icon_as_answer_icon"] is True
    exported = (await c.http.get(f"/apps/{app['id']}/export", headers=h)).json()["data"]
    assert "use_icon_as_answer_icon: true" in exported  # the DSL keeps it, as Dify's does

    for body in ({"api_rpm": -1}, {"api_rph": -5}, {"max_active_requests": -1}, {"name": "y" * 41},
                 {"api_rpm": 2**40}, {"enable_site": "maybe"}):
        assert_envelope(await c.http.put(f"/apps/{app['id']}", headers=h, json=body), 400, "invalid_param")
    assert_envelope(await c.http.put(f"/apps/{app['id']}", headers=h, json={"name": "upd-taken"}), 400, "invalid_param")

    c.events.items.clear()
    r = await c.http.post(f"/apps/{app['id']}/api-enable", headers=h, json={"enable_api": False})
    assert r.status_code == 200 and r.json()["enable_api"] is False
    await c.events.wait_for(lambda s, p: p["kind"] == "app" and p["id"] == app["id"])
    assert (await c.http.get(f"/apps/{app['id']}", headers=h)).json()["enable_api"] is False
    assert_envelope(await c.http.post(f"/apps/{app['id']}/api-enable", headers=h, json={}), 400, "invalid_param")
    r = await c.http.post(f"/apps/{app['id']}/site-enable", headers=h, json={"enable_site": True})
    assert r.status_code == 200 and r.json()["enable_site"] is True
    assert (await c.http.get(f"/apps/{app['id']}", headers=h)).json()["enable_site"] is True
    assert_envelope(await c.http.post(f"/apps/{app['id']}/site-enable", headers=h, json={"enable_site": "x"}), 400,
                    "invalid_param")


async def test_app_delete_removes_everything(console: Console) -> None:
    c = console
    h = await c.headers()
    app = await _create_app(c, h, "del-1")
    keep = await _create_app(c, h, "del-keep")
    assert (await c.http.post(f"/apps/{app['id']}/model-config", headers=h, json=CHAT_CONFIG)).status_code == 200
    tokens = [(await c.http.post(f"/apps/{a['id']}/api-keys", headers=h)).json() for a in (app, app, keep)]
    async with c.ctx.db.session() as s:
        tenant_id = (await s.get(App, app["id"])).tenant_id
        for a in (app, keep):  # the runtime's rows for each app
            eu = EndUser(tenant_id=tenant_id, app_id=a["id"], session_id="user-1")
            conv = Conversation(app_id=a["id"], end_user_id=eu.id, mode="chat")
            msg = Message(app_id=a["id"], conversation_id=conv.id, end_user_id=eu.id, task_id="t")
            s.add_all([eu, conv, msg, MessageFeedback(app_id=a["id"], conversation_id=conv.id, message_id=msg.id,
                                                      rating="like", from_end_user_id=eu.id)])
            wf = Workflow(tenant_id=tenant_id, app_id=a["id"], type="chat", version="draft")
            run = WorkflowRun(tenant_id=tenant_id, app_id=a["id"], workflow_id=wf.id, type="chat", version="v",
                              task_id="t", created_by=eu.id)
            s.add_all([wf, run])
            await s.flush()  # the rows the next ones point at
            s.add_all([MessageFile(message_id=msg.id, type="image", transfer_method="remote_url"),
                       ConversationVariable(id="v1", conversation_id=conv.id, app_id=a["id"], name="n",
                                            value_type="string"),
                       WorkflowNodeExecution(tenant_id=tenant_id, app_id=a["id"], workflow_id=wf.id,
                                             workflow_run_id=run.id, node_id="start", node_type="start")])
        await s.commit()
        kept_file = (await s.exec(select(MessageFile.id).join(Message, Message.id == MessageFile.message_id)
                                  .where(Message.app_id == keep["id"]))).one()
    c.events.items.clear()

    r = await c.http.delete(f"/apps/{app['id']}", headers=h)
    assert r.status_code == 204 and r.content == b""
    assert_envelope(await c.http.get(f"/apps/{app['id']}", headers=h), 404, "not_found", "App not found.")
    assert_envelope(await c.http.delete(f"/apps/{app['id']}", headers=h), 404, "not_found")
    async with c.ctx.db.session() as s:
        # every row hanging off the app goes (SQLite does not cascade), the other app's stay
        assert (await s.exec(select(MessageFile.id))).all() == [kept_file]
        for model in (MessageFeedback, Message, Conversation, ConversationVariable, EndUser, Workflow, WorkflowRun,
                      WorkflowNodeExecution, AppModelConfig, ApiToken):
            gone = (await s.exec(select(func.count()).select_from(model).where(model.app_id == app["id"]))).one()
            kept = (await s.exec(select(func.count()).select_from(model).where(model.app_id == keep["id"]))).one()
            assert (model.__name__, gone) == (model.__name__, 0)
            if model is not AppModelConfig:
                assert (model.__name__, kept) == (model.__name__, 1)

    # `deleted` lets runtimes free what they keep for the app (its cached answers)
    await c.events.wait_for(lambda s, p: s == subjects.config_changed("app", app["id"])
                            and p["tenant_id"] == tenant_id and p.get("deleted") is True)
    for t in tokens[:2]:
        _, p = await c.events.wait_for(lambda s, p, t=t: s == subjects.config_changed("apikey", t["id"]))
        assert p == {"kind": "apikey", "id": t["id"], "app_id": app["id"], "token_hash": hash_token(t["token"])}
    assert not [p for _, p in c.events.items if p["id"] == tokens[2]["id"]]


async def test_other_workspace_is_invisible(console: Console) -> None:
    c = console
    h1 = await c.headers()
    mine = await _create_app(c, h1, "iso-shared-name")
    await c.http.post(f"/apps/{mine['id']}/api-keys", headers=h1)
    tenant2 = await c.add_account("other@example.com", "other-pass-123")
    await c.add_account("viewer@example.com", "viewer-pass-123", role="normal", tenant_id=tenant2)
    h2 = await c.headers("other@example.com", "other-pass-123")

    listed = (await c.http.get("/apps", headers=h2, params={"limit": 100})).json()
    assert listed["total"] == 0 and listed["data"] == []
    for method, path, body in (("GET", "", None), ("PUT", "", {"name": "stolen"}), ("DELETE", "", None),
                               ("GET", "/api-keys", None), ("POST", "/api-keys", None),
                               ("GET", "/model-config", None), ("POST", "/model-config", CHAT_CONFIG),
                               ("POST", "/api-enable", {"enable_api": False}),
                               ("POST", "/site-enable", {"enable_site": False}), ("POST", "/copy", {})):
        r = await c.http.request(method, f"/apps/{mine['id']}{path}", headers=h2, json=body)
        assert_envelope(r, 404, "not_found", "App not found.")
    assert (await c.http.get(f"/apps/{mine['id']}", headers=h1)).json()["name"] == "iso-shared-name"

    # names are unique per workspace only
    theirs = await _create_app(c, h2, "iso-shared-name")
    assert theirs["id"] != mine["id"]
    assert_envelope(await c.http.get(f"/apps/{theirs['id']}", headers=h1), 404, "not_found")

    # a member with the "normal" role reads but does not change
    hv = await c.headers("viewer@example.com", "viewer-pass-123")
    assert [a["id"] for a in (await c.http.get("/apps", headers=hv)).json()["data"]] == [theirs["id"]]
    assert_envelope(await c.http.post("/apps", headers=hv, json={"name": "v", "mode": "chat"}), 403, "forbidden")
    assert_envelope(await c.http.delete(f"/apps/{theirs['id']}", headers=hv), 403, "forbidden")


# ---- model config -------------------------------------------------------------------------------


async def test_model_config(console: Console) -> None:
    c = console
    h = await c.headers()
    app = await _create_app(c, h, "cfg-chat")
    r = await c.http.get(f"/apps/{app['id']}/model-config", headers=h)
    assert r.status_code == 200 and r.json() is None

    c.events.items.clear()
    r = await c.http.post(f"/apps/{app['id']}/model-config", headers=h, json=CHAT_CONFIG)
    assert r.status_code == 200 and r.json() == {"result": "success"}
    await c.events.wait_for(lambda s, p: s == subjects.config_changed("app", app["id"]))
    cfg = (await c.http.get(f"/apps/{app['id']}/model-config", headers=h)).json()
    assert cfg["model"]["name"] == "gpt-4o-mini" and cfg["pre_prompt"] == "You are {{persona}}."
    assert cfg["user_input_form"][0]["text-input"]["variable"] == "persona"
    assert cfg["retriever_resource"] == {"enabled": True}  # schema defaults are filled in
    assert (await c.http.get(f"/apps/{app['id']}", headers=h)).json()["model_config"] == cfg

    second = {**CHAT_CONFIG, "model": {**CHAT_CONFIG["model"], "name": "gpt-4o"}}
    assert (await c.http.post(f"/apps/{app['id']}/model-config", headers=h, json=second)).status_code == 200
    assert (await c.http.get(f"/apps/{app['id']}/model-config", headers=h)).json()["model"]["name"] == "gpt-4o"
    async with c.ctx.db.session() as s:
        rows = list(await s.exec(select(AppModelConfig).where(AppModelConfig.app_id == app["id"])))
        current = (await s.get(App, app["id"])).app_model_config_id
    assert len(rows) == 2 and current in {r.id for r in rows}
    assert next(r for r in rows if r.id == current).config["model"]["name"] == "gpt-4o"

    bad = [
        ({k: v for k, v in CHAT_CONFIG.items() if k != "model"}, "model is required"),
        ({**CHAT_CONFIG, "user_input_form": [{"text-input": {"variable": "1bad"}}]}, "1bad"),
        ({**CHAT_CONFIG, "user_input_form": [{"select": {"variable": "s"}}]}, "needs options"),
        ({**CHAT_CONFIG, "model": {"provider": "openai", "name": "m", "mode": "chatty"}}, "model.mode"),
        ({**CHAT_CONFIG, "model": {"provider": "no-such-provider", "name": "m"}}, "no-such-provider"),
    ]
    for body, fragment in bad:
        err = assert_envelope(await c.http.post(f"/apps/{app['id']}/model-config", headers=h, json=body),
                              400, "invalid_param")
        assert fragment in err["message"] and "\n" not in err["message"], err
    assert_envelope(await c.http.post(f"/apps/{app['id']}/model-config", headers=h, json=[1]), 400, "bad_request")
    assert (await c.http.get(f"/apps/{app['id']}/model-config", headers=h)).json()["model"]["name"] == "gpt-4o"

    wf = await _create_app(c, h, "cfg-workflow", "workflow")
    assert_envelope(await c.http.post(f"/apps/{wf['id']}/model-config", headers=h, json=CHAT_CONFIG),
                    400, "app_unavailable")


# ---- API keys -----------------------------------------------------------------------------------


async def test_api_keys(console: Console) -> None:
    c = console
    h = await c.headers()
    app = await _create_app(c, h, "keys-1")
    r = await c.http.post(f"/apps/{app['id']}/api-keys", headers=h)
    assert r.status_code == 201, r.text
    key = r.json()
    assert set(key) == {"id", "type", "token", "last_used_at", "created_at"} and key["type"] == "app"
    assert key["token"].startswith("app-") and len(key["token"]) == 28 and key["last_used_at"] is None
    _, p = await c.events.wait_for(lambda s, p: s == subjects.config_changed("apikey", key["id"]))
    assert p["token_hash"] == hash_token(key["token"])

    listed = await c.http.get(f"/apps/{app['id']}/api-keys", headers=h)
    assert key["token"] not in listed.text
    (row,) = listed.json()["data"]
    assert row["id"] == key["id"] and row["token"] != key["token"] and row["token"].startswith("app-")
    async with c.ctx.db.session() as s:
        stored = await s.get(ApiToken, key["id"])
    assert stored.token_hash == hashlib.sha256(key["token"].encode()).hexdigest()
    assert key["token"] not in repr(stored.model_dump())

    for _ in range(9):
        assert (await c.http.post(f"/apps/{app['id']}/api-keys", headers=h)).status_code == 201
    assert_envelope(await c.http.post(f"/apps/{app['id']}/api-keys", headers=h), 400, "bad_request",
                    "Cannot create more than 10 API keys for this resource type.")

    c.events.items.clear()
    r = await c.http.delete(f"/apps/{app['id']}/api-keys/{key['id']}", headers=h)
    assert r.status_code == 204 and r.content == b""
    _, p = await c.events.wait_for(lambda s, p: s == subjects.config_changed("apikey", key["id"]))
    assert p == {"kind": "apikey", "id": key["id"], "app_id": app["id"], "token_hash": hash_token(key["token"])}
    ids = [k["id"] for k in (await c.http.get(f"/apps/{app['id']}/api-keys", headers=h)).json()["data"]]
    assert len(ids) == 9 and key["id"] not in ids
    assert_envelope(await c.http.delete(f"/apps/{app['id']}/api-keys/{key['id']}", headers=h), 404, "not_found")

    # concurrent creates cannot pass the limit together
    for key_id in ids[:4]:
        assert (await c.http.delete(f"/apps/{app['id']}/api-keys/{key_id}", headers=h)).status_code == 204
    results = await asyncio.gather(*(c.http.post(f"/apps/{app['id']}/api-keys", headers=h) for _ in range(12)))
    assert sorted(r.status_code for r in results) == [201] * 5 + [400] * 7, [r.text for r in results]
    assert len((await c.http.get(f"/apps/{app['id']}/api-keys", headers=h)).json()["data"]) == 10


# ---- model providers ----------------------------------------------------------------------------


@dataclass
class FakeOpenAI:
    base_url: str
    auth_headers: list[str]


@pytest.fixture(scope="module")
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    """Answers /v1/chat/completions like OpenAI: 200 for GOOD_KEY, 401 with OpenAI's error body otherwise."""
    seen: list[str] = []

    async def chat(request: Request) -> JSONResponse:
        seen.append(request.headers.get("authorization", ""))
        if request.headers.get("authorization") != f"Bearer {GOOD_KEY}":
            return JSONResponse({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                           "param": None, "code": "invalid_api_key"}}, status_code=401)
        body = await request.json()
        return JSONResponse({
            "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "p"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })

    served = await serve(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]))
    yield FakeOpenAI(f"{served.url}/v1", seen)
    await served.stop()


async def test_model_provider_plugins_are_built_in(console: Console, fake_openai: FakeOpenAI) -> None:
    """Dify 1.x clients install a provider plugin first (the stress-test harness does): a model-provider plugin
    Plexus knows (or the agent strategies) is reported installed, and its plugin id names the provider in the
    credential routes."""
    c = console
    h = await c.headers()
    url = "/workspaces/current/plugin/install/marketplace"
    r = await c.http.post(url, headers=h, json={"plugin_unique_identifiers": [
        "langgenius/openai:0.0.26@4f2a", "langgenius/anthropic:0.0.14@9c1e"]})
    assert r.status_code == 200 and r.json() == {"all_installed": True, "task_id": ""}, r.text
    # the official agent strategies are built in too (the workflow agent node); another plugin is refused
    r = await c.http.post(url, headers=h, json={"plugin_unique_identifiers": ["langgenius/agent:0.0.9@77aa"]})
    assert r.status_code == 200 and r.json()["all_installed"] is True, r.text
    # so are the tool plugins of the built-in tools (a DSL's time or QR code tool depends on them)
    r = await c.http.post(url, headers=h, json={"plugin_unique_identifiers": [
        "langgenius/time:0.0.4@1c2d", "langgenius/qrcode:0.0.2@3e4f"]})
    assert r.status_code == 200 and r.json()["all_installed"] is True, r.text
    r = await c.http.post(url, headers=h, json={"plugin_unique_identifiers": [
        "langgenius/openai:0.0.26@4f2a", "langgenius/searxng:0.0.5@77aa"]})
    assert "langgenius/searxng" in assert_envelope(r, 400, "invalid_param")["message"]
    for body in ({}, {"plugin_unique_identifiers": []}, {"plugin_unique_identifiers": [3]}):
        assert_envelope(await c.http.post(url, headers=h, json=body), 400, "invalid_param")
    # the plugin's provider id works where Dify 1.x sends it
    base = "/workspaces/current/model-providers/langgenius/openai/openai/credentials"
    r = await c.http.post(base, headers=h, json={"credentials": {"api_key": GOOD_KEY,
                                                                 "api_base": fake_openai.base_url}})
    assert r.status_code == 200, r.text
    r = await c.http.post(f"{base}/validate", headers=h, json={"credentials": {"api_key": GOOD_KEY,
                                                                               "api_base": fake_openai.base_url}})
    assert r.json() == {"result": "success"}, r.text
    assert (await c.http.delete(base, headers=h)).status_code == 200


async def test_provider_credentials(console: Console, fake_openai: FakeOpenAI) -> None:
    c = console
    h = await c.headers()
    base = "/workspaces/current/model-providers"
    creds = {"api_key": GOOD_KEY, "api_base": fake_openai.base_url}
    c.events.items.clear()
    r = await c.http.post(f"{base}/openai-compatible/credentials", headers=h, json={"credentials": creds})
    assert r.status_code == 200 and r.json() == {"result": "success"}
    _, p = await c.events.wait_for(lambda s, p: p["kind"] == "provider")
    tenant_id = p["id"]
    assert p == {"kind": "provider", "id": tenant_id, "provider": "openai-compatible"}
    assert subjects.config_changed("provider", tenant_id) in [s for s, _ in c.events.items]

    async with c.ctx.db.session() as s:
        row = (await s.exec(select(ProviderCredential).where(ProviderCredential.provider == "openai-compatible"))).one()
    assert row.tenant_id == tenant_id
    assert GOOD_KEY not in row.encrypted_credentials and "api_key" not in row.encrypted_credentials
    assert decrypt_json(SECRET_KEY, row.encrypted_credentials) == creds

    listed = await c.http.get(base, headers=h)
    assert GOOD_KEY not in listed.text
    (item,) = listed.json()["data"]
    assert item["provider"] == "openai-compatible" and item["has_credentials"] is True
    assert item["credentials"] == {"api_key": "sk-***90", "api_base": fake_openai.base_url}
    assert isinstance(item["updated_at"], int)

    # saving again with the masked key (what a client read back) keeps the stored key; the upsert keeps one row
    r = await c.http.post(f"{base}/openai-compatible/credentials", headers=h,
                          json={"credentials": {**item["credentials"], "organization": "org-1"}})
    assert r.status_code == 200
    async with c.ctx.db.session() as s:
        rows = list(await s.exec(select(ProviderCredential).where(ProviderCredential.tenant_id == tenant_id)))
    assert len(rows) == 1
    assert decrypt_json(SECRET_KEY, rows[0].encrypted_credentials) == {**creds, "organization": "org-1"}

    # a real call through litellm: the right key works, a wrong one reports the provider's error with HTTP 200
    n = len(fake_openai.auth_headers)
    r = await c.http.post(f"{base}/openai-compatible/credentials/validate", headers=h,
                          json={"credentials": creds, "model": "test-model"})
    assert r.status_code == 200 and r.json() == {"result": "success"}, r.text
    r = await c.http.post(f"{base}/openai-compatible/credentials/validate", headers=h,
                          json={"credentials": {**creds, "api_key": "sk-wrong-0000000000"}, "model": "test-model"})
    assert r.status_code == 200 and r.json()["result"] == "error", r.text
    assert "Incorrect API key provided" in r.json()["error"]
    assert fake_openai.auth_headers[n:] == [f"Bearer {GOOD_KEY}", "Bearer sk-wrong-0000000000"]

    # provider ids in the plugin form carry slashes
    r = await c.http.post(f"{base}/langgenius/openai/openai/credentials", headers=h, json={"credentials": creds})
    assert r.status_code == 200, r.text
    assert {i["provider"] for i in (await c.http.get(base, headers=h)).json()["data"]} == {
        "openai-compatible", "langgenius/openai/openai"}

    assert_envelope(await c.http.post(f"{base}/no-such-provider/credentials", headers=h, json={"credentials": creds}),
                    400, "invalid_param")
    assert_envelope(await c.http.post(f"{base}/openai/credentials", headers=h, json={"credentials": "k"}),
                    400, "invalid_param")

    c.events.items.clear()
    r = await c.http.delete(f"{base}/openai-compatible/credentials", headers=h)
    assert r.status_code == 200 and r.json() == {"result": "success"}
    await c.events.wait_for(lambda s, p: p == {"kind": "provider", "id": tenant_id, "provider": "openai-compatible"})
    assert [i["provider"] for i in (await c.http.get(base, headers=h)).json()["data"]] == ["langgenius/openai/openai"]


async def test_health(console: Console) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=console.app), base_url="http://console.test") as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        r = await http.get("/readyz")
        assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "nats": "ok"}
        assert_envelope(await http.get("/console/api/nowhere"), 404, "not_found")

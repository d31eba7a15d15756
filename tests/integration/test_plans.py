"""Workspace plans through the real stack: the plan's per-app defaults apply at the gateway, an app's own
api_rpm/api_rph/api_rpd win (0 = unlimited, null = the plan's value), a plan change counts from the next
request on every gateway replica, and the day window is exact (a second replica on a clock the test moves)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import ValidationError
from sqlmodel import select

import services.gateway as gateway_module
from services.console.auth import hash_password
from shared.limiter import MemoryLimiter
from shared.models import Account, TenantMember
from shared.plans import PLAN_NAMES
from shared.settings import Settings
from tests.conftest import LiveServer
from tests.integration.gateway_env import close_context, eventually, make_context, service_app
from tests.support import console_admin, serve

SANDBOX_POLICY = '"rpm";q=60;w=60, "rph";q=1000;w=3600, "rpd";q=10000;w=86400'
PLAN = "/console/api/workspaces/current/plan"


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def owner(client: httpx.AsyncClient) -> AsyncIterator[dict]:
    h = await console_admin(client)
    yield h
    # the module's stack is shared: leave the workspace on the install default
    assert (await client.put(PLAN, headers=h, json={"plan": "enterprise"})).status_code == 200


async def new_app(client: httpx.AsyncClient, h: dict) -> tuple[str, dict]:
    name = f"p-{uuid.uuid4().hex[:8]}"
    r = await client.post("/console/api/apps", headers=h, json={"name": name, "mode": "chat"})
    assert r.status_code == 201, r.text
    app_id = r.json()["id"]
    key = (await client.post(f"/console/api/apps/{app_id}/api-keys", headers=h)).json()["token"]
    return app_id, {"Authorization": f"Bearer {key}"}


async def put_app(client: httpx.AsyncClient, h: dict, app_id: str, **fields) -> dict:
    r = await client.put(f"/console/api/apps/{app_id}", headers=h, json=fields)
    assert r.status_code == 200, r.text
    return r.json()


async def set_plan(client: httpx.AsyncClient, h: dict, plan: str, custom: dict | None = None) -> dict:
    body = {"plan": plan} if custom is None else {"plan": plan, "custom_limits": custom}
    r = await client.put(PLAN, headers=h, json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def member(client: httpx.AsyncClient, live: LiveServer, role: str) -> dict:
    """A new member of the owner's workspace with ``role``, signed in: its console headers."""
    async with live.ctx.db.session() as s:
        owner_row = (await s.exec(select(TenantMember).where(TenantMember.role == "owner"))).first()
        email = f"{role}-{uuid.uuid4().hex[:6]}@example.com"
        account = Account(email=email, name=role, password_hash=await hash_password("passw0rd-y"))
        s.add(account)
        s.add(TenantMember(tenant_id=owner_row.tenant_id, account_id=account.id, role=role, current=True))
        await s.commit()
    r = await client.post("/console/api/login", json={"email": email, "password": "passw0rd-y"})
    return {"Authorization": f"Bearer {r.json()['data']['access_token']}"}


def test_default_plan_setting_takes_the_plan_names() -> None:
    for name in PLAN_NAMES:
        assert Settings(_env_file=None, default_plan=name).default_plan == name
    with pytest.raises(ValidationError):
        Settings(_env_file=None, default_plan="gold")


async def test_plan_is_a_default_not_a_cap(client: httpx.AsyncClient, owner: dict, live: LiveServer) -> None:
    """What docs/limits.md says a plan is: the defaults of apps without their own limits. An editor lifts an
    app's limits under any plan; a `normal` member (and an app key) can change neither, which is what an
    operator who wants enforced quotas relies on."""
    await set_plan(client, owner, "sandbox")
    app_id, k = await new_app(client, owner)
    assert (await client.get("/v1/info", headers=k)).headers["ratelimit-policy"] == SANDBOX_POLICY

    editor = await member(client, live, "editor")
    app = await put_app(client, editor, app_id, api_rpm=0, api_rph=0, api_rpd=0)
    assert app["effective_limits"] == {"rpm": 0, "rph": 0, "rpd": 0, "max_active_requests": 0}
    r = await client.get("/v1/info", headers=k)
    assert r.status_code == 200 and "ratelimit-policy" not in r.headers
    r = await client.put(PLAN, headers=editor, json={"plan": "enterprise"})
    assert r.status_code == 403

    normal = await member(client, live, "normal")
    for method, path, body in (("PUT", f"/console/api/apps/{app_id}", {"api_rpm": 0}),
                               ("POST", f"/console/api/apps/{app_id}/api-enable", {"enable_api": True}),
                               ("POST", f"/console/api/apps/{app_id}/api-keys", None),
                               ("PUT", PLAN, {"plan": "enterprise"})):
        r = await client.request(method, path, headers=normal, json=body)
        assert r.status_code == 403 and r.json()["code"] == "forbidden", (path, r.text)
    r = await client.put(PLAN, headers=k, json={"plan": "enterprise"})  # an app key is no console caller
    assert r.status_code == 401

    # the owner can move the workspace to any plan, unlimited included
    assert (await set_plan(client, owner, "enterprise"))["limits"] == {"rpm": 0, "rph": 0, "rpd": 0}


async def test_plan_defaults_overrides_and_changes(client: httpx.AsyncClient, owner: dict) -> None:
    h = owner
    # a new self-hosted workspace: PLEXUS_DEFAULT_PLAN (enterprise), no limits
    plan = (await client.get(PLAN, headers=h)).json()
    assert plan["plan"] == "enterprise" and plan["custom_limits"] is None
    assert plan["limits"] == {"rpm": 0, "rph": 0, "rpd": 0}
    assert plan["plans"] == {"sandbox": {"rpm": 60, "rph": 1000, "rpd": 10000},
                             "professional": {"rpm": 300, "rph": 10000, "rpd": 100000},
                             "team": {"rpm": 600, "rph": 30000, "rpd": 300000}, "enterprise": None}
    app_id, k = await new_app(client, h)
    r = await client.get("/v1/info", headers=k)
    assert r.status_code == 200
    assert "ratelimit-policy" not in r.headers and "x-ratelimit-limit" not in r.headers

    # the plan's defaults apply from the next request
    assert (await set_plan(client, h, "sandbox"))["limits"] == {"rpm": 60, "rph": 1000, "rpd": 10000}
    r = await client.get("/v1/info", headers=k)
    assert r.status_code == 200 and r.headers["ratelimit-policy"] == SANDBOX_POLICY
    assert (r.headers["x-ratelimit-limit"], r.headers["x-ratelimit-remaining"]) == ("60", "59")
    app = (await client.get(f"/console/api/apps/{app_id}", headers=h)).json()
    assert (app["api_rpm"], app["api_rph"], app["api_rpd"]) == (None, None, None)
    assert app["effective_limits"] == {"rpm": 60, "rph": 1000, "rpd": 10000, "max_active_requests": 0}

    # the app's own value wins (one request of the minute is already used)
    app = await put_app(client, h, app_id, api_rpm=2)
    assert app["api_rpm"] == 2 and app["effective_limits"]["rpm"] == 2
    r = await client.get("/v1/info", headers=k)
    assert r.status_code == 200 and r.headers["x-ratelimit-remaining"] == "0"
    r = await client.get("/v1/info", headers=k)
    assert r.status_code == 429 and r.json()["code"] == "too_many_requests"
    assert "2 API requests per minute" in r.json()["message"]

    # 0 = unlimited for that window; the plan still sets the others
    app = await put_app(client, h, app_id, api_rpm=0)
    assert app["effective_limits"] == {"rpm": 0, "rph": 1000, "rpd": 10000, "max_active_requests": 0}
    r = await client.get("/v1/info", headers=k)
    assert r.status_code == 200
    assert r.headers["ratelimit-policy"] == '"rph";q=1000;w=3600, "rpd";q=10000;w=86400'
    app = await put_app(client, h, app_id, api_rph=0, api_rpd=0)
    r = await client.get("/v1/info", headers=k)
    assert r.status_code == 200 and "ratelimit-policy" not in r.headers

    # null = back to the plan; counts are exact across all that: 2 in the minute, 3 in the hour and day
    app = await put_app(client, h, app_id, api_rpm=None, api_rph=None, api_rpd=None)
    assert (app["api_rpm"], app["api_rph"], app["api_rpd"]) == (None, None, None)
    r = await client.get("/v1/info", headers=k)
    assert r.headers["ratelimit-policy"] == SANDBOX_POLICY
    # remaining per window (the reset times depend on when the earlier requests ran)
    assert [w.split(";")[1] for w in r.headers["ratelimit"].split(", ")] == ["r=57", "r=996", "r=9996"]

    # a plan change counts on the very next request
    await set_plan(client, h, "professional")
    r = await client.get("/v1/info", headers=k)
    assert r.headers["ratelimit-policy"] == '"rpm";q=300;w=60, "rph";q=10000;w=3600, "rpd";q=100000;w=86400'
    await set_plan(client, h, "enterprise")
    r = await client.get("/v1/info", headers=k)
    assert r.status_code == 200 and "ratelimit-policy" not in r.headers


async def test_enterprise_custom_day_limit_is_exact(client: httpx.AsyncClient, owner: dict) -> None:
    h = owner
    plan = await set_plan(client, h, "enterprise", {"rpd": 3})
    assert plan["custom_limits"] == {"rpm": 0, "rph": 0, "rpd": 3}
    assert plan["limits"] == {"rpm": 0, "rph": 0, "rpd": 3}
    _, k = await new_app(client, h)
    codes = [(await client.get("/v1/info", headers=k)).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    r = await client.get("/v1/info", headers=k)
    body = r.json()
    assert r.status_code == 429 and body["code"] == "too_many_requests"
    assert body["message"].startswith("Rate limit exceeded: this app allows 3 API requests per day.")
    assert 86000 <= int(r.headers["retry-after"]) <= 86400
    assert r.headers["x-ratelimit-limit"] == "3" and r.headers["x-ratelimit-remaining"] == "0"
    assert r.headers["ratelimit-policy"] == '"rpd";q=3;w=86400'
    # enterprise without custom limits: unlimited again
    await set_plan(client, h, "enterprise")
    assert (await client.get("/v1/info", headers=k)).status_code == 200


async def test_plan_validation_and_owner_only(client: httpx.AsyncClient, owner: dict, live: LiveServer
                                              ) -> None:
    h = owner
    for body in ({}, {"plan": "gold"}, {"plan": "sandbox", "custom_limits": {"rpm": 5}},
                 {"plan": "enterprise", "custom_limits": {"rpm": -1}},
                 {"plan": "enterprise", "custom_limits": {"rpx": 1}},
                 {"plan": "enterprise", "custom_limits": {"rpd": "10"}},
                 {"plan": "enterprise", "custom_limits": {"rpd": 2**40}}, {"plan": "team", "extra": 1}):
        r = await client.put(PLAN, headers=h, json=body)
        assert r.status_code == 400 and r.json()["code"] == "invalid_param", (body, r.text)
    app_id, _ = await new_app(client, h)
    for body in ({"api_rpd": -1}, {"api_rpd": 2**40}, {"api_rpd": "x"}):
        r = await client.put(f"/console/api/apps/{app_id}", headers=h, json=body)
        assert r.status_code == 400 and r.json()["code"] == "invalid_param", body
    client.cookies.clear()  # the client keeps the cookies /login set: no credential at all here
    assert (await client.get(PLAN)).status_code == 401

    # an admin of the same workspace may read the plan but not change it
    admin = await member(client, live, "admin")
    assert (await client.get(PLAN, headers=admin)).json()["plan"] == "enterprise"
    r = await client.put(PLAN, headers=admin, json={"plan": "sandbox"})
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    assert (await client.get(PLAN, headers=h)).json()["plan"] == "enterprise"


async def test_plan_change_reaches_another_replica_and_the_day_window_is_exact(
        client: httpx.AsyncClient, owner: dict, live: LiveServer, nats_url: str, tmp_path) -> None:
    """A second gateway on the same database and NATS, with an in-memory limiter on a test clock."""
    h = owner
    clock = Clock(time.time())
    ctx = await make_context(tmp_path, nats_url, db_url=live.ctx.settings.database_url, migrate=False)
    ctx.local_apps["runtime"] = service_app("runtime")
    gw = gateway_module.create_app(ctx, limiter=MemoryLimiter(clock))
    await gateway_module.start(ctx, gw)
    served = await serve(gw)
    try:
        await set_plan(client, h, "sandbox")
        _, k = await new_app(client, h)
        _, probe = await new_app(client, h)  # polled while the change travels; its counts do not matter
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as replica:
            r = await replica.get("/v1/info", headers=k)
            assert r.status_code == 200 and r.headers["ratelimit-policy"] == SANDBOX_POLICY
            assert (await replica.get("/v1/info", headers=probe)).status_code == 200  # both keys cached

            await set_plan(client, h, "enterprise", {"rpd": 2})

            async def changed() -> bool:
                r = await replica.get("/v1/info", headers=probe)
                return r.headers.get("ratelimit-policy") == '"rpd";q=2;w=86400'

            assert (await eventually(changed, timeout=2.0))[0], "plan change did not reach the replica"
            # one request of the day was made under sandbox: one more fits
            r = await replica.get("/v1/info", headers=k)
            assert r.status_code == 200 and r.headers["x-ratelimit-remaining"] == "0"
            r = await replica.get("/v1/info", headers=k)
            assert r.status_code == 429 and "2 API requests per day" in r.json()["message"]
            assert r.headers["retry-after"] == "86400"  # the clock stood still: both entries are "now"
            clock.t += 86400 - 1
            r = await replica.get("/v1/info", headers=k)
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            clock.t += 1  # a day after the first two: both leave the window
            codes = [(await replica.get("/v1/info", headers=k)).status_code for _ in range(3)]
            assert codes == [200, 200, 429]
    finally:
        await served.stop()
        await gateway_module.stop(ctx, gw)
        await close_context(ctx)

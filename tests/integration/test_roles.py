"""Workspace members and roles on the console (/console/api) with a real database and NATS: invitations and
activation, every role against every kind of action, the rules about owners and admins, and membership
changes taking effect on the very next request. Driven in-process through httpx.ASGITransport."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from shared.context import Context
from tests.conftest import db_params, fresh_database, make_settings
from tests.support import console_in_process

OWNER = ("owner@example.com", "owner-pass-1")
PASSWORD = "member-pass-1"
ROLES = ("normal", "editor", "admin", "owner")
_n = itertools.count()


def uniq(prefix: str) -> str:
    return f"{prefix}-{next(_n)}-{uuid.uuid4().hex[:6]}"


def envelope(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert (body["code"], body["status"]) == (code, status), body
    return body


@dataclass
class Env:
    ctx: Context
    http: httpx.AsyncClient
    heads: dict[str, dict]  # role → Authorization header of a member with that role
    ids: dict[str, str]  # role → account id
    app_id: str

    async def login(self, email: str, password: str) -> dict:
        r = await self.http.post("/login", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['data']['access_token']}"}

    async def invite(self, by: dict, email: str, role: str) -> dict:
        r = await self.http.post("/workspaces/current/members/invite-email", headers=by,
                                 json={"emails": [email], "role": role, "language": "en-US"})
        assert r.status_code == 201, r.text
        (result,) = r.json()["invitation_results"]
        assert result["status"] == "success", result
        return result

    async def join(self, by: dict, role: str) -> tuple[dict, str, str]:
        """A new account invited with ``role`` and activated; its headers, account id and email."""
        email = f"{uniq(role)}@example.com"
        result = await self.invite(by, email, role)
        r = await self.http.post("/activate", json={"token": result["token"], "email": email,
                                                    "name": role.title(), "password": PASSWORD})
        assert r.status_code == 200, r.text
        h = {"Authorization": f"Bearer {r.json()['data']['access_token']}"}
        me = (await self.http.get("/account/profile", headers=h)).json()
        return h, me["id"], email

    async def members(self, h: dict) -> dict[str, dict]:
        r = await self.http.get("/workspaces/current/members", headers=h)
        assert r.status_code == 200, r.text
        return {m["email"]: m for m in r.json()["accounts"]}


@pytest.fixture(scope="module", params=db_params())
async def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, nats_url: str
              ) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("roles")
    url = await fresh_database(request.param, tmp)
    settings = make_settings(tmp, url, nats_url, secret_key="roles-secret-" + "x" * 40,
                             public_api_base="https://plexus.test")
    async with console_in_process(settings, "roles-test") as (ctx, _, http):
        r = await http.post("/setup", json={"email": OWNER[0], "name": "Owner", "password": OWNER[1]})
        assert r.status_code == 201, r.text
        env = Env(ctx, http, {}, {}, "")
        owner = await env.login(*OWNER)
        env.heads["owner"] = owner
        env.ids["owner"] = (await http.get("/account/profile", headers=owner)).json()["id"]
        for role in ("admin", "editor", "normal"):
            env.heads[role], env.ids[role], _ = await env.join(owner, role)
        r = await http.post("/apps", headers=owner, json={"name": "shared-app", "mode": "chat"})
        env.app_id = r.json()["id"]
        yield env


# ---- every role × every kind of action ----------------------------------------------------------------

CONFIG = {"model": {"provider": "openai", "name": "gpt-4o-mini", "mode": "chat", "completion_params": {}},
          "pre_prompt": "Hello."}


def _actions(app_id: str) -> dict[str, tuple[str, str, Any, str, int]]:
    """name → (method, path, json body, least role, success status)."""
    return {
        "list apps": ("GET", "/apps", None, "normal", 200),
        "read app": ("GET", f"/apps/{app_id}", None, "normal", 200),
        "list members": ("GET", "/workspaces/current/members", None, "normal", 200),
        "list model providers": ("GET", "/workspaces/current/model-providers", None, "normal", 200),
        "create app": ("POST", "/apps", lambda: {"name": uniq("app")[:40], "mode": "chat"}, "editor", 201),
        "change app": ("PUT", f"/apps/{app_id}", {"description": "changed"}, "editor", 200),
        "change prompt": ("POST", f"/apps/{app_id}/model-config", CONFIG, "editor", 200),
        "list app keys": ("GET", f"/apps/{app_id}/api-keys", None, "editor", 200),
        "create app key": ("POST", f"/apps/{app_id}/api-keys", None, "admin", 201),
        "save provider": ("POST", "/workspaces/current/model-providers/openai/credentials",
                          {"credentials": {"api_key": "sk-test"}}, "admin", 200),
        "invite member": ("POST", "/workspaces/current/members/invite-email",
                          lambda: {"emails": [f"{uniq('x')}@example.com"], "role": "normal"}, "admin", 201),
        "create admin key": ("POST", "/api-keys", lambda: {"name": uniq("ci")}, "admin", 201),
        "list admin keys": ("GET", "/api-keys", None, "admin", 200),
        "rename workspace": ("POST", "/workspaces/info", {"name": "Team space"}, "owner", 200),
    }


ACTION_NAMES = list(_actions("x"))


@pytest.mark.parametrize("action", ACTION_NAMES)
@pytest.mark.parametrize("role", ROLES)
async def test_role_matrix(env: Env, role: str, action: str) -> None:
    method, path, body, least, ok = _actions(env.app_id)[action]
    body = body() if callable(body) else body
    r = await env.http.request(method, path, headers=env.heads[role], json=body)
    if ROLES.index(role) >= ROLES.index(least):
        assert r.status_code == ok, r.text
    else:
        msg = envelope(r, 403, "forbidden")["message"]
        assert f"requires the {least} role" in msg and role in msg


# ---- invitations and activation ---------------------------------------------------------------------


async def test_apps_created_by_me(env: Env) -> None:
    mine = (await env.http.post("/apps", headers=env.heads["editor"], json={"name": uniq("mine")[:40],
                                                                            "mode": "chat"})).json()["id"]

    async def listed(role: str, **params: Any) -> set[str]:
        r = await env.http.get("/apps", headers=env.heads[role], params={"limit": 100, **params})
        assert r.status_code == 200, r.text
        return {a["id"] for a in r.json()["data"]}

    assert {mine, env.app_id} <= await listed("editor")
    by_editor = await listed("editor", is_created_by_me="true")
    assert mine in by_editor and env.app_id not in by_editor  # the owner made shared-app
    assert mine not in await listed("owner", is_created_by_me="true")


async def test_invitation_and_activation(env: Env) -> None:
    owner = env.heads["owner"]
    email = f"{uniq('new')}@example.com"
    first = await env.invite(owner, email, "editor")
    assert first["url"].startswith("https://plexus.test/console/api/activate/check?") and first["token"]
    assert (await env.members(owner))[email]["status"] == "pending"
    # no password yet: the pending account cannot sign in
    envelope(await env.http.post("/login", json={"email": email, "password": PASSWORD}), 401,
             "authentication_failed")
    # re-inviting issues a new token; the first one stops working
    second = await env.invite(owner, email, "editor")
    check = await env.http.get("/activate/check", params={"email": email, "token": first["token"]})
    assert check.json() == {"is_valid": False, "data": None}
    check = await env.http.get("/activate/check", params={"email": email, "token": second["token"]})
    assert check.json()["is_valid"] and check.json()["data"]["email"] == email
    # wrong email for the token, weak password, bad token: all refused
    envelope(await env.http.post("/activate", json={"token": second["token"], "email": "other@example.com",
                                                    "name": "X", "password": PASSWORD}), 400, "invalid_token")
    envelope(await env.http.post("/activate", json={"token": second["token"], "name": "X", "password": "short"}),
             400, "invalid_param")
    r = await env.http.post("/activate", json={"token": second["token"], "name": "Newbie", "password": PASSWORD})
    assert r.status_code == 200 and r.json()["data"]["access_token"], r.text
    envelope(await env.http.post("/activate", json={"token": second["token"], "name": "X", "password": PASSWORD}),
             400, "invalid_token")  # spent
    row = (await env.members(owner))[email]
    assert (row["status"], row["role"], row["name"]) == ("active", "editor", "Newbie")
    await env.login(email, PASSWORD)
    # an active member is not invited twice; invalid emails and roles are 400 in the envelope
    r = await env.http.post("/workspaces/current/members/invite-email", headers=owner,
                            json={"emails": [email], "role": "normal"})
    assert r.json()["invitation_results"][0]["status"] == "failed"
    for body in ({"emails": ["not-an-email"], "role": "normal"}, {"emails": [email], "role": "owner"},
                 {"emails": [email], "role": "superuser"}, {"emails": [], "role": "normal"}):
        envelope(await env.http.post("/workspaces/current/members/invite-email", headers=owner, json=body),
                 400, "invalid_param")


async def test_existing_account_joins_and_switches_workspace(env: Env) -> None:
    owner = env.heads["owner"]
    # the editor is invited into a second workspace by its owner
    other_h, _, other_email = await env.join(owner, "editor")
    async with env.ctx.db.session() as s:
        from shared.models import Tenant, TenantMember

        ws = Tenant(name="Other space")
        s.add(ws)
        await s.flush()
        me = (await env.http.get("/account/profile", headers=other_h)).json()["id"]
        s.add(TenantMember(tenant_id=ws.id, account_id=me, role="owner", current=False))
        await s.commit()
        ws_id = ws.id
    # other_h now owns "Other space" too; it invites the shared-workspace admin there
    r = await env.http.post("/workspaces/switch", headers=other_h, json={"tenant_id": ws_id})
    assert r.status_code == 200 and r.json()["new_tenant"]["id"] == ws_id, r.text
    admin_email = next(e for e, m in (await env.members(owner)).items() if m["id"] == env.ids["admin"])
    result = await env.invite(other_h, admin_email, "normal")
    assert result["url"] is None and result["token"] is None  # an existing account just joins
    # the admin still acts in its own workspace until it switches
    listed = (await env.http.get("/workspaces", headers=env.heads["admin"])).json()["workspaces"]
    assert {w["id"] for w in listed} >= {ws_id} and [w["current"] for w in listed].count(True) == 1
    current = (await env.http.get("/workspaces/current", headers=env.heads["admin"])).json()
    assert current["id"] != ws_id and current["role"] == "admin"
    envelope(await env.http.post("/workspaces/switch", headers=env.heads["normal"], json={"tenant_id": ws_id}),
             404, "not_found")  # not a member there
    # back to the shared workspace, so later tests see other_h as a plain editor of it
    home = next(w["id"] for w in listed if w["id"] != ws_id)
    assert (await env.http.post("/workspaces/switch", headers=other_h, json={"tenant_id": home})).status_code == 200
    assert other_email in await env.members(owner)


# ---- the rules about owners, admins and oneself -----------------------------------------------------------


async def test_owner_and_admin_rules(env: Env) -> None:
    owner, admin = env.heads["owner"], env.heads["admin"]
    _, editor_id, _ = await env.join(owner, "editor")
    second_admin_h, second_admin_id, _ = await env.join(owner, "admin")

    def role_path(aid: str) -> str:
        return f"/workspaces/current/members/{aid}/update-role"

    # the owner is neither demoted nor removed, by anyone
    envelope(await env.http.put(role_path(env.ids["owner"]), headers=admin, json={"role": "normal"}), 403,
             "forbidden")
    envelope(await env.http.delete(f"/workspaces/current/members/{env.ids['owner']}", headers=admin), 403,
             "forbidden")
    envelope(await env.http.put(role_path(env.ids["owner"]), headers=owner, json={"role": "admin"}), 403,
             "forbidden")
    # nobody makes an owner by role change
    envelope(await env.http.put(role_path(editor_id), headers=owner, json={"role": "owner"}), 400, "invalid_param")
    # an admin cannot make, demote or remove admins; the owner can
    envelope(await env.http.put(role_path(editor_id), headers=admin, json={"role": "admin"}), 403, "forbidden")
    envelope(await env.http.put(role_path(second_admin_id), headers=admin, json={"role": "editor"}), 403,
             "forbidden")
    envelope(await env.http.delete(f"/workspaces/current/members/{second_admin_id}", headers=admin), 403,
             "forbidden")
    envelope(await env.http.post("/workspaces/current/members/invite-email", headers=admin,
                                 json={"emails": [f"{uniq('a')}@example.com"], "role": "admin"}), 403, "forbidden")
    # but an admin manages editors and normals
    assert (await env.http.put(role_path(editor_id), headers=admin, json={"role": "normal"})).status_code == 200
    # nobody changes or removes themself
    envelope(await env.http.put(role_path(env.ids["admin"]), headers=admin, json={"role": "editor"}), 403,
             "forbidden")
    envelope(await env.http.delete(f"/workspaces/current/members/{env.ids['admin']}", headers=admin), 403,
             "forbidden")
    # the owner demotes the second admin, with effect on its very next request
    assert (await env.http.get("/api-keys", headers=second_admin_h)).status_code == 200
    r = await env.http.put(role_path(second_admin_id), headers=owner, json={"role": "editor"})
    assert r.status_code == 200, r.text
    envelope(await env.http.get("/api-keys", headers=second_admin_h), 403, "forbidden")
    assert (await env.members(owner))[next(e for e, m in (await env.members(owner)).items()
                                           if m["id"] == second_admin_id)]["role"] == "editor"
    envelope(await env.http.put(role_path(str(uuid.uuid4())), headers=owner, json={"role": "editor"}), 404,
             "not_found")


async def test_removed_member_is_locked_out_at_once(env: Env) -> None:
    owner = env.heads["owner"]
    h, aid, email = await env.join(owner, "editor")
    assert (await env.http.post("/apps", headers=h, json={"name": uniq("rm")[:40], "mode": "chat"})).status_code == 201
    r = await env.http.delete(f"/workspaces/current/members/{aid}", headers=owner)
    assert r.status_code == 200 and r.json()["result"] == "success", r.text
    # the same, still unexpired access token: no workspace left for it
    envelope(await env.http.get("/apps", headers=h), 401, "unauthorized")
    assert email not in await env.members(owner)
    # a pending invitation removed takes its never-activated account with it
    pending = f"{uniq('p')}@example.com"
    token = (await env.invite(owner, pending, "normal"))["token"]
    pid = (await env.members(owner))[pending]["id"]
    assert (await env.http.delete(f"/workspaces/current/members/{pid}", headers=owner)).status_code == 200
    assert (await env.http.get("/activate/check", params={"token": token})).json()["is_valid"] is False


async def test_ownership_transfer(env: Env) -> None:
    # a workspace of its own, so the shared one keeps its owner for the other tests
    from services.console.auth import hash_password
    from shared.models import Account, Tenant, TenantMember

    boss, heir = f"{uniq('boss')}@example.com", f"{uniq('heir')}@example.com"
    async with env.ctx.db.session() as s:
        ws = Tenant(name="Transfer space")
        s.add(ws)
        ids = {}
        for email, role in ((boss, "owner"), (heir, "admin")):
            a = Account(email=email, name=email[:8], password_hash=await hash_password(PASSWORD))
            s.add(a)
            s.add(TenantMember(tenant_id=ws.id, account_id=a.id, role=role, current=True))
            ids[email] = a.id
        await s.commit()
    boss_h, heir_h = await env.login(boss, PASSWORD), await env.login(heir, PASSWORD)
    envelope(await env.http.post(f"/workspaces/current/members/{ids[boss]}/owner-transfer", headers=heir_h), 403,
             "forbidden")
    r = await env.http.post(f"/workspaces/current/members/{ids[heir]}/owner-transfer", headers=boss_h)
    assert r.status_code == 200, r.text
    roles = {e: m["role"] for e, m in (await env.members(heir_h)).items()}
    assert roles == {boss: "admin", heir: "owner"}
    assert (await env.http.post("/workspaces/info", headers=heir_h, json={"name": "Mine"})).status_code == 200
    envelope(await env.http.post("/workspaces/info", headers=boss_h, json={"name": "Still mine"}), 403, "forbidden")
    # the new owner can now remove the former one, who is an admin like any other
    assert (await env.http.delete(f"/workspaces/current/members/{ids[boss]}", headers=heir_h)).status_code == 200


# ---- admin keys follow their creator; leftover invitations; stale roles (access review) -----------------


async def test_admin_key_works_only_while_its_creator_is_an_admin(env: Env) -> None:
    owner = env.heads["owner"]
    admin_h, admin_id, _ = await env.join(owner, "admin")

    async def new_key(h: dict) -> dict:
        r = await env.http.post("/api-keys", headers=h, json={"name": uniq("ci"), "permissions": ["apps:read"]})
        assert r.status_code == 201, r.text
        return {"Authorization": f"Bearer {r.json()['token']}"}

    mine, owners = await new_key(admin_h), await new_key(owner)
    assert (await env.http.get("/apps", headers=mine)).status_code == 200

    def role_path(aid: str) -> str:
        return f"/workspaces/current/members/{aid}/update-role"

    # demoted: the key it made stops at once, the owner's key is unaffected
    assert (await env.http.put(role_path(admin_id), headers=owner, json={"role": "editor"})).status_code == 200
    msg = envelope(await env.http.get("/apps", headers=mine), 401, "unauthorized")["message"]
    assert "no longer an admin" in msg
    assert (await env.http.get("/apps", headers=owners)).status_code == 200
    # the rule is read on every request: an admin again, its key works again
    assert (await env.http.put(role_path(admin_id), headers=owner, json={"role": "admin"})).status_code == 200
    assert (await env.http.get("/apps", headers=mine)).status_code == 200
    # removed: refused for good
    assert (await env.http.delete(f"/workspaces/current/members/{admin_id}", headers=owner)).status_code == 200
    envelope(await env.http.get("/apps", headers=mine), 401, "unauthorized")
    # a key rotated out with no grace is expired (the key's own failure comes first)
    listed = (await env.http.get("/api-keys", headers=owner)).json()["data"]
    assert {k["created_by"] for k in listed} >= {admin_id, env.ids["owner"]}  # whose keys die with whom
    key_id = next(k["id"] for k in listed if k["token"][-4:] == owners["Authorization"][-4:])
    r = await env.http.post(f"/api-keys/{key_id}/rotate", headers=owner, json={"grace_seconds": 0})
    assert r.status_code == 201, r.text
    msg = envelope(await env.http.get("/apps", headers=owners), 401, "unauthorized")["message"]
    assert msg == "Access token has expired."


async def _second_workspace(env: Env, name: str) -> dict:
    """A workspace of its own with an owner signed in; its headers."""
    from services.console.auth import hash_password
    from shared.models import Account, Tenant, TenantMember

    email = f"{uniq('boss')}@example.com"
    async with env.ctx.db.session() as s:
        ws = Tenant(name=name)
        a = Account(email=email, name="Boss", password_hash=await hash_password(PASSWORD))
        s.add_all([ws, a])
        s.add(TenantMember(tenant_id=ws.id, account_id=a.id, role="owner", current=True))
        await s.commit()
    return await env.login(email, PASSWORD)


async def _leftover_invitation(env: Env, boss: dict) -> tuple[str, str]:
    """An email invited to two workspaces while pending and activated through the shared workspace's invitation;
    its email and the other workspace's still unused token."""
    email = f"{uniq('twice')}@example.com"
    first = await env.invite(env.heads["owner"], email, "normal")
    leftover = await env.invite(boss, email, "editor")
    assert leftover["token"]  # still pending then: a token of its own
    r = await env.http.post("/activate", json={"token": first["token"], "name": "First", "password": PASSWORD})
    assert r.status_code == 200, r.text
    return email, leftover["token"]


async def test_activating_an_already_active_account_needs_its_password(env: Env) -> None:
    boss = await _second_workspace(env, "Leftover space")
    email, token = await _leftover_invitation(env, boss)
    # whoever holds the leftover token (the inviter saw it) cannot sign in as the account with any password
    r = await env.http.post("/activate", json={"token": token, "name": "Intruder", "password": "intruder-pass-1"})
    assert "already has an account" in envelope(r, 401, "authentication_failed")["message"]
    check = await env.http.get("/activate/check", params={"token": token})
    assert check.json()["is_valid"] is True  # a mistyped password does not spend the invitation
    envelope(await env.http.post("/login", json={"email": email, "password": "intruder-pass-1"}), 401,
             "authentication_failed")
    # the account's own password accepts it: the membership goes active, the account keeps its name and password
    r = await env.http.post("/activate", json={"token": token, "name": "Renamed", "password": PASSWORD})
    assert r.status_code == 200 and r.json()["data"]["access_token"], r.text
    row = (await env.members(boss))[email]
    assert (row["status"], row["role"], row["name"]) == ("active", "editor", "First")
    envelope(await env.http.post("/activate", json={"token": token, "name": "X", "password": PASSWORD}),
             400, "invalid_token")  # spent
    await env.login(email, PASSWORD)


async def test_leftover_invitation_counts_wrong_passwords_like_sign_in(env: Env) -> None:
    boss = await _second_workspace(env, "Guessing space")
    email, token = await _leftover_invitation(env, boss)
    for _ in range(env.ctx.settings.auth.login_max_attempts):
        r = await env.http.post("/activate", json={"token": token, "name": "X", "password": f"guess-{uniq('p')}1"})
        envelope(r, 401, "authentication_failed")
    # locked out like a sign-in, whichever door the guesses came through
    r = await env.http.post("/activate", json={"token": token, "name": "X", "password": PASSWORD})
    envelope(r, 429, "email_code_login_limit")
    envelope(await env.http.post("/login", json={"email": email, "password": PASSWORD}), 429,
             "email_code_login_limit")


async def test_admin_cannot_reinvite_a_pending_admin(env: Env) -> None:
    owner, admin = env.heads["owner"], env.heads["admin"]
    email = f"{uniq('padm')}@example.com"
    first = await env.invite(owner, email, "admin")
    r = await env.http.post("/workspaces/current/members/invite-email", headers=admin,
                            json={"emails": [email], "role": "normal"})
    assert r.status_code == 201, r.text
    (result,) = r.json()["invitation_results"]
    assert result["status"] == "failed" and "Only the workspace owner" in result["message"], result
    assert (await env.members(owner))[email]["role"] == "admin"
    check = await env.http.get("/activate/check", params={"token": first["token"]})
    assert check.json()["is_valid"] is True  # no new token was issued
    # the owner may change it
    await env.invite(owner, email, "editor")
    assert (await env.members(owner))[email]["role"] == "editor"


async def test_simultaneous_invitations_of_one_new_email(env: Env) -> None:
    import asyncio

    boss = await _second_workspace(env, "Racing space")
    # a few rounds: the race needs the requests to interleave. Both workspaces invite, so both the workspace
    # lock (one workspace) and the unique email (two workspaces) are in play
    for _ in range(5):
        email = f"{uniq('race')}@example.com"
        inviters = [env.heads["owner"], boss] * 3
        responses = await asyncio.gather(*(
            env.http.post("/workspaces/current/members/invite-email", headers=h,
                          json={"emails": [email], "role": "normal"}) for h in inviters))
        assert [r.status_code for r in responses] == [201] * 6, [r.text for r in responses]
        tokens = [r.json()["invitation_results"][0]["token"] for r in responses]
        valid = [t for t in tokens
                 if (await env.http.get("/activate/check", params={"token": t})).json()["is_valid"]]
        assert len(valid) == 2  # one pending member per workspace; its last invitation's token is the one that works
        for h in (env.heads["owner"], boss):
            assert (await env.members(h))[email]["status"] == "pending"


async def test_member_rules_use_the_callers_role_at_the_time_of_the_change(env: Env) -> None:
    """The route table saw the caller's role a moment before; the change itself re-reads it under the lock."""
    from services.console.service import members
    from services.console.service.common import Principal
    from shared.errors import ApiError
    from shared.models import TenantMember

    boss_h = await _second_workspace(env, "Stale space")
    ws = (await env.http.get("/workspaces/current", headers=boss_h)).json()["id"]
    boss = (await env.http.get("/account/profile", headers=boss_h)).json()["id"]
    heir_h, heir, _ = await env.join(boss_h, "admin")
    _, editor, _ = await env.join(boss_h, "editor")
    _, other_admin, _ = await env.join(boss_h, "admin")
    assert (await env.http.post("/workspaces/switch", headers=heir_h, json={"tenant_id": ws})).status_code == 200

    async def refused(call) -> str:
        with pytest.raises(ApiError) as e:
            await call
        assert e.value.status == 403, e.value.body()
        return e.value.message

    async def role_of(aid: str) -> str:
        async with env.ctx.db.session() as s:
            from sqlmodel import select
            return (await s.exec(select(TenantMember.role).where(TenantMember.tenant_id == ws,
                                                                 TenantMember.account_id == aid))).one()

    # the owner hands the workspace over; a request authenticated just before still says "owner"
    stale_owner = Principal(account_id=boss, tenant_id=ws, role="owner", claims={})
    r = await env.http.post(f"/workspaces/current/members/{heir}/owner-transfer", headers=boss_h)
    assert r.status_code == 200, r.text
    assert "Only the workspace owner" in await refused(members.update_role(env.ctx, stale_owner, editor, "admin"))
    assert "Only the workspace owner" in await refused(members.remove(env.ctx, stale_owner, other_admin))
    assert (await role_of(editor), await role_of(other_admin)) == ("editor", "admin")
    # demoted below admin: no member changes at all
    heir_p = Principal(account_id=heir, tenant_id=ws, role="owner", claims={})
    await members.update_role(env.ctx, heir_p, boss, "editor")
    stale_admin = Principal(account_id=boss, tenant_id=ws, role="admin", claims={})
    assert "requires the admin role" in await refused(members.update_role(env.ctx, stale_admin, editor, "normal"))
    # removed: refused as no longer a member
    await members.remove(env.ctx, heir_p, boss)
    assert "no longer a member" in await refused(members.remove(env.ctx, stale_admin, editor))
    assert await role_of(editor) == "editor"

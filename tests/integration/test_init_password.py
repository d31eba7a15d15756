"""Dify's INIT_PASSWORD (PLEXUS_AUTH__INIT_PASSWORD) on the whole stack: with it set, the first account can be
created only after POST /console/api/init proves the password; the proof is an HttpOnly cookie that setup
checks (on any replica: it is an HMAC, not a session); wrong passwords are counted like sign-in attempts."""

from __future__ import annotations

import httpx

from shared.settings import AuthSettings
from tests.conftest import LiveServer, live_fixture
from tests.support import envelope

C = "/console/api"
INIT = "init-secret-42"
OWNER = {"email": "first@example.com", "name": "First", "password": "passw0rd-first"}
GUARDED = AuthSettings(init_password=INIT, login_max_attempts=3)

# two deployments: the lockout test's wrong attempts must not stand in the way of the happy path
locked = live_fixture("init_locked", "locked", auth=GUARDED)
fresh = live_fixture("init_fresh", "fresh", auth=GUARDED)


async def test_init_then_setup(fresh: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=fresh.base_url, timeout=30) as c:
        assert (await c.get(f"{C}/init")).json() == {"status": "not_started"}
        assert "init validation" in envelope(await c.post(f"{C}/setup", json=OWNER), 401, "not_init_validated")
        # a made-up proof is no proof
        c.cookies.set("init_validated", "9999999999.forged")
        envelope(await c.post(f"{C}/setup", json=OWNER), 401, "not_init_validated")
        c.cookies.clear()
        # a digit that is no int ("²", one latin-1 byte) is no proof either, and no 500
        r = await c.post(f"{C}/setup", json=OWNER, headers={"Cookie": "init_validated=\xb2.forged".encode("latin-1")})
        envelope(r, 401, "not_init_validated")

        r = await c.post(f"{C}/init", json={"password": INIT})
        assert r.status_code == 201 and r.json() == {"result": "success"}, r.text
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("init_validated=") and "HttpOnly" in cookie and "Max-Age=3600" in cookie, cookie
        assert (await c.get(f"{C}/init")).json() == {"status": "finished"}
        # another client without the cookie is still refused
        async with httpx.AsyncClient(base_url=fresh.base_url, timeout=30) as other:
            envelope(await other.post(f"{C}/setup", json=OWNER), 401, "not_init_validated")
        r = await c.post(f"{C}/setup", json=OWNER)
        assert r.status_code == 201, r.text
        # set up: init is finished for everyone, and refused again
        async with httpx.AsyncClient(base_url=fresh.base_url, timeout=30) as other:
            assert (await other.get(f"{C}/init")).json() == {"status": "finished"}
            envelope(await other.post(f"{C}/init", json={"password": INIT}), 403, "forbidden")
            envelope(await other.post(f"{C}/setup", json=OWNER), 403, "forbidden")
            r = await other.post(f"{C}/login", json={"email": OWNER["email"], "password": OWNER["password"]})
            assert r.status_code == 200, r.text


async def test_wrong_init_passwords_are_counted(locked: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=locked.base_url, timeout=30) as c:
        envelope(await c.post(f"{C}/init", json={}), 400, "invalid_param")
        for _ in range(3):
            assert "check the password" in envelope(await c.post(f"{C}/init", json={"password": "nope"}), 401,
                                                    "init_validate_failed")
        # locked out: even the right password waits (429, Retry-After), and setup stays closed
        r = await c.post(f"{C}/init", json={"password": INIT})
        envelope(r, 429, "email_code_login_limit")
        assert int(r.headers["retry-after"]) > 0
        assert "init_validated" not in r.headers.get("set-cookie", "")
        envelope(await c.post(f"{C}/setup", json=OWNER), 401, "not_init_validated")

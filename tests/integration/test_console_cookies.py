"""Cookie sign-in of newer Dify consoles (reference §7) next to the Bearer tokens of older clients, on the whole
stack through the gateway: /login, /refresh-token and /activate set the access_token, refresh_token and
csrf_token cookies (and keep the tokens in the body); a request signed in by the access_token cookie needs the
session's X-CSRF-Token for every method but GET/HEAD/OPTIONS, on the console's own routes and on the knowledge
routes the indexer serves (it asks the console over NATS); /logout clears the cookies. Last, the gateway passes
Cookie and X-CSRF-Token to the console and the indexer and their Set-Cookie headers back, in `all` and split mode.

Every client here keeps no cookies: each request carries exactly the Cookie header the test gives it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.cookiejar
import http.cookies
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import services.gateway as gateway_module
from shared.settings import AuthSettings
from tests.conftest import LiveServer, live_fixture
from tests.integration.gateway_env import close_context, make_context
from tests.support import bearer, console_admin, envelope, invite_member, serve

C = "/console/api"
ACCESS_MINUTES, REFRESH_DAYS = 30, 7
CSRF_INVALID = "CSRF token is missing or invalid."
PASSWORD = "member-pass-1"
# non-default cookie attributes, so the test sees the settings reach the cookies
stack = live_fixture("console_cookies", "stack", auth=AuthSettings(
    access_token_minutes=ACCESS_MINUTES, refresh_token_days=REFRESH_DAYS, cookie_secure=True,
    cookie_samesite="strict"))


def jarless(base_url: str) -> httpx.AsyncClient:
    """A client whose cookie jar refuses every cookie: what a request carries is in its own headers."""
    jar = http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(base_url=base_url, timeout=60, cookies=jar)


def set_cookies(r: httpx.Response) -> dict[str, http.cookies.Morsel]:
    out: dict[str, http.cookies.Morsel] = {}
    for header in r.headers.get_list("set-cookie"):
        jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
        jar.load(header)
        for name, morsel in jar.items():
            assert name not in out, f"{name} set twice"
            out[name] = morsel
    return out


@dataclass
class Session:
    """One sign-in: the cookies a browser would keep, and the body's tokens."""

    access: str
    refresh: str
    csrf: str
    body: dict[str, str]

    @classmethod
    def of(cls, r: httpx.Response) -> Session:
        assert r.status_code == 200, r.text
        assert r.json()["result"] == "success"
        got = set_cookies(r)
        assert set(got) == {"access_token", "refresh_token", "csrf_token"}, got
        return cls(got["access_token"].value, got["refresh_token"].value, got["csrf_token"].value, r.json()["data"])

    def cookie(self, **replace: str) -> str:
        jar = {"access_token": self.access, "refresh_token": self.refresh, "csrf_token": self.csrf, **replace}
        return "; ".join(f"{k}={v}" for k, v in jar.items())

    def headers(self, csrf: str | None = None, **replace: str) -> dict[str, str]:
        """The cookies, and X-CSRF-Token when ``csrf`` is given (as a console's scripts send it)."""
        h = {"Cookie": self.cookie(**replace)}
        if csrf is not None:
            h["X-CSRF-Token"] = csrf
        return h

    @property
    def signed(self) -> dict[str, str]:
        """Cookies with this session's own CSRF token in the header: a well-behaved newer console."""
        return self.headers(self.csrf)


@dataclass
class World:
    c: httpx.AsyncClient
    stack: LiveServer
    owner: dict[str, str]  # Bearer headers of the owner
    email: str = "a@example.com"
    password: str = "passw0rd-x"

    async def login(self) -> Session:
        return Session.of(await self.c.post(f"{C}/login", json={"email": self.email, "password": self.password}))

    async def member(self, role: str = "editor") -> tuple[Session, str]:
        """A new member, invited and activated: its /activate session and email."""
        r, email = await invite_member(self.c, self.owner, role, PASSWORD)
        return Session.of(r), email

    async def email_of(self, headers: dict[str, str]) -> str:
        r = await self.c.get(f"{C}/account/profile", headers=headers)
        assert r.status_code == 200, r.text
        return r.json()["email"]


@pytest.fixture(scope="module")
async def w(stack: LiveServer) -> AsyncIterator[World]:
    async with jarless(stack.base_url) as c:
        yield World(c, stack, await console_admin(c))
        assert not list(c.cookies.jar), "the client kept a cookie: the tests would not say what they mean"


def csrf_refused(r: httpx.Response) -> None:
    assert envelope(r, 401, "unauthorized") == CSRF_INVALID


async def new_app(w: World, headers: dict[str, str]) -> httpx.Response:
    return await w.c.post(f"{C}/apps", headers=headers, json={"name": f"ck-{uuid.uuid4().hex[:8]}", "mode": "chat"})


# ---- sign-in sets the cookies ---------------------------------------------------------------------


async def test_login_sets_three_cookies(w: World) -> None:
    r = await w.c.post(f"{C}/login", json={"email": w.email, "password": w.password})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["result"] == "success" and set(body["data"]) == {"access_token", "refresh_token"}  # older clients
    got = set_cookies(r)
    assert set(got) == {"access_token", "refresh_token", "csrf_token"}
    assert got["access_token"].value == body["data"]["access_token"]
    assert got["refresh_token"].value == body["data"]["refresh_token"]
    assert got["csrf_token"].value and got["csrf_token"].value not in body["data"].values()
    for name, morsel in got.items():
        assert morsel["path"] == "/", name
        assert morsel["samesite"].lower() == "strict", name  # PLEXUS_AUTH__COOKIE_SAMESITE
        assert morsel["secure"] is True, name  # PLEXUS_AUTH__COOKIE_SECURE
        assert not morsel["domain"], name  # host-only unless PLEXUS_AUTH__COOKIE_DOMAIN
    assert got["access_token"]["httponly"] is True and got["refresh_token"]["httponly"] is True
    assert not got["csrf_token"]["httponly"]  # the console's scripts read it to send X-CSRF-Token
    assert int(got["access_token"]["max-age"]) == ACCESS_MINUTES * 60
    assert int(got["csrf_token"]["max-age"]) == ACCESS_MINUTES * 60
    assert int(got["refresh_token"]["max-age"]) == REFRESH_DAYS * 86400
    # a failed sign-in sets none
    r = await w.c.post(f"{C}/login", json={"email": w.email, "password": "wrong-pass-1"})
    envelope(r, 401, "authentication_failed")
    assert not r.headers.get_list("set-cookie")


async def test_activation_sets_the_cookies(w: World) -> None:
    s, email = await w.member("normal")
    assert s.access == s.body["access_token"] and s.refresh == s.body["refresh_token"]
    assert await w.email_of(s.headers()) == email


# ---- the access_token cookie and X-CSRF-Token ------------------------------------------------------


async def test_cookie_reads_need_no_csrf_token(w: World) -> None:
    s = await w.login()
    assert await w.email_of({"Cookie": f"access_token={s.access}"}) == w.email
    r = await w.c.get(f"{C}/apps", headers=s.headers())
    assert r.status_code == 200, r.text
    # only the access_token cookie signs in: the others are no credential
    r = await w.c.get(f"{C}/account/profile", headers={"Cookie": f"refresh_token={s.refresh}; csrf_token={s.csrf}"})
    assert envelope(r, 401, "unauthorized") == "Authorization header must be provided and start with 'Bearer'"
    envelope(await w.c.get(f"{C}/account/profile", headers={"Cookie": "access_token=not.a.jwt"}), 401,
             "unauthorized")
    # the refresh token is no access token, in a cookie either
    envelope(await w.c.get(f"{C}/account/profile", headers={"Cookie": f"access_token={s.refresh}"}), 401,
             "unauthorized")


async def test_cookie_writes_need_the_sessions_csrf_token(w: World) -> None:
    s = await w.login()
    csrf_refused(await new_app(w, s.headers()))  # none
    csrf_refused(await new_app(w, s.headers("")))  # empty
    csrf_refused(await new_app(w, s.headers("x" * 43)))  # garbage of the right length
    csrf_refused(await new_app(w, s.headers(s.access)))  # the access token is no CSRF token
    # header equal to the csrf_token cookie is not enough: the server checks what the token is bound to
    csrf_refused(await new_app(w, s.headers("forged", csrf_token="forged")))
    # an HMAC over the right session with another key
    claims = jwt.decode(s.access, options={"verify_signature": False})
    mac = hmac.new(b"not-the-server-secret", f"{claims['sub']}:{claims['jti']}".encode(), hashlib.sha256).digest()
    csrf_refused(await new_app(w, s.headers(base64.urlsafe_b64encode(mac).rstrip(b"=").decode())))

    r = await new_app(w, s.signed)
    assert r.status_code == 201, r.text
    app_id = r.json()["id"]
    # every method that is not GET/HEAD/OPTIONS: PUT and DELETE too
    csrf_refused(await w.c.put(f"{C}/apps/{app_id}", headers=s.headers(), json={"name": "renamed"}))
    r = await w.c.put(f"{C}/apps/{app_id}", headers=s.signed, json={"name": "renamed"})
    assert r.status_code == 200 and r.json()["name"] == "renamed", r.text
    csrf_refused(await w.c.delete(f"{C}/apps/{app_id}", headers=s.headers()))
    assert (await w.c.delete(f"{C}/apps/{app_id}", headers=s.signed)).status_code == 204
    # the CSRF token alone, without the cookie, signs nobody in
    r = await new_app(w, {"X-CSRF-Token": s.csrf})
    assert envelope(r, 401, "unauthorized") == "Authorization header must be provided and start with 'Bearer'"


async def test_csrf_token_of_another_session_is_refused(w: World) -> None:
    first, second = await w.login(), await w.login()  # the same account, two sessions
    assert first.csrf != second.csrf
    csrf_refused(await new_app(w, first.headers(second.csrf)))
    csrf_refused(await new_app(w, second.headers(first.csrf)))
    member, _ = await w.member("editor")  # another account
    csrf_refused(await new_app(w, member.headers(first.csrf)))
    csrf_refused(await new_app(w, first.headers(member.csrf)))
    for s in (first, second, member):
        assert (await new_app(w, s.signed)).status_code == 201


async def test_bearer_needs_no_csrf_token(w: World) -> None:
    s = await w.login()
    r = await new_app(w, bearer(s.access))
    assert r.status_code == 201, r.text
    # an explicit Bearer header wins over the cookies a client may keep from another sign-in (no CSRF for it)
    member, email = await w.member("editor")
    both = {**member.headers(), **bearer(s.access)}
    assert await w.email_of(both) == w.email
    assert (await new_app(w, both)).status_code == 201
    # a header that is no Bearer one leaves the cookie to decide (a proxy's Basic auth, say)
    assert await w.email_of({**member.headers(), "Authorization": "Basic dXNlcjpwYXNz"}) == email
    csrf_refused(await new_app(w, {**member.headers(), "Authorization": "Basic dXNlcjpwYXNz"}))
    # and without a cookie the header's messages are as before
    r = await w.c.get(f"{C}/apps", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert envelope(r, 401, "unauthorized") == "Authorization scheme must be 'Bearer'"


async def test_admin_key_is_no_cookie(w: World) -> None:
    r = await w.c.post(f"{C}/api-keys", headers=w.owner, json={"name": f"ck-{uuid.uuid4().hex[:6]}"})
    assert r.status_code == 201, r.text
    key = r.json()["token"]
    assert (await w.c.get(f"{C}/apps", headers=bearer(key))).status_code == 200
    r = await w.c.get(f"{C}/apps", headers={"Cookie": f"access_token={key}"})
    assert "cookie" in envelope(r, 401, "unauthorized")


# ---- refresh and logout -------------------------------------------------------------------------------


async def test_refresh_by_cookie_rotates_the_cookies(w: World) -> None:
    old = await w.login()
    r = await w.c.post(f"{C}/refresh-token", headers={"Cookie": f"refresh_token={old.refresh}"})
    new = Session.of(r)
    assert new.body == {"access_token": new.access, "refresh_token": new.refresh}  # older clients' body too
    assert new.access != old.access and new.refresh != old.refresh and new.csrf != old.csrf
    assert await w.email_of(new.headers()) == w.email
    assert (await new_app(w, new.signed)).status_code == 201
    csrf_refused(await new_app(w, new.headers(old.csrf)))  # the CSRF token follows the access token
    # the refresh token was spent
    r = await w.c.post(f"{C}/refresh-token", headers={"Cookie": f"refresh_token={old.refresh}"})
    envelope(r, 401, "unauthorized")
    assert not r.headers.get_list("set-cookie")
    # an access token in the refresh cookie is refused; with neither body nor cookie, a clear 401
    envelope(await w.c.post(f"{C}/refresh-token", headers={"Cookie": f"refresh_token={new.access}"}), 401,
             "unauthorized")
    r = await w.c.post(f"{C}/refresh-token")
    assert envelope(r, 401, "unauthorized") == "No refresh token provided."
    # the body (older clients) wins over a cookie, and it sets cookies as well
    r = await w.c.post(f"{C}/refresh-token", headers={"Cookie": "refresh_token=stale"},
                       json={"refresh_token": new.refresh})
    newer = Session.of(r)
    assert newer.refresh != new.refresh
    assert await w.email_of(newer.headers()) == w.email


async def test_logout_clears_the_cookies(w: World) -> None:
    s = await w.login()
    csrf_refused(await w.c.post(f"{C}/logout", headers=s.headers()))  # signed in by cookie: CSRF applies
    assert await w.email_of(s.headers()) == w.email  # ... and nothing was logged out
    r = await w.c.post(f"{C}/logout", headers=s.signed)
    assert r.status_code == 200 and r.json() == {"result": "success"}, r.text
    got = set_cookies(r)
    assert set(got) == {"access_token", "refresh_token", "csrf_token"}
    for name, morsel in got.items():
        assert morsel.value == "" and int(morsel["max-age"]) == 0 and morsel["path"] == "/", name
    # the session is revoked: its access cookie and its refresh cookie are refused from now on
    r = await w.c.get(f"{C}/account/profile", headers=s.headers())
    assert envelope(r, 401, "unauthorized") == "Token has been revoked."
    envelope(await w.c.post(f"{C}/refresh-token", headers={"Cookie": f"refresh_token={s.refresh}"}), 401,
             "unauthorized")
    # a Bearer logout (older clients) clears the cookies too and needs no CSRF token
    other = await w.login()
    r = await w.c.post(f"{C}/logout", headers=bearer(other.access), json={"refresh_token": other.refresh})
    assert r.status_code == 200 and set(set_cookies(r)) == {"access_token", "refresh_token", "csrf_token"}
    envelope(await w.c.get(f"{C}/account/profile", headers=bearer(other.access)), 401, "unauthorized")


# ---- the knowledge routes the indexer serves: the same rules, decided by the console over NATS ----------


async def test_knowledge_routes_follow_the_cookie_rules(w: World) -> None:
    s = await w.login()
    r = await w.c.get(f"{C}/datasets", headers=s.headers())
    assert r.status_code == 200 and "data" in r.json(), r.text
    body = {"name": f"kb-{uuid.uuid4().hex[:10]}"}
    csrf_refused(await w.c.post(f"{C}/datasets", headers=s.headers(), json=body))
    csrf_refused(await w.c.post(f"{C}/datasets", headers=s.headers("nope", csrf_token="nope"), json=body))
    other = await w.login()
    csrf_refused(await w.c.post(f"{C}/datasets", headers=s.headers(other.csrf), json=body))
    r = await w.c.post(f"{C}/datasets", headers=s.signed, json=body)
    assert r.status_code == 200 and r.json()["name"] == body["name"], r.text
    ds = r.json()["id"]
    r = await w.c.post(f"{C}/datasets", headers=bearer(s.access), json={"name": f"kb-{uuid.uuid4().hex[:10]}"})
    assert r.status_code == 200, r.text  # Bearer: no CSRF token
    csrf_refused(await w.c.post(f"{C}/files/upload", headers=s.headers(), files={"file": ("a.md", b"# A\n")}))
    r = await w.c.post(f"{C}/files/upload", headers=s.signed, files={"file": ("a.md", b"# A\n")})
    assert r.status_code == 201, r.text
    csrf_refused(await w.c.delete(f"{C}/datasets/{ds}", headers=s.headers()))
    assert (await w.c.delete(f"{C}/datasets/{ds}", headers=s.signed)).status_code == 204
    # no credential at all: the console's own message; a revoked session: refused there too
    r = await w.c.get(f"{C}/datasets")
    assert envelope(r, 401, "unauthorized") == "Authorization header must be provided and start with 'Bearer'"
    assert (await w.c.post(f"{C}/logout", headers=other.signed)).status_code == 200
    r = await w.c.get(f"{C}/datasets", headers=other.headers())
    assert envelope(r, 401, "unauthorized") == "Token has been revoked."


# ---- the gateway: Cookie and X-CSRF-Token in, Set-Cookie out, in `all` and split mode --------------------


def echo_service(name: str) -> Starlette:
    """A stand-in console or indexer: answers with what it was sent and sets two cookies."""

    async def echo(request: Request) -> JSONResponse:
        resp = JSONResponse({"service": name, "cookie": request.headers.getlist("cookie"),
                             "csrf": request.headers.get("x-csrf-token")})
        resp.set_cookie("access_token", f"{name}-a", httponly=True)
        resp.set_cookie("csrf_token", f"{name}-c")
        return resp

    return Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST", "DELETE"])])


@pytest.fixture(scope="module", params=["all", "split"])
async def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, nats_url: str
                  ) -> AsyncIterator[httpx.AsyncClient]:
    tmp = tmp_path_factory.mktemp(f"gw-cookies-{request.param}")
    services: dict[str, Any] = {"console": echo_service("console"), "indexer": echo_service("indexer")}
    served = []
    if request.param == "all":
        ctx = await make_context(tmp, nats_url)
        ctx.local_apps.update(services)
    else:
        served = [await serve(app) for app in services.values()]
        ctx = await make_context(tmp, nats_url, mode="split", console_url=served[0].url, indexer_url=served[1].url)
    gw = gateway_module.create_app(ctx)
    await gateway_module.start(ctx, gw)
    front = await serve(gw)
    try:
        async with jarless(front.url) as c:
            yield c
    finally:
        await front.stop()
        await gateway_module.stop(ctx, gw)
        for s in served:
            await s.stop()
        await close_context(ctx)


@pytest.mark.parametrize("method, path, service", [
    ("GET", f"{C}/account/profile", "console"),
    ("POST", f"{C}/apps", "console"),
    ("GET", f"{C}/datasets", "indexer"),
    ("POST", f"{C}/datasets", "indexer"),
    ("POST", f"{C}/files/upload", "indexer"),
])
async def test_gateway_passes_cookies_and_csrf_header(gateway: httpx.AsyncClient, method: str, path: str,
                                                      service: str) -> None:
    cookie = "access_token=a.b.c; refresh_token=r.s.t; csrf_token=xyz"
    r = await gateway.request(method, path, headers={"Cookie": cookie, "X-CSRF-Token": "xyz"})
    assert r.status_code == 200, r.text
    assert r.json() == {"service": service, "cookie": [cookie], "csrf": "xyz"}
    assert {k: m.value for k, m in set_cookies(r).items()} == {"access_token": f"{service}-a",
                                                               "csrf_token": f"{service}-c"}

"""Workspace admin keys (`admin-…`) against every console route on the whole stack: each route's ACCESS entry
(services/console/api.py) says which scope a key needs, or that the route is for members only; this checks the
server does exactly that, route by route, and holds it to one rule of its own: a route that changes something
needs a `:write` scope."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from services.console.api import ACCESS, router
from tests.conftest import LiveServer
from tests.support import bearer, console_admin

PREFIX = "/console/api"
WRITES = {"POST", "PUT", "PATCH", "DELETE"}

# Write-method routes that change nothing, so a read scope is enough (the only exceptions to the `:write` rule).
READ_ONLY_WRITES = {
    ("POST", "/workspaces/current/tool-provider/api/schema"): "parses a draft schema into a preview; stores "
                                                               "and calls nothing",
}
# Cases a query parameter makes: (method, route, query) → scopes needed on top of the route's ACCESS entry.
QUERY_CASES = {
    ("GET", "/apps/{app_id}/export", "include_secret=true"): ("apps:write",),  # secrets in clear
}
# Cases where the server contradicts ACCESS or the `:write` rule: (method, route, query) → why (xfail, strict).
FINDINGS: dict[tuple[str, str, str], str] = {}


def _needs_caller(dependant: Any) -> bool:
    # a route that takes a Caller is one ACCESS decides; the rest (setup, login…) are public
    return any(getattr(d.call, "__name__", "") == "_principal" or _needs_caller(d) for d in dependant.dependencies)


ROUTES = sorted({(m, r.path.removeprefix(PREFIX)) for r in router.routes
                 if isinstance(r, APIRoute) and _needs_caller(r.dependant) for m in r.methods})
CASES = [(m, p, "") for m, p in ROUTES] + list(QUERY_CASES)


def _param(case: tuple[str, str, str]) -> Any:
    method, route, query = case
    marks = [pytest.mark.xfail(strict=True, reason=FINDINGS[case])] if case in FINDINGS else []
    return pytest.param(case, id=f"{method} {route}" + (f"?{query}" if query else ""), marks=marks)


def envelope(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert (body["code"], body["status"]) == (code, status), body
    return body["message"]


@pytest.fixture(scope="module")
async def owner(live: LiveServer) -> tuple[dict, frozenset[str]]:
    """The workspace owner's headers and the scope catalogue the server offers admin keys."""
    async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as c:
        h = await console_admin(c)
        r = await c.get(f"{PREFIX}/api-keys", headers=h)
        assert r.status_code == 200, r.text
        return h, frozenset(r.json()["scopes"])


MakeKey = Callable[[Iterable[str] | None], Awaitable[dict]]


@pytest.fixture
async def key(client: httpx.AsyncClient, owner) -> AsyncIterator[MakeKey]:
    """Makes admin keys (None: no limits) and deletes them after the test: at most 10 may be live at once."""
    h, _ = owner
    made: list[str] = []

    async def make(scopes: Iterable[str] | None) -> dict:
        body: dict[str, Any] = {"name": f"scopes-{len(made)}"}
        if scopes is not None:
            body["permissions"] = sorted(scopes)
        r = await client.post(f"{PREFIX}/api-keys", headers=h, json=body)
        assert r.status_code == 201, r.text
        made.append(r.json()["id"])
        return bearer(r.json()["token"])

    yield make
    for key_id in made:
        assert (await client.delete(f"{PREFIX}/api-keys/{key_id}", headers=h)).status_code == 204


def test_every_console_route_is_in_the_access_table() -> None:
    # a route added without an entry would fall back to the default (make the choice explicit); an entry naming
    # no route would be tested by nothing
    assert set(ACCESS) == set(ROUTES)
    assert all((m, p) in ACCESS for m, p, _ in list(QUERY_CASES) + [(m, p, "") for m, p in READ_ONLY_WRITES])


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
async def test_admin_key_scopes(client: httpx.AsyncClient, owner, key: MakeKey,
                                case: tuple[str, str, str]) -> None:
    method, route, query = case
    _, every = owner
    # dummy ids, valid as uuids so the route matches: the scope is decided before anything is looked up
    url = PREFIX + re.sub(r"\{[^}]*\}", lambda _: str(uuid.uuid4()), route) + (f"?{query}" if query else "")
    action = f"{method} {PREFIX}{route}"  # how refusals name the route

    async def call(h: dict) -> httpx.Response:
        return await client.request(method, url, headers=h)

    scope = ACCESS[(method, route)][1]
    if scope is None:  # members only: no key, however unlimited
        for h in (await key(None), await key(every)):
            msg = envelope(await call(h), 403, "forbidden")
            assert "not available to API keys" in msg and action in msg, msg
    elif isinstance(scope, tuple):  # any one of them here; the route asks for the one its parameters need
        assert set(scope) <= every, set(scope) - every
        msg = envelope(await call(await key(every - set(scope))), 403, "forbidden")
        assert all(f"'{s}'" in msg for s in scope) and action in msg, msg
        for one in scope:  # past the table with either one (400 for no type, 404 for the dummy id…)
            r = await call(await key({one, *QUERY_CASES.get(case, ())}))
            assert r.status_code not in (401, 403) and r.status_code < 500, r.text
    else:
        needed = {scope, *QUERY_CASES.get(case, ())}
        assert needed <= every, needed - every
        for missing in sorted(needed):  # every scope but one it needs: refused, naming that one
            msg = envelope(await call(await key(every - {missing})), 403, "forbidden")
            assert f"'{missing}'" in msg and action in msg, msg
        # exactly what it needs: past the permission check (404 for the dummy id, 400 for no body, 2xx…)
        r = await call(await key(needed))
        assert r.status_code not in (401, 403) and r.status_code < 500, r.text

    # the rule, whatever ACCESS says: a key holding every read scope changes nothing
    if method in WRITES or case in QUERY_CASES:
        r = await call(await key({s for s in every if s.endswith(":read")}))
        if (method, route) in READ_ONLY_WRITES:
            assert r.status_code not in (401, 403), r.text
        else:
            msg = envelope(r, 403, "forbidden")
            assert re.search(r"'[a-z]+:write'", msg) or "not available to API keys" in msg, msg

"""App tags and the console's generic tag routes through the gateway (Dify's /console/api/tags and
/console/api/tag-bindings, shared/tags.py): tag CRUD per type, the keyword filter, binding counts, binding
apps and datasets, the ``tags`` apps carry and the apps list's ``tag_ids`` filter, what deleting a tag or an
app leaves, ``GET /v1/info``'s tag names, knowledge tags shared with /v1/datasets/tags, errors in the
envelope, and who may do what (roles, admin-key scopes)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, live_fixture
from tests.support import (
    bearer,
    console_admin,
    envelope,
    in_other_workspace,
    invite_member,
    new_app,
    new_app_key,
)

C = "/console/api"
NAME_RULE = "Name must be between 1 to 50 characters."

atstack = live_fixture("app_tags", "atstack")


def uniq(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Console:
    def __init__(self, c: httpx.AsyncClient, owner: dict[str, str], srv: LiveServer) -> None:
        self.c, self.owner, self.srv = c, owner, srv

    async def tag(self, kind: str, name: str | None = None, h: dict[str, str] | None = None
                  ) -> dict[str, Any]:
        r = await self.c.post(f"{C}/tags", headers=h or self.owner,
                              json={"name": name or uniq(), "type": kind})
        assert r.status_code == 200, r.text
        return r.json()

    async def tags(self, kind: str, h: dict[str, str] | None = None, **params: Any
                   ) -> dict[str, dict[str, Any]]:
        r = await self.c.get(f"{C}/tags", headers=h or self.owner, params={"type": kind, **params})
        assert r.status_code == 200, r.text
        assert isinstance(r.json(), list)
        return {t["id"]: t for t in r.json()}

    async def bind(self, kind: str, tag_ids: list[str], target: str, h: dict[str, str] | None = None
                   ) -> httpx.Response:
        return await self.c.post(f"{C}/tag-bindings/create", headers=h or self.owner,
                                 json={"tag_ids": tag_ids, "target_id": target, "type": kind})

    async def bound(self, kind: str, tag_ids: list[str], target: str) -> None:
        r = await self.bind(kind, tag_ids, target)
        assert r.status_code == 200 and r.json() == {"result": "success"}, r.text

    async def unbind(self, body: dict[str, Any], h: dict[str, str] | None = None) -> httpx.Response:
        return await self.c.post(f"{C}/tag-bindings/remove", headers=h or self.owner, json=body)

    async def app(self) -> str:
        return await new_app(self.c, self.owner, "chat", prefix="tagged")

    async def apps(self, h: dict[str, str] | None = None, **params: Any) -> dict[str, dict[str, Any]]:
        r = await self.c.get(f"{C}/apps", headers=h or self.owner, params={"limit": 100, **params})
        assert r.status_code == 200, r.text
        return {a["id"]: a for a in r.json()["data"]}

    async def app_detail(self, app_id: str) -> dict[str, Any]:
        r = await self.c.get(f"{C}/apps/{app_id}", headers=self.owner)
        assert r.status_code == 200, r.text
        return r.json()

    async def dataset(self, h: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
        r = await self.c.post(f"{C}/datasets", headers=h or self.owner, json={"name": uniq("kb"), **body})
        assert r.status_code == 200, r.text
        return r.json()

    async def member(self, role: str) -> dict[str, str]:
        r, _ = await invite_member(self.c, self.owner, role)
        return bearer(r.json()["data"]["access_token"])


@pytest.fixture
async def con(atstack: LiveServer) -> AsyncIterator[Console]:
    async with httpx.AsyncClient(base_url=atstack.base_url, timeout=60) as c:
        yield Console(c, await console_admin(c), atstack)


def wire(tag: dict[str, Any]) -> dict[str, str]:
    """A tag as apps and datasets carry it."""
    return {"id": tag["id"], "name": tag["name"], "type": tag["type"]}


# ---- the tags themselves ----------------------------------------------------------------------------------


async def test_tag_crud_per_type(con: Console) -> None:
    name = f"Release {uuid.uuid4().hex[:6]}"
    app_tag = await con.tag("app", f"  {name}  ")
    assert set(app_tag) == {"id", "name", "type", "binding_count"}
    assert (app_tag["name"], app_tag["type"], app_tag["binding_count"]) == (name, "app", "0")
    uuid.UUID(app_tag["id"])
    # the same name is another tag in the other type, refused within one
    kn_tag = await con.tag("knowledge", name)
    assert kn_tag["id"] != app_tag["id"] and kn_tag["type"] == "knowledge"
    for kind in ("app", "knowledge"):
        r = await con.c.post(f"{C}/tags", headers=con.owner, json={"name": name, "type": kind})
        assert envelope(r, 400, "invalid_param") == "Tag name already exists"
    apps_tags, kn_tags = await con.tags("app"), await con.tags("knowledge")
    assert apps_tags[app_tag["id"]] == app_tag and app_tag["id"] not in kn_tags
    assert kn_tags[kn_tag["id"]] == kn_tag and kn_tag["id"] not in apps_tags

    for bad in ({"name": ""}, {"name": "   "}, {"name": "x" * 51}, {}, {"name": 5}):
        r = await con.c.post(f"{C}/tags", headers=con.owner, json={**bad, "type": "app"})
        assert envelope(r, 400, "invalid_param") == NAME_RULE, bad
    assert (await con.tag("app", "z" * 49 + uuid.uuid4().hex[:1]))["name"].startswith("z" * 49)

    # rename: the tag object with its binding count; its own name again is fine, another app tag's is not,
    # a knowledge tag's is
    app_id = await con.app()
    await con.bound("app", [app_tag["id"]], app_id)
    renamed = f"Shipped {uuid.uuid4().hex[:6]}"
    r = await con.c.patch(f"{C}/tags/{app_tag['id']}", headers=con.owner, json={"name": renamed})
    assert r.status_code == 200, r.text
    assert r.json() == {"id": app_tag["id"], "name": renamed, "type": "app", "binding_count": "1"}
    r = await con.c.patch(f"{C}/tags/{app_tag['id']}", headers=con.owner, json={"name": f" {renamed} "})
    assert r.status_code == 200 and r.json()["name"] == renamed, r.text
    other = await con.tag("app")
    r = await con.c.patch(f"{C}/tags/{other['id']}", headers=con.owner, json={"name": renamed})
    assert envelope(r, 400, "invalid_param") == "Tag name already exists"
    r = await con.c.patch(f"{C}/tags/{kn_tag['id']}", headers=con.owner, json={"name": renamed})
    assert r.status_code == 200 and r.json()["type"] == "knowledge", r.text
    r = await con.c.patch(f"{C}/tags/{other['id']}", headers=con.owner, json={"name": ""})
    assert envelope(r, 400, "invalid_param") == NAME_RULE
    for missing in (str(uuid.uuid4()), "not-a-uuid"):
        r = await con.c.patch(f"{C}/tags/{missing}", headers=con.owner, json={"name": "n"})
        assert envelope(r, 404, "not_found") == "Tag not found."
        assert envelope(await con.c.delete(f"{C}/tags/{missing}", headers=con.owner), 404,
                        "not_found") == "Tag not found."

    # delete: 200 {"result": "success"}, gone from the list and from the app it was on; the name is free again
    r = await con.c.delete(f"{C}/tags/{app_tag['id']}", headers=con.owner)
    assert r.status_code == 200 and r.json() == {"result": "success"}, r.text
    assert app_tag["id"] not in await con.tags("app")
    assert (await con.app_detail(app_id))["tags"] == []
    assert (await con.apps())[app_id]["tags"] == []
    envelope(await con.c.delete(f"{C}/tags/{app_tag['id']}", headers=con.owner), 404, "not_found")
    assert (await con.tag("app", renamed))["id"] != app_tag["id"]
    assert kn_tag["id"] in await con.tags("knowledge")  # the other type's namesake stays


async def test_type_is_required_and_checked(con: Console) -> None:
    app_id = await con.app()
    tag = await con.tag("app")
    for params in ({}, {"type": "bogus"}, {"type": ""}, {"type": "APP"}):
        envelope(await con.c.get(f"{C}/tags", headers=con.owner, params=params), 400, "invalid_param")
    for body in ({"name": uniq()}, {"name": uniq(), "type": "dataset"}, {"name": uniq(), "type": None}):
        envelope(await con.c.post(f"{C}/tags", headers=con.owner, json=body), 400, "invalid_param")
    for kind in (None, "bogus"):
        body = {"tag_ids": [tag["id"]], "target_id": app_id, **({"type": kind} if kind else {})}
        r = await con.c.post(f"{C}/tag-bindings/create", headers=con.owner, json=body)
        envelope(r, 400, "invalid_param")
        envelope(await con.unbind(body), 400, "invalid_param")
    assert (await con.app_detail(app_id))["tags"] == []


async def test_keyword_filter_and_binding_counts(con: Console) -> None:
    u = uuid.uuid4().hex[:8]
    alpha, alphabet, beta = (await con.tag("app", f"{u} Alpha"), await con.tag("app", f"{u} alphabet"),
                             await con.tag("app", f"{u} Beta"))
    pct = await con.tag("app", f"{u} 100%")
    assert set(await con.tags("app", keyword=f"{u} ALPHA")) == {alpha["id"], alphabet["id"]}
    assert set(await con.tags("app", keyword=u)) == {alpha["id"], alphabet["id"], beta["id"], pct["id"]}
    assert set(await con.tags("app", keyword=f"{u} 100%")) == {pct["id"]}
    assert await con.tags("app", keyword=f"{u} 1_0") == {}  # % and _ are literal
    assert await con.tags("knowledge", keyword=u) == {}  # the type still applies
    # newest first
    r = await con.c.get(f"{C}/tags", headers=con.owner, params={"type": "app", "keyword": u})
    assert [t["id"] for t in r.json()] == [pct["id"], beta["id"], alphabet["id"], alpha["id"]]

    a1, a2 = await con.app(), await con.app()
    await con.bound("app", [alpha["id"], beta["id"]], a1)
    await con.bound("app", [alpha["id"]], a2)
    counts = {t["id"]: t["binding_count"] for t in (await con.tags("app", keyword=u)).values()}
    assert counts == {alpha["id"]: "2", beta["id"]: "1", alphabet["id"]: "0", pct["id"]: "0"}


# ---- tags on apps ------------------------------------------------------------------------------------------


async def test_apps_carry_tags_and_filter_by_them(con: Console) -> None:
    a1, a2, a3 = await con.app(), await con.app(), await con.app()
    u = uuid.uuid4().hex[:6]
    x, y, unused = (await con.tag("app", f"x {u}"), await con.tag("app", f"y {u}"),
                    await con.tag("app", f"unused {u}"))
    for _ in range(2):  # binding twice, and naming a tag twice, changes nothing
        await con.bound("app", [y["id"], x["id"], y["id"]], a1)
    # newer Dify consoles bind at POST /tag-bindings
    r = await con.c.post(f"{C}/tag-bindings", headers=con.owner,
                         json={"tag_ids": [y["id"]], "target_id": a2, "type": "app"})
    assert r.status_code == 200 and r.json() == {"result": "success"}, r.text
    assert {t["id"]: t["binding_count"] for t in (await con.tags("app")).values()
            if t["id"] in (x["id"], y["id"])} == {x["id"]: "1", y["id"]: "2"}

    listed = await con.apps()
    assert listed[a1]["tags"] == [wire(x), wire(y)]  # by name
    assert listed[a2]["tags"] == [wire(y)] and listed[a3]["tags"] == []
    assert (await con.app_detail(a1))["tags"] == [wire(x), wire(y)]
    r = await con.c.put(f"{C}/apps/{a1}", headers=con.owner, json={"description": "tagged"})
    assert r.status_code == 200 and r.json()["tags"] == [wire(x), wire(y)], r.text

    # tag_ids: comma-separated as Dify's console sends them, or repeated; any of them
    assert set(await con.apps(tag_ids=x["id"])) == {a1}
    assert set(await con.apps(tag_ids=f"{x['id']},{y['id']}")) == {a1, a2}
    assert set(await con.apps(tag_ids=[x["id"], y["id"]])) == {a1, a2}
    assert await con.apps(tag_ids=unused["id"]) == {}
    assert await con.apps(tag_ids=f"{uuid.uuid4()},not-a-uuid") == {}
    assert await con.apps(tag_ids="not-a-uuid") == {}
    assert {a1, a2, a3} <= set(await con.apps(tag_ids=""))  # no ids: no filter
    r = await con.c.get(f"{C}/apps", headers=con.owner,
                        params={"tag_ids": f"{x['id']},{y['id']}", "limit": 1})
    body = r.json()
    assert body["total"] == 2 and len(body["data"]) == 1 and body["has_more"] is True
    name = (await con.app_detail(a2))["name"]
    assert set(await con.apps(tag_ids=y["id"], name=name)) == {a2}
    # a knowledge tag's id filters no app, even if it were bound to a dataset
    kn = await con.tag("knowledge")
    assert await con.apps(tag_ids=kn["id"]) == {}

    # unbinding: tag_id, then tag_ids; unbinding what is not bound is fine; the tags remain
    for _ in range(2):
        r = await con.unbind({"tag_id": y["id"], "target_id": a1, "type": "app"})
        assert r.status_code == 200 and r.json() == {"result": "success"}, r.text
    assert (await con.app_detail(a1))["tags"] == [wire(x)]
    r = await con.unbind({"tag_ids": [x["id"], y["id"]], "target_id": a2, "type": "app"})
    assert r.status_code == 200, r.text
    assert (await con.apps())[a2]["tags"] == []
    assert (await con.tags("app"))[y["id"]]["binding_count"] == "0"


async def test_deleting_an_app_removes_its_bindings(con: Console) -> None:
    gone, kept, tag = await con.app(), await con.app(), await con.tag("app")
    await con.bound("app", [tag["id"]], gone)
    await con.bound("app", [tag["id"]], kept)
    assert (await con.tags("app"))[tag["id"]]["binding_count"] == "2"
    assert (await con.c.delete(f"{C}/apps/{gone}", headers=con.owner)).status_code == 204
    assert (await con.tags("app"))[tag["id"]]["binding_count"] == "1"
    assert set(await con.apps(tag_ids=tag["id"])) == {kept}


async def test_v1_info_lists_the_apps_tag_names(con: Console) -> None:
    app_id = await con.app()
    key = bearer(await new_app_key(con.c, con.owner, app_id))

    async def info_tags() -> list[str]:
        r = await con.c.get("/v1/info", headers=key)
        assert r.status_code == 200, r.text
        return r.json()["tags"]

    assert await info_tags() == []
    u = uuid.uuid4().hex[:6]
    b, a = await con.tag("app", f"b {u}"), await con.tag("app", f"a {u}")
    await con.bound("app", [b["id"], a["id"]], app_id)
    kn = await con.tag("knowledge", f"a {u}")  # another type's namesake
    await con.bound("knowledge", [kn["id"]], (await con.dataset())["id"])
    assert await info_tags() == [f"a {u}", f"b {u}"]
    # every change shows at once: rename, unbind, delete
    r = await con.c.patch(f"{C}/tags/{a['id']}", headers=con.owner, json={"name": f"c {u}"})
    assert r.status_code == 200, r.text
    assert await info_tags() == [f"b {u}", f"c {u}"]
    assert (await con.unbind({"tag_id": b["id"], "target_id": app_id, "type": "app"})).status_code == 200
    assert await info_tags() == [f"c {u}"]
    assert (await con.c.delete(f"{C}/tags/{a['id']}", headers=con.owner)).status_code == 200
    assert await info_tags() == []


# ---- knowledge tags: the same ones the indexer serves -----------------------------------------------------


async def test_knowledge_tags_are_the_datasets_tags(con: Console) -> None:
    r = await con.c.post(f"{C}/datasets/api-keys", headers=con.owner)
    assert r.status_code == 201, r.text
    dkey, dkey_id = bearer(r.json()["token"]), r.json()["id"]
    try:
        made_here = await con.tag("knowledge")
        r = await con.c.post("/v1/datasets/tags", headers=dkey, json={"name": uniq()})
        assert r.status_code == 200, r.text
        made_there = r.json()
        v1 = {t["id"]: t for t in (await con.c.get("/v1/datasets/tags", headers=dkey)).json()}
        r = await con.c.get(f"{C}/datasets/tags", headers=con.owner)
        indexer_console = {t["id"]: t for t in r.json()}
        here = await con.tags("knowledge")
        for tag in (made_here, made_there):
            assert v1[tag["id"]] == indexer_console[tag["id"]] == here[tag["id"]] == tag
        # an app tag is no knowledge tag, anywhere
        app_tag = await con.tag("app")
        assert app_tag["id"] not in v1 and app_tag["id"] not in indexer_console

        ds = await con.dataset()
        await con.bound("knowledge", [made_here["id"], made_there["id"]], ds["id"])
        got = (await con.c.get(f"/v1/datasets/{ds['id']}/tags", headers=dkey)).json()
        assert sorted(t["id"] for t in got["data"]) == sorted([made_here["id"], made_there["id"]])
        detail = (await con.c.get(f"{C}/datasets/{ds['id']}", headers=con.owner)).json()
        assert sorted(t["id"] for t in detail["tags"]) == sorted([made_here["id"], made_there["id"]])
        v1 = {t["id"]: t for t in (await con.c.get("/v1/datasets/tags", headers=dkey)).json()}
        assert v1[made_here["id"]]["binding_count"] == "1"
        listed = (await con.c.get("/v1/datasets", headers=dkey, params={"tag_ids": made_here["id"]})).json()
        assert [d["id"] for d in listed["data"]] == [ds["id"]]

        # tags of one type do not go on the other's targets
        app_id = await con.app()
        r = await con.bind("app", [made_here["id"]], app_id)
        assert envelope(r, 404, "not_found") == "Tag not found."
        r = await con.bind("knowledge", [app_tag["id"]], ds["id"])
        assert envelope(r, 404, "not_found") == "Tag not found."
        # unbinding at the console shows at /v1
        r = await con.unbind({"tag_id": made_there["id"], "target_id": ds["id"], "type": "knowledge"})
        assert r.status_code == 200, r.text
        got = (await con.c.get(f"/v1/datasets/{ds['id']}/tags", headers=dkey)).json()
        assert got == {"data": [{"id": made_here["id"], "name": made_here["name"]}], "total": 1}
        # deleting at the console deletes it at /v1
        assert (await con.c.delete(f"{C}/tags/{made_here['id']}", headers=con.owner)).status_code == 200
        assert (await con.c.get(f"/v1/datasets/{ds['id']}/tags", headers=dkey)).json()["total"] == 0
    finally:
        await con.c.delete(f"{C}/datasets/api-keys/{dkey_id}", headers=con.owner)


async def test_unknown_targets_and_tags(con: Console) -> None:
    app_id, ds = await con.app(), await con.dataset()
    app_tag, kn_tag = await con.tag("app"), await con.tag("knowledge")
    for missing in (str(uuid.uuid4()), "not-a-uuid", ds["id"]):  # a dataset is no app
        assert envelope(await con.bind("app", [app_tag["id"]], missing), 404, "not_found") == "App not found."
        r = await con.unbind({"tag_id": app_tag["id"], "target_id": missing, "type": "app"})
        assert envelope(r, 404, "not_found") == "App not found."
    for missing in (str(uuid.uuid4()), "not-a-uuid", app_id):  # an app is no dataset
        r = await con.bind("knowledge", [kn_tag["id"]], missing)
        assert envelope(r, 404, "not_found") == "Dataset not found."
    for unknown in (str(uuid.uuid4()), "nope"):  # an unknown tag among known ones binds nothing
        r = await con.bind("app", [app_tag["id"], unknown], app_id)
        assert envelope(r, 404, "not_found") == "Tag not found."
        r = await con.unbind({"tag_id": unknown, "target_id": app_id, "type": "app"})
        assert envelope(r, 404, "not_found") == "Tag not found."
    assert (await con.app_detail(app_id))["tags"] == []
    # the body's shape, in Dify's words
    r = await con.bind("app", [], app_id)
    assert envelope(r, 400, "invalid_param") == "Tag IDs is required."
    r = await con.c.post(f"{C}/tag-bindings/create", headers=con.owner, json={"tag_ids": [app_tag["id"]],
                                                                               "type": "app"})
    assert envelope(r, 400, "invalid_param") == "target_id is required."
    envelope(await con.c.post(f"{C}/tags", headers=con.owner, content=b"not json"), 400, "bad_request")

    # another workspace's apps and tags are unknown here, and mine there
    async with in_other_workspace(con.c, con.owner, con.srv.ctx.db):
        theirs = await con.app()
        their_tag = await con.tag("app", app_tag["name"])  # names are per workspace
        assert set(await con.tags("app")) == {their_tag["id"]}
        mine_there = await con.bind("app", [app_tag["id"]], theirs)
        assert envelope(mine_there, 404, "not_found") == "Tag not found."
        r = await con.bind("app", [their_tag["id"]], app_id)
        assert envelope(r, 404, "not_found") == "App not found."
        await con.bound("app", [their_tag["id"]], theirs)
    assert envelope(await con.bind("app", [app_tag["id"]], theirs), 404, "not_found") == "App not found."
    r = await con.c.patch(f"{C}/tags/{their_tag['id']}", headers=con.owner, json={"name": "hijack"})
    assert envelope(r, 404, "not_found") == "Tag not found."
    assert envelope(await con.c.delete(f"{C}/tags/{their_tag['id']}", headers=con.owner), 404,
                    "not_found") == "Tag not found."
    assert await con.apps(tag_ids=their_tag["id"]) == {}


# ---- who may do what --------------------------------------------------------------------------------------


async def test_roles(con: Console) -> None:
    normal, editor = await con.member("normal"), await con.member("editor")
    app_id, tag = await con.app(), await con.tag("app")
    await con.bound("app", [tag["id"]], app_id)
    # every member lists tags and sees them on apps
    assert tag["id"] in await con.tags("app", h=normal)
    assert (await con.apps(h=normal))[app_id]["tags"] == [wire(tag)]
    # changing tags and tagging things is the editors'
    refused = [
        await con.c.post(f"{C}/tags", headers=normal, json={"name": uniq(), "type": "app"}),
        await con.c.patch(f"{C}/tags/{tag['id']}", headers=normal, json={"name": uniq()}),
        await con.c.delete(f"{C}/tags/{tag['id']}", headers=normal),
        await con.bind("app", [tag["id"]], app_id, h=normal),
        await con.unbind({"tag_id": tag["id"], "target_id": app_id, "type": "app"}, h=normal),
    ]
    for r in refused:
        assert "requires the editor role" in envelope(r, 403, "forbidden")
    assert (await con.app_detail(app_id))["tags"] == [wire(tag)]
    assert (await con.tags("app"))[tag["id"]]["name"] == tag["name"]

    made = await con.tag("app", h=editor)
    assert (await con.bind("app", [made["id"]], app_id, h=editor)).status_code == 200
    r = await con.c.patch(f"{C}/tags/{made['id']}", headers=editor, json={"name": uniq()})
    assert r.status_code == 200, r.text
    r = await con.unbind({"tag_id": tag["id"], "target_id": app_id, "type": "app"}, h=editor)
    assert r.status_code == 200, r.text
    assert (await con.c.delete(f"{C}/tags/{made['id']}", headers=editor)).status_code == 200
    assert (await con.app_detail(app_id))["tags"] == []

    # knowledge tags go only on datasets the member may see (as the indexer's dataset routes decide)
    kn = await con.tag("knowledge", h=editor)
    owners = await con.dataset()  # only_me: the owner's
    r = await con.bind("knowledge", [kn["id"]], owners["id"], h=editor)
    assert "permission" in envelope(r, 403, "forbidden")
    team = await con.dataset(permission="all_team_members")
    assert (await con.bind("knowledge", [kn["id"]], team["id"], h=editor)).status_code == 200
    assert (await con.bind("knowledge", [kn["id"]], owners["id"])).status_code == 200  # the owner sees all


async def test_admin_key_scopes_follow_the_tag_type(con: Console) -> None:
    made: list[str] = []

    async def key(*scopes: str) -> dict[str, str]:
        r = await con.c.post(f"{C}/api-keys", headers=con.owner,
                             json={"name": uniq("ci"), "permissions": list(scopes)})
        assert r.status_code == 201, r.text
        made.append(r.json()["id"])
        return bearer(r.json()["token"])

    try:
        app_read, app_write = await key("apps:read"), await key("apps:write")
        ds_write = await key("datasets:write")
        app_tag, kn_tag, app_id = await con.tag("app"), await con.tag("knowledge"), await con.app()
        assert app_tag["id"] in await con.tags("app", h=app_read)
        r = await con.c.get(f"{C}/tags", headers=app_read, params={"type": "knowledge"})
        assert "'datasets:read'" in envelope(r, 403, "forbidden")
        # neither scope of the pair: refused before anything else
        r = await con.c.get(f"{C}/tags", headers=ds_write, params={"type": "app"})
        assert "'apps:read' or 'datasets:read'" in envelope(r, 403, "forbidden")

        assert (await con.tag("app", h=app_write))["type"] == "app"
        r = await con.c.post(f"{C}/tags", headers=app_write, json={"name": uniq(), "type": "knowledge"})
        assert "'datasets:write'" in envelope(r, 403, "forbidden")
        r = await con.c.post(f"{C}/tags", headers=app_read, json={"name": uniq(), "type": "app"})
        assert "'apps:write' or 'datasets:write'" in envelope(r, 403, "forbidden")
        # a rename or delete needs the scope of the tag's own type
        r = await con.c.patch(f"{C}/tags/{kn_tag['id']}", headers=app_write, json={"name": uniq()})
        assert "'datasets:write'" in envelope(r, 403, "forbidden")
        assert "'apps:write'" in envelope(await con.c.delete(f"{C}/tags/{app_tag['id']}", headers=ds_write),
                                          403, "forbidden")
        assert (await con.bind("app", [app_tag["id"]], app_id, h=app_write)).status_code == 200
        assert "'apps:write'" in envelope(await con.bind("app", [app_tag["id"]], app_id, h=ds_write), 403,
                                          "forbidden")
        assert (await con.c.delete(f"{C}/tags/{kn_tag['id']}", headers=ds_write)).status_code == 200
        assert (await con.app_detail(app_id))["tags"] == [wire(app_tag)]
    finally:
        for key_id in made:
            await con.c.delete(f"{C}/api-keys/{key_id}", headers=con.owner)

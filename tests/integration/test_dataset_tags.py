"""Knowledge tags through the gateway (reference §4.1 Tags): tag CRUD, binding and unbinding, the tags a
dataset carries in its detail and the list, the list's ``tag_ids`` filter, and workspace isolation."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.indexer.service.tags import MAX_TAG_IDS
from tests.conftest import LiveServer, live_fixture
from tests.support import bearer, console_admin, in_other_workspace, new_app, new_app_key

tstack = live_fixture("tags", "tstack")


class KB:
    def __init__(self, c: httpx.AsyncClient, admin: dict[str, str], key: str, srv: LiveServer) -> None:
        self.c, self.admin, self.h, self.srv = c, admin, bearer(key), srv

    async def dataset(self, h: dict[str, str] | None = None) -> dict[str, Any]:
        r = await self.c.post("/v1/datasets", headers=h or self.h, json={"name": f"kb-{uuid.uuid4().hex[:10]}"})
        assert r.status_code == 200, r.text
        return r.json()

    async def tag(self, name: str | None = None, h: dict[str, str] | None = None) -> dict[str, Any]:
        r = await self.c.post("/v1/datasets/tags", headers=h or self.h,
                              json={"name": name or f"t-{uuid.uuid4().hex[:8]}"})
        assert r.status_code == 200, r.text
        return r.json()

    async def tags(self) -> dict[str, dict[str, Any]]:
        r = await self.c.get("/v1/datasets/tags", headers=self.h)
        assert r.status_code == 200, r.text
        assert isinstance(r.json(), list)
        return {t["id"]: t for t in r.json()}

    async def bind(self, tag_ids: list[str], target: str, h: dict[str, str] | None = None) -> httpx.Response:
        return await self.c.post("/v1/datasets/tags/binding", headers=h or self.h,
                                 json={"tag_ids": tag_ids, "target_id": target})

    async def unbind(self, body: dict[str, Any]) -> httpx.Response:
        return await self.c.post("/v1/datasets/tags/unbinding", headers=self.h, json=body)

    async def dataset_tags(self, ds: str) -> dict[str, Any]:
        r = await self.c.get(f"/v1/datasets/{ds}/tags", headers=self.h)
        assert r.status_code == 200, r.text
        return r.json()

    async def listed(self, **params: Any) -> list[dict[str, Any]]:
        r = await self.c.get("/v1/datasets", headers=self.h, params={"limit": 100, **params})
        assert r.status_code == 200, r.text
        return r.json()["data"]

    async def other_workspace_key(self) -> dict[str, str]:
        """Headers of a dataset key of a second workspace of the same admin."""
        async with in_other_workspace(self.c, self.admin, self.srv.ctx.db):
            r = await self.c.post("/console/api/datasets/api-keys", headers=self.admin)
            assert r.status_code == 201, r.text
            return bearer(r.json()["token"])


@pytest.fixture
async def kb(tstack: LiveServer) -> AsyncIterator[KB]:
    async with httpx.AsyncClient(base_url=tstack.base_url, timeout=60) as c:
        admin = await console_admin(c)
        r = await c.post("/console/api/datasets/api-keys", headers=admin)
        assert r.status_code == 201, r.text
        yield KB(c, admin, r.json()["token"], tstack)
        await c.delete(f"/console/api/datasets/api-keys/{r.json()['id']}", headers=admin)


def err(r: httpx.Response) -> tuple[int, str, str]:
    body = r.json()
    assert set(body) >= {"code", "message", "status"} and body["status"] == r.status_code, body
    return r.status_code, body["code"], body["message"]


def names(tags: list[dict[str, Any]]) -> list[str]:
    return sorted(t["name"] for t in tags)


async def test_tag_crud_and_name_rules(kb: KB) -> None:
    name = f"Manuals {uuid.uuid4().hex[:6]}"
    tag = await kb.tag(f"  {name}  ")
    assert tag["name"] == name and tag["type"] == "knowledge" and tag["binding_count"] == "0"
    uuid.UUID(tag["id"])
    assert (await kb.tags())[tag["id"]] == tag

    # 1..50 characters, required, and unique in the workspace (Dify: ValueError → 400 invalid_param)
    for bad in ({"name": ""}, {"name": "   "}, {"name": "x" * 51}, {}, {"name": 5}):
        r = await kb.c.post("/v1/datasets/tags", headers=kb.h, json=bad)
        assert err(r) == (400, "invalid_param", "Name must be between 1 to 50 characters."), bad
    assert (await kb.tag("y" * 50))["name"] == "y" * 50
    r = await kb.c.post("/v1/datasets/tags", headers=kb.h, json={"name": name})
    assert err(r) == (400, "invalid_param", "Tag name already exists")
    r = await kb.c.post("/v1/datasets/tags", headers=kb.h, content=b"not json")
    assert err(r)[:2] == (400, "bad_request")

    # rename: keeps id and reports its binding count
    ds = await kb.dataset()
    assert (await kb.bind([tag["id"]], ds["id"])).status_code == 204
    renamed = f"Guides {uuid.uuid4().hex[:6]}"
    r = await kb.c.patch("/v1/datasets/tags", headers=kb.h, json={"tag_id": tag["id"], "name": renamed})
    assert r.status_code == 200, r.text
    assert r.json() == {"id": tag["id"], "name": renamed, "type": "knowledge", "binding_count": "1"}
    assert (await kb.tags())[tag["id"]]["binding_count"] == "1"
    # renaming to its own name is fine; to another tag's name is a duplicate
    r = await kb.c.patch("/v1/datasets/tags", headers=kb.h, json={"tag_id": tag["id"], "name": renamed})
    assert r.status_code == 200
    other = await kb.tag()
    r = await kb.c.patch("/v1/datasets/tags", headers=kb.h, json={"tag_id": other["id"], "name": renamed})
    assert err(r) == (400, "invalid_param", "Tag name already exists")
    r = await kb.c.patch("/v1/datasets/tags", headers=kb.h, json={"tag_id": tag["id"], "name": ""})
    assert err(r)[:2] == (400, "invalid_param")
    r = await kb.c.patch("/v1/datasets/tags", headers=kb.h, json={"name": "n"})
    assert err(r) == (400, "invalid_param", "tag_id is required.")
    for missing in (str(uuid.uuid4()), "not-a-uuid"):
        r = await kb.c.patch("/v1/datasets/tags", headers=kb.h, json={"tag_id": missing, "name": "n"})
        assert err(r) == (404, "not_found", "Tag not found.")
        r = await kb.c.request("DELETE", "/v1/datasets/tags", headers=kb.h, json={"tag_id": missing})
        assert err(r) == (404, "not_found", "Tag not found.")

    # delete: 204, gone from the list, and off the dataset it was bound to
    r = await kb.c.request("DELETE", "/v1/datasets/tags", headers=kb.h, json={"tag_id": tag["id"]})
    assert r.status_code == 204 and r.content == b""
    assert tag["id"] not in await kb.tags()
    assert await kb.dataset_tags(ds["id"]) == {"data": [], "total": 0}
    assert (await kb.c.get(f"/v1/datasets/{ds['id']}", headers=kb.h)).json()["tags"] == []
    r = await kb.c.request("DELETE", "/v1/datasets/tags", headers=kb.h, json={"tag_id": tag["id"]})
    assert err(r)[:2] == (404, "not_found")
    # its name is free again
    assert (await kb.tag(renamed))["id"] != tag["id"]


async def test_binding_is_idempotent_and_shows_on_the_dataset(kb: KB) -> None:
    ds, bare = await kb.dataset(), await kb.dataset()
    a, b = await kb.tag(f"alpha {uuid.uuid4().hex[:6]}"), await kb.tag(f"beta {uuid.uuid4().hex[:6]}")
    for _ in range(2):  # binding twice, and naming a tag twice, changes nothing
        r = await kb.bind([a["id"], b["id"], a["id"]], ds["id"])
        assert r.status_code == 204 and r.content == b""
    got = await kb.dataset_tags(ds["id"])
    assert got["total"] == 2 and sorted(got["data"], key=lambda t: t["id"]) == sorted(
        [{"id": a["id"], "name": a["name"]}, {"id": b["id"], "name": b["name"]}], key=lambda t: t["id"])
    listed = await kb.tags()
    assert listed[a["id"]]["binding_count"] == "1" and listed[b["id"]]["binding_count"] == "1"

    detail = (await kb.c.get(f"/v1/datasets/{ds['id']}", headers=kb.h)).json()
    assert sorted(detail["tags"], key=lambda t: t["id"]) == sorted(
        [{"id": t["id"], "name": t["name"], "type": "knowledge"} for t in (a, b)], key=lambda t: t["id"])
    page = {d["id"]: d for d in await kb.listed()}
    assert names(page[ds["id"]]["tags"]) == names([a, b]) and page[bare["id"]]["tags"] == []
    r = await kb.c.patch(f"/v1/datasets/{ds['id']}", headers=kb.h, json={"description": "d"})
    assert names(r.json()["tags"]) == names([a, b])

    # unbinding: legacy tag_id, then tag_ids; unbinding what is not bound is fine
    assert (await kb.unbind({"tag_id": a["id"], "target_id": ds["id"]})).status_code == 204
    assert (await kb.unbind({"tag_id": a["id"], "target_id": ds["id"]})).status_code == 204
    assert await kb.dataset_tags(ds["id"]) == {"data": [{"id": b["id"], "name": b["name"]}], "total": 1}
    assert (await kb.unbind({"tag_ids": [a["id"], b["id"]], "target_id": ds["id"]})).status_code == 204
    assert await kb.dataset_tags(ds["id"]) == {"data": [], "total": 0}
    assert (await kb.tags())[b["id"]]["binding_count"] == "0"
    # the tags themselves remain
    assert {a["id"], b["id"]} <= set(await kb.tags())


async def test_binding_errors(kb: KB) -> None:
    ds, tag = await kb.dataset(), await kb.tag()
    r = await kb.bind([], ds["id"])
    assert err(r) == (400, "invalid_param", "Tag IDs is required.")
    r = await kb.c.post("/v1/datasets/tags/binding", headers=kb.h, json={"target_id": ds["id"]})
    assert err(r) == (400, "invalid_param", "Tag IDs is required.")
    r = await kb.c.post("/v1/datasets/tags/binding", headers=kb.h, json={"tag_ids": tag["id"], "target_id": ds["id"]})
    assert err(r)[:2] == (400, "invalid_param")
    r = await kb.c.post("/v1/datasets/tags/binding", headers=kb.h, json={"tag_ids": [tag["id"]]})
    assert err(r) == (400, "invalid_param", "target_id is required.")
    r = await kb.unbind({"target_id": ds["id"]})
    assert err(r) == (400, "invalid_param", "Tag IDs is required.")
    # an unknown tag among known ones binds nothing
    for unknown in (str(uuid.uuid4()), "nope"):
        r = await kb.bind([tag["id"], unknown], ds["id"])
        assert err(r) == (404, "not_found", "Tag not found.")
        r = await kb.unbind({"tag_id": unknown, "target_id": ds["id"]})
        assert err(r) == (404, "not_found", "Tag not found.")
    assert (await kb.dataset_tags(ds["id"]))["total"] == 0
    for unknown in (str(uuid.uuid4()), "nope"):
        r = await kb.bind([tag["id"]], unknown)
        assert err(r) == (404, "not_found", "Dataset not found.")
        r = await kb.unbind({"tag_id": tag["id"], "target_id": unknown})
        assert err(r) == (404, "not_found", "Dataset not found.")
        r = await kb.c.get(f"/v1/datasets/{unknown}/tags", headers=kb.h)
        assert err(r) == (404, "not_found", "Dataset not found.")


async def test_list_filter_by_tag_ids_is_any(kb: KB) -> None:
    d1, d2, d3 = await kb.dataset(), await kb.dataset(), await kb.dataset()
    x, y, unused = await kb.tag(), await kb.tag(), await kb.tag()
    assert (await kb.bind([x["id"]], d1["id"])).status_code == 204
    assert (await kb.bind([x["id"], y["id"]], d2["id"])).status_code == 204
    assert (await kb.bind([y["id"]], d3["id"])).status_code == 204

    def ids(rows: list[dict[str, Any]]) -> set[str]:
        return {d["id"] for d in rows}

    assert ids(await kb.listed(tag_ids=x["id"])) == {d1["id"], d2["id"]}
    assert ids(await kb.listed(tag_ids=[x["id"], y["id"]])) == {d1["id"], d2["id"], d3["id"]}
    assert await kb.listed(tag_ids=unused["id"]) == []
    assert await kb.listed(tag_ids=[str(uuid.uuid4()), "not-a-uuid"]) == []
    # total and paging follow the filter
    r = await kb.c.get("/v1/datasets", headers=kb.h, params={"tag_ids": [x["id"], y["id"]], "limit": 2})
    body = r.json()
    assert body["total"] == 3 and len(body["data"]) == 2 and body["has_more"] is True
    # combined with keyword
    rows = await kb.listed(tag_ids=y["id"], keyword=d3["name"])
    assert ids(rows) == {d3["id"]} and names(rows[0]["tags"]) == [y["name"]]
    # without tag_ids every dataset is listed
    assert {d1["id"], d2["id"], d3["id"]} <= ids(await kb.listed())


async def test_deleting_a_dataset_removes_its_bindings(kb: KB) -> None:
    ds, keep, tag = await kb.dataset(), await kb.dataset(), await kb.tag()
    assert (await kb.bind([tag["id"]], ds["id"])).status_code == 204
    assert (await kb.bind([tag["id"]], keep["id"])).status_code == 204
    assert (await kb.tags())[tag["id"]]["binding_count"] == "2"
    assert (await kb.c.delete(f"/v1/datasets/{ds['id']}", headers=kb.h)).status_code == 204
    assert (await kb.tags())[tag["id"]]["binding_count"] == "1"
    assert {d["id"] for d in await kb.listed(tag_ids=tag["id"])} == {keep["id"]}


async def test_another_workspace_cannot_see_or_use_tags_and_datasets(kb: KB) -> None:
    mine, tag = await kb.dataset(), await kb.tag()
    other = await kb.other_workspace_key()
    theirs, their_tag = await kb.dataset(other), await kb.tag(tag["name"], other)  # names are per workspace
    r = await kb.c.get("/v1/datasets/tags", headers=other)
    assert [t["id"] for t in r.json()] == [their_tag["id"]]
    # my tag on their dataset, their tag on my dataset, my tag on my dataset with their key
    assert err(await kb.bind([tag["id"]], theirs["id"]))[:2] == (404, "not_found")
    assert err(await kb.bind([their_tag["id"]], mine["id"]))[2] == "Tag not found."
    assert err(await kb.bind([tag["id"]], mine["id"], other))[:2] == (404, "not_found")
    assert err(await kb.bind([their_tag["id"]], theirs["id"], kb.h))[:2] == (404, "not_found")
    r = await kb.c.patch("/v1/datasets/tags", headers=other, json={"tag_id": tag["id"], "name": "hijack"})
    assert err(r) == (404, "not_found", "Tag not found.")
    r = await kb.c.request("DELETE", "/v1/datasets/tags", headers=other, json={"tag_id": tag["id"]})
    assert err(r)[:2] == (404, "not_found")
    r = await kb.c.get(f"/v1/datasets/{mine['id']}/tags", headers=other)
    assert err(r) == (404, "not_found", "Dataset not found.")
    # their bindings do not leak into my filter, and mine still work
    assert (await kb.bind([their_tag["id"]], theirs["id"], other)).status_code == 204
    assert await kb.listed(tag_ids=their_tag["id"]) == []
    assert (await kb.bind([tag["id"]], mine["id"])).status_code == 204
    assert {d["id"] for d in await kb.listed(tag_ids=[tag["id"], their_tag["id"]])} == {mine["id"]}
    assert (await kb.tags())[tag["id"]]["name"] == tag["name"]


async def test_app_key_and_no_key_are_refused(kb: KB) -> None:
    app_h = bearer(await new_app_key(kb.c, kb.admin, await new_app(kb.c, kb.admin, "chat")))
    ds = await kb.dataset()
    for method, path, body in (("GET", "/v1/datasets/tags", None), ("POST", "/v1/datasets/tags", {"name": "n"}),
                               ("POST", "/v1/datasets/tags/binding", {"tag_ids": [], "target_id": ds["id"]}),
                               ("GET", f"/v1/datasets/{ds['id']}/tags", None)):
        for h in (app_h, {}):
            r = await kb.c.request(method, path, headers=h, json=body)
            assert err(r)[:2] == (401, "unauthorized"), (method, path)


async def test_too_many_tag_ids_are_refused(kb: KB) -> None:
    """A body naming more tags than any dataset needs is a 400, not one huge IN (...) the database refuses."""
    ds, tag = await kb.dataset(), await kb.tag()
    many = [tag["id"], *(str(uuid.uuid4()) for _ in range(MAX_TAG_IDS))]
    r = await kb.bind(many, ds["id"])
    assert err(r)[:2] == (400, "invalid_param")
    r = await kb.unbind({"tag_ids": many, "target_id": ds["id"]})
    assert err(r)[:2] == (400, "invalid_param")
    assert (await kb.dataset_tags(ds["id"]))["total"] == 0

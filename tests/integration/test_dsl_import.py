"""Dify's app DSL import (``POST /console/api/apps/imports`` and ``…/imports/{id}/confirm``) through the gateway
of the `all` stack (SQLite and, in CI, Postgres): documents in the body and from a URL (a real HTTP server on
loopback, which the tools' egress allowlist lets through; other loopback addresses stay blocked), the DSL version
check and its statuses, pending imports kept in the database and confirmed once, imports into an existing app's
draft, and the failed import object (400) of every failure, which leaves no app behind."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
import yaml
from sqlmodel import col, select, update
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from services.console.service import dsl
from shared.models import AppImport, utcnow
from shared.natsd import free_port
from shared.settings import ToolsSettings
from tests import workflow_graphs as g
from tests.conftest import LiveServer, live_fixture
from tests.support import console_admin, in_other_workspace, serve

C = "/console/api"
IMPORTS = f"{C}/apps/imports"
KEYS = {"id", "status", "app_id", "app_mode", "current_dsl_version", "imported_dsl_version", "error"}
LOOPBACK = ["127.0.0.1/32"]
CHAT_CONFIG = {
    "model": {"provider": "openai", "name": "gpt-4o-mini", "mode": "chat", "completion_params": {}},
    "pre_prompt": "You are terse.", "user_input_form": [], "opening_statement": "Hello from the DSL",
}

# the document server listens on loopback, which the SSRF guard lets through only when allowlisted
live = live_fixture("dsl_import", tools=ToolsSettings(egress_allowlist=LOOPBACK))


def echo_graph(output: str = "topic") -> dict[str, Any]:
    """start(topic) → end(<output> = topic)."""
    return g.graph([g.start(g.text_var("topic")), g.end(**{output: [g.START, "topic"]})], [g.edge(g.START, g.END)])


def workflow_doc(version: str | None = dsl.DSL_VERSION, *, name: str = "Echo", output: str = "topic",
                 mode: str = "workflow", features: dict[Any, Any] | None = None, **extra: Any) -> str:
    doc: dict[str, Any] = {"app": {"name": name, "mode": mode, "description": "echoes", "icon": "🦜",
                                   "icon_background": "#FFFFFF"}, "kind": "app",
                           "workflow": {"graph": echo_graph(output),
                                        "features": features or {"opening_statement": output},
                                        "environment_variables": [], "conversation_variables": []}, **extra}
    if version is not None:
        doc["version"] = version
    return yaml.safe_dump(doc, sort_keys=False)


def uniq(prefix: str = "dsl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Documents:
    """Serves registered documents at /doc/{name}, a page over 10 MB at /big, 404 otherwise."""

    def __init__(self) -> None:
        self.docs: dict[str, str] = {}
        self.paths: list[str] = []
        self.app = Starlette(routes=[Route("/doc/{name:path}", self.doc), Route("/big", self.big)])

    async def doc(self, request: Request) -> Response:
        self.paths.append(request.url.path)
        name = request.path_params["name"]
        if name not in self.docs:
            return PlainTextResponse("no such document", status_code=404)
        return PlainTextResponse(self.docs[name], media_type="application/x-yaml")

    async def big(self, request: Request) -> Response:
        return PlainTextResponse("a: " + "x" * (dsl.MAX_DSL_BYTES + 10))


@pytest.fixture(scope="module")
async def docs() -> AsyncIterator[tuple[Documents, str]]:
    d = Documents()
    served = await serve(d.app)
    yield d, served.url
    await served.stop()


@pytest.fixture
async def c(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.base_url, timeout=60) as client:
        client.headers.update(await console_admin(client))
        yield client


async def app_names(c: httpx.AsyncClient) -> list[str]:
    r = await c.get(f"{C}/apps", params={"limit": 100})
    assert r.status_code == 200, r.text
    return [a["name"] for a in r.json()["data"]]


async def draft_of(c: httpx.AsyncClient, app_id: str) -> dict[str, Any]:
    r = await c.get(f"{C}/apps/{app_id}/workflows/draft")
    assert r.status_code == 200, r.text
    return r.json()


def failed(r: httpx.Response, import_id: str | None = None) -> str:
    """The error of a failed import object, once its HTTP status and shape are Dify's (``import_id``: the one
    confirmed; else a new one)."""
    assert r.status_code == 400, r.text
    body = r.json()
    assert set(body) == KEYS, body
    assert body["status"] == "failed" and body["app_id"] is None and body["app_mode"] is None, body
    assert body["current_dsl_version"] == dsl.DSL_VERSION
    assert body["id"] == import_id if import_id is not None else uuid.UUID(body["id"])
    assert isinstance(body["error"], str) and body["error"], body
    return body["error"]


def done(r: httpx.Response, status: str = "completed", code: int = 200) -> dict[str, Any]:
    assert r.status_code == code, r.text
    body = r.json()
    assert set(body) == KEYS and body["status"] == status and body["error"] == "", body
    return body


# ---- pure functions --------------------------------------------------------------------------------------


def test_github_blob_urls_are_read_raw() -> None:
    assert dsl.raw_github_url("https://github.com/langgenius/dify/blob/main/examples/app.yml") == \
        "https://raw.githubusercontent.com/langgenius/dify/main/examples/app.yml"
    assert dsl.raw_github_url("https://github.com/o/r/blob/v1.2/deep/dir/chat.yaml?plain=1#L3") == \
        "https://raw.githubusercontent.com/o/r/v1.2/deep/dir/chat.yaml"
    for same in ("https://raw.githubusercontent.com/o/r/main/app.yml", "https://github.com/o/r/tree/main/x.yml",
                 "http://github.com/o/r/blob/main/app.yml", "https://example.com/o/r/blob/main/app.yml",
                 "https://github.com/o/r/blob/main"):
        assert dsl.raw_github_url(same) == same


def test_version_check_follows_dify() -> None:
    assert dsl.check_version(dsl.DSL_VERSION) == "completed"
    # against another current version, so that every branch is reachable
    cases = {"1.2.3": "completed", "1.2.0": "completed", "v1.2": "completed", "1.2.4": "pending",
             "1.3.0": "pending", "2.0.0": "pending", "0.9.9": "pending", "1.1.9": "completed-with-warnings",
             "1.0": "completed-with-warnings", "1": "completed-with-warnings", "one": "failed", "1.2.3.4": "failed",
             "": "failed", "1..2": "failed"}
    assert {v: dsl.check_version(v, "1.2.3") for v in cases} == cases


async def test_fetch_goes_through_the_ssrf_guard(docs: tuple[Documents, str]) -> None:
    d, base = docs
    d.docs["guarded.yml"] = "kind: app\n"
    url = f"{base}/doc/guarded.yml"
    assert await dsl.fetch_document(url, LOOPBACK) == "kind: app\n"
    with pytest.raises(dsl.ImportFailed) as e:  # the same server, without the allowlist
        await dsl.fetch_document(url, [])
    assert "127.0.0.1 is blocked: loopback address" in e.value.message


# ---- yaml-url ----------------------------------------------------------------------------------------------


async def test_import_from_a_url(c: httpx.AsyncClient, docs: tuple[Documents, str]) -> None:
    d, base = docs
    name = uniq("from-url")
    d.docs["apps/echo.yml"] = workflow_doc(name=name)
    body = done(await c.post(IMPORTS, json={"mode": "yaml-url", "yaml_url": f"{base}/doc/apps/echo.yml"}))
    assert body["app_mode"] == "workflow" and body["imported_dsl_version"] == dsl.DSL_VERSION
    assert body["id"] != body["app_id"]
    detail = (await c.get(f"{C}/apps/{body['app_id']}")).json()
    assert (detail["name"], detail["description"], detail["icon"]) == (name, "echoes", "🦜")
    draft = await draft_of(c, body["app_id"])
    assert draft["graph"]["nodes"] == echo_graph()["nodes"] and draft["features"] == {"opening_statement": "topic"}
    assert (await c.get(f"{C}/apps/{body['app_id']}/workflows/publish")).json() is None  # nothing published


async def test_url_failures(c: httpx.AsyncClient, docs: tuple[Documents, str]) -> None:
    d, base = docs
    port = int(base.rsplit(":", 1)[1])
    before = await app_names(c)
    d.docs["empty.yml"] = "  \n"
    d.docs["list.yml"] = "- a\n- b\n"

    # the SSRF guard: another loopback address of the same host is not on the allowlist
    error = failed(await c.post(IMPORTS, json={"mode": "yaml-url", "yaml_url": f"http://127.0.0.2:{port}/doc/x"}))
    assert "127.0.0.2 is blocked: loopback address" in error, error
    error = failed(await c.post(IMPORTS, json={"mode": "yaml-url", "yaml_url": "http://169.254.169.254/latest"}))
    assert "blocked: cloud metadata endpoint" in error, error
    error = failed(await c.post(IMPORTS, json={"mode": "yaml-url", "yaml_url": "file:///etc/passwd"}))
    assert "scheme 'file' not allowed" in error, error

    error = failed(await c.post(IMPORTS, json={"mode": "yaml-url", "yaml_url": f"{base}/doc/missing.yml"}))
    assert "HTTP status 404" in error and f"{base}/doc/missing.yml" in error, error
    error = failed(await c.post(IMPORTS, json={"mode": "yaml-url", "yaml_url": f"{base}/big"}))
    assert error == "The DSL document is larger than 10 MB.", error
    error = failed(await c.post(IMPORTS, json={"mode": "yaml-url",
                                               "yaml_url": f"http://127.0.0.1:{free_port()}/doc/x"}))
    assert error.startswith("Error fetching the DSL document from http://127.0.0.1:") and "connect" in error.lower()
    error = failed(await c.post(IMPORTS, json={"mode": "yaml-url", "yaml_url": f"{base}/doc/empty.yml"}))
    assert "is empty" in error, error
    error = failed(await c.post(IMPORTS, json={"mode": "yaml-url", "yaml_url": f"{base}/doc/list.yml"}))
    assert "must be a YAML mapping" in error, error
    for body in ({"mode": "yaml-url"}, {"mode": "yaml-url", "yaml_url": "  "},
                 {"mode": "yaml-url", "yaml_content": workflow_doc()}):
        assert failed(await c.post(IMPORTS, json=body)) == "yaml_url is required when mode is yaml-url."
    assert await app_names(c) == before


# ---- versions ----------------------------------------------------------------------------------------------


async def test_version_branches(live: LiveServer, c: httpx.AsyncClient) -> None:
    # current (as written or without its patch): completed
    for version in (dsl.DSL_VERSION, dsl.DSL_VERSION.rsplit(".", 1)[0]):
        body = done(await c.post(IMPORTS, json={"mode": "yaml-content", "yaml_content": workflow_doc(version),
                                                "name": uniq("v")}))
        assert body["imported_dsl_version"] == version and body["app_id"], body
    # an older minor (Dify 0.x's 0.1.5; absent counts as 0.1.0): created, with a warning status
    for version, imported in (("0.1.5", "0.1.5"), (None, "0.1.0")):
        name = uniq("older-minor")
        body = done(await c.post(IMPORTS, json={"mode": "yaml-content", "yaml_content": workflow_doc(version),
                                                "name": name}), "completed-with-warnings")
        assert body["imported_dsl_version"] == imported and body["app_mode"] == "workflow"
        assert (await c.get(f"{C}/apps/{body['app_id']}")).json()["name"] == name
    # newer (minor, patch or major): pending, nothing created
    before = await app_names(c)
    for version in ("0.6.0", "0.5.1", "1.0.0"):
        body = done(await c.post(IMPORTS, json={"mode": "yaml-content", "yaml_content": workflow_doc(version),
                                                "name": uniq("newer")}), "pending", 202)
        assert (body["app_id"], body["app_mode"], body["imported_dsl_version"]) == (None, None, version)
        async with live.ctx.db.session() as s:
            row = await s.get(AppImport, body["id"])
        assert row is not None and row.document["version"] == version and row.overrides["name"].startswith("newer")
        assert timedelta(minutes=9) < row.expires_at - utcnow() <= timedelta(minutes=10)
    assert await app_names(c) == before
    # not a version number: failed
    for version, said in (("latest", "'latest' is not a version number"), ("0.1.5-beta", "is not a version"),
                          (0.1, "must be a string"), (2, "must be a string")):
        doc = workflow_doc(None) + f"version: {version}\n" if not isinstance(version, str) else workflow_doc(version)
        error = failed(await c.post(IMPORTS, json={"mode": "yaml-content", "yaml_content": doc}))
        assert said in error, error
    assert await app_names(c) == before


# ---- pending → confirm -------------------------------------------------------------------------------------


async def test_pending_import_is_confirmed_once(live: LiveServer, c: httpx.AsyncClient) -> None:
    name = uniq("confirmed")
    pending = done(await c.post(IMPORTS, json={
        "mode": "yaml-content", "yaml_content": workflow_doc("0.6.0", output="answer"), "name": name,
        "description": "from the request", "icon": "🚀"}), "pending", 202)
    assert name not in await app_names(c)
    confirm = f"{IMPORTS}/{pending['id']}/confirm"

    body = done(await c.post(confirm))
    assert (body["id"], body["app_mode"], body["imported_dsl_version"]) == (pending["id"], "workflow", "0.6.0")
    detail = (await c.get(f"{C}/apps/{body['app_id']}")).json()
    assert (detail["name"], detail["description"], detail["icon"], detail["icon_background"]) == \
        (name, "from the request", "🚀", "#FFFFFF")
    assert (await draft_of(c, body["app_id"]))["graph"]["nodes"] == echo_graph("answer")["nodes"]
    async with live.ctx.db.session() as s:
        assert await s.get(AppImport, pending["id"]) is None

    # confirmed already, unknown, or not an id: Dify's failed object
    for import_id in (pending["id"], str(uuid.uuid4()), "not-an-id"):
        r = await c.post(f"{IMPORTS}/{import_id}/confirm")
        assert failed(r, import_id) == "Import information expired or does not exist."
    assert (await app_names(c)).count(name) == 1


async def test_two_confirmations_at_once_make_one_app(c: httpx.AsyncClient) -> None:
    name = uniq("race")
    pending = done(await c.post(IMPORTS, json={"mode": "yaml-content", "yaml_content": workflow_doc("0.6.0"),
                                               "name": name}), "pending", 202)
    answers = await asyncio.gather(*(c.post(f"{IMPORTS}/{pending['id']}/confirm") for _ in range(3)))
    assert sorted(r.status_code for r in answers) == [200, 400, 400], [r.text for r in answers]
    assert (await app_names(c)).count(name) == 1


async def test_expired_and_foreign_imports(live: LiveServer, c: httpx.AsyncClient) -> None:
    older = done(await c.post(IMPORTS, json={"mode": "yaml-content", "yaml_content": workflow_doc("0.6.0"),
                                             "name": uniq("expired")}), "pending", 202)
    foreign = done(await c.post(IMPORTS, json={"mode": "yaml-content", "yaml_content": workflow_doc("0.6.0"),
                                               "name": uniq("foreign")}), "pending", 202)
    async with live.ctx.db.session() as s:  # ten minutes later, for the first one
        await s.exec(update(AppImport).where(AppImport.id == older["id"])
                     .values(expires_at=utcnow() - timedelta(seconds=1)))
        await s.commit()
    error = failed(await c.post(f"{IMPORTS}/{older['id']}/confirm"), older["id"])
    assert error == "Import information expired or does not exist."
    async with live.ctx.db.session() as s:  # and expired rows are gone by the way
        assert (await s.exec(select(AppImport).where(col(AppImport.expires_at) <= utcnow()))).all() == []
    # another workspace cannot confirm it; its own workspace still can
    async with in_other_workspace(c, dict(c.headers), live.ctx.db):
        assert failed(await c.post(f"{IMPORTS}/{foreign['id']}/confirm")) == \
            "Import information expired or does not exist."
    done(await c.post(f"{IMPORTS}/{foreign['id']}/confirm"))


async def test_a_failed_confirmation_can_be_retried(live: LiveServer, c: httpx.AsyncClient) -> None:
    """The document is checked when confirmed; it failing leaves no app, and the import waits on (Dify)."""
    name = uniq("retry")
    taken = done(await c.post(IMPORTS, json={"mode": "yaml-content", "yaml_content": workflow_doc(),
                                             "name": name}))
    pending = done(await c.post(IMPORTS, json={"mode": "yaml-content", "yaml_content": workflow_doc("0.6.0"),
                                               "name": name}), "pending", 202)
    confirm = f"{IMPORTS}/{pending['id']}/confirm"
    assert failed(await c.post(confirm)) == f"An app named '{name}' already exists in this workspace."
    assert failed(await c.post(confirm)) == f"An app named '{name}' already exists in this workspace."
    assert (await c.delete(f"{C}/apps/{taken['app_id']}")).status_code == 204
    body = done(await c.post(confirm))
    assert (await c.get(f"{C}/apps/{body['app_id']}")).json()["name"] == name

    broken = done(await c.post(IMPORTS, json={"mode": "yaml-content", "name": uniq("broken"),
                                              "yaml_content": workflow_doc("0.6.0").replace("- topic", "- nope")}),
                  "pending", 202)
    before = await app_names(c)
    error = failed(await c.post(f"{IMPORTS}/{broken['id']}/confirm"))
    assert error.startswith("the app in the document is invalid:") and "no output 'nope'" in error, error
    assert await app_names(c) == before


# ---- into an existing app (app_id) ---------------------------------------------------------------------------


async def test_import_replaces_an_apps_draft(c: httpx.AsyncClient, docs: tuple[Documents, str]) -> None:
    name = uniq("target")
    r = await c.post(f"{C}/apps", json={"name": name, "mode": "workflow"})
    assert r.status_code == 201, r.text
    app_id = r.json()["id"]
    r = await c.post(f"{C}/apps/{app_id}/workflows/draft", json={"graph": echo_graph("first"), "features": {}})
    assert r.status_code == 200, r.text
    assert (await c.post(f"{C}/apps/{app_id}/workflows/publish", json={})).status_code == 200

    body = done(await c.post(IMPORTS, json={"mode": "yaml-content", "app_id": app_id,
                                            "yaml_content": workflow_doc(name="Other name", output="second")}))
    assert (body["app_id"], body["app_mode"]) == (app_id, "workflow")
    draft = await draft_of(c, app_id)
    assert draft["graph"]["nodes"] == echo_graph("second")["nodes"] and draft["features"] == {
        "opening_statement": "second"}
    published = (await c.get(f"{C}/apps/{app_id}/workflows/publish")).json()
    assert published["graph"]["nodes"] == echo_graph("first")["nodes"]  # not published
    # the document's name does not rename the app (names are unique in a workspace); the request's does
    assert (await c.get(f"{C}/apps/{app_id}")).json()["name"] == name
    assert "Other name" not in await app_names(c)

    # from a URL, with the request's own name, and pending → confirm
    d, base = docs
    d.docs["third.yml"] = workflow_doc("0.6.0", output="third")
    renamed = uniq("renamed")
    pending = done(await c.post(IMPORTS, json={"mode": "yaml-url", "yaml_url": f"{base}/doc/third.yml",
                                               "app_id": app_id, "name": renamed}), "pending", 202)
    assert pending["app_id"] == app_id  # Dify answers the target's id
    assert (await draft_of(c, app_id))["graph"]["nodes"] == echo_graph("second")["nodes"]
    body = done(await c.post(f"{IMPORTS}/{pending['id']}/confirm"))
    assert body["app_id"] == app_id
    assert (await draft_of(c, app_id))["graph"]["nodes"] == echo_graph("third")["nodes"]
    assert (await c.get(f"{C}/apps/{app_id}")).json()["name"] == renamed


async def test_import_into_an_app_failures(c: httpx.AsyncClient) -> None:
    async def make(mode: str) -> str:
        r = await c.post(f"{C}/apps", json={"name": uniq(mode), "mode": mode})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    target, chat, chatflow = await make("workflow"), await make("chat"), await make("advanced-chat")
    target_name = (await c.get(f"{C}/apps/{target}")).json()["name"]
    r = await c.post(f"{C}/apps/{target}/workflows/draft", json={"graph": echo_graph("kept"), "features": {}})
    assert r.status_code == 200, r.text
    other = uniq("other")
    assert (await c.post(f"{C}/apps", json={"name": other, "mode": "chat"})).status_code == 201
    before = await app_names(c)

    def body(app_id: str, **kw: Any) -> dict[str, Any]:
        return {"mode": "yaml-content", "yaml_content": workflow_doc(**kw), "app_id": app_id}

    assert failed(await c.post(IMPORTS, json=body(str(uuid.uuid4())))) == "App not found."
    assert failed(await c.post(IMPORTS, json=body("x" * 80))) == "App not found."
    assert failed(await c.post(IMPORTS, json=body(chat))) == "Only workflow or advanced-chat apps can be overwritten."
    error = failed(await c.post(IMPORTS, json=body(chatflow)))
    assert error == f"The document's app mode is workflow, app {chatflow}'s is advanced-chat: they must match."
    error = failed(await c.post(IMPORTS, json=body(target, mode="advanced-chat")))
    assert error == f"The document's app mode is advanced-chat, app {target}'s is workflow: they must match."
    broken = {**body(target), "yaml_content": workflow_doc().replace("- topic", "- nope")}
    error = failed(await c.post(IMPORTS, json=broken))
    assert error.startswith("the app in the document is invalid:") and "no output 'nope'" in error, error
    error = failed(await c.post(IMPORTS, json={**body(target, output="renamed"), "name": other}))
    assert error == f"An app named '{other}' already exists in this workspace.", error
    # none of them changed the draft or the app
    assert (await draft_of(c, target))["graph"]["nodes"] == echo_graph("kept")["nodes"]
    assert await app_names(c) == before
    # a pending import into an app that is checked again when confirmed
    pending = done(await c.post(IMPORTS, json=body(target, version="0.6.0")), "pending", 202)
    assert (await c.delete(f"{C}/apps/{target}")).status_code == 204
    assert failed(await c.post(f"{IMPORTS}/{pending['id']}/confirm")) == "App not found."
    before.remove(target_name)
    assert await app_names(c) == before


# ---- failed objects ----------------------------------------------------------------------------------------


async def test_failures_answer_the_import_object(c: httpx.AsyncClient) -> None:
    before = await app_names(c)

    def content(text: str, **kw: Any) -> dict[str, Any]:
        return {"mode": "yaml-content", "yaml_content": text, **kw}

    cases: list[tuple[dict[str, Any], str]] = [
        ({"mode": "zip", "yaml_content": workflow_doc()}, "mode must be one of ['yaml-content', 'yaml-url']."),
        ({"mode": "yaml-content"}, "yaml_content is required when mode is yaml-content."),
        (content("   "), "yaml_content is required when mode is yaml-content."),
        (content(workflow_doc() + "#" * dsl.MAX_DSL_BYTES), "The DSL document is larger than 10 MB."),
        (content("a: [unclosed"), "The DSL document is not valid YAML"),
        (content("just text"), "The DSL document must be a YAML mapping"),
        (content(workflow_doc(kind="dataset")), "Not an app DSL document"),
        (content("kind: app\nversion: 0.1.5\n"), "Not an app DSL document"),
        (content(workflow_doc(mode="chatbot")), "app.mode must be one of"),
        (content(workflow_doc(), name=12), "name must be a string."),
        (content(workflow_doc(), icon="x" * 256), "icon must be at most 255 characters."),
        (content(workflow_doc(), icon_type="svg"), "icon_type must be one of ['emoji', 'image', 'link']."),
        (content(workflow_doc().replace("- topic", "- nope"), name=uniq()), "the app in the document is invalid"),
        (content(yaml.safe_dump({"kind": "app", "version": "0.1.5", "app": {"name": uniq(), "mode": "workflow"}})),
         "the app in the document is invalid: graph must be an object"),
        (content(yaml.safe_dump({"kind": "app", "version": "0.1.5", "app": {"name": uniq(), "mode": "chat"},
                                 "model_config": {**CHAT_CONFIG, "model": {"provider": "nobody", "name": "m"}}})),
         "Unknown model provider 'nobody'"),
        (content("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True))),
         "expands to more than 20 MB"),
        (content("a: &a [*a]\n"), "contains itself"),
    ]
    for request, said in cases:
        error = failed(await c.post(IMPORTS, json=request))
        assert said in error, (said, error)
    assert await app_names(c) == before

    # a duplicate name is refused too
    name = uniq("dup")
    done(await c.post(IMPORTS, json=content(workflow_doc(), name=name)))
    assert failed(await c.post(IMPORTS, json=content(workflow_doc(), name=name))) == \
        f"An app named '{name}' already exists in this workspace."


async def test_basic_app_and_yaml_oddities(c: httpx.AsyncClient) -> None:
    """A chat app's model config comes along; YAML dates and numeric keys are stored as JSON has them."""
    name = uniq("chat")
    doc = yaml.safe_dump({"kind": "app", "version": dsl.DSL_VERSION, "app": {"name": name, "mode": "chat", "icon": 42},
                          "model_config": CHAT_CONFIG})
    body = done(await c.post(IMPORTS, json={"mode": "yaml-content", "yaml_content": doc}))
    assert body["app_mode"] == "chat"
    detail = (await c.get(f"{C}/apps/{body['app_id']}")).json()
    assert detail["name"] == name and detail["icon"] == "42"
    assert detail["model_config"]["opening_statement"] == "Hello from the DSL"

    text = workflow_doc(name=uniq("dates"), features={"released": date(2024, 1, 2), 7: "seven"})
    assert "released: 2024-01-02" in text and "7: seven" in text
    body = done(await c.post(IMPORTS, json={"mode": "yaml-content", "yaml_content": text}))
    assert (await draft_of(c, body["app_id"]))["features"] == {"released": "2024-01-02", "7": "seven"}

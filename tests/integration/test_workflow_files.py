"""Files in workflows end to end through the gateway (`all` stack on SQLite/Postgres, real NATS object store, the
scripted model): start-node variables of type file and file-list (validated, resolved to File values that
templates and list operations see), `files` as sys.files on /workflows/run and on advanced-chat
/chat-messages (recorded as message_files), the document-extractor node, and the LLM node's vision."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from shared.settings import FilesSettings
from tests import workflow_graphs as g
from tests.conftest import LiveServer, database_url, db_params, make_settings, start_live
from tests.integration.test_files import docx_bytes, png
from tests.llm_server import ScriptedLLM
from tests.support import console_admin, serve

DE, DE2, TPL = "1711000000031", "1711000000032", "1711000000033"
DOCS_ONLY = {"allowed_file_types": ["document"], "allowed_file_upload_methods": ["local_file"]}
FILE_UPLOAD = {"enabled": True, "allowed_file_types": ["document", "image"], "number_limits": 2,
               "allowed_file_upload_methods": ["local_file", "remote_url"]}


@pytest.fixture(scope="module", params=db_params())
async def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, nats_url: str,
                llm: ScriptedLLM) -> AsyncIterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("workflow-files")
    # "localhost" is open to file fetches (the remote_url case); 127.0.0.1 stays refused
    settings = make_settings(tmp, database_url(request.param, tmp), nats_url,
                             files=FilesSettings(remote_url_allowlist=["localhost"]))
    srv: LiveServer = await start_live(settings)
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=60) as c:
        admin = await console_admin(c)
        r = await c.post("/console/api/workspaces/current/model-providers/openai-compatible/credentials",
                         headers=admin, json={"credentials": {"api_key": "sk-test", "api_base": llm.base_url}})
        assert r.status_code == 200, r.text
        yield {"c": c, "admin": admin, "llm": llm}
    await srv.stop()


@pytest.fixture
def w(world: dict[str, Any]) -> dict[str, Any]:
    world["llm"].reset()
    return world


async def publish(w: dict[str, Any], graph: dict[str, Any], mode: str = "workflow",
                  features: dict[str, Any] | None = None) -> dict[str, str]:
    """Authorization headers of a new app of ``mode`` whose published workflow is ``graph``."""
    c, admin = w["c"], w["admin"]
    r = await c.post("/console/api/apps", headers=admin, json={"name": f"wff-{uuid.uuid4().hex[:8]}", "mode": mode})
    assert r.status_code == 201, r.text
    app_id = r.json()["id"]
    r = await c.post(f"/console/api/apps/{app_id}/workflows/draft", headers=admin,
                     json={"graph": graph, "features": features or {}})
    assert r.status_code == 200, r.text
    assert (await c.post(f"/console/api/apps/{app_id}/workflows/publish", headers=admin, json={})).status_code == 200
    key = (await c.post(f"/console/api/apps/{app_id}/api-keys", headers=admin)).json()["token"]
    return {"Authorization": f"Bearer {key}"}


async def upload(w: dict[str, Any], h: dict[str, str], name: str, data: bytes, user: str = "u1") -> str:
    r = await w["c"].post("/v1/files/upload", headers=h, files={"file": (name, data)}, data={"user": user})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def local(file_id: str, type_: str = "document") -> dict[str, str]:
    return {"type": type_, "transfer_method": "local_file", "upload_file_id": file_id}


def remote(url: str, type_: str = "document") -> dict[str, str]:
    return {"type": type_, "transfer_method": "remote_url", "url": url}


async def run(w: dict[str, Any], h: dict[str, str], inputs: dict[str, Any], files: Any = None) -> httpx.Response:
    body: dict[str, Any] = {"inputs": inputs, "user": "u1", "response_mode": "blocking"}
    if files is not None:
        body["files"] = files
    return await w["c"].post("/v1/workflows/run", headers=h, json=body)


def refused(r: httpx.Response) -> str:
    """The message of a 400 invalid_param in the contract's envelope."""
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["code"] == "invalid_param" and body["status"] == 400, body
    return body["message"]


def file_var(name: str, kind: str = "file", required: bool = True, **kw: Any) -> dict[str, Any]:
    return {"variable": name, "label": name, "type": kind, "required": required, **kw}


def extract_graph() -> dict[str, Any]:
    """start(f: file, fl: file-list ≤ 2, c: custom .md only) → document-extractor × 2 → list-operator (the .md
    files of fl) → end(text, texts, name, md)."""
    return g.graph([
        g.start(file_var("f", **DOCS_ONLY), file_var("fl", "file-list", max_length=2, **DOCS_ONLY),
                file_var("c", required=False, allowed_file_types=["custom"], allowed_file_extensions=[".md"])),
        g.node(DE, "document-extractor", "Extract one", variable_selector=[g.START, "f"], is_array_file=False),
        g.node(DE2, "document-extractor", "Extract list", variable_selector=[g.START, "fl"], is_array_file=True),
        g.node(g.LIST, "list-operator", "Markdown only", variable=[g.START, "fl"],
               filter_by={"enabled": True, "conditions": [  # Dify's file keys: "name" is the filename
                   {"key": "extension", "comparison_operator": "is", "value": ".md"},
                   {"key": "name", "comparison_operator": "start with", "value": "read"}]}),
        g.node(g.END, "end", "End", outputs=[
            {"variable": "text", "value_selector": [DE, "text"]},
            {"variable": "texts", "value_selector": [DE2, "text"]},
            {"variable": "name", "value_selector": [g.START, "f", "filename"]},
            {"variable": "md", "value_selector": [g.LIST, "first_record", "filename"]},
            {"variable": "c", "value_selector": [g.START, "c"]}]),
    ], [g.edge(g.START, DE), g.edge(DE, DE2), g.edge(DE2, g.LIST), g.edge(g.LIST, g.END)])


# ---- start-node file variables and the document extractor ---------------------------------------------------


async def test_file_inputs_are_resolved_and_extracted(w: dict[str, Any]) -> None:
    h = await publish(w, extract_graph())
    marker = uuid.uuid4().hex[:8]
    txt = await upload(w, h, "notes.txt", f"Alpha notes {marker}".encode())
    doc = await upload(w, h, "report.docx", docx_bytes(f"Beta paragraph {marker}", "Second line"))
    md = await upload(w, h, "readme.md", f"# Gamma {marker}\n\nbody".encode())
    r = await run(w, h, {"f": local(txt), "fl": [local(doc), local(md)]})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["status"] == "succeeded", data
    out = data["outputs"]
    assert out["text"] == f"Alpha notes {marker}"
    assert isinstance(out["texts"], list) and len(out["texts"]) == 2
    assert f"Beta paragraph {marker}" in out["texts"][0] and "Second line" in out["texts"][0]
    assert f"Gamma {marker}" in out["texts"][1]
    assert out["name"] == "notes.txt" and out["md"] == "readme.md" and out["c"] is None
    # the run keeps File values (references, never bytes) as its inputs
    run_view = (await w["c"].get(f"/v1/workflows/run/{data['id']}", headers=h)).json()
    f = run_view["inputs"]["f"]
    assert f["related_id"] == txt and f["transfer_method"] == "local_file" and f["type"] == "document"
    assert f["extension"] == ".txt" and f["mime_type"] == "text/plain" and f["filename"] == "notes.txt"
    assert f["size"] == len(f"Alpha notes {marker}") and f["remote_url"] is None
    assert f["url"].endswith(f"/v1/files/{txt}/preview")
    assert [x["related_id"] for x in run_view["inputs"]["fl"]] == [doc, md]
    # a custom variable takes its extensions only
    r = await run(w, h, {"f": local(txt), "fl": [local(txt)], "c": local(md, "custom")})
    assert r.status_code == 200 and r.json()["data"]["outputs"]["c"]["filename"] == "readme.md", r.text
    # streamed: node_finished and workflow_finished list the files among their outputs (Dify's `files`)
    body = {"inputs": {"f": local(txt), "fl": [local(doc), local(md)], "c": local(md, "custom")}, "user": "u1",
            "response_mode": "streaming"}
    async with w["c"].stream("POST", "/v1/workflows/run", headers=h, json=body) as s:
        events = [json.loads(line[6:]) async for line in s.aiter_lines() if line.startswith("data: ")]
    finished = events[-1]
    assert finished["event"] == "workflow_finished", finished
    assert [(f["related_id"], f["filename"]) for f in finished["data"]["files"]] == [(md, "readme.md")]
    start = next(e for e in events if e["event"] == "node_finished" and e["data"]["node_type"] == "start")
    assert [f["related_id"] for f in start["data"]["files"]] == [txt, doc, md, md]  # f, fl (both), c
    extract = next(e for e in events if e["event"] == "node_finished" and e["data"]["node_id"] == DE)
    assert extract["data"]["files"] == []


async def test_file_inputs_are_validated(w: dict[str, Any]) -> None:
    h = await publish(w, extract_graph())
    txt = await upload(w, h, "notes.txt", b"some text")
    md = await upload(w, h, "readme.md", b"# md")
    pic = await upload(w, h, "pic.png", png())
    theirs = await upload(w, h, "theirs.txt", b"another user's", user="u2")
    ok = {"f": local(txt), "fl": [local(txt)]}

    async def message(**inputs: Any) -> str:
        return refused(await run(w, h, {**ok, **inputs}))

    assert await message(f=None) == "f is required in input form"
    assert await message(f="notes.txt") == "f in input form must be a file"
    assert await message(fl=local(txt)) == "fl in input form must be a list of files"
    assert await message(fl=["x"]) == "fl in input form must be a list of files"
    assert await message(fl=[]) == "fl is required in input form"
    assert await message(fl=[local(txt)] * 3) == "fl in input form must have at most 2 files"
    assert await message(f={"type": "document"}) == "f.transfer_method must be local_file or remote_url"
    assert (await message(f={"type": "pdf", "transfer_method": "local_file"})).startswith("f.type must be one of")
    assert await message(f={"type": "document", "transfer_method": "local_file"}) == \
        "f.upload_file_id is required for transfer_method local_file"
    # the variable's allowed types, methods and extensions
    assert await message(f=local(pic, "image")) == "f: image files are not allowed here (allowed: document)."
    assert await message(fl=[local(txt), remote("http://localhost/a.txt")]) == \
        "fl[1]: transfer method remote_url is not allowed here (allowed: local_file)."
    assert await message(c=local(txt, "custom")) == "c: .txt files are not allowed here (allowed: .md)."
    # the content decides the type: a PNG is no document
    assert await message(f=local(pic)) == "f: the file is a image, not a document."
    # only the end user's own uploads of this app; unknown and malformed ids alike
    assert await message(f=local(theirs)) == f"f: upload file {theirs} not found."
    unknown = str(uuid.uuid4())
    assert await message(fl=[local(unknown)]) == f"fl[0]: upload file {unknown} not found."
    assert await message(f=local("not-a-uuid")) == "f: upload file not-a-uuid not found."
    other = await publish(w, extract_graph())
    elsewhere = await upload(w, other, "elsewhere.txt", b"another app's")
    assert await message(f=local(elsewhere)) == f"f: upload file {elsewhere} not found."
    # and it still runs with good inputs
    r = await run(w, h, {**ok, "c": local(md, "custom")})
    assert r.status_code == 200 and r.json()["data"]["status"] == "succeeded", r.text


async def test_extractor_failures_follow_the_error_strategy(w: dict[str, Any]) -> None:
    def graph(**strategy: Any) -> dict[str, Any]:
        return g.graph([
            g.start(file_var("f")),
            g.node(DE, "document-extractor", "Extract", variable_selector=[g.START, "f"], **strategy),
            g.end(text=[DE, "text"]),
        ], [g.edge(g.START, DE), g.edge(DE, g.END)])

    # the node needs its variable
    r = await w["c"].post("/console/api/apps", headers=w["admin"], json={"name": "wff-bad", "mode": "workflow"})
    bad_graph = graph()
    del bad_graph["nodes"][1]["data"]["variable_selector"]
    r = await w["c"].post(f"/console/api/apps/{r.json()['id']}/workflows/draft", headers=w["admin"],
                          json={"graph": bad_graph})
    assert r.status_code == 400 and "variable_selector is required" in r.json()["message"], r.text

    h = await publish(w, graph())
    pic = await upload(w, h, "pic.png", png())
    r = await run(w, h, {"f": local(pic, "image")})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["status"] == "failed" and "pic.png: image files have no text to extract" in data["error"], data
    h = await publish(w, graph(error_strategy="default-value",
                               default_value=[{"key": "text", "type": "string", "value": "(no text)"}]))
    pic = await upload(w, h, "pic.png", png())
    data = (await run(w, h, {"f": local(pic, "image")})).json()["data"]
    assert data["status"] == "partial-succeeded" and data["outputs"] == {"text": "(no text)"}, data
    # a broken document fails the node with the parser's reason
    bad = await upload(w, h, "broken.docx", b"PK\x03\x04" + bytes(64))
    data = (await run(w, h, {"f": local(bad)})).json()["data"]
    assert data["status"] == "partial-succeeded" and data["outputs"]["text"] == "(no text)", data


# ---- sys.files -----------------------------------------------------------------------------------------------


def sys_files_graph() -> dict[str, Any]:
    """start → document-extractor(sys.files) → end(texts, first name)."""
    return g.graph([
        g.start(),
        g.node(DE, "document-extractor", "Extract", variable_selector=["sys", "files"], is_array_file=True),
        g.end(texts=[DE, "text"], first=["sys", "files", "0", "filename"]),
    ], [g.edge(g.START, DE), g.edge(DE, g.END)])


async def test_files_become_sys_files(w: dict[str, Any]) -> None:
    h = await publish(w, sys_files_graph(), features={"file_upload": FILE_UPLOAD})
    txt = await upload(w, h, "one.txt", b"first file")
    md = await upload(w, h, "two.md", b"second file")
    r = await run(w, h, {}, files=[local(txt), local(md)])
    assert r.status_code == 200, r.text
    out = r.json()["data"]["outputs"]
    assert out == {"texts": ["first file", "second file"], "first": "one.txt"}, out
    # the same on a named version
    wid = (await w["c"].get(f"/v1/workflows/run/{r.json()['workflow_run_id']}", headers=h)).json()["workflow_id"]
    r = await w["c"].post(f"/v1/workflows/{wid}/run", headers=h, json={
        "inputs": {}, "user": "u1", "files": [local(md)]})
    assert r.status_code == 200 and r.json()["data"]["outputs"]["texts"] == ["second file"], r.text
    # checked against the workflow's file_upload feature
    assert refused(await run(w, h, {}, files=[local(txt)] * 3)) == \
        "Too many files: this app accepts at most 2 per run."
    assert refused(await run(w, h, {}, files=local(txt))).startswith("files: ")  # the body's own check
    assert refused(await run(w, h, {}, files=[{"type": "video", "transfer_method": "local_file",
                                               "upload_file_id": txt}])) == \
        "files[0]: video files are not allowed here (allowed: document, image)."
    off = await publish(w, sys_files_graph())
    mine = await upload(w, off, "one.txt", b"x")
    assert refused(await run(w, off, {}, files=[local(mine)])) == "File upload is not enabled for this app."
    # without files sys.files is empty
    r = await run(w, off, {})
    assert r.status_code == 200 and r.json()["data"]["outputs"]["texts"] == [], r.text


async def test_remote_url_files_go_through_the_ssrf_guard(w: dict[str, Any]) -> None:
    served = f"Remote text {uuid.uuid4().hex[:6]}"

    async def notes(_: Any) -> Response:
        return Response(served, media_type="text/plain")

    site = await serve(Starlette(routes=[Route("/notes", notes)]))
    try:
        h = await publish(w, sys_files_graph(), features={"file_upload": FILE_UPLOAD})
        url = f"http://localhost:{site.port}/notes"
        r = await run(w, h, {}, files=[remote(url)])
        assert r.status_code == 200, r.text
        out = r.json()["data"]["outputs"]
        assert out == {"texts": [served], "first": "notes.txt"}, out
        sys_file = (await w["c"].get(f"/v1/workflows/run/{r.json()['workflow_run_id']}", headers=h)).json()
        assert sys_file["status"] == "succeeded"
        # loopback by address is not on the files' allowlist: refused before any connection
        assert refused(await run(w, h, {}, files=[remote(f"http://127.0.0.1:{site.port}/notes")])) == \
            "files[0]: the file at this URL cannot be fetched."
    finally:
        await site.stop()


# ---- advanced-chat -----------------------------------------------------------------------------------------


async def test_advanced_chat_takes_files(w: dict[str, Any]) -> None:
    graph = g.graph([
        g.start(),
        g.node(g.LIST, "list-operator", "First file", variable=["sys", "files"],
               extract_by={"enabled": True, "serial": "1"}),
        g.node(DE, "document-extractor", "Extract", variable_selector=[g.LIST, "first_record"]),
        g.node(g.ANSWER, "answer", "Answer",
               answer="Got {{#" + g.LIST + ".first_record.filename#}}: {{#" + DE + ".text#}}"),
    ], [g.edge(g.START, g.LIST), g.edge(g.LIST, DE), g.edge(DE, g.ANSWER)])
    h = await publish(w, graph, "advanced-chat", features={"file_upload": FILE_UPLOAD})
    c = w["c"]
    txt = await upload(w, h, "memo.txt", b"the memo says hi")
    r = await c.post("/v1/chat-messages", headers=h, json={
        "inputs": {}, "query": "read it", "user": "u1", "response_mode": "blocking", "files": [local(txt)]})
    assert r.status_code == 200, r.text
    assert r.json()["answer"] == "Got memo.txt: the memo says hi"
    msgs = (await c.get("/v1/messages", headers=h, params={"user": "u1",
                                                          "conversation_id": r.json()["conversation_id"]})).json()
    (mf,) = msgs["data"][-1]["message_files"]
    assert mf["upload_file_id"] == txt and mf["filename"] == "memo.txt" and mf["type"] == "document"
    assert mf["transfer_method"] == "local_file" and mf["belongs_to"] == "user"
    # attached to a message, the upload can now be previewed
    r = await c.get(f"/v1/files/{txt}/preview", headers=h, params={"user": "u1"})
    assert r.status_code == 200 and r.content == b"the memo says hi"
    # refusals are the same as for workflow runs
    r = await c.post("/v1/chat-messages", headers=h, json={
        "inputs": {}, "query": "q", "user": "u1", "files": [local(str(uuid.uuid4()))]})
    assert refused(r).startswith("files[0]: upload file ")


# ---- vision ----------------------------------------------------------------------------------------------------


async def test_llm_vision_sends_image_files(w: dict[str, Any]) -> None:
    llm: ScriptedLLM = w["llm"]
    marker = f"look {uuid.uuid4().hex[:8]}"
    graph = g.graph([
        g.start(file_var("pics", "file-list", allowed_file_types=["image", "document"])),
        g.node(g.LLM, "llm", "Look", model=g.MODEL, context={"enabled": False, "variable_selector": []},
               vision={"enabled": True, "configs": {"variable_selector": [g.START, "pics"], "detail": "low"}},
               prompt_template=[{"role": "user", "text": marker}]),
        g.end(text=[g.LLM, "text"]),
    ], [g.edge(g.START, g.LLM), g.edge(g.LLM, g.END)])
    h = await publish(w, graph)
    image = png(3, 3)
    pic = await upload(w, h, "chart.png", image)
    txt = await upload(w, h, "notes.txt", b"not an image")
    llm.push(match=marker, reply="A grey square.")
    r = await run(w, h, {"pics": [local(pic, "image"), local(txt)]})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["outputs"]["text"] == "A grey square.", r.text
    content = llm.requests_matching(marker)[-1].messages[-1]["content"]
    assert content[0] == {"type": "text", "text": marker}
    (part,) = content[1:]  # the image only: other files are not sent
    prefix = "data:image/png;base64,"
    assert part["type"] == "image_url" and part["image_url"]["detail"] == "low"
    assert base64.b64decode(part["image_url"]["url"][len(prefix):]) == image

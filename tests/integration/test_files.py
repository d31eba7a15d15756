"""App files end to end through the gateway (`all` stack, real NATS object store, SQLite/Postgres, the real
litellm path against the scripted server): /v1/files/upload limits and content sniffing, preview and
workspace isolation, images reaching a vision model as content parts, documents' text reaching the prompt,
remote_url through the SSRF guard, and message_files in GET /messages."""

from __future__ import annotations

import base64
import io
import struct
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from typing import Any

import docx
import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from shared.settings import FilesSettings, ToolsSettings
from tests.conftest import LiveServer, database_url, db_params, make_settings, start_live
from tests.integration.gateway_env import seed_app
from tests.llm_server import ScriptedLLM
from tests.support import console_admin, serve

MB = 1024 * 1024
FILE_UPLOAD = {"enabled": True, "allowed_file_types": ["image", "document"], "number_limits": 2,
               "allowed_file_upload_methods": ["local_file", "remote_url"],
               "image": {"enabled": True, "detail": "low"}}


def png(width: int = 2, height: int = 2) -> bytes:
    """A real (tiny, grey) PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def docx_bytes(*paragraphs: str) -> bytes:
    d = docx.Document()
    for p in paragraphs:
        d.add_paragraph(p)
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


@pytest.fixture(scope="module", params=db_params())
async def fstack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, nats_url: str
                 ) -> AsyncIterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("files")
    # 1 MB limits keep the oversize cases small; "localhost" is allowlisted for the remote_url success case,
    # while the IP literal 127.0.0.1 stays refused
    settings = make_settings(tmp, database_url(request.param, tmp), nats_url,
                             files=FilesSettings(image_file_size_limit=1, file_size_limit=1),
                             tools=ToolsSettings(egress_allowlist=["localhost"]))
    srv = await start_live(settings)
    yield srv
    await srv.stop()


class Apps:
    def __init__(self, c: httpx.AsyncClient, admin: dict[str, str]) -> None:
        self.c, self.admin = c, admin

    async def create(self, mode: str = "chat", **cfg: Any) -> dict[str, str]:
        """Authorization headers of a new app of ``mode`` on the scripted model."""
        app = (await self.c.post("/console/api/apps", headers=self.admin,
                                 json={"name": f"files{time.monotonic_ns()}", "mode": mode})).json()
        config = {"model": {"provider": "openai-compatible", "name": "scripted"}, "pre_prompt": "Be brief.", **cfg}
        r = await self.c.post(f"/console/api/apps/{app['id']}/model-config", headers=self.admin, json=config)
        assert r.status_code == 200, r.text
        key = (await self.c.post(f"/console/api/apps/{app['id']}/api-keys", headers=self.admin)).json()["token"]
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def apps(fstack: LiveServer, llm: ScriptedLLM) -> AsyncIterator[Apps]:
    async with httpx.AsyncClient(base_url=fstack.base_url, timeout=60) as c:
        admin = await console_admin(c)
        r = await c.post("/console/api/workspaces/current/model-providers/openai-compatible/credentials",
                         headers=admin, json={"credentials": {"api_key": "sk-x", "api_base": llm.base_url}})
        assert r.status_code == 200, r.text
        yield Apps(c, admin)


async def upload(c: httpx.AsyncClient, h: dict[str, str], name: str, data: bytes, user: str = "u1"
                 ) -> httpx.Response:
    return await c.post("/v1/files/upload", headers=h, files={"file": (name, data)}, data={"user": user})


def vision_app(**extra: Any) -> dict[str, Any]:
    return {"model": {"provider": "openai-compatible", "name": "scripted", "features": ["vision"]},
            "file_upload": FILE_UPLOAD, **extra}


def error(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["code"]


# ---- upload ---------------------------------------------------------------------------------------------


async def test_upload_limits_and_sniffing(apps: Apps) -> None:
    c, h = apps.c, await apps.create()
    image = png()
    r = await upload(c, h, "cat.png", image)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "cat.png" and body["size"] == len(image) and body["extension"] == "png"
    assert body["mime_type"] == "image/png" and body["created_by"] and isinstance(body["created_at"], int)
    assert body["preview_url"].endswith(f"/v1/files/{body['id']}/preview")
    r = await upload(c, h, "notes.md", b"# Notes\n\nplain text")
    assert r.status_code == 201 and r.json()["mime_type"] == "text/markdown", r.text
    # the content decides, not the name: a PNG named .pdf, text named .png, a program, a legacy .doc
    assert error(await upload(c, h, "report.pdf", image)) == (415, "unsupported_file_type")
    r = await upload(c, h, "photo.png", b"just some text, not an image")
    assert error(r) == (415, "unsupported_file_type") and ".png" in r.json()["message"]
    assert error(await upload(c, h, "setup.exe", b"MZ\x90\x00" + bytes(100))) == (415, "unsupported_file_type")
    assert error(await upload(c, h, "old.doc", b"\xd0\xcf\x11\xe0" + bytes(100))) == (415, "unsupported_file_type")
    # per-type limits (1 MB each here), shown in /parameters
    r = await upload(c, h, "big.png", image + bytes(MB))
    assert error(r) == (413, "file_too_large") and "1 MB" in r.json()["message"]
    assert error(await upload(c, h, "big.txt", b"a" * (MB + 1))) == (413, "file_too_large")
    assert (await upload(c, h, "fits.txt", b"a" * MB)).status_code == 201
    params = (await c.get("/v1/parameters", headers=h)).json()["system_parameters"]
    assert params["image_file_size_limit"] == 1 and params["file_size_limit"] == 1
    assert params["video_file_size_limit"] == 100
    # form shape
    r = await c.post("/v1/files/upload", headers=h, files=[("file", ("a.txt", b"a")), ("file", ("b.txt", b"b"))])
    assert error(r) == (400, "too_many_files")
    r = await c.post("/v1/files/upload", headers=h, data={"user": "u1"}, files={"other": ("a.txt", b"a")})
    assert error(r) == (400, "no_file_uploaded")
    r = await c.post("/v1/files/upload", headers=h, data={"user": "u1"})
    assert error(r) == (400, "no_file_uploaded")
    # without a key: 401 before the body is looked at
    assert (await c.post("/v1/files/upload", files={"file": ("a.txt", b"a")})).status_code == 401


async def test_preview_and_workspace_isolation(apps: Apps, fstack: LiveServer) -> None:
    c, h = apps.c, await apps.create()
    image = png(3, 3)
    file_id = (await upload(c, h, "grey pic.png", image)).json()["id"]
    r = await c.get(f"/v1/files/{file_id}/preview", headers=h, params={"user": "u1"})
    assert r.status_code == 200 and r.content == image
    assert r.headers["content-type"] == "image/png" and r.headers["content-disposition"].startswith("inline")
    assert r.headers["x-content-type-options"] == "nosniff"
    r = await c.get(f"/v1/files/{file_id}/preview", headers=h, params={"as_attachment": "true"})
    assert r.status_code == 200 and r.headers["content-disposition"].startswith("attachment")
    assert "grey%20pic.png" in r.headers["content-disposition"] or "grey pic.png" in r.headers["content-disposition"]
    # an app of another workspace, another app of the same workspace, an unknown id, a malformed id
    other = await seed_app(fstack.ctx.db)
    for headers in ({"Authorization": f"Bearer {other.key}"}, await apps.create()):
        assert error(await c.get(f"/v1/files/{file_id}/preview", headers=headers)) == (404, "file_not_found")
    assert error(await c.get(f"/v1/files/{uuid.uuid4()}/preview", headers=h)) == (404, "file_not_found")
    assert error(await c.get("/v1/files/not-a-uuid/preview", headers=h)) == (404, "file_not_found")
    # markup is never rendered on the API's origin
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    svg_id = (await upload(c, h, "x.svg", svg)).json()["id"]
    r = await c.get(f"/v1/files/{svg_id}/preview", headers=h)
    assert r.headers["content-type"] == "image/svg+xml" and "sandbox" in r.headers["content-security-policy"]


# ---- files in messages --------------------------------------------------------------------------------


async def test_chat_image_reaches_the_model_and_is_listed_on_the_message(apps: Apps, llm: ScriptedLLM) -> None:
    c, h = apps.c, await apps.create(**vision_app())
    image = png(4, 4)
    up = (await upload(c, h, "chart.png", image)).json()
    marker = f"describe {uuid.uuid4().hex[:8]}"
    r = await c.post("/v1/chat-messages", headers=h, json={
        "inputs": {}, "query": marker, "user": "u1", "response_mode": "blocking",
        "files": [{"type": "image", "transfer_method": "local_file", "upload_file_id": up["id"]}]})
    assert r.status_code == 200, r.text
    content = llm.requests_matching(marker)[-1].messages[-1]["content"]
    assert content[0] == {"type": "text", "text": marker}
    part = content[1]
    assert part["type"] == "image_url" and part["image_url"]["detail"] == "low"
    prefix = "data:image/png;base64,"
    assert part["image_url"]["url"].startswith(prefix)
    assert base64.b64decode(part["image_url"]["url"][len(prefix):]) == image
    msgs = (await c.get("/v1/messages", headers=h, params={"user": "u1",
                                                          "conversation_id": r.json()["conversation_id"]})).json()
    (mf,) = msgs["data"][-1]["message_files"]
    assert mf["upload_file_id"] == up["id"] and mf["type"] == "image" and mf["transfer_method"] == "local_file"
    assert mf["belongs_to"] == "user" and mf["filename"] == "chart.png" and mf["mime_type"] == "image/png"
    assert mf["size"] == len(image) and mf["url"].endswith(f"/v1/files/{up['id']}/preview") and mf["id"]
    # the next turn of the conversation sends its own files only; the first message keeps its file
    r = await c.post("/v1/chat-messages", headers=h, json={
        "inputs": {}, "query": "thanks " + marker, "user": "u1", "conversation_id": r.json()["conversation_id"]})
    assert r.status_code == 200, r.text
    msgs = (await c.get("/v1/messages", headers=h, params={"user": "u1",
                                                          "conversation_id": r.json()["conversation_id"]})).json()
    assert [len(m["message_files"]) for m in msgs["data"]] == [1, 0]


async def test_images_need_a_vision_model(apps: Apps, llm: ScriptedLLM) -> None:
    c = apps.c
    h = await apps.create(file_upload=FILE_UPLOAD)  # "scripted" is unknown to litellm: no vision
    up = (await upload(c, h, "p.png", png())).json()
    before = len(llm.requests)
    r = await c.post("/v1/chat-messages", headers=h, json={
        "inputs": {}, "query": "what is it", "user": "u1",
        "files": [{"type": "image", "transfer_method": "local_file", "upload_file_id": up["id"]}]})
    assert error(r) == (400, "invalid_param") and "does not accept images" in r.json()["message"]
    assert len(llm.requests) == before  # refused before any model call


async def test_files_are_checked_against_the_apps_file_upload_feature(apps: Apps, fstack: LiveServer) -> None:
    c = apps.c
    h = await apps.create(**vision_app())
    img = (await upload(c, h, "p.png", png())).json()["id"]
    doc = (await upload(c, h, "d.txt", b"hello")).json()["id"]

    async def chat(files: Any, headers: dict[str, str] = h) -> httpx.Response:
        return await c.post("/v1/chat-messages", headers=headers,
                            json={"inputs": {}, "query": "q", "user": "u1", "files": files})

    def local(i: str, type_: str = "image") -> dict[str, str]:
        return {"type": type_, "transfer_method": "local_file", "upload_file_id": i}

    cases = [
        ([local(img)] * 3, "at most 2"),
        ([local(img, "video")], "not allowed"),
        ([local(doc, "image")], "not a image"),
        ([local(img, "document")], "not a document"),
        ([{"type": "image", "transfer_method": "local_file"}], "upload_file_id is required"),
        ([local(str(uuid.uuid4()))], "not found"),
        ([{"type": "image", "transfer_method": "carrier_pigeon", "upload_file_id": img}], "transfer_method"),
        ("not-a-list", "list"),
    ]
    for files, words in cases:
        r = await chat(files)
        assert error(r) == (400, "invalid_param") and words in r.json()["message"], (files, r.text)
    # another workspace's upload cannot be attached either
    other = await seed_app(fstack.ctx.db)
    assert error(await chat([local(img)], {"Authorization": f"Bearer {other.key}"}))[0] == 400
    # an app whose file upload is off (Dify's default) and one that allows only local files
    r = await chat([local(img)], await apps.create())
    assert error(r) == (400, "invalid_param") and "not enabled" in r.json()["message"]
    only_local = {**FILE_UPLOAD, "allowed_file_upload_methods": ["local_file"]}
    r = await chat([{"type": "image", "transfer_method": "remote_url", "url": "https://example.com/a.png"}],
                   await apps.create(**vision_app(file_upload=only_local)))
    assert error(r) == (400, "invalid_param") and "remote_url is not allowed" in r.json()["message"]


async def test_document_text_reaches_the_prompt(apps: Apps, llm: ScriptedLLM) -> None:
    c = apps.c
    h = await apps.create(file_upload={**FILE_UPLOAD, "allowed_file_types": ["document"]})
    secret = f"The vault code is {uuid.uuid4().hex[:6]}."
    up = (await upload(c, h, "memo.docx", docx_bytes("Internal memo", secret))).json()
    assert up["extension"] == "docx"
    marker = f"what is the code {uuid.uuid4().hex[:6]}"
    r = await c.post("/v1/chat-messages", headers=h, json={
        "inputs": {}, "query": marker, "user": "u1",
        "files": [{"type": "document", "transfer_method": "local_file", "upload_file_id": up["id"]}]})
    assert r.status_code == 200, r.text
    user_msg = llm.requests_matching(marker)[-1].messages[-1]["content"]
    assert isinstance(user_msg, str) and secret in user_msg and 'name="memo.docx"' in user_msg
    assert user_msg.endswith(marker)  # the documents come first, the question last
    # completion apps take files too
    hc = await apps.create("completion", file_upload={**FILE_UPLOAD, "allowed_file_types": ["document"]})
    up = (await upload(c, hc, "facts.csv", b"city,population\nOslo,709000\n")).json()
    marker = f"summarise {uuid.uuid4().hex[:6]}"
    r = await c.post("/v1/completion-messages", headers=hc, json={
        "inputs": {}, "query": marker, "user": "u1",
        "files": [{"type": "document", "transfer_method": "local_file", "upload_file_id": up["id"]}]})
    assert r.status_code == 200, r.text
    assert "Oslo | 709000" in llm.requests_matching(marker)[-1].messages[-1]["content"]


async def test_remote_url_goes_through_the_ssrf_guard(apps: Apps, llm: ScriptedLLM) -> None:
    c = apps.c
    h = await apps.create(**vision_app())
    served_doc = f"Remote fact {uuid.uuid4().hex[:6]}."

    async def notes(_: Any) -> Response:
        return Response(served_doc, media_type="text/plain")

    async def big(_: Any) -> Response:
        return Response(b"\x89PNG\r\n\x1a\n" + bytes(MB + 1), media_type="image/png")

    site = await serve(Starlette(routes=[Route("/notes", notes), Route("/big.png", big)]))
    try:
        def remote(url: str, type_: str = "document") -> list[dict[str, str]]:
            return [{"type": type_, "transfer_method": "remote_url", "url": url}]

        # a loopback address is refused before any connection, with the reason
        r = await c.post("/v1/chat-messages", headers=h, json={
            "inputs": {}, "query": "q", "user": "u1", "files": remote(f"http://127.0.0.1:{site.port}/notes")})
        assert error(r) == (400, "invalid_param") and "loopback" in r.json()["message"], r.text
        r = await c.post("/v1/chat-messages", headers=h, json={
            "inputs": {}, "query": "q", "user": "u1", "files": remote("http://169.254.169.254/latest/meta-data")})
        assert error(r) == (400, "invalid_param") and "metadata" in r.json()["message"], r.text
        # an allowlisted host is fetched: its text reaches the prompt, the message keeps the URL
        marker = f"remote {uuid.uuid4().hex[:6]}"
        url = f"http://localhost:{site.port}/notes"
        r = await c.post("/v1/chat-messages", headers=h, json={
            "inputs": {}, "query": marker, "user": "u1", "files": remote(url)})
        assert r.status_code == 200, r.text
        assert served_doc in llm.requests_matching(marker)[-1].messages[-1]["content"]
        msgs = (await c.get("/v1/messages", headers=h, params={"user": "u1",
                                                              "conversation_id": r.json()["conversation_id"]})).json()
        (mf,) = msgs["data"][-1]["message_files"]
        assert mf["transfer_method"] == "remote_url" and mf["url"] == url and mf["upload_file_id"] is None
        assert mf["type"] == "document" and mf["filename"] == "notes.txt" and mf["size"] == len(served_doc)
        # the size limit holds for remote files too
        r = await c.post("/v1/chat-messages", headers=h, json={
            "inputs": {}, "query": "q", "user": "u1", "files": remote(f"http://localhost:{site.port}/big.png",
                                                                       "image")})
        assert error(r) == (413, "file_too_large")
    finally:
        await site.stop()

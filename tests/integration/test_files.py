"""App files end to end through the gateway (`all` stack, real NATS object store, SQLite/Postgres, the real
litellm path against the scripted server): /v1/files/upload limits and content sniffing, preview once attached
and workspace isolation, images reaching a vision model as content parts, documents' text reaching the prompt
(parsed once per upload), remote_url through the SSRF guard with its own allowlist, and message_files in
GET /messages."""

from __future__ import annotations

import base64
import io
import struct
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import docx
import httpx
import nats.js.errors
import pytest
import structlog
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from shared.files import FileStore
from shared.models import UploadFile
from shared.settings import FilesSettings, ToolsSettings
from tests.conftest import LiveServer, live_fixture
from tests.integration.gateway_env import seed_app
from tests.llm_server import ScriptedLLM
from tests.support import console_admin, in_other_workspace, serve

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


# 1 MB limits keep the oversize cases small; "localhost" is allowlisted for file fetches (the remote_url success
# case); 127.0.0.1 is open to tools only, so a file fetch of it stays refused
fstack = live_fixture("files", "fstack",
                      files=FilesSettings(image_file_size_limit=1, file_size_limit=1,
                                          remote_url_allowlist=["localhost"]),
                      tools=ToolsSettings(egress_allowlist=["127.0.0.1/32"]))


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

    async def elsewhere(self, srv: LiveServer, llm: ScriptedLLM, **cfg: Any) -> dict[str, str]:
        """``create`` in a second workspace of the admin (with its own provider credentials)."""
        async with in_other_workspace(self.c, self.admin, srv.ctx.db):
            r = await self.c.post("/console/api/workspaces/current/model-providers/openai-compatible/credentials",
                                  headers=self.admin,
                                  json={"credentials": {"api_key": "sk-x", "api_base": llm.base_url}})
            assert r.status_code == 200, r.text
            return await self.create(**cfg)


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


def local(file_id: str, type_: str = "image") -> dict[str, str]:
    return {"type": type_, "transfer_method": "local_file", "upload_file_id": file_id}


async def send(c: httpx.AsyncClient, h: dict[str, str], files: Any, query: str = "q") -> httpx.Response:
    return await c.post("/v1/chat-messages", headers=h,
                        json={"inputs": {}, "query": query, "user": "u1", "files": files})


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
    # a long name is shortened in its stem: the extension, which decides the type, stays
    r = await upload(c, h, "a" * 300 + ".png", image)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "a" * 251 + ".png" and r.json()["extension"] == "png"
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


async def test_a_failed_upload_leaves_no_object(apps: Apps, fstack: LiveServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    c, h = apps.c, await apps.create()
    tenant = (await upload(c, h, "first.txt", b"first")).json()["tenant_id"]
    store = await fstack.ctx.bus.files()

    async def objects() -> set[str]:
        try:
            infos = await store.list(ignore_deletes=True)
        except nats.js.errors.NotFoundError:
            return set()
        return {i.name for i in infos if i.name.startswith(f"upload/{tenant}/")}

    before = await objects()
    assert before
    db = fstack.ctx.local_apps["runtime"].state.runtime.db
    real = db.session

    @asynccontextmanager
    async def session() -> AsyncIterator[Any]:
        """The runtime's sessions, whose commit of an upload named orphan.txt fails (the database went away)."""
        async with real() as s:
            commit = s.commit

            async def refuse() -> None:
                if any(isinstance(o, UploadFile) and o.name == "orphan.txt" for o in s.new):
                    raise ConnectionResetError("database connection lost")
                await commit()

            s.commit = refuse
            yield s

    monkeypatch.setattr(db, "session", session)
    r = await upload(c, h, "orphan.txt", b"never listed anywhere")
    assert error(r) == (503, "service_unavailable")  # a dependency that is down: refused, retry later
    assert await objects() == before  # the object stored before the failed commit is gone again
    monkeypatch.undo()
    assert (await upload(c, h, "orphan.txt", b"now it works")).status_code == 201


async def test_preview_once_attached_and_workspace_isolation(apps: Apps, fstack: LiveServer,
                                                             llm: ScriptedLLM) -> None:
    c, h = apps.c, await apps.create(**vision_app())
    image = png(3, 3)
    file_id = (await upload(c, h, "grey pic.png", image)).json()["id"]
    # reference §2.13: a file can be previewed only after it is attached to a message
    r = await c.get(f"/v1/files/{file_id}/preview", headers=h, params={"user": "u1"})
    assert error(r) == (403, "file_access_denied"), r.text
    assert (await send(c, h, [local(file_id)])).status_code == 200
    r = await c.get(f"/v1/files/{file_id}/preview", headers=h, params={"user": "u1"})
    assert r.status_code == 200 and r.content == image
    assert r.headers["content-type"] == "image/png" and r.headers["content-disposition"].startswith("inline")
    assert r.headers["x-content-type-options"] == "nosniff"
    r = await c.get(f"/v1/files/{file_id}/preview", headers=h, params={"as_attachment": "true"})
    assert r.status_code == 200 and r.headers["content-disposition"].startswith("attachment")
    assert "grey%20pic.png" in r.headers["content-disposition"] or "grey pic.png" in r.headers["content-disposition"]
    # an app of another workspace, another app of the same workspace, an unknown id, a malformed id
    other = await seed_app(fstack.ctx.db)
    for headers in ({"Authorization": f"Bearer {other.key}"}, await apps.create(),
                    await apps.elsewhere(fstack, llm, **vision_app())):
        assert error(await c.get(f"/v1/files/{file_id}/preview", headers=headers)) == (404, "file_not_found")
    assert error(await c.get(f"/v1/files/{uuid.uuid4()}/preview", headers=h)) == (404, "file_not_found")
    assert error(await c.get("/v1/files/not-a-uuid/preview", headers=h)) == (404, "file_not_found")
    # markup is never rendered on the API's origin
    page = b"<html><body><p>Hello</p><script>alert(1)</script></body></html>"
    page_id = (await upload(c, h, "x.html", page)).json()["id"]
    assert (await send(c, h, [local(page_id, "document")])).status_code == 200
    r = await c.get(f"/v1/files/{page_id}/preview", headers=h)
    assert r.content == page and r.headers["content-type"].startswith("text/html")
    assert "sandbox" in r.headers["content-security-policy"]


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


async def test_files_are_checked_against_the_apps_file_upload_feature(apps: Apps, fstack: LiveServer,
                                                                      llm: ScriptedLLM) -> None:
    c = apps.c
    h = await apps.create(**vision_app())
    img = (await upload(c, h, "p.png", png())).json()["id"]
    doc = (await upload(c, h, "d.txt", b"hello")).json()["id"]

    async def chat(files: Any, headers: dict[str, str] = h) -> httpx.Response:
        return await send(c, headers, files)

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
    # an app of another workspace and another app of this one, both taking images: the upload is not theirs
    for headers in (await apps.elsewhere(fstack, llm, **vision_app()), await apps.create(**vision_app())):
        r = await chat([local(img)], headers)
        assert error(r) == (400, "invalid_param"), r.text
        assert r.json()["message"] == f"files[0]: upload file {img} not found."
    # an app whose file upload is off (Dify's default) and one that allows only local files
    r = await chat([local(img)], await apps.create())
    assert error(r) == (400, "invalid_param") and "not enabled" in r.json()["message"]
    only_local = {**FILE_UPLOAD, "allowed_file_upload_methods": ["local_file"]}
    r = await chat([{"type": "image", "transfer_method": "remote_url", "url": "https://example.com/a.png"}],
                   await apps.create(**vision_app(file_upload=only_local)))
    assert error(r) == (400, "invalid_param") and "remote_url is not allowed" in r.json()["message"]


async def test_document_text_reaches_the_prompt(apps: Apps, fstack: LiveServer, llm: ScriptedLLM) -> None:
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
    # the text is kept per upload: another message with it reads and parses nothing (the bytes are gone now)
    await FileStore(fstack.ctx.bus).delete(f"upload/{up['tenant_id']}/{up['id']}")
    marker = f"again {uuid.uuid4().hex[:6]}"
    r = await send(c, h, [local(up["id"], "document")], marker)
    assert r.status_code == 200, r.text
    assert secret in llm.requests_matching(marker)[-1].messages[-1]["content"]
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

    async def clip(_: Any) -> Response:  # a 2 MB video: within the video limit (100 MB), beyond the others
        return Response(b"\x00\x00\x00\x20ftypisom" + bytes(2 * MB), media_type="video/mp4")

    site = await serve(Starlette(routes=[Route("/notes", notes), Route("/big.png", big), Route("/clip.mp4", clip)]))
    try:
        def remote(url: str, type_: str = "document") -> list[dict[str, str]]:
            return [{"type": type_, "transfer_method": "remote_url", "url": url}]

        # loopback (open to tools, not to file fetches) and metadata addresses are refused before any connection;
        # the client learns nothing about the address, the log has the reason
        with structlog.testing.capture_logs() as logs:
            for url in (f"http://127.0.0.1:{site.port}/notes", "http://169.254.169.254/latest/meta-data"):
                r = await send(c, h, remote(url))
                assert error(r) == (400, "invalid_param"), r.text
                assert r.json()["message"] == "files[0]: the file at this URL cannot be fetched.", r.text
        reasons = " ".join(str(e.get("reason")) for e in logs if e.get("event") == "remote_file_not_fetched")
        assert "loopback" in reasons and "metadata" in reasons
        # an allowlisted host is fetched: its text reaches the prompt, the message keeps the URL
        marker = f"remote {uuid.uuid4().hex[:6]}"
        url = f"http://localhost:{site.port}/notes"
        r = await send(c, h, remote(url), marker)
        assert r.status_code == 200, r.text
        assert served_doc in llm.requests_matching(marker)[-1].messages[-1]["content"]
        msgs = (await c.get("/v1/messages", headers=h, params={"user": "u1",
                                                              "conversation_id": r.json()["conversation_id"]})).json()
        (mf,) = msgs["data"][-1]["message_files"]
        assert mf["transfer_method"] == "remote_url" and mf["url"] == url and mf["upload_file_id"] is None
        assert mf["type"] == "document" and mf["filename"] == "notes.txt" and mf["size"] == len(served_doc)
        # the size limit holds for remote files too
        r = await send(c, h, remote(f"http://localhost:{site.port}/big.png", "image"))
        assert error(r) == (413, "file_too_large")
        # a "custom" file is read no further than the largest limit of what a model takes (1 MB images and
        # documents here), not the video limit
        custom = await apps.create(**vision_app(file_upload={**FILE_UPLOAD, "allowed_file_types": ["custom"]}))
        r = await send(c, custom, remote(f"http://localhost:{site.port}/clip.mp4", "custom"))
        assert error(r) == (413, "file_too_large") and "1 MB" in r.json()["message"], r.text
    finally:
        await site.stop()

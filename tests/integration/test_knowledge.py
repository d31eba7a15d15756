"""The knowledge API end to end through the gateway (`all` stack: real NATS work queue and object store,
the embedded vector engine, the built-in embedding model, SQLite and Postgres): dataset keys, datasets,
documents by text and file, the indexing pipeline, segments, retrieval, and RAG in chat."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
import zipfile
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from sqlmodel import select

from shared.models import ChildChunk
from shared.settings import KnowledgeSettings
from tests.conftest import LiveServer, live_fixture
from tests.support import console_admin, points_of_document, scripted_owner, set_default_model, wait_indexed

MB = 1024 * 1024


kstack = live_fixture("knowledge", "kstack",
                      knowledge=KnowledgeSettings(max_file_bytes=2 * MB, ack_wait=5, requeue_after=2, optimize_after=1))


class KB:
    """A signed-in admin, a dataset key, and helpers to drive the knowledge API."""

    def __init__(self, c: httpx.AsyncClient, admin: dict[str, str], key: str) -> None:
        self.c, self.admin, self.key = c, admin, key
        self.h = {"Authorization": f"Bearer {key}"}

    async def dataset(self, **body: Any) -> dict[str, Any]:
        body.setdefault("name", f"kb-{uuid.uuid4().hex[:10]}")
        r = await self.c.post("/v1/datasets", headers=self.h, json=body)
        assert r.status_code == 200, r.text
        return r.json()

    async def text_doc(self, ds: str, name: str, text: str, **extra: Any) -> dict[str, Any]:
        body = {"name": name, "text": text, "indexing_technique": "high_quality",
                "process_rule": {"mode": "automatic"}, **extra}
        r = await self.c.post(f"/v1/datasets/{ds}/document/create-by-text", headers=self.h, json=body)
        assert r.status_code == 200, r.text
        return r.json()

    async def file_doc(self, ds: str, filename: str, data: bytes, meta: dict | None = None,
                       path: str = "create-by-file") -> httpx.Response:
        meta = meta if meta is not None else {"indexing_technique": "high_quality",
                                              "process_rule": {"mode": "automatic"}}
        return await self.c.post(f"/v1/datasets/{ds}/document/{path}", headers=self.h,
                                 files={"file": (filename, data)}, data={"data": orjson.dumps(meta).decode()})

    async def wait(self, ds: str, batch: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        return await wait_indexed(self.c, "/v1", self.h, ds, batch, timeout)

    async def retrieve(self, ds: str, query: str, **rm: Any) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"query": query}
        if rm:
            body["retrieval_model"] = {"search_method": "semantic_search", "reranking_enable": False,
                                       "top_k": 3, "score_threshold_enabled": False, **rm}
        r = await self.c.post(f"/v1/datasets/{ds}/retrieve", headers=self.h, json=body)
        assert r.status_code == 200, r.text
        assert r.json()["query"] == {"content": query}
        return r.json()["records"]


async def _optimized(kb: KB) -> None:
    """Wait for the indexer's background index build (optimize_after=1 here), so searches run on it."""
    workers = kb.stack.ctx.local_apps["indexer"].state.workers
    deadline = time.monotonic() + 60
    while workers._optimizing is None or not workers._optimizing.done():
        assert time.monotonic() < deadline, "the index build never ran"
        await asyncio.sleep(0.1)
    workers._maybe_optimize()  # spaces that grew meanwhile
    if workers._optimizing is not None:
        await workers._optimizing


@pytest.fixture
async def kb(kstack: LiveServer) -> AsyncIterator[KB]:
    async with httpx.AsyncClient(base_url=kstack.base_url, timeout=60) as c:
        admin = await console_admin(c)
        r = await c.post("/console/api/datasets/api-keys", headers=admin)
        assert r.status_code == 201, r.text
        kb = KB(c, admin, r.json()["token"])
        kb.stack = kstack
        yield kb
        # keys are per workspace (max 10): leave room for the next test
        await c.delete(f"/console/api/datasets/api-keys/{r.json()['id']}", headers=admin)


FAQ = """# Account help

## Resetting a password
To reset your password open Settings, choose Security and press "Forgot password". A link arrives by e-mail.

## Shipping times
Orders inside the EU arrive within 3 to 5 working days. Express shipping takes one day.

## Refund policy
You can return any item within 30 days for a full refund, as long as it is unused.
"""


# ---- keys -------------------------------------------------------------------------------------------


async def test_dataset_keys_are_scoped_to_the_knowledge_api(kb: KB) -> None:
    assert kb.key.startswith("dataset-") and len(kb.key) == len("dataset-") + 24
    r = await kb.c.get("/v1/datasets", headers=kb.h)
    assert r.status_code == 200 and r.json()["page"] == 1
    # a dataset key on an app route, and an app key on a dataset route: 401, as a wrong-type key in Dify
    assert (await kb.c.get("/v1/parameters", headers=kb.h)).status_code == 401
    app = (await kb.c.post("/console/api/apps", headers=kb.admin, json={"name": f"a{time.monotonic_ns()}",
                                                                         "mode": "chat"})).json()
    app_key = (await kb.c.post(f"/console/api/apps/{app['id']}/api-keys", headers=kb.admin)).json()["token"]
    r = await kb.c.get("/v1/datasets", headers={"Authorization": f"Bearer {app_key}"})
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    listed = (await kb.c.get("/console/api/datasets/api-keys", headers=kb.admin)).json()["data"]
    assert all(k["type"] == "dataset" and "…" in k["token"] for k in listed)


async def test_deleted_dataset_key_is_rejected(kb: KB) -> None:
    r = await kb.c.post("/console/api/datasets/api-keys", headers=kb.admin)
    key, key_id = r.json()["token"], r.json()["id"]
    h = {"Authorization": f"Bearer {key}"}
    assert (await kb.c.get("/v1/datasets", headers=h)).status_code == 200
    assert (await kb.c.delete(f"/console/api/datasets/api-keys/{key_id}", headers=kb.admin)).status_code == 204
    deadline, status = time.monotonic() + 1.0, 200
    while time.monotonic() < deadline and status != 401:
        status = (await kb.c.get("/v1/datasets", headers=h)).status_code
        await asyncio.sleep(0.02)
    assert status == 401


# ---- datasets ---------------------------------------------------------------------------------------


async def test_dataset_crud_and_errors(kb: KB) -> None:
    name = f"Manuals {uuid.uuid4().hex[:6]}"
    ds = await kb.dataset(name=name, description="product manuals", indexing_technique="economy")
    assert ds["name"] == name and ds["indexing_technique"] == "economy" and ds["document_count"] == 0
    assert ds["retrieval_model_dict"]["search_method"] == "keyword_search"
    r = await kb.c.post("/v1/datasets", headers=kb.h, json={"name": name})
    assert r.status_code == 409 and r.json()["code"] == "dataset_name_duplicate"
    r = await kb.c.post("/v1/datasets", headers=kb.h, json={"name": "x" * 41})
    assert r.status_code == 400 and r.json()["code"] == "invalid_param"
    r = await kb.c.post("/v1/datasets", headers=kb.h, json={"name": ""})
    assert r.status_code == 400
    r = await kb.c.get("/v1/datasets", headers=kb.h, params={"keyword": name[-6:], "limit": 1})
    body = r.json()
    assert body["total"] == 1 and body["data"][0]["id"] == ds["id"] and body["has_more"] is False
    r = await kb.c.patch(f"/v1/datasets/{ds['id']}", headers=kb.h, json={"description": "v2"})
    assert r.status_code == 200 and r.json()["description"] == "v2" and r.json()["name"] == name
    assert (await kb.c.get(f"/v1/datasets/{ds['id']}", headers=kb.h)).json()["description"] == "v2"
    r = await kb.c.get(f"/v1/datasets/{uuid.uuid4()}", headers=kb.h)
    assert r.status_code == 404 and r.json() == {"code": "not_found", "message": "Dataset not found.",
                                                 "status": 404}
    assert (await kb.c.get("/v1/datasets/not-a-uuid", headers=kb.h)).status_code == 404
    assert (await kb.c.delete(f"/v1/datasets/{ds['id']}", headers=kb.h)).status_code == 204
    assert (await kb.c.get(f"/v1/datasets/{ds['id']}", headers=kb.h)).status_code == 404


async def test_dataset_in_use_cannot_be_deleted(kb: KB, llm) -> None:
    ds = await kb.dataset()
    app = (await kb.c.post("/console/api/apps", headers=kb.admin,
                           json={"name": f"rag{time.monotonic_ns()}", "mode": "chat"})).json()
    cfg = {"model": {"provider": "openai-compatible", "name": "scripted"},
           "dataset_configs": {"retrieval_model": "multiple",
                               "datasets": {"datasets": [{"dataset": {"enabled": True, "id": ds["id"]}}]}}}
    assert (await kb.c.post(f"/console/api/apps/{app['id']}/model-config", headers=kb.admin,
                            json=cfg)).status_code == 200
    r = await kb.c.delete(f"/v1/datasets/{ds['id']}", headers=kb.h)
    assert r.status_code == 409 and r.json()["code"] == "dataset_in_use"
    assert (await kb.c.get(f"/v1/datasets/{ds['id']}", headers=kb.h)).json()["app_count"] == 1
    use = f"/console/api/datasets/{ds['id']}/use-check"  # the console's check says so too
    assert (await kb.c.get(use, headers=kb.admin)).json() == {"is_using": True}
    # an unknown dataset in a model config is refused by the console
    cfg["dataset_configs"]["datasets"]["datasets"][0]["dataset"]["id"] = str(uuid.uuid4())
    r = await kb.c.post(f"/console/api/apps/{app['id']}/model-config", headers=kb.admin, json=cfg)
    assert r.status_code == 400 and r.json()["code"] == "invalid_param"
    assert (await kb.c.delete(f"/console/api/apps/{app['id']}", headers=kb.admin)).status_code == 204
    assert (await kb.c.get(use, headers=kb.admin)).json() == {"is_using": False}
    assert (await kb.c.delete(f"/v1/datasets/{ds['id']}", headers=kb.h)).status_code == 204


# ---- documents and the pipeline -----------------------------------------------------------------------


async def test_text_document_indexes_with_stage_timestamps(kb: KB) -> None:
    ds = await kb.dataset()
    created = await kb.text_doc(ds["id"], "faq", FAQ)
    doc, batch = created["document"], created["batch"]
    assert doc["indexing_status"] == "waiting" and doc["display_status"] == "queuing"
    assert doc["name"] == "faq.txt" and len(batch) == 20 and batch.isdigit()
    (st,) = await kb.wait(ds["id"], batch)
    assert st["indexing_status"] == "completed", st
    assert st["total_segments"] > 0 and st["completed_segments"] == st["total_segments"]
    stamps = [st[k] for k in ("processing_started_at", "parsing_completed_at", "cleaning_completed_at",
                              "splitting_completed_at", "completed_at")]
    assert all(isinstance(x, float) for x in stamps) and stamps == sorted(stamps)
    got = (await kb.c.get(f"/v1/datasets/{ds['id']}/documents/{doc['id']}", headers=kb.h)).json()
    assert got["display_status"] == "available" and got["word_count"] > 0
    listed = (await kb.c.get(f"/v1/datasets/{ds['id']}/documents", headers=kb.h)).json()
    assert listed["total"] == 1 and listed["data"][0]["id"] == doc["id"]
    detail = (await kb.c.get(f"/v1/datasets/{ds['id']}", headers=kb.h)).json()
    assert detail["document_count"] == 1 and detail["indexing_technique"] == "high_quality"
    assert detail["embedding_model_provider"] == "plexus"
    r = await kb.c.get(f"/v1/datasets/{ds['id']}/documents/20990101000000000000/indexing-status", headers=kb.h)
    assert r.status_code == 404 and r.json()["message"] == "Documents not found."


async def test_retrieval_methods(kb: KB) -> None:
    ds = await kb.dataset()
    created = await kb.text_doc(ds["id"], "faq", FAQ,
                                process_rule={"mode": "custom", "rules": {
                                    "pre_processing_rules": [{"id": "remove_extra_spaces", "enabled": True}],
                                    "segmentation": {"separator": "##", "max_tokens": 100, "chunk_overlap": 0}}})
    await kb.wait(ds["id"], created["batch"])
    await _optimized(kb)
    for method in ("semantic_search", "full_text_search", "hybrid_search"):
        recs = await kb.retrieve(ds["id"], "how long does shipping take", search_method=method)
        assert recs, method
        assert "working days" in recs[0]["segment"]["content"], (method, recs[0]["segment"]["content"])
        assert recs[0]["segment"]["document"]["name"] == "faq.txt"
        assert 0 <= recs[0]["score"] <= 1
    recs = await kb.retrieve(ds["id"], "refund", search_method="hybrid_search",
                             weights={"vector_setting": {"vector_weight": 0.3}, "keyword_setting": {"keyword_weight": 0.7}})
    assert "refund" in recs[0]["segment"]["content"]
    # top_k and score threshold
    assert len(await kb.retrieve(ds["id"], "password", top_k=1)) == 1
    assert await kb.retrieve(ds["id"], "password", score_threshold_enabled=True, score_threshold=0.99) == []
    # the dataset default applies without a retrieval_model (alias path too)
    r = await kb.c.post(f"/v1/datasets/{ds['id']}/hit-testing", headers=kb.h, json={"query": "reset my password"})
    assert r.status_code == 200 and "password" in r.json()["records"][0]["segment"]["content"]
    r = await kb.c.post(f"/v1/datasets/{ds['id']}/retrieve", headers=kb.h, json={"query": "x" * 251})
    assert r.status_code == 400 and r.json()["code"] == "invalid_param"


async def test_economy_dataset_and_chinese_full_text(kb: KB) -> None:
    ds = await kb.dataset(indexing_technique="economy")
    text = ("北京大学是中国著名的高等学府，位于北京市海淀区。\n\n"
            "人工智能是计算机科学的一个分支，研究如何让机器具有智能。\n\n"
            "长城是中国古代的军事防御工程，绵延数千公里。")
    created = await kb.text_doc(ds["id"], "zh", text, indexing_technique="economy",
                                process_rule={"mode": "custom", "rules": {
                                    "pre_processing_rules": [], "segmentation": {"separator": "\\n\\n",
                                                                                "max_tokens": 60}}})
    (st,) = await kb.wait(ds["id"], created["batch"])
    assert st["indexing_status"] == "completed" and st["total_segments"] == 3
    recs = await kb.retrieve(ds["id"], "人工智能", search_method="keyword_search")
    assert recs and "人工智能" in recs[0]["segment"]["content"]
    recs = await kb.retrieve(ds["id"], "长城在哪里", search_method="semantic_search")  # economy: keyword only
    assert recs and "长城" in recs[0]["segment"]["content"]


async def test_disable_and_archive_remove_from_retrieval_at_once(kb: KB) -> None:
    ds = await kb.dataset()
    created = await kb.text_doc(ds["id"], "faq", FAQ)
    await kb.wait(ds["id"], created["batch"])
    doc_id = created["document"]["id"]
    assert await kb.retrieve(ds["id"], "refund policy")
    for action, visible in (("disable", False), ("enable", True), ("archive", False), ("un_archive", True)):
        r = await kb.c.patch(f"/v1/datasets/{ds['id']}/documents/status/{action}", headers=kb.h,
                             json={"document_ids": [doc_id]})
        assert r.status_code == 200 and r.json() == {"result": "success"}
        assert bool(await kb.retrieve(ds["id"], "refund policy")) is visible, action
    r = await kb.c.patch(f"/v1/datasets/{ds['id']}/documents/status/explode", headers=kb.h,
                         json={"document_ids": [doc_id]})
    assert r.status_code == 400 and r.json()["code"] == "invalid_action"


async def test_segments_crud_reembeds_and_toggles(kb: KB) -> None:
    ds = await kb.dataset()
    created = await kb.text_doc(ds["id"], "faq", FAQ)
    await kb.wait(ds["id"], created["batch"])
    base = f"/v1/datasets/{ds['id']}/documents/{created['document']['id']}/segments"
    r = await kb.c.post(base, headers=kb.h, json={"segments": [{"content": "Our office cat is named Biscuit."}]})
    assert r.status_code == 200, r.text
    seg = r.json()["data"][0]
    assert seg["status"] == "completed" and seg["enabled"] and r.json()["doc_form"] == "text_model"
    recs = await kb.retrieve(ds["id"], "what is the cat called")
    assert recs[0]["segment"]["id"] == seg["id"]
    listed = (await kb.c.get(base, headers=kb.h, params={"keyword": "Biscuit"})).json()
    assert listed["total"] == 1 and listed["data"][0]["id"] == seg["id"]
    assert (await kb.c.get(f"{base}/{seg['id']}", headers=kb.h)).json()["data"]["content"].endswith("Biscuit.")
    r = await kb.c.post(f"{base}/{seg['id']}", headers=kb.h,
                        json={"segment": {"content": "The office dog is named Pretzel."}})
    assert r.status_code == 200 and "Pretzel" in r.json()["data"]["content"]
    recs = await kb.retrieve(ds["id"], "what is the dog called", search_method="full_text_search")
    assert recs[0]["segment"]["id"] == seg["id"] and "Pretzel" in recs[0]["segment"]["content"]
    r = await kb.c.post(f"{base}/{seg['id']}", headers=kb.h, json={"segment": {"enabled": False}})
    assert r.status_code == 200 and r.json()["data"]["enabled"] is False
    assert all(x["segment"]["id"] != seg["id"] for x in await kb.retrieve(ds["id"], "Pretzel dog"))
    r = await kb.c.delete(f"{base}/{seg['id']}", headers=kb.h)
    assert r.status_code == 200 and r.json() == {"result": "success"}
    assert (await kb.c.get(f"{base}/{seg['id']}", headers=kb.h)).status_code == 404
    r = await kb.c.post(base, headers=kb.h, json={"segments": [{"content": ""}]})
    assert r.status_code == 400


async def test_update_by_text_reindexes_without_stale_chunks(kb: KB) -> None:
    ds = await kb.dataset()
    created = await kb.text_doc(ds["id"], "notes", "Zebras are striped horses of Africa.")
    await kb.wait(ds["id"], created["batch"])
    doc_id = created["document"]["id"]
    r = await kb.c.post(f"/v1/datasets/{ds['id']}/documents/{doc_id}/update_by_text", headers=kb.h,
                        json={"name": "notes", "text": "Penguins are flightless birds of Antarctica."})
    assert r.status_code == 200, r.text
    (st,) = await kb.wait(ds["id"], r.json()["batch"])
    assert st["indexing_status"] == "completed"
    recs = await kb.retrieve(ds["id"], "zebra stripes", search_method="full_text_search")
    assert recs == []
    recs = await kb.retrieve(ds["id"], "penguins", search_method="full_text_search")
    assert len(recs) == 1 and "Antarctica" in recs[0]["segment"]["content"]
    segs = (await kb.c.get(f"/v1/datasets/{ds['id']}/documents/{doc_id}/segments", headers=kb.h)).json()
    assert segs["total"] == 1
    r = await kb.c.delete(f"/v1/datasets/{ds['id']}/documents/{doc_id}", headers=kb.h)
    assert r.status_code == 200 and r.json() == {"result": "success"}
    assert await kb.retrieve(ds["id"], "penguins", search_method="full_text_search") == []


async def test_files_index_and_bad_files_are_refused(kb: KB) -> None:
    from docx import Document as Docx
    from fpdf import FPDF
    from pypdf import PdfReader, PdfWriter

    ds = await kb.dataset()
    d = Docx()
    d.add_heading("Warranty", level=1)
    d.add_paragraph("Every kettle has a two year warranty covering the heating element.")
    buf = io.BytesIO()
    d.save(buf)
    pdf = FPDF()
    for i in range(3):
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.multi_cell(0, 8, f"Page {i + 1}: the descaling procedure uses citric acid and warm water.")
    pdf_bytes = bytes(pdf.output())
    batches = []
    for name, data in (("manual.docx", buf.getvalue()), ("guide.pdf", pdf_bytes),
                       ("readme.md", b"# Setup\n\nPlug the kettle into a grounded socket.\n")):
        r = await kb.file_doc(ds["id"], name, data)
        assert r.status_code == 200, r.text
        assert r.json()["document"]["data_source_info"]["upload_file_id"]
        batches.append(r.json()["batch"])
    for b in batches:
        (st,) = await kb.wait(ds["id"], b)
        assert st["indexing_status"] == "completed", st
    recs = await kb.retrieve(ds["id"], "warranty for the heating element", search_method="hybrid_search")
    assert recs[0]["segment"]["document"]["name"] == "manual.docx"
    recs = await kb.retrieve(ds["id"], "citric acid descaling", search_method="full_text_search")
    assert recs[0]["segment"]["document"]["name"] == "guide.pdf"
    # a lying extension, an unknown one, and one over the size limit
    r = await kb.file_doc(ds["id"], "photo.pdf", b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    assert r.status_code == 415 and r.json()["code"] == "unsupported_file_type"
    r = await kb.file_doc(ds["id"], "tool.exe", b"MZ\x90\x00" + b"\0" * 100)
    assert r.status_code == 415 and r.json()["code"] == "unsupported_file_type"
    r = await kb.file_doc(ds["id"], "big.txt", b"a" * (2 * MB + 1))
    assert r.status_code == 413 and r.json()["code"] == "file_too_large"
    r = await kb.c.post(f"/v1/datasets/{ds['id']}/document/create_by_file", headers=kb.h,
                        data={"data": "{}"}, files={"other": ("x.txt", b"x")})
    assert r.status_code == 400 and r.json()["code"] == "no_file_uploaded"
    # an encrypted PDF is accepted, then ends in `error` with a readable reason (never a stuck document)
    w = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_bytes)))
    w.encrypt("secret-password")
    enc = io.BytesIO()
    w.write(enc)
    r = await kb.file_doc(ds["id"], "locked.pdf", enc.getvalue())
    assert r.status_code == 200, r.text
    (st,) = await kb.wait(ds["id"], r.json()["batch"])
    assert st["indexing_status"] == "error" and "encrypted" in st["error"].lower()
    # a zip bomb dressed as .docx (600 MB of zeros, ~600 KB packed) and a damaged docx: `error`, not a crash
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("word/document.xml", "w", force_zip64=True) as member:
            for _ in range(600):
                member.write(bytes(MB))
    for name, data, words in (("bomb.docx", bomb.getvalue(), "zip bomb"),
                              ("broken.docx", buf.getvalue()[: len(buf.getvalue()) // 2], "damaged")):
        r = await kb.file_doc(ds["id"], name, data)
        assert r.status_code == 200, r.text
        (st,) = await kb.wait(ds["id"], r.json()["batch"])
        assert st["indexing_status"] == "error" and words in st["error"], st
    # the worker survived all of it
    r = await kb.file_doc(ds["id"], "after.md", b"# After\n\nStill indexing fine.\n")
    (st,) = await kb.wait(ds["id"], r.json()["batch"])
    assert st["indexing_status"] == "completed"


async def test_process_rule_errors(kb: KB) -> None:
    ds = await kb.dataset()
    url = f"/v1/datasets/{ds['id']}/document/create-by-text"
    cases = [
        ({"indexing_technique": "high_quality"}, "process_rule is required."),
        ({"indexing_technique": "high_quality", "process_rule": {"mode": "magic"}}, "Process rule mode is invalid"),
        ({"indexing_technique": "high_quality", "process_rule": {"mode": "custom"}},
         "Process rule rules is required"),
        ({"process_rule": {"mode": "automatic"}}, "indexing_technique is required."),
    ]
    for extra, message in cases:
        r = await kb.c.post(url, headers=kb.h, json={"name": "n", "text": "t", **extra})
        assert r.status_code == 400, (extra, r.text)
        assert r.json()["code"] == "invalid_param" and r.json()["message"] == message, r.json()
    r = await kb.c.post(url, headers=kb.h, content=b"not json", )
    assert r.status_code == 400 and r.json()["code"] == "bad_request"


# ---- RAG in chat ----------------------------------------------------------------------------------------


async def test_chat_answers_from_linked_dataset_with_citations(kb: KB, llm) -> None:
    ds = await kb.dataset()
    created = await kb.text_doc(ds["id"], "faq", FAQ)
    await kb.wait(ds["id"], created["batch"])
    r = await kb.c.post("/console/api/workspaces/current/model-providers/openai-compatible/credentials",
                        headers=kb.admin, json={"credentials": {"api_key": "sk-x", "api_base": llm.base_url}})
    assert r.status_code == 200
    app = (await kb.c.post("/console/api/apps", headers=kb.admin,
                           json={"name": f"support{time.monotonic_ns()}", "mode": "chat"})).json()
    cfg = {"model": {"provider": "openai-compatible", "name": "scripted"},
           "pre_prompt": "You are the shop's assistant.",
           "dataset_configs": {"retrieval_model": "multiple", "top_k": 2,
                               "datasets": {"datasets": [{"dataset": {"enabled": True, "id": ds["id"]}}]}}}
    assert (await kb.c.post(f"/console/api/apps/{app['id']}/model-config", headers=kb.admin,
                            json=cfg)).status_code == 200
    key = (await kb.c.post(f"/console/api/apps/{app['id']}/api-keys", headers=kb.admin)).json()["token"]
    ah = {"Authorization": f"Bearer {key}"}
    q = f"How many days do I have for a refund? {uuid.uuid4().hex[:6]}"
    r = await kb.c.post("/v1/chat-messages", headers=ah, json={"inputs": {}, "query": q, "user": "u1",
                                                                 "response_mode": "streaming"})
    assert r.status_code == 200
    events = [orjson.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    end = events[-1]
    assert end["event"] == "message_end", end
    res = end["metadata"]["retriever_resources"]
    assert 1 <= len(res) <= 2 and "30 days" in res[0]["content"]
    for f in ("position", "dataset_id", "dataset_name", "document_id", "document_name", "segment_id", "score",
              "content"):
        assert res[0][f] is not None, f
    assert res[0]["position"] == 1 and res[0]["dataset_id"] == ds["id"] and isinstance(res[0]["score"], float)
    system = llm.requests_matching(q)[-1].messages[0]["content"]
    assert "30 days" in system and "You are the shop's assistant." in system
    msgs = (await kb.c.get("/v1/messages", headers=ah, params={"user": "u1",
                                                                "conversation_id": end["conversation_id"]})).json()
    assert msgs["data"][-1]["retriever_resources"][0]["segment_id"] == res[0]["segment_id"]
    r = await kb.c.post("/v1/chat-messages", headers=ah, json={"inputs": {}, "query": "shipping " + q,
                                                                 "user": "u1", "response_mode": "blocking"})
    assert r.status_code == 200 and r.json()["metadata"]["retriever_resources"], r.text


async def test_provider_embeddings_and_giving_up_after_max_attempts(kb: KB, llm) -> None:
    r = await kb.c.post("/console/api/workspaces/current/model-providers/openai-compatible/credentials",
                        headers=kb.admin, json={"credentials": {"api_key": "sk-x", "api_base": llm.base_url}})
    assert r.status_code == 200
    ds = await kb.dataset(indexing_technique="high_quality", embedding_model_provider="openai-compatible",
                          embedding_model="trigram-embed")
    assert ds["embedding_model_provider"] == "openai-compatible"
    before = len(llm.embedding_requests)
    created = await kb.text_doc(ds["id"], "faq", FAQ)
    (st,) = await kb.wait(ds["id"], created["batch"])
    assert st["indexing_status"] == "completed", st
    assert len(llm.embedding_requests) > before  # the workspace's provider embedded it, not the built-in model
    recs = await kb.retrieve(ds["id"], "refund policy for unused items")
    assert recs and "refund" in recs[0]["segment"]["content"]
    # the provider fails every time: the document ends in `error` with the reason after max_attempts (3)
    marker = f"poison-{uuid.uuid4().hex[:8]}"
    llm.push(endpoint="embeddings", match=marker, status=500, body={"error": {"message": "embedder down"}},
             times=100)
    try:
        created = await kb.text_doc(ds["id"], "bad", f"{marker} cannot be embedded today.")
        (st,) = await kb.wait(ds["id"], created["batch"], timeout=90)
    finally:
        llm.scripts[:] = [s for s in llm.scripts if s.match != marker]
    assert st["indexing_status"] == "error", st
    assert "Gave up after 3 attempts" in st["error"] and st["stopped_at"]
    r = await kb.c.post("/v1/datasets", headers=kb.h, json={"name": f"x{uuid.uuid4().hex[:6]}",
                                                             "indexing_technique": "high_quality",
                                                             "embedding_model_provider": "anthropic",
                                                             "embedding_model": "none"})
    assert r.status_code == 400 and r.json()["code"] == "provider_not_initialize"


async def test_workspace_default_embedding_model(kb: KB, llm) -> None:
    """A high-quality dataset that names no embedding model gets the workspace's default text-embedding model
    (Dify's choice), or the built-in one when none is set."""
    admin = await scripted_owner(kb.c, llm)

    async def set_default(model: str | None) -> None:
        await set_default_model(kb.c, admin, "text-embedding", model)

    models = "/v1/workspaces/current/models/model-types/text-embedding"
    listed = (await kb.c.get(models, headers=kb.h)).json()["data"]
    assert [(p["provider"], p["models"][0]["model"]) for p in listed] == [("plexus", "all-MiniLM-L6-v2")]
    await set_default("trigram-default")
    try:
        # the default is offered first, beside the built-in model
        listed = (await kb.c.get(models, headers=kb.h)).json()["data"]
        assert [(p["provider"], p["models"][0]["model"]) for p in listed] == [
            ("openai-compatible", "trigram-default"), ("plexus", "all-MiniLM-L6-v2")]
        assert listed[0]["models"][0]["model_type"] == "text-embedding"
        # the console's route (the web console's model pickers) answers the same for a member
        r = await kb.c.get(f"/console/api{models.removeprefix('/v1')}", headers=kb.admin)
        assert r.status_code == 200 and r.json()["data"] == listed, r.text
        r = await kb.c.get("/console/api/workspaces/current/models/model-types/llm", headers=kb.admin)
        assert r.status_code == 200 and r.json() == {"data": []}, r.text  # no default llm set here
        for url, h in (("/console/api/workspaces/current/models/model-types/robot", kb.admin),
                       ("/v1/workspaces/current/models/model-types/robot", kb.h)):
            r = await kb.c.get(url, headers=h)
            assert r.status_code == 400 and r.json()["code"] == "invalid_param", r.text
        ds = await kb.dataset(indexing_technique="high_quality")
        assert (ds["embedding_model_provider"], ds["embedding_model"]) == ("openai-compatible", "trigram-default")
        before = len(llm.embedding_requests)
        created = await kb.text_doc(ds["id"], "faq", FAQ)
        (st,) = await kb.wait(ds["id"], created["batch"])
        assert st["indexing_status"] == "completed", st
        assert [q.body["model"] for q in llm.embedding_requests[before:]][:1] == ["trigram-default"]
        # an economy dataset switched to high_quality without a model: the default too
        eco = await kb.dataset(indexing_technique="economy")
        r = await kb.c.patch(f"/v1/datasets/{eco['id']}", headers=kb.h, json={"indexing_technique": "high_quality"})
        assert r.status_code == 200, r.text
        assert (r.json()["embedding_model_provider"], r.json()["embedding_model"]) == (
            "openai-compatible", "trigram-default")
        # a model named wins over the default
        named = await kb.dataset(indexing_technique="high_quality", embedding_model_provider="openai-compatible",
                                 embedding_model="trigram-embed")
        assert named["embedding_model"] == "trigram-embed"
    finally:
        await set_default(None)
    plain = await kb.dataset(indexing_technique="high_quality")
    assert plain["embedding_model_provider"] == "plexus"


async def test_metadata_fields_values_and_filtered_retrieval(kb: KB) -> None:
    ds = await kb.dataset()
    base = f"/v1/datasets/{ds['id']}"
    docs = []
    for name, text in (("en", "Kettles boil water quickly."), ("de", "Kettles boil water quietly.")):
        created = await kb.text_doc(ds["id"], name, text)
        await kb.wait(ds["id"], created["batch"])
        docs.append(created["document"]["id"])
    lang = (await kb.c.post(f"{base}/metadata", headers=kb.h, json={"type": "string", "name": "lang"})).json()
    year = (await kb.c.post(f"{base}/metadata", headers=kb.h, json={"type": "number", "name": "year"})).json()
    assert lang["name"] == "lang" and lang["type"] == "string"
    r = await kb.c.post(f"{base}/metadata", headers=kb.h, json={"type": "string", "name": "lang"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_metadata"
    r = await kb.c.post(f"{base}/documents/metadata", headers=kb.h, json={"operation_data": [
        {"document_id": docs[0], "metadata_list": [{"id": lang["id"], "name": "lang", "value": "en"},
                                                   {"id": year["id"], "name": "year", "value": "2021"}]},
        {"document_id": docs[1], "metadata_list": [{"id": lang["id"], "name": "lang", "value": "de"},
                                                   {"id": year["id"], "name": "year", "value": 2024}]}]})
    assert r.status_code == 200, r.text
    got = (await kb.c.get(f"{base}/documents/{docs[0]}", headers=kb.h)).json()
    assert got["doc_metadata"] == {"lang": "en", "year": 2021}
    listed = (await kb.c.get(f"{base}/metadata", headers=kb.h)).json()
    assert {m["name"]: m["use_count"] for m in listed["doc_metadata"]} == {"lang": 2, "year": 2}

    async def filtered(*conditions: dict, logic: str = "and") -> set[str]:
        recs = await kb.retrieve(ds["id"], "kettles boil water", top_k=5, metadata_filtering_conditions={
            "logical_operator": logic, "conditions": list(conditions)})
        return {x["segment"]["document"]["id"] for x in recs}

    assert await filtered({"name": "lang", "comparison_operator": "is", "value": "de"}) == {docs[1]}
    assert await filtered({"name": "year", "comparison_operator": "<", "value": 2022}) == {docs[0]}
    assert await filtered({"name": "lang", "comparison_operator": "is", "value": "fr"},
                          {"name": "year", "comparison_operator": ">", "value": 2023}, logic="or") == {docs[1]}
    # renaming a field renames it on the documents (and in the vector store, which the filter reads)
    r = await kb.c.patch(f"{base}/metadata/{lang['id']}", headers=kb.h, json={"name": "language"})
    assert r.status_code == 200 and r.json()["name"] == "language"
    assert await filtered({"name": "language", "comparison_operator": "is", "value": "en"}) == {docs[0]}
    assert await filtered({"name": "lang", "comparison_operator": "is", "value": "en"}) == set()
    assert (await kb.c.delete(f"{base}/metadata/{year['id']}", headers=kb.h)).status_code == 200
    got = (await kb.c.get(f"{base}/documents/{docs[1]}", headers=kb.h)).json()
    assert got["doc_metadata"] == {"language": "de"}
    # built-in fields
    fields = (await kb.c.get(f"{base}/metadata/built-in", headers=kb.h)).json()["fields"]
    assert {"name": "document_name", "type": "string"} in fields
    assert (await kb.c.post(f"{base}/metadata/built-in/enable", headers=kb.h)).status_code == 200
    got = (await kb.c.get(f"{base}/documents/{docs[1]}", headers=kb.h)).json()
    assert got["doc_metadata"]["document_name"] == "de.txt" and got["doc_metadata"]["language"] == "de"
    assert await filtered({"name": "document_name", "comparison_operator": "start with", "value": "en"}) == {docs[0]}


# ---- parent-child (hierarchical_model) --------------------------------------------------------------

PARENT_CHILD_RULE = {"mode": "hierarchical", "rules": {
    "pre_processing_rules": [{"id": "remove_extra_spaces", "enabled": True}],
    "segmentation": {"separator": "\\n\\n", "max_tokens": 500}, "parent_mode": "paragraph",
    "subchunk_segmentation": {"separator": "\\n", "max_tokens": 60}}}
SHOP = ("Kettles\nOur kettles boil a litre of water in ninety seconds.\nEvery kettle has a blue light.\n\n"
        "Returns\nYou can return any item within 30 days for a full refund.\nKeep the receipt for returns.")


async def test_parent_child_documents_are_searched_by_child_and_answer_with_the_parent(kb: KB) -> None:
    ds = await kb.dataset()
    created = await kb.text_doc(ds["id"], "shop", SHOP, process_rule=PARENT_CHILD_RULE)
    assert created["document"]["doc_form"] == "hierarchical_model"  # implied by the rule
    await kb.wait(ds["id"], created["batch"])
    doc_id = created["document"]["id"]
    detail = (await kb.c.get(f"/v1/datasets/{ds['id']}", headers=kb.h)).json()
    assert detail["doc_form"] == "hierarchical_model"
    segs = (await kb.c.get(f"/v1/datasets/{ds['id']}/documents/{doc_id}/segments", headers=kb.h)).json()
    assert segs["doc_form"] == "hierarchical_model" and segs["total"] == 2
    kettles, returns = segs["data"]
    assert [c["content"] for c in returns["child_chunks"]] == [
        "Returns", "You can return any item within 30 days for a full refund.", "Keep the receipt for returns."]
    assert {c["segment_id"] for c in returns["child_chunks"]} == {returns["id"]}
    assert [c["position"] for c in kettles["child_chunks"]] == [1, 2, 3]
    for method in ("semantic_search", "full_text_search", "hybrid_search"):
        recs = await kb.retrieve(ds["id"], "refund within 30 days", search_method=method)
        # the record is the whole parent; the children that matched come with their scores
        assert recs[0]["segment"]["id"] == returns["id"], method
        assert recs[0]["segment"]["content"] == returns["content"]
        matched = recs[0]["child_chunks"]
        assert matched[0]["content"] == "You can return any item within 30 days for a full refund.", method
        assert recs[0]["score"] == matched[0]["score"] == max(c["score"] for c in matched)
        assert set(matched[0]) == {"id", "content", "position", "score"}
        assert len({r["segment"]["id"] for r in recs}) == len(recs)  # one record per parent
    # top_k counts parents
    assert len(await kb.retrieve(ds["id"], "kettle returns", search_method="full_text_search", top_k=1)) == 1
    # a second document of another form is refused; an explicit form must match the rule
    r = await kb.c.post(f"/v1/datasets/{ds['id']}/document/create-by-text", headers=kb.h,
                        json={"name": "x", "text": "y", "process_rule": {"mode": "automatic"}})
    assert r.status_code == 400 and "doc_form" in r.json()["message"], r.text
    r = await kb.c.post(f"/v1/datasets/{ds['id']}/document/create-by-text", headers=kb.h,
                        json={"name": "x", "text": "y", "doc_form": "text_model", "process_rule": PARENT_CHILD_RULE})
    assert r.status_code == 400 and r.json()["code"] == "invalid_param", r.text
    other = await kb.dataset()
    for body, message in (({"doc_form": "hierarchical_model", "process_rule": {"mode": "automatic"}},
                           'doc_form "hierarchical_model"'),
                          ({"doc_form": "tree_model", "process_rule": {"mode": "automatic"}}, "doc_form is invalid")):
        r = await kb.c.post(f"/v1/datasets/{other['id']}/document/create-by-text", headers=kb.h,
                            json={"name": "x", "text": "y", "indexing_technique": "high_quality", **body})
        assert r.status_code == 400 and message in r.json()["message"], r.text
    # re-indexing replaces the children: nothing of the old text is found afterwards
    r = await kb.c.post(f"/v1/datasets/{ds['id']}/documents/{doc_id}/update-by-text", headers=kb.h,
                        json={"text": "Teapots\nOur teapots are made of glass."})
    assert r.status_code == 200, r.text
    await kb.wait(ds["id"], r.json()["batch"])
    assert await kb.retrieve(ds["id"], "refund receipt", search_method="full_text_search") == []
    (rec,) = await kb.retrieve(ds["id"], "glass teapots", search_method="full_text_search")
    assert rec["child_chunks"][0]["content"] == "Our teapots are made of glass."
    assert await points_of_document(kb.stack, ds["id"], doc_id) == 2
    # a deleted document takes its children and their points along
    assert (await kb.c.delete(f"/v1/datasets/{ds['id']}/documents/{doc_id}", headers=kb.h)).status_code == 200
    assert await points_of_document(kb.stack, ds["id"], doc_id) == 0
    async with kb.stack.ctx.db.session() as s:
        assert (await s.exec(select(ChildChunk).where(ChildChunk.document_id == doc_id))).first() is None


async def children_total(kb: KB, base: str) -> int:
    segs = (await kb.c.get(base, headers=kb.h, params={"limit": 100})).json()["data"]
    return sum(len(g["child_chunks"]) for g in segs)


async def test_child_chunks_crud_and_segment_edits(kb: KB) -> None:
    ds = await kb.dataset()
    created = await kb.text_doc(ds["id"], "shop", SHOP, process_rule=PARENT_CHILD_RULE)
    await kb.wait(ds["id"], created["batch"])
    doc_id = created["document"]["id"]
    seg_base = f"/v1/datasets/{ds['id']}/documents/{doc_id}/segments"
    kettles = (await kb.c.get(seg_base, headers=kb.h)).json()["data"][0]
    base = f"{seg_base}/{kettles['id']}/child_chunks"
    page = (await kb.c.get(base, headers=kb.h, params={"limit": 2, "page": 2})).json()
    assert (page["total"], page["total_pages"], page["page"], page["limit"]) == (3, 2, 2, 2)
    assert [c["content"] for c in page["data"]] == ["Every kettle has a blue light."]
    found = (await kb.c.get(base, headers=kb.h, params={"keyword": "litre"})).json()
    assert found["total"] == 1 and found["data"][0]["type"] == "automatic"

    async def hits(q: str) -> list[str]:
        recs = await kb.retrieve(ds["id"], q, search_method="full_text_search")
        return [c["content"] for r in recs for c in r["child_chunks"]]

    # added: searchable at once, under its parent
    r = await kb.c.post(base, headers=kb.h, json={"content": "Kettle lids are dishwasher safe."})
    assert r.status_code == 200, r.text
    child = r.json()["data"]
    assert (child["segment_id"], child["position"], child["type"]) == (kettles["id"], 4, "customized")
    assert "Kettle lids are dishwasher safe." in await hits("dishwasher lids")
    # edited: the old text is gone from the index, the new one is there
    r = await kb.c.patch(f"{base}/{child['id']}", headers=kb.h, json={"content": "Kettle lids are oven safe."})
    assert r.status_code == 200 and r.json()["data"]["content"] == "Kettle lids are oven safe."
    assert await hits("dishwasher") == [] and "Kettle lids are oven safe." in await hits("oven lids")
    # deleted: 204, gone from the index and the list
    r = await kb.c.delete(f"{base}/{child['id']}", headers=kb.h)
    assert r.status_code == 204
    assert await hits("oven") == [] and (await kb.c.get(base, headers=kb.h)).json()["total"] == 3
    for method, url in (("PATCH", f"{base}/{child['id']}"), ("DELETE", f"{base}/{child['id']}"),
                        ("PATCH", f"{base}/not-an-id")):
        r = await kb.c.request(method, url, headers=kb.h, json={"content": "x"})
        assert r.status_code == 404 and r.json()["message"] == "Child chunk not found.", (method, url)
    r = await kb.c.post(base, headers=kb.h, json={"content": "  "})
    assert r.status_code == 400 and r.json()["code"] == "invalid_param"
    # a disabled parent takes its children out of retrieval
    r = await kb.c.post(f"{seg_base}/{kettles['id']}", headers=kb.h, json={"segment": {"enabled": False}})
    assert r.status_code == 200 and r.json()["data"]["enabled"] is False
    assert await hits("blue light kettle") == []
    r = await kb.c.post(f"{seg_base}/{kettles['id']}", headers=kb.h, json={"segment": {"enabled": True}})
    assert "Every kettle has a blue light." in await hits("blue light kettle")
    # new parent text keeps its children unless they are regenerated from it
    r = await kb.c.post(f"{seg_base}/{kettles['id']}", headers=kb.h,
                        json={"segment": {"content": "Kettles\nThe steel kettle whistles."}})
    assert r.status_code == 200 and len(r.json()["data"]["child_chunks"]) == 3
    assert "Every kettle has a blue light." in await hits("blue light kettle")
    r = await kb.c.post(f"{seg_base}/{kettles['id']}", headers=kb.h,
                        json={"segment": {"content": "Kettles\nThe steel kettle whistles.",
                                          "regenerate_child_chunks": True}})
    assert [c["content"] for c in r.json()["data"]["child_chunks"]] == ["Kettles", "The steel kettle whistles."]
    assert await hits("blue light") == [] and "The steel kettle whistles." in await hits("steel whistles")
    # added parents get children from the document's rule
    r = await kb.c.post(seg_base, headers=kb.h, json={"segments": [{"content": "Mugs\nMugs hold 300 ml."}]})
    assert r.status_code == 200, r.text
    assert [c["content"] for c in r.json()["data"][0]["child_chunks"]] == ["Mugs", "Mugs hold 300 ml."]
    assert "Mugs hold 300 ml." in await hits("mugs ml")
    assert await points_of_document(kb.stack, ds["id"], doc_id) == await children_total(kb, seg_base) == 7
    # deleting a parent deletes its children's points
    r = await kb.c.delete(f"{seg_base}/{r.json()['data'][0]['id']}", headers=kb.h)
    assert r.status_code == 200 and await hits("mugs ml") == []
    assert await points_of_document(kb.stack, ds["id"], doc_id) == await children_total(kb, seg_base) == 5
    # child chunks belong to parent-child documents only
    text_ds = await kb.dataset()
    plain = await kb.text_doc(text_ds["id"], "faq", FAQ)
    await kb.wait(text_ds["id"], plain["batch"])
    plain_base = f"/v1/datasets/{text_ds['id']}/documents/{plain['document']['id']}/segments"
    seg = (await kb.c.get(plain_base, headers=kb.h)).json()["data"][0]
    assert seg["child_chunks"] == []
    r = await kb.c.post(f"{plain_base}/{seg['id']}/child_chunks", headers=kb.h, json={"content": "x"})
    assert r.status_code == 400 and "hierarchical_model" in r.json()["message"], r.text


async def test_full_doc_parent_child_document(kb: KB) -> None:
    ds = await kb.dataset()
    rule = {**PARENT_CHILD_RULE, "rules": {**PARENT_CHILD_RULE["rules"], "parent_mode": "full-doc"}}
    created = await kb.text_doc(ds["id"], "shop", SHOP, process_rule=rule)
    (st,) = await kb.wait(ds["id"], created["batch"])
    assert st["indexing_status"] == "completed" and st["total_segments"] == st["completed_segments"] == 1
    doc_id = created["document"]["id"]
    (whole,) = (await kb.c.get(f"/v1/datasets/{ds['id']}/documents/{doc_id}/segments", headers=kb.h)).json()["data"]
    assert whole["content"] == SHOP and len(whole["child_chunks"]) == 6
    (rec,) = await kb.retrieve(ds["id"], "blue light", search_method="full_text_search")
    assert rec["segment"]["content"] == SHOP
    assert rec["child_chunks"][0]["content"] == "Every kettle has a blue light."


# ---- Q&A (qa_model) ---------------------------------------------------------------------------------

PARAGRAPHS_RULE = {"mode": "custom", "rules": {"pre_processing_rules": [],
                                               "segmentation": {"separator": "\\n\\n", "max_tokens": 500}}}


async def test_qa_documents_are_written_by_the_default_llm(kb: KB, llm) -> None:
    admin = await scripted_owner(kb.c, llm)

    async def default_llm(model: str | None) -> None:
        await set_default_model(kb.c, admin, "llm", model)

    ds = await kb.dataset()
    qa = {"name": "shop", "text": SHOP, "indexing_technique": "high_quality", "doc_form": "qa_model",
          "doc_language": "English", "process_rule": PARAGRAPHS_RULE}
    create = f"/v1/datasets/{ds['id']}/document/create-by-text"
    r = await kb.c.post(create, headers=kb.h, json=qa)  # no default LLM to write the pairs
    assert r.status_code == 400 and r.json()["code"] == "provider_not_initialize", r.text
    await default_llm("scripted")
    try:
        llm.push(match="Kettles\nOur kettles", reply="Q1: How fast does a kettle boil a litre of water?\n"
                                                     "A1: In ninety seconds.\nQ2: What light does a kettle have?\n"
                                                     "A2: A blue light.")
        llm.push(match="Returns\nYou can", reply="Q1: How long do I have to return an item?\n"
                                                 "A1: 30 days, for a full refund.")
        r = await kb.c.post(create, headers=kb.h, json=qa)
        assert r.status_code == 200, r.text
        (st,) = await kb.wait(ds["id"], r.json()["batch"])
        assert st["indexing_status"] == "completed" and st["total_segments"] == 3, st
        asked = llm.requests_matching("Our kettles boil")[-1].messages
        assert "in English" in asked[0]["content"] and asked[1]["content"].startswith("Kettles\n")
        doc_id = r.json()["document"]["id"]
        segs = (await kb.c.get(f"/v1/datasets/{ds['id']}/documents/{doc_id}/segments", headers=kb.h)).json()
        assert segs["doc_form"] == "qa_model"
        assert [(g["content"], g["answer"]) for g in segs["data"]] == [
            ("How fast does a kettle boil a litre of water?", "In ninety seconds."),
            ("What light does a kettle have?", "A blue light."),
            ("How long do I have to return an item?", "30 days, for a full refund.")]
        (doc,) = (await kb.c.get(f"/v1/datasets/{ds['id']}/documents", headers=kb.h)).json()["data"]
        assert (doc["doc_form"], doc["doc_language"]) == ("qa_model", "English")
        # the questions are searched; the record carries the answer
        recs = await kb.retrieve(ds["id"], "how long to return an item", search_method="full_text_search")
        assert recs[0]["segment"]["answer"] == "30 days, for a full refund."
        # a Q&A segment needs its answer
        r = await kb.c.post(f"/v1/datasets/{ds['id']}/documents/{doc_id}/segments", headers=kb.h,
                            json={"segments": [{"content": "Is there a warranty?"}]})
        assert r.status_code == 400 and r.json()["code"] == "invalid_param"
        # an app answering from the dataset gets question and answer in its context, as Dify's does
        app = (await kb.c.post("/console/api/apps", headers=kb.admin,
                               json={"name": f"qa{time.monotonic_ns()}", "mode": "chat"})).json()
        cfg = {"model": {"provider": "openai-compatible", "name": "scripted"}, "pre_prompt": "Answer briefly.",
               "dataset_configs": {"retrieval_model": "multiple", "top_k": 1, "retrieval_model_dict": None,
                                   "datasets": {"datasets": [{"dataset": {"enabled": True, "id": ds["id"]}}]}}}
        assert (await kb.c.post(f"/console/api/apps/{app['id']}/model-config", headers=kb.admin,
                                json=cfg)).status_code == 200
        key = (await kb.c.post(f"/console/api/apps/{app['id']}/api-keys", headers=kb.admin)).json()["token"]
        q = f"how fast does a kettle boil {uuid.uuid4().hex[:6]}"
        r = await kb.c.post("/v1/chat-messages", headers={"Authorization": f"Bearer {key}"},
                            json={"inputs": {}, "query": q, "user": "u1", "response_mode": "blocking",
                                  "auto_generate_name": False})
        assert r.status_code == 200, r.text
        (res,) = r.json()["metadata"]["retriever_resources"]
        assert res["content"] == "question:How fast does a kettle boil a litre of water? \nanswer:In ninety seconds."
        assert res["content"] in llm.requests_matching(q)[-1].messages[0]["content"]
        # a model that writes no pairs ends the document in error, with the reason
        other = await kb.dataset()
        llm.push(match="Nothing to ask", reply="I am sorry, I cannot do that.")
        r = await kb.c.post(f"/v1/datasets/{other['id']}/document/create-by-text", headers=kb.h,
                            json={**qa, "text": "Nothing to ask about here."})
        assert r.status_code == 200, r.text
        (st,) = await kb.wait(other["id"], r.json()["batch"])
        assert st["indexing_status"] == "error" and "no question-answer pairs" in st["error"], st
        r = await kb.c.post(create, headers=kb.h, json={**qa, "doc_language": ["English"]})
        assert r.status_code == 400 and "doc_language" in r.json()["message"]
    finally:
        await default_llm(None)
    # without a default LLM a Q&A document cannot be written again either
    r = await kb.c.post(f"/v1/datasets/{ds['id']}/documents/{doc_id}/update-by-text", headers=kb.h,
                        json={"text": "Kettles whistle."})
    assert r.status_code == 400 and r.json()["code"] == "provider_not_initialize", r.text

"""The console's knowledge API (/console/api/datasets…, reference §7) through the gateway on the whole stack: the
indexer serves it and asks the console, over NATS, who the caller is and whether its role and admin-key scopes
allow the route. Datasets, file uploads, documents made from them (``datasets/init`` too), indexing status,
retrieval, ``use-check``; dataset permissions per member; errors in the envelope. SQLite and, in CI, Postgres."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from services.indexer.service.documents import DocumentService
from shared import subjects
from shared.models import Document, utcnow
from tests.conftest import LiveServer, live_fixture
from tests.support import (
    bearer,
    console_admin,
    envelope,
    invite_member,
    points_of_document,
    scripted_owner,
    set_default_model,
    wait_indexed,
)

C = "/console/api"
PASSWORD = "member-pass-1"
TEXT = b"# Tidal gardens\n\nKelp forests in the tidal gardens grow half a metre a day in summer.\n"

cstack = live_fixture("console_knowledge", "cstack")


class Console:
    """The owner's headers and helpers; members of other roles on demand."""

    def __init__(self, c: httpx.AsyncClient, owner: dict[str, str], stack: LiveServer) -> None:
        self.c, self.owner, self.stack = c, owner, stack

    async def member(self, role: str) -> tuple[dict[str, str], str]:
        """A new member with ``role``: headers and account id."""
        r, _ = await invite_member(self.c, self.owner, role, PASSWORD)
        h = bearer(r.json()["data"]["access_token"])
        return h, (await self.c.get(f"{C}/account/profile", headers=h)).json()["id"]

    async def dataset(self, h: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
        body.setdefault("name", f"kb-{uuid.uuid4().hex[:10]}")
        r = await self.c.post(f"{C}/datasets", headers=h or self.owner, json=body)
        assert r.status_code == 200, r.text
        return r.json()

    async def upload(self, name: str = "tides.md", data: bytes = TEXT, h: dict[str, str] | None = None
                     ) -> dict[str, Any]:
        r = await self.c.post(f"{C}/files/upload", headers=h or self.owner, files={"file": (name, data)})
        assert r.status_code == 201, r.text
        return r.json()

    async def wait(self, ds: str, batch: str) -> list[dict[str, Any]]:
        return await wait_indexed(self.c, C, self.owner, ds, batch)


def source(*file_ids: str) -> dict[str, Any]:
    return {"data_source": {"type": "upload_file", "info_list": {"data_source_type": "upload_file",
                                                                 "file_info_list": {"file_ids": list(file_ids)}}},
            "indexing_technique": "economy", "process_rule": {"mode": "automatic"}}


@pytest.fixture(scope="module")
async def con(cstack: LiveServer) -> AsyncIterator[Console]:
    async with httpx.AsyncClient(base_url=cstack.base_url, timeout=60) as c:
        yield Console(c, await console_admin(c), cstack)


async def test_datasets_crud_as_the_owner(con: Console) -> None:
    me = (await con.c.get(f"{C}/account/profile", headers=con.owner)).json()["id"]
    ds = await con.dataset(description="tides", indexing_technique="economy")
    assert (ds["created_by"], ds["description"], ds["indexing_technique"]) == (me, "tides", "economy")
    r = await con.c.get(f"{C}/datasets", headers=con.owner, params={"keyword": ds["name"]})
    assert r.status_code == 200, r.text
    assert [d["id"] for d in r.json()["data"]] == [ds["id"]]
    r = await con.c.patch(f"{C}/datasets/{ds['id']}", headers=con.owner, json={"description": "new"})
    assert r.status_code == 200 and r.json()["description"] == "new", r.text
    r = await con.c.get(f"{C}/datasets/{ds['id']}/use-check", headers=con.owner)
    assert r.json() == {"is_using": False}
    envelope(await con.c.post(f"{C}/datasets", headers=con.owner, json={"name": ds["name"]}), 409,
             "dataset_name_duplicate")
    assert (await con.c.delete(f"{C}/datasets/{ds['id']}", headers=con.owner)).status_code == 204
    envelope(await con.c.get(f"{C}/datasets/{ds['id']}", headers=con.owner), 404, "not_found")


async def test_the_workspace_keys_stay_the_consoles(con: Console) -> None:
    # /datasets/api-keys and /datasets/api-base-info are the console's routes, not dataset ids
    r = await con.c.post(f"{C}/datasets/api-keys", headers=con.owner)
    assert r.status_code == 201 and r.json()["token"].startswith("dataset-"), r.text
    key = bearer(r.json()["token"])
    assert (await con.c.get(f"{C}/datasets/api-keys", headers=con.owner)).status_code == 200
    assert "api_base_url" in (await con.c.get(f"{C}/datasets/api-base-info", headers=con.owner)).json()
    # one workspace, two doors: the knowledge API sees the console's datasets (a dataset key is workspace-wide)
    ds = await con.dataset(indexing_technique="economy")
    r = await con.c.get(f"/v1/datasets/{ds['id']}", headers=key)
    assert r.status_code == 200 and r.json()["name"] == ds["name"], r.text
    # a dataset key is no console caller, and a console token is no dataset key
    envelope(await con.c.get(f"{C}/datasets", headers=key), 401, "unauthorized")
    envelope(await con.c.get("/v1/datasets", headers=con.owner), 401, "unauthorized")


async def test_upload_then_documents_index_and_retrieve(con: Console) -> None:
    f = await con.upload()
    assert (f["name"], f["extension"], f["size"]) == ("tides.md", "md", len(TEXT)), f
    ds = await con.dataset()
    r = await con.c.post(f"{C}/datasets/{ds['id']}/documents", headers=con.owner, json=source(f["id"]))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["dataset"]["id"] == ds["id"] and out["dataset"]["indexing_technique"] == "economy"
    (doc,) = out["documents"]
    assert (doc["name"], doc["created_from"], doc["data_source_info"]) == \
        ("tides.md", "web", {"upload_file_id": f["id"]})
    (status,) = await con.wait(ds["id"], out["batch"])
    assert status["indexing_status"] == "completed", status
    # the console's document page asks for one document's status by its id
    r = await con.c.get(f"{C}/datasets/{ds['id']}/documents/{doc['id']}/indexing-status", headers=con.owner)
    assert r.status_code == 200 and r.json() == status, r.text
    envelope(await con.c.get(f"{C}/datasets/{ds['id']}/documents/{uuid.uuid4()}/indexing-status",
                             headers=con.owner), 404, "not_found")
    r = await con.c.get(f"{C}/datasets/{ds['id']}/documents/{out['batch']}/indexing-status", headers=con.owner)
    assert r.json() == {"data": [status]}, r.text  # a batch name still lists the batch
    r = await con.c.get(f"{C}/datasets/{ds['id']}/documents", headers=con.owner)
    assert [d["id"] for d in r.json()["data"]] == [doc["id"]]
    r = await con.c.post(f"{C}/datasets/{ds['id']}/hit-testing", headers=con.owner, json={"query": "kelp forests"})
    assert r.status_code == 200, r.text
    records = r.json()["records"]
    assert records and "Kelp forests" in records[0]["segment"]["content"], records
    # a file makes one document: a second use is refused, before anything is stored
    envelope(await con.c.post(f"{C}/datasets/{ds['id']}/documents", headers=con.owner, json=source(f["id"])),
             400, "invalid_param")
    assert len((await con.c.get(f"{C}/datasets/{ds['id']}/documents", headers=con.owner)).json()["data"]) == 1


async def test_datasets_init_makes_dataset_and_documents(con: Console) -> None:
    a = await con.upload(f"reef-{uuid.uuid4().hex[:6]}.md")
    b = await con.upload("notes.txt", b"Plain notes about the reef.\n")
    r = await con.c.post(f"{C}/datasets/init", headers=con.owner, json=source(a["id"], b["id"]))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["dataset"]["name"] == a["name"] and out["dataset"]["document_count"] == 2, out["dataset"]
    assert [d["name"] for d in out["documents"]] == [a["name"], "notes.txt"]
    assert {d["position"] for d in out["documents"]} == {1, 2}
    statuses = await con.wait(out["dataset"]["id"], out["batch"])
    assert [s["indexing_status"] for s in statuses] == ["completed", "completed"], statuses


async def test_document_batches_by_query(con: Console) -> None:
    # Dify's console names documents in the query: ?document_id=a&document_id=b
    a, b = await con.upload("a.md", b"# A\n\nalpha\n"), await con.upload("b.md", b"# B\n\nbeta\n")
    ds = await con.dataset()
    r = await con.c.post(f"{C}/datasets/{ds['id']}/documents", headers=con.owner, json=source(a["id"], b["id"]))
    assert r.status_code == 200, r.text
    ids = [d["id"] for d in r.json()["documents"]]
    await con.wait(ds["id"], r.json()["batch"])
    url = f"{C}/datasets/{ds['id']}/documents"
    r = await con.c.patch(f"{url}/status/disable/batch", headers=con.owner, params={"document_id": ids})
    assert r.status_code == 200 and r.json() == {"result": "success"}, r.text
    listed = (await con.c.get(url, headers=con.owner)).json()["data"]
    assert {d["id"]: d["enabled"] for d in listed} == {ids[0]: False, ids[1]: False}
    envelope(await con.c.patch(f"{url}/status/disable/batch", headers=con.owner), 400, "invalid_param")
    # a batch delete checks every id first: one unknown id deletes nothing
    envelope(await con.c.delete(url, headers=con.owner, params={"document_id": [ids[0], str(uuid.uuid4())]}),
             404, "not_found")
    assert len((await con.c.get(url, headers=con.owner)).json()["data"]) == 2
    assert (await con.c.delete(url, headers=con.owner, params={"document_id": ids})).status_code == 204
    assert (await con.c.get(url, headers=con.owner)).json()["data"] == []
    envelope(await con.c.delete(url, headers=con.owner), 400, "invalid_param")


async def test_console_segment_routes(con: Console) -> None:
    """Dify's console edits segments one at a time and in batches, with bare bodies and ids in the query."""
    f = await con.upload("care.md", b"# Care\n\nWater ferns weekly.\nKeep them out of the sun.\n\n"
                                    b"Repot ferns every spring.\n")
    ds = await con.dataset()
    rule = {"mode": "hierarchical", "rules": {
        "pre_processing_rules": [], "segmentation": {"separator": "\\n\\n", "max_tokens": 200},
        "parent_mode": "paragraph", "subchunk_segmentation": {"separator": "\\n", "max_tokens": 40}}}
    r = await con.c.post(f"{C}/datasets/{ds['id']}/documents", headers=con.owner,
                         json={**source(f["id"]), "doc_form": "hierarchical_model", "process_rule": rule})
    assert r.status_code == 200, r.text
    doc = r.json()["documents"][0]
    assert doc["doc_form"] == "hierarchical_model"
    await con.wait(ds["id"], r.json()["batch"])
    base = f"{C}/datasets/{ds['id']}/documents/{doc['id']}"
    segs = (await con.c.get(f"{base}/segments", headers=con.owner)).json()["data"]
    assert [g["content"] for g in segs] == ["Care", "Water ferns weekly.\nKeep them out of the sun.",
                                            "Repot ferns every spring."]
    water = segs[1]
    assert [c["content"] for c in water["child_chunks"]] == ["Water ferns weekly.", "Keep them out of the sun."]

    async def found(q: str) -> list[str]:
        r = await con.c.post(f"{C}/datasets/{ds['id']}/hit-testing", headers=con.owner,
                             json={"query": q, "retrieval_model": {"search_method": "keyword_search",
                                                                   "reranking_enable": False, "top_k": 5,
                                                                   "score_threshold_enabled": False}})
        assert r.status_code == 200, r.text
        return [c["content"] for rec in r.json()["records"] for c in rec["child_chunks"]]

    # the console saves a parent's children in one call: kept by id (edited), new without one, the rest go
    first, second = water["child_chunks"]
    r = await con.c.patch(f"{base}/segments/{water['id']}/child_chunks", headers=con.owner, json={"chunks": [
        {"id": second["id"], "content": "Keep ferns in the shade."}, {"content": "Mist ferns in winter."}]})
    assert r.status_code == 200, r.text
    saved = r.json()["data"]
    assert [(c["content"], c["position"]) for c in saved] == [("Keep ferns in the shade.", 1),
                                                              ("Mist ferns in winter.", 2)]
    assert saved[0]["id"] == second["id"] and saved[1]["type"] == "customized"
    assert await found("weekly") == [] and await found("shade") == ["Keep ferns in the shade."]
    assert await found("mist winter") == ["Mist ferns in winter."]
    assert await points_of_document(con.stack, ds["id"], doc["id"]) == 4  # the child that went took its point
    envelope(await con.c.patch(f"{base}/segments/{water['id']}/child_chunks", headers=con.owner,
                               json={"chunks": [{"id": first["id"], "content": "gone already"}]}), 404, "not_found")
    # a bare body edits a segment (the service API wraps it in "segment")
    r = await con.c.patch(f"{base}/segments/{segs[2]['id']}", headers=con.owner,
                          json={"content": "Repot ferns every second spring.", "regenerate_child_chunks": True})
    assert r.status_code == 200, r.text
    assert [c["content"] for c in r.json()["data"]["child_chunks"]] == ["Repot ferns every second spring."]
    # batch disable by query ids, then the list filters
    r = await con.c.patch(f"{base}/segment/disable", headers=con.owner,
                          params={"segment_id": [segs[0]["id"], water["id"]]})
    assert r.status_code == 200 and r.json() == {"result": "success"}, r.text
    assert await found("shade") == []
    listed = (await con.c.get(f"{base}/segments", headers=con.owner, params={"enabled": "false"})).json()
    assert {g["id"] for g in listed["data"]} == {segs[0]["id"], water["id"]} and listed["total"] == 2
    r = await con.c.patch(f"{base}/segment/enable", headers=con.owner, params={"segment_id": [water["id"]]})
    assert r.status_code == 200 and await found("shade") == ["Keep ferns in the shade."]
    envelope(await con.c.patch(f"{base}/segment/enable", headers=con.owner), 400, "invalid_param")
    # one new segment, and a batch delete that checks every id first
    r = await con.c.post(f"{base}/segment", headers=con.owner, json={"content": "Ferns like humid air."})
    assert r.status_code == 200, r.text
    added = r.json()["data"]
    assert r.json()["doc_form"] == "hierarchical_model" and added["child_chunks"][0]["content"] == "Ferns like humid air."
    envelope(await con.c.delete(f"{base}/segments", headers=con.owner,
                                params={"segment_id": [added["id"], str(uuid.uuid4())]}), 404, "not_found")
    r = await con.c.delete(f"{base}/segments", headers=con.owner, params={"segment_id": [added["id"], water["id"]]})
    assert r.status_code == 204
    assert await found("humid shade mist") == []
    left = (await con.c.get(f"{base}/segments", headers=con.owner)).json()
    assert [g["id"] for g in left["data"]] == [segs[0]["id"], segs[2]["id"]]
    assert (await con.c.get(f"{base}", headers=con.owner)).json()["segment_count"] == 2
    assert await points_of_document(con.stack, ds["id"], doc["id"]) == 2


async def test_process_rule_and_indexing_estimate_preview_what_indexing_makes(con: Console, llm) -> None:
    r = await con.c.get(f"{C}/datasets/process-rule", headers=con.owner)
    assert r.status_code == 200, r.text
    default = r.json()
    assert default["mode"] == "custom" and default["limits"] == {"indexing_max_segmentation_tokens_length": 4000}
    assert default["rules"]["segmentation"] == {"separator": "\n", "max_tokens": 500, "chunk_overlap": 50}
    assert {p["id"]: p["enabled"] for p in default["rules"]["pre_processing_rules"]} == {
        "remove_extra_spaces": True, "remove_urls_emails": False}
    text = "\n\n".join(f"## Part {n}\n\n" + " ".join(f"Line {n}.{k} of the tide tables." for k in range(30))
                        for n in range(6)).encode()
    f = await con.upload("tides-long.md", text)
    rule = {"mode": "hierarchical", "rules": {
        "pre_processing_rules": [], "segmentation": {"separator": "\\n\\n", "max_tokens": 120},
        "parent_mode": "paragraph", "subchunk_segmentation": {"separator": ".", "max_tokens": 30}}}
    info = {"data_source_type": "upload_file", "file_info_list": {"file_ids": [f["id"]]}}
    r = await con.c.post(f"{C}/datasets/indexing-estimate", headers=con.owner, json={
        "info_list": info, "indexing_technique": "economy", "process_rule": rule, "doc_form": "hierarchical_model"})
    assert r.status_code == 200, r.text
    est = r.json()
    assert est["total_segments"] > 10 and len(est["preview"]) == 10 and est["qa_preview"] == []
    # the same file and rule indexed: the count and the chunks are the preview's
    ds = await con.dataset()
    r = await con.c.post(f"{C}/datasets/{ds['id']}/documents", headers=con.owner,
                         json={**source(f["id"]), "process_rule": rule, "doc_form": "hierarchical_model"})
    assert r.status_code == 200, r.text
    doc = r.json()["documents"][0]
    (st,) = await con.wait(ds["id"], r.json()["batch"])
    assert st["total_segments"] == est["total_segments"], (st, est["total_segments"])
    segs = (await con.c.get(f"{C}/datasets/{ds['id']}/documents/{doc['id']}/segments", headers=con.owner,
                            params={"limit": 10})).json()["data"]
    assert [{"content": g["content"], "child_chunks": [c["content"] for c in g["child_chunks"]]} for g in segs] \
        == est["preview"]
    # the document's own rule, for its settings page
    r = await con.c.get(f"{C}/datasets/process-rule", headers=con.owner, params={"document_id": doc["id"]})
    assert r.status_code == 200 and r.json()["mode"] == "hierarchical", r.text
    assert r.json()["rules"]["subchunk_segmentation"]["max_tokens"] == 30
    envelope(await con.c.get(f"{C}/datasets/process-rule", headers=con.owner,
                             params={"document_id": str(uuid.uuid4())}), 404, "not_found")
    # Q&A: the default LLM writes the pairs of the first chunk; without one the preview is refused
    qa = {"info_list": info, "indexing_technique": "economy", "doc_form": "qa_model", "doc_language": "French",
          "process_rule": {"mode": "automatic"}}
    envelope(await con.c.post(f"{C}/datasets/indexing-estimate", headers=con.owner, json=qa),
             400, "provider_not_initialize")
    owner = await scripted_owner(con.c, llm)
    await set_default_model(con.c, owner, "llm", "scripted")
    try:
        llm.push(match="Part 0", reply="Q1: Quelle partie?\nA1: La partie zéro.")
        r = await con.c.post(f"{C}/datasets/indexing-estimate", headers=con.owner, json=qa)
        assert r.status_code == 200, r.text
        assert r.json()["qa_preview"] == [{"question": "Quelle partie?", "answer": "La partie zéro."}]
        assert "in French" in llm.requests_matching("Part 0")[-1].messages[0]["content"]
    finally:
        await set_default_model(con.c, owner, "llm", None)
    for body, status, code in (({}, 400, "invalid_param"),
                               ({"info_list": {"data_source_type": "notion_import"}, "process_rule": rule}, 400,
                                "invalid_param"),
                               ({"info_list": {**info, "file_info_list": {"file_ids": [str(uuid.uuid4())]}},
                                 "process_rule": rule}, 404, "file_not_found"),
                               ({"info_list": info, "process_rule": {"mode": "sliced"}}, 400, "invalid_param")):
        envelope(await con.c.post(f"{C}/datasets/indexing-estimate", headers=con.owner, json=body), status, code)


async def test_dataset_pages_rename_error_docs_retry_and_related_apps(con: Console) -> None:
    import io

    from docx import Document as Docx

    buf = io.BytesIO()
    paper = Docx()
    paper.add_paragraph("Tide tables for the spring.")
    paper.save(buf)
    good, broken = await con.upload("tides.md"), await con.upload("broken.docx", buf.getvalue()[:300])
    ds = await con.dataset()
    r = await con.c.post(f"{C}/datasets/{ds['id']}/documents", headers=con.owner, json=source(good["id"], broken["id"]))
    assert r.status_code == 200, r.text
    ok_doc, bad_doc = r.json()["documents"]
    statuses = await con.wait(ds["id"], r.json()["batch"])
    assert [st["indexing_status"] for st in statuses] == ["completed", "error"], statuses
    base = f"{C}/datasets/{ds['id']}"
    # the documents in error, and their retry (a new batch, indexed again: this file fails again)
    errors = (await con.c.get(f"{base}/error-docs", headers=con.owner)).json()
    assert errors["total"] == 1 and errors["data"][0]["id"] == bad_doc["id"]
    envelope(await con.c.post(f"{base}/retry", headers=con.owner, json={"document_ids": [ok_doc["id"]]}),
             400, "invalid_param")  # only documents in error
    r = await con.c.post(f"{base}/retry", headers=con.owner, json={"document_ids": [bad_doc["id"]]})
    assert r.status_code == 204, r.text
    first_try = statuses[1]["processing_started_at"]
    deadline = time.monotonic() + 60
    while True:  # indexed again: a later start, and the same end for this file
        st = (await con.c.get(f"{base}/documents/{bad_doc['id']}/indexing-status", headers=con.owner)).json()
        if st["processing_started_at"] and st["processing_started_at"] > first_try and st["indexing_status"] == "error":
            break
        assert time.monotonic() < deadline, st
        await asyncio.sleep(0.1)
    assert "damaged" in st["error"]
    # a rename changes the name only
    r = await con.c.post(f"{base}/documents/{ok_doc['id']}/rename", headers=con.owner, json={"name": "Tides 2026"})
    assert r.status_code == 200 and r.json()["name"] == "Tides 2026" and r.json()["indexing_status"] == "completed"
    envelope(await con.c.post(f"{base}/documents/{ok_doc['id']}/rename", headers=con.owner, json={"name": " "}),
             400, "invalid_param")
    # the apps that answer from it
    assert (await con.c.get(f"{base}/related-apps", headers=con.owner)).json() == {"data": [], "total": 0}
    app = (await con.c.post(f"{C}/apps", headers=con.owner, json={"name": f"tides-{uuid.uuid4().hex[:6]}",
                                                                  "mode": "chat"})).json()
    cfg = {"model": {"provider": "openai-compatible", "name": "scripted"}, "pre_prompt": "Tides.",
           "dataset_configs": {"datasets": {"datasets": [{"dataset": {"enabled": True, "id": ds["id"]}}]}}}
    r = await con.c.post(f"{C}/apps/{app['id']}/model-config", headers=con.owner, json=cfg)
    assert r.status_code == 200, r.text
    related = (await con.c.get(f"{base}/related-apps", headers=con.owner)).json()
    assert related["total"] == 1 and (related["data"][0]["id"], related["data"][0]["mode"]) == (app["id"], "chat")


async def test_segments_import_from_a_csv(con: Console) -> None:
    from services.indexer.service.segment_import import SegmentImports
    from shared.models import SegmentImportJob

    f = await con.upload()
    ds = await con.dataset()
    r = await con.c.post(f"{C}/datasets/{ds['id']}/documents", headers=con.owner, json=source(f["id"]))
    assert r.status_code == 200, r.text
    doc = r.json()["documents"][0]
    await con.wait(ds["id"], r.json()["batch"])
    base = f"{C}/datasets/{ds['id']}/documents/{doc['id']}"
    before = (await con.c.get(f"{base}/segments", headers=con.owner)).json()["total"]
    csv_file = await con.upload("chunks.csv", b'content\nMangroves shelter young fish.\n"Seagrass, like kelp, stores carbon."\n')
    r = await con.c.post(f"{base}/segments/batch_import", headers=con.owner, json={"upload_file_id": csv_file["id"]})
    assert r.status_code == 200 and r.json()["job_status"] == "waiting", r.text
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + 60
    while True:
        st = (await con.c.get(f"{C}/datasets/batch_import_status/{job_id}", headers=con.owner)).json()
        if st["job_status"] in ("completed", "error"):
            break
        assert time.monotonic() < deadline, st
        await asyncio.sleep(0.1)
    assert st == {"job_id": job_id, "job_status": "completed", "error_msg": ""}
    segs = (await con.c.get(f"{base}/segments", headers=con.owner, params={"limit": 100})).json()
    assert segs["total"] == before + 2
    assert [g["content"] for g in segs["data"][-2:]] == ["Mangroves shelter young fish.",
                                                         "Seagrass, like kelp, stores carbon."]
    r = await con.c.post(f"{C}/datasets/{ds['id']}/hit-testing", headers=con.owner, json={"query": "mangroves fish"})
    assert r.json()["records"][0]["segment"]["content"] == "Mangroves shelter young fish."
    # a redelivered job stores nothing twice
    kn = con.stack.ctx.local_apps["indexer"].state.knowledge
    async with kn.db.session() as s:
        job = await s.get(SegmentImportJob, job_id)
        job.status = "processing"
        await s.commit()
    await SegmentImports(kn).run(job_id)
    assert (await con.c.get(f"{base}/segments", headers=con.owner)).json()["total"] == before + 2
    assert await points_of_document(con.stack, ds["id"], doc["id"]) == before + 2
    # refused at once: not a CSV, a CSV without rows, an unknown job
    envelope(await con.c.post(f"{base}/segments/batch_import", headers=con.owner,
                              json={"upload_file_id": f["id"]}), 400, "invalid_param")
    empty = await con.upload("empty.csv", b"content\n")
    message = envelope(await con.c.post(f"{base}/segments/batch_import", headers=con.owner,
                                        json={"upload_file_id": empty["id"]}), 400, "invalid_param")
    assert "no rows" in message
    envelope(await con.c.get(f"{C}/datasets/batch_import_status/{uuid.uuid4()}", headers=con.owner), 404, "not_found")


async def test_bad_documents_requests(con: Console) -> None:
    ds = await con.dataset()
    url = f"{C}/datasets/{ds['id']}/documents"
    missing = str(uuid.uuid4())
    assert missing in envelope(await con.c.post(url, headers=con.owner, json=source(missing)), 404, "file_not_found")
    notion = {**source(missing), "data_source": {"type": "notion_import", "info_list": {}}}
    assert "notion_import" in envelope(await con.c.post(url, headers=con.owner, json=notion), 400, "invalid_param")
    no_ids = {**source(), "indexing_technique": "economy"}
    envelope(await con.c.post(url, headers=con.owner, json=no_ids), 400, "invalid_param")
    f = await con.upload()
    no_technique = {k: v for k, v in source(f["id"]).items() if k != "indexing_technique"}
    assert "indexing_technique" in envelope(await con.c.post(url, headers=con.owner, json=no_technique),
                                            400, "invalid_param")
    # init refuses before it makes a dataset
    before = (await con.c.get(f"{C}/datasets", headers=con.owner, params={"limit": 100})).json()["total"]
    envelope(await con.c.post(f"{C}/datasets/init", headers=con.owner, json=no_technique), 400, "invalid_param")
    envelope(await con.c.post(f"{C}/datasets/init", headers=con.owner, json=source(missing)), 404, "file_not_found")
    assert (await con.c.get(f"{C}/datasets", headers=con.owner, params={"limit": 100})).json()["total"] == before
    # uploads: a lying extension, no file
    envelope(await con.c.post(f"{C}/files/upload", headers=con.owner, files={"file": ("x.pdf", b"not a pdf")}),
             415, "unsupported_file_type")
    envelope(await con.c.post(f"{C}/files/upload", headers=con.owner, files={"other": ("x.md", b"# x")}),
             400, "no_file_uploaded")
    envelope(await con.c.post(url, headers=con.owner, content=b"{not json", ), 400, "bad_request")


async def test_authentication_errors(con: Console) -> None:
    con.c.cookies.clear()  # the client keeps the cookies /login and /activate set: no credential at all here
    envelope(await con.c.get(f"{C}/datasets"), 401, "unauthorized")
    envelope(await con.c.get(f"{C}/datasets", headers=bearer("not-a-token")), 401, "unauthorized")
    envelope(await con.c.post(f"{C}/files/upload", files={"file": ("a.md", b"# a")}), 401, "unauthorized")


async def test_roles_and_dataset_permissions(con: Console) -> None:
    normal, _ = await con.member("normal")
    editor, editor_id = await con.member("editor")
    other_editor, _ = await con.member("editor")
    # reading is everyone's, changing is editors' (ACCESS: the knowledge rule)
    assert (await con.c.get(f"{C}/datasets", headers=normal)).status_code == 200
    assert "editor role" in envelope(await con.c.post(f"{C}/datasets", headers=normal, json={"name": "n"}),
                                     403, "forbidden")
    assert "editor role" in envelope(await con.c.post(f"{C}/files/upload", headers=normal,
                                                      files={"file": ("a.md", b"# a")}), 403, "forbidden")
    mine = await con.dataset(editor, indexing_technique="economy")  # only_me by default
    team = await con.dataset(editor, indexing_technique="economy", permission="all_team_members")
    assert mine["created_by"] == editor_id and mine["permission"] == "only_me"

    async def listed(h: dict[str, str]) -> set[str]:
        r = await con.c.get(f"{C}/datasets", headers=h, params={"limit": 100})
        assert r.status_code == 200, r.text
        return {d["id"] for d in r.json()["data"]}

    assert {mine["id"], team["id"]} <= await listed(editor)
    assert {mine["id"], team["id"]} <= await listed(con.owner)  # owners and admins see every dataset
    for h in (normal, other_editor):
        seen = await listed(h)
        assert team["id"] in seen and mine["id"] not in seen
        assert "permission" in envelope(await con.c.get(f"{C}/datasets/{mine['id']}", headers=h), 403, "forbidden")
    assert (await con.c.get(f"{C}/datasets/{team['id']}", headers=normal)).status_code == 200
    # a normal member tests retrieval (a read) but changes nothing
    r = await con.c.post(f"{C}/datasets/{team['id']}/hit-testing", headers=normal, json={"query": "x"})
    assert r.status_code == 200, r.text
    envelope(await con.c.patch(f"{C}/datasets/{team['id']}", headers=normal, json={"description": "x"}),
             403, "forbidden")
    # another editor may change a team dataset, not someone's only_me one
    r = await con.c.patch(f"{C}/datasets/{team['id']}", headers=other_editor, json={"description": "shared"})
    assert r.status_code == 200, r.text
    envelope(await con.c.delete(f"{C}/datasets/{mine['id']}", headers=other_editor), 403, "forbidden")
    # the creator's upload is theirs to use; a document from it shows who made it
    f = await con.upload(h=editor)
    r = await con.c.post(f"{C}/datasets/{mine['id']}/documents", headers=editor, json=source(f["id"]))
    assert r.status_code == 200, r.text
    assert r.json()["documents"][0]["created_by"] == editor_id


async def test_partial_members(con: Console) -> None:
    editor, editor_id = await con.member("editor")
    listed, listed_id = await con.member("normal")
    other, _ = await con.member("normal")
    ds = await con.dataset(editor, indexing_technique="economy", permission="partial_members",
                           partial_member_list=[{"user_id": listed_id}])
    assert ds["partial_member_list"] == [listed_id]
    url = f"{C}/datasets/{ds['id']}"
    assert (await con.c.get(url, headers=listed)).status_code == 200
    assert "permission" in envelope(await con.c.get(url, headers=other), 403, "forbidden")
    seen = {d["id"] for d in (await con.c.get(f"{C}/datasets", headers=listed, params={"limit": 100})).json()["data"]}
    assert ds["id"] in seen
    seen = {d["id"] for d in (await con.c.get(f"{C}/datasets", headers=other, params={"limit": 100})).json()["data"]}
    assert ds["id"] not in seen
    r = await con.c.get(f"{url}/permission-part-users", headers=editor)
    assert r.status_code == 200 and r.json() == {"data": [listed_id]}, r.text
    # only the creator (or an owner or admin) changes who may use it; a listed member may not
    envelope(await con.c.patch(url, headers=listed, json={"permission": "all_team_members"}), 403, "forbidden")
    envelope(await con.c.patch(url, headers=editor, json={"partial_member_list": [{"user_id": str(uuid.uuid4())}]}),
             400, "invalid_param")
    assert (await con.c.get(url, headers=listed)).status_code == 200  # a refused change changed nothing
    r = await con.c.patch(url, headers=editor, json={"partial_member_list": [{"user_id": editor_id}]})
    assert r.status_code == 200 and r.json()["partial_member_list"] == [editor_id], r.text
    envelope(await con.c.get(url, headers=listed), 403, "forbidden")
    r = await con.c.patch(url, headers=con.owner, json={"permission": "only_me"})
    assert r.status_code == 200 and r.json()["partial_member_list"] == [], r.text
    # a dataset key is workspace-wide: it sees every dataset and the list
    key = (await con.c.post(f"{C}/datasets/api-keys", headers=con.owner)).json()["token"]
    r = await con.c.get(f"/v1/datasets/{ds['id']}", headers=bearer(key))
    assert r.status_code == 200 and r.json()["permission"] == "only_me", r.text


async def test_dataset_detail_lists_its_metadata_fields(con: Console) -> None:
    ds = await con.dataset(indexing_technique="economy")
    r = await con.c.post(f"{C}/datasets/{ds['id']}/metadata", headers=con.owner, json={"type": "string",
                                                                                        "name": "author"})
    assert r.status_code == 200, r.text
    got = (await con.c.get(f"{C}/datasets/{ds['id']}", headers=con.owner)).json()
    assert [(f["name"], f["type"]) for f in got["doc_metadata"]] == [("author", "string")]
    assert got["doc_metadata"][0]["id"] == r.json()["id"]


async def test_admin_key_scopes(con: Console) -> None:
    async def key(*scopes: str) -> dict[str, str]:
        r = await con.c.post(f"{C}/api-keys", headers=con.owner, json={"name": "kb", "permissions": list(scopes)})
        assert r.status_code == 201, r.text
        return bearer(r.json()["token"])

    reader = await key("datasets:read")
    writer = await key("datasets:read", "datasets:write")
    apps_only = await key("apps:read")
    assert (await con.c.get(f"{C}/datasets", headers=reader)).status_code == 200
    assert "datasets:write" in envelope(await con.c.post(f"{C}/datasets", headers=reader, json={"name": "k"}),
                                        403, "forbidden")
    assert "datasets:read" in envelope(await con.c.get(f"{C}/datasets", headers=apps_only), 403, "forbidden")
    ds = await con.dataset(writer, indexing_technique="economy")
    r = await con.c.get(f"{C}/datasets/{ds['id']}", headers=reader)
    assert r.status_code == 200, r.text
    # scopes are offered in the key catalogue
    assert {"datasets:read", "datasets:write"} <= set((await con.c.get(f"{C}/api-keys", headers=con.owner)
                                                       ).json()["scopes"])


# -- pausing and resuming a document's indexing (Dify's console) ----------------------------------------------
# one segment per paragraph; 40 of them are two embedding batches (knowledge.embedding_batch = 32)
TIDE_RULE = {"mode": "custom", "rules": {"pre_processing_rules": [],
                                         "segmentation": {"separator": "\\n\\n", "max_tokens": 60}}}


def tide_log(marker: str, n: int = 40) -> bytes:
    """``n`` paragraphs, the last one (the last embedding batch) with ``marker`` in it."""
    lines = [f"Tide log {k}: the kelp line moved {k} metres." for k in range(1, n)]
    return "\n\n".join([*lines, f"Tide log {n}: {marker} closes the log."]).encode()


async def eventually(check: Callable[[], Any], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ok = check()
        if inspect.isawaitable(ok):
            ok = await ok
        if ok:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def jobs_settled(stack: LiveServer) -> bool:
    """No index job is waiting or being worked on (every delivered one acked, none to be redelivered)."""
    kn = stack.ctx.local_apps["indexer"].state.knowledge
    info = await kn.bus.js.consumer_info(subjects.INDEX_JOBS_STREAM, subjects.INDEX_WORKERS)
    return info.num_pending == 0 and info.num_ack_pending == 0


@asynccontextmanager
async def embedding_held(llm: Any, marker: str) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Inside the block the scripted server holds the embedding call whose inputs have ``marker`` (the block gets
    a wait for its arrival); leaving the block answers it."""
    gate, before = asyncio.Event(), len(llm.embedding_requests)
    llm.push(endpoint="embeddings", match=marker, gate=gate)

    async def arrived() -> None:
        await eventually(lambda: any(marker in t for q in llm.embedding_requests[before:] for t in q.inputs),
                         "the held embedding call")

    try:
        yield arrived
    finally:
        gate.set()
        llm.scripts[:] = [s for s in llm.scripts if s.match != marker]


class Indexing:
    """A high-quality dataset the scripted server embeds (so a test can hold a worker's embedding call)."""

    def __init__(self, con: Console, h: dict[str, str], ds: str) -> None:
        self.con, self.h, self.ds = con, h, ds
        self.base = f"{C}/datasets/{ds}/documents"

    @classmethod
    async def make(cls, con: Console, llm: Any) -> Indexing:
        h = await scripted_owner(con.c, llm)
        ds = await con.dataset(h, indexing_technique="high_quality", embedding_model_provider="openai-compatible",
                               embedding_model="trigram-embed")
        return cls(con, h, ds["id"])

    async def add(self, name: str, data: bytes) -> str:
        f = await self.con.upload(name, data, self.h)
        r = await self.con.c.post(self.base, headers=self.h, json={**source(f["id"]), "process_rule": TIDE_RULE})
        assert r.status_code == 200, r.text
        return r.json()["documents"][0]["id"]

    async def status(self, doc: str) -> dict[str, Any]:
        r = await self.con.c.get(f"{self.base}/{doc}/indexing-status", headers=self.h)
        assert r.status_code == 200, r.text
        return r.json()

    async def indexed(self, doc: str) -> dict[str, Any]:
        """The document's status once it is completed or in error."""
        await eventually(lambda: self._done(doc), "indexing to end")
        return await self.status(doc)

    async def _done(self, doc: str) -> bool:
        return (await self.status(doc))["indexing_status"] in ("completed", "error")

    async def act(self, doc: str, action: str) -> httpx.Response:
        return await self.con.c.patch(f"{self.base}/{doc}/processing/{action}", headers=self.h)

    async def segments(self, doc: str) -> list[str]:
        r = await self.con.c.get(f"{self.base}/{doc}/segments", headers=self.h, params={"limit": 100})
        assert r.status_code == 200, r.text
        return [g["content"] for g in r.json()["data"]]

    async def points(self, doc: str) -> int:
        return await points_of_document(self.con.stack, self.ds, doc)

    async def found_in(self, query: str) -> set[str]:
        """The documents whose segments a search finds."""
        r = await self.con.c.post(f"{C}/datasets/{self.ds}/hit-testing", headers=self.h, json={"query": query})
        assert r.status_code == 200, r.text
        return {rec["segment"]["document"]["id"] for rec in r.json()["records"]}


async def test_pause_while_indexing_then_resume(con: Console, llm) -> None:
    """A pause lands while a worker embeds the document's second batch: the worker stores none of it, takes back
    the first batch and lets the job go; the document stays paused. A resume indexes it again, ending exactly as
    a clean run of the same file."""
    kb = await Indexing.make(con, llm)
    marker = f"ebb{uuid.uuid4().hex[:8]}"
    clean = await kb.add("clean.md", tide_log(marker))
    st = await kb.indexed(clean)
    assert (st["indexing_status"], st["total_segments"]) == ("completed", 40), st
    clean_segments, clean_points = await kb.segments(clean), await kb.points(clean)
    assert len(clean_segments) == clean_points == 40
    async with embedding_held(llm, marker) as arrived:
        doc = await kb.add("paused.md", tide_log(marker))
        await arrived()  # the first batch is stored, the second one is being embedded
        assert await kb.points(doc) == 32
        r = await kb.act(doc, "pause")
        assert r.status_code == 204, r.text
        st = await kb.status(doc)
        assert (st["indexing_status"], st["completed_segments"]) == ("paused", 32) and st["paused_at"], st
        detail = (await con.c.get(f"{kb.base}/{doc}", headers=kb.h)).json()
        assert (detail["indexing_status"], detail["display_status"]) == ("paused", "paused")
        listed = (await con.c.get(kb.base, headers=kb.h, params={"status": "paused"})).json()["data"]
        assert [(d["id"], d["display_status"]) for d in listed] == [(doc, "paused")]
        assert (await kb.act(doc, "pause")).status_code == 204  # a second pause changes nothing
    # the held batch is answered after the pause: none of it is stored (the progress stays where the pause found
    # it), the first batch's points are taken back, the job is acked (not redelivered)
    await eventually(lambda: jobs_settled(con.stack), "the paused job to be acked")
    assert await kb.points(doc) == 0
    after = await kb.status(doc)
    assert (after["indexing_status"], after["completed_segments"], after["paused_at"]) == \
        ("paused", 32, st["paused_at"]), after
    assert await kb.found_in("the kelp line moved 7 metres") == {clean}
    # resumed: indexed again from the start, as the clean run
    r = await kb.act(doc, "resume")
    assert r.status_code == 204, r.text
    st = await kb.indexed(doc)
    assert (st["indexing_status"], st["paused_at"], st["total_segments"]) == ("completed", None, 40), st
    assert await kb.segments(doc) == clean_segments
    assert await kb.points(doc) == clean_points
    assert await kb.found_in("the kelp line moved 7 metres") == {clean, doc}
    detail = (await con.c.get(f"{kb.base}/{doc}", headers=kb.h)).json()
    assert detail["display_status"] == "available"


async def test_pause_and_resume_refusals(con: Console) -> None:
    f = await con.upload()
    ds = await con.dataset()
    r = await con.c.post(f"{C}/datasets/{ds['id']}/documents", headers=con.owner, json=source(f["id"]))
    assert r.status_code == 200, r.text
    doc = r.json()["documents"][0]["id"]
    await con.wait(ds["id"], r.json()["batch"])
    base = f"{C}/datasets/{ds['id']}/documents"

    async def act(action: str, doc_id: str = doc, dataset: str = ds["id"], h: dict[str, str] | None = None
                  ) -> httpx.Response:
        return await con.c.patch(f"{C}/datasets/{dataset}/documents/{doc_id}/processing/{action}",
                                 headers=h or con.owner)

    # Dify's DocumentIndexingError: indexing is over, nothing is paused
    assert envelope(await act("pause"), 400, "document_indexing") == "Cannot pause completed document."
    assert envelope(await act("resume"), 400, "document_indexing") == "Document is not in paused status."
    for action in ("pause", "resume"):
        for missing in (str(uuid.uuid4()), "not-a-uuid"):
            assert envelope(await act(action, missing), 404, "not_found") == "Document Not Exists."
        assert envelope(await act(action, dataset=str(uuid.uuid4())), 404, "not_found") == "Dataset not found."
    # editors change, as every knowledge route (ACCESS)
    normal, _ = await con.member("normal")
    assert "editor role" in envelope(await act("pause", h=normal), 403, "forbidden")
    # an archived document is immutable
    r = await con.c.patch(f"{base}/status/archive/batch", headers=con.owner, params={"document_id": [doc]})
    assert r.status_code == 200, r.text
    for action in ("pause", "resume"):
        envelope(await act(action), 403, "archived_document_immutable")
    detail = (await con.c.get(f"{base}/{doc}", headers=con.owner)).json()
    assert (detail["indexing_status"], detail["display_status"]) == ("completed", "archived")


async def test_the_sweep_leaves_paused_documents_and_requeues_a_lost_resume(
        con: Console, llm, monkeypatch: pytest.MonkeyPatch) -> None:
    """The requeue sweep queues documents still ``waiting`` after requeue_after: never a paused one, and a resumed
    one whose job never reached the queue (the publish failed after the commit) is indexed in the end."""
    kb = await Indexing.make(con, llm)
    marker = f"neap{uuid.uuid4().hex[:8]}"
    async with embedding_held(llm, marker) as arrived:
        doc = await kb.add("swept.md", tide_log(marker, 3))
        await arrived()
        assert (await kb.act(doc, "pause")).status_code == 204
    await eventually(lambda: jobs_settled(con.stack), "the paused job to be acked")
    indexer = con.stack.ctx.local_apps["indexer"].state
    kn, workers = indexer.knowledge, indexer.workers
    long_ago = utcnow() - timedelta(seconds=kn.settings.requeue_after * 10)

    async def age() -> Document:
        async with kn.db.session() as s:
            await s.exec(update(Document).where(Document.id == doc).values(updated_at=long_ago))
            await s.commit()
            return await s.get(Document, doc)

    paused = await age()
    await workers.requeue_lost()
    async with kn.db.session() as s:
        now = await s.get(Document, doc)
    assert (now.indexing_status, now.index_version, now.updated_at) == ("paused", paused.index_version, long_ago)

    async def lost(*_: Any) -> None:
        raise ConnectionError("the job queue is unreachable")

    with monkeypatch.context() as m:
        m.setattr(kn, "enqueue", lost)
        with pytest.raises(ConnectionError):
            await DocumentService(kn).resume(paused.tenant_id, paused.dataset_id, doc)
    st = await kb.status(doc)
    assert (st["indexing_status"], st["paused_at"]) == ("waiting", None), st
    await age()
    assert await workers.requeue_lost() >= 1
    st = await kb.indexed(doc)
    assert (st["indexing_status"], st["total_segments"]) == ("completed", 3), st
    assert await kb.points(doc) == 3

"""Knowledge API (/v1/datasets …, reference §4), served by the indexer with a workspace-wide ``dataset-``
key (the gateway authenticates it and forwards the tenant in identity headers).

The same routes are the console's knowledge API under /console/api (reference §7), plus what only the console
has: file uploads, ``datasets/init``, documents from uploaded files, ``use-check``. There the caller is a
workspace member (or an admin key), whom the console authenticates and authorizes for the route over NATS
(CONSOLE_AUTHORIZE); dataset permissions (``only_me`` …) then apply to it (service/common.py ``CONSOLE_MEMBER``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import nats.errors
import orjson
import structlog
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, StringConstraints
from starlette.datastructures import UploadFile as StarletteUpload
from starlette.responses import Response

from services.indexer.service import Knowledge
from services.indexer.service.common import CONSOLE_MEMBER, invalid, tenant_of
from services.indexer.service.datasets import PERMISSIONS, DatasetService
from services.indexer.service.documents import DocumentService
from services.indexer.service.estimate import EstimateService
from services.indexer.service.metadata import MetadataService
from services.indexer.service.retrieval import RetrievalService
from services.indexer.service.segment_import import SegmentImports
from services.indexer.service.segments import SegmentService
from services.indexer.service.tags import TagService
from shared.context import Context
from shared.credentials import check_model_type, models_of_type
from shared.errors import INVALID_JSON, ApiError, canonical_uuid, unauthorized
from shared.http import create_base_app
from shared.identity import CONSOLE_PREFIX, H_CSRF, caller_from_request, cookie_header
from shared.knowledge.access import Member
from shared.knowledge.vectors_factory import build_vector_store
from shared.subjects import CONSOLE_AUTHORIZE

DatasetName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)]
Description = Annotated[str, StringConstraints(max_length=400)]
SUCCESS = {"result": "success"}
V1, CONSOLE = "/v1", CONSOLE_PREFIX
AUTHORIZE_TIMEOUT = 10.0  # seconds for the console's access check
MAX_BATCH = 100  # ids per console batch (documents, segments)
log = structlog.get_logger("plexus.indexer.api")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class DatasetCreate(_Body):
    name: DatasetName
    description: Description | None = ""
    indexing_technique: Literal["high_quality", "economy"] | None = None
    permission: Literal[PERMISSIONS] | None = "only_me"
    provider: Literal["vendor", "external"] | None = "vendor"
    embedding_model: str | None = None
    embedding_model_provider: str | None = None
    retrieval_model: dict[str, Any] | None = None
    partial_member_list: list[Any] | None = None  # permission partial_members: [{"user_id"}]


class DatasetPatch(_Body):
    name: DatasetName | None = None
    description: Description | None = None
    indexing_technique: Literal["high_quality", "economy"] | None = None
    permission: Literal[PERMISSIONS] | None = None
    embedding_model: str | None = None
    embedding_model_provider: str | None = None
    retrieval_model: dict[str, Any] | None = None
    partial_member_list: list[Any] | None = None


class StatusBody(_Body):
    document_ids: list[str]


class SegmentsBody(_Body):
    segments: list[Any]


class RetrieveBody(_Body):
    query: str | None = None
    retrieval_model: dict[str, Any] | None = None
    external_retrieval_model: dict[str, Any] | None = None


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        data = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", INVALID_JSON)
    return data


async def _multipart(request: Request, docs: DocumentService, *, file_required: bool
                     ) -> tuple[Any, dict[str, Any]]:
    """(file source or None, the `data` JSON) of a create/update-by-file form."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "Use multipart/form-data with a 'file' part.")
    form = await request.form(max_files=10)
    files = [v for v in form.getlist("file") if isinstance(v, StarletteUpload)]
    if len(files) > 1:
        raise ApiError(400, "too_many_files", "Only one file is allowed.")
    if not files and file_required:
        raise ApiError(400, "no_file_uploaded", "Please upload your file.")
    raw = form.get("data")
    data: Any = {}
    if isinstance(raw, str) and raw.strip():
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise invalid("data must be a JSON object") from None
    if not isinstance(data, dict):
        raise invalid("data must be a JSON object")
    src = docs.file_source(files[0].filename, files[0].file, files[0].size) if files else None
    return src, data


async def _tenant(request: Request) -> str:
    """The workspace the request acts in: the ``dataset-`` key's the gateway authenticated (/v1), or the console
    caller's (/console/api), which the console checks for this route."""
    kn: Knowledge = request.app.state.knowledge
    if not request.scope["path"].startswith(CONSOLE):
        return tenant_of(caller_from_request(request, kn.ctx.internal_secret))
    route = request.scope.get("route")
    payload = {"authorization": request.headers.get("authorization"), "method": request.method,
               "path": getattr(route, "path", request.scope["path"]).removeprefix(CONSOLE),
               "cookie": cookie_header(request.headers), "csrf_token": request.headers.get(H_CSRF)}
    try:
        msg = await kn.ctx.bus.nc.request(CONSOLE_AUTHORIZE, orjson.dumps(payload), timeout=AUTHORIZE_TIMEOUT)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError) as e:
        raise ApiError(503, "service_unavailable", f"The console could not check this request "
                                                   f"({type(e).__name__}); try again shortly.") from None
    reply = orjson.loads(msg.data)
    err = reply.get("error")
    if err is not None:
        status = int(err.get("status") or 500)
        if status >= 500:  # the console failed: its detail is for the logs, not the caller
            log.warning("console_authorize_failed", error=err)
            raise ApiError(503, "service_unavailable", "The console could not check this request; try again shortly.")
        message = err.get("message") or "The request was refused."
        raise unauthorized(message) if status == 401 else ApiError(status, err.get("code"), message)
    CONSOLE_MEMBER.set(Member(account_id=reply["account_id"], role=reply["role"]))
    return str(reply["tenant_id"])


Tenant = Annotated[str, Depends(_tenant)]
DocumentIds = Annotated[list[str] | None, Query()]
SegmentIds = Annotated[list[str] | None, Query()]
Page = Annotated[int, Query(ge=1, le=100_000)]
Limit = Annotated[int, Query(ge=1, le=100)]


def _batch_ids(ids: list[str] | None, name: str) -> list[str]:
    """A console batch's ids (``?name=a&name=b``): at least one, at most MAX_BATCH."""
    if not ids:
        raise invalid(f"{name} is required")
    if len(ids) > MAX_BATCH:
        raise invalid(f"At most {MAX_BATCH} ids ({name}) at once.")
    return ids


def build_router(kn: Knowledge, prefix: str = V1) -> APIRouter:
    """The knowledge routes under ``prefix``: /v1 (dataset keys) or /console/api (console callers)."""
    r = APIRouter(prefix=prefix)
    datasets, docs, segs, search = DatasetService(kn), DocumentService(kn), SegmentService(kn), RetrievalService(kn)
    meta, tags, estimates, imports = MetadataService(kn), TagService(kn), EstimateService(kn), SegmentImports(kn)

    if prefix == CONSOLE:  # first: "init" is no dataset id
        @r.post("/files/upload", status_code=201)
        async def upload(request: Request, t: Tenant) -> Response:
            src, _ = await _multipart(request, docs, file_required=True)
            return json_response(await docs.upload(t, src), 201)

        @r.post("/datasets/init")
        async def init_dataset(request: Request, t: Tenant) -> Response:
            return json_response(await docs.init(t, await _json_body(request)))

        @r.get("/datasets/process-rule")
        async def process_rule(t: Tenant, document_id: str | None = None) -> Response:
            return json_response(await estimates.process_rule(t, document_id))

        @r.post("/datasets/indexing-estimate")
        async def indexing_estimate(request: Request, t: Tenant) -> Response:
            body = await _json_body(request)
            return json_response(await estimates.estimate(request.app.state.workers, t, body))

        @r.post("/datasets/{dataset_id}/documents")
        async def create_documents(request: Request, t: Tenant, dataset_id: str) -> Response:
            out = await docs.create_from_files(t, dataset_id, await _json_body(request))
            return json_response({"dataset": await datasets.get(t, dataset_id), **out})

        @r.delete("/datasets/{dataset_id}/documents", status_code=204)
        async def delete_documents(t: Tenant, dataset_id: str, document_id: DocumentIds = None) -> Response:
            await docs.delete_many(t, dataset_id, _batch_ids(document_id, "document_id"))
            return Response(status_code=204)

        @r.get("/datasets/{dataset_id}/permission-part-users")
        async def partial_members(t: Tenant, dataset_id: str) -> Response:
            return json_response({"data": await datasets.members(t, dataset_id)})

        @r.get("/datasets/{dataset_id}/use-check")
        async def use_check(t: Tenant, dataset_id: str) -> Response:
            return json_response({"is_using": await datasets.in_use(t, dataset_id)})

        doc_path = "/datasets/{dataset_id}/documents/{document_id}"

        # the dataset's pages: rename, pause and resume indexing, the documents in error and their retry, the
        # apps that use it
        @r.post("/datasets/{dataset_id}/documents/{document_id}/rename")
        async def rename_document(request: Request, t: Tenant, dataset_id: str, document_id: str) -> Response:
            body = await _json_body(request)
            return json_response(await docs.rename(t, dataset_id, document_id, body.get("name")))

        @r.patch(doc_path + "/processing/pause", status_code=204)
        async def pause_document(t: Tenant, dataset_id: str, document_id: str) -> Response:
            await docs.pause(t, dataset_id, document_id)
            return Response(status_code=204)  # as Dify (and retry)

        @r.patch(doc_path + "/processing/resume", status_code=204)
        async def resume_document(t: Tenant, dataset_id: str, document_id: str) -> Response:
            await docs.resume(t, dataset_id, document_id)
            return Response(status_code=204)

        @r.get("/datasets/{dataset_id}/error-docs")
        async def error_documents(t: Tenant, dataset_id: str) -> Response:
            return json_response(await docs.error_documents(t, dataset_id))

        @r.post("/datasets/{dataset_id}/retry", status_code=204)
        async def retry_documents(request: Request, t: Tenant, dataset_id: str) -> Response:
            await docs.retry(t, dataset_id, (await _json_body(request)).get("document_ids"))
            return Response(status_code=204)

        @r.get("/datasets/{dataset_id}/related-apps")
        async def related_apps(t: Tenant, dataset_id: str) -> Response:
            return json_response(await datasets.related_apps(t, dataset_id))

        # segments from a CSV (a console upload), imported by a worker; the console polls the job
        @r.post(doc_path + "/segments/batch_import")
        async def import_segments(request: Request, t: Tenant, dataset_id: str, document_id: str) -> Response:
            return json_response(await imports.start(t, dataset_id, document_id, await _json_body(request)))

        @r.get("/datasets/batch_import_status/{job_id}")
        @r.get(doc_path + "/segments/batch_import/{job_id}")
        async def import_status(t: Tenant, job_id: str) -> Response:
            return json_response(await imports.status(t, job_id))

        # the console's own segment routes (Dify's datasets_segments.py): one at a time and in batches
        @r.post(doc_path + "/segment")
        async def add_one_segment(request: Request, t: Tenant, dataset_id: str, document_id: str) -> Response:
            out = await segs.add(t, dataset_id, document_id, [await _json_body(request)])
            return json_response({"data": out["data"][0], "doc_form": out["doc_form"]})

        @r.delete(doc_path + "/segments", status_code=204)
        async def delete_segments(t: Tenant, dataset_id: str, document_id: str,
                                  segment_id: SegmentIds = None) -> Response:
            await segs.delete_many(t, dataset_id, document_id, _batch_ids(segment_id, "segment_id"))
            return Response(status_code=204)

        @r.patch(doc_path + "/segment/{action}")
        async def toggle_segments(t: Tenant, dataset_id: str, document_id: str, action: Literal["enable", "disable"],
                                  segment_id: SegmentIds = None) -> Response:
            await segs.set_enabled_many(t, dataset_id, document_id, _batch_ids(segment_id, "segment_id"),
                                        action == "enable")
            return json_response(SUCCESS)

        @r.patch(doc_path + "/segments/{segment_id}/child_chunks")
        async def save_child_chunks(request: Request, t: Tenant, dataset_id: str, document_id: str,
                                    segment_id: str) -> Response:
            body = await _json_body(request)
            return json_response(await segs.replace_children(t, dataset_id, document_id, segment_id,
                                                             body.get("chunks")))

    # -- tags (reference §4.1); registered before /datasets/{dataset_id} so "tags" is never a dataset id ----
    @r.get("/datasets/tags")
    async def list_tags(t: Tenant) -> Response:
        return json_response(await tags.list(t))  # a bare list, as Dify

    @r.post("/datasets/tags")
    async def create_tag(request: Request, t: Tenant) -> Response:
        return json_response(await tags.create(t, await _json_body(request)))

    @r.patch("/datasets/tags")
    async def update_tag(request: Request, t: Tenant) -> Response:
        return json_response(await tags.update(t, await _json_body(request)))

    @r.delete("/datasets/tags")
    async def delete_tag(request: Request, t: Tenant) -> Response:
        await tags.delete(t, await _json_body(request))
        return Response(status_code=204)

    @r.post("/datasets/tags/binding")
    async def bind_tags(request: Request, t: Tenant) -> Response:
        await tags.bind(t, await _json_body(request))
        return Response(status_code=204)

    @r.post("/datasets/tags/unbinding")
    async def unbind_tags(request: Request, t: Tenant) -> Response:
        await tags.unbind(t, await _json_body(request))
        return Response(status_code=204)

    @r.get("/datasets/{dataset_id}/tags")
    async def dataset_tags(t: Tenant, dataset_id: str) -> Response:
        return json_response(await tags.of_dataset(t, dataset_id))

    # -- datasets --------------------------------------------------------------------------------------
    @r.post("/datasets")
    async def create_dataset(t: Tenant, body: DatasetCreate) -> Response:
        return json_response(await datasets.create(t, body.model_dump()))

    @r.get("/datasets")
    async def list_datasets(t: Tenant, page: Page = 1, limit: Limit = 20, keyword: str | None = None,
                            tag_ids: Annotated[list[str] | None, Query()] = None) -> Response:
        return json_response(await datasets.list(t, page=page, limit=limit, keyword=keyword, tag_ids=tag_ids))

    @r.get("/datasets/{dataset_id}")
    async def get_dataset(t: Tenant, dataset_id: str) -> Response:
        return json_response(await datasets.get(t, dataset_id))

    @r.api_route("/datasets/{dataset_id}", methods=["PATCH", "POST"])
    async def patch_dataset(t: Tenant, dataset_id: str, body: DatasetPatch) -> Response:
        return json_response(await datasets.update(t, dataset_id, body.model_dump(exclude_unset=True)))

    @r.delete("/datasets/{dataset_id}")
    async def delete_dataset(t: Tenant, dataset_id: str) -> Response:
        await datasets.delete(t, dataset_id)
        return Response(status_code=204)

    # -- documents -------------------------------------------------------------------------------------
    @r.post("/datasets/{dataset_id}/document/create-by-text")
    @r.post("/datasets/{dataset_id}/document/create_by_text")
    async def create_by_text(request: Request, t: Tenant, dataset_id: str) -> Response:
        body = await _json_body(request)
        return json_response(await docs.create(t, dataset_id, docs.text_source(body.get("name"), body.get("text")),
                                               body))

    @r.post("/datasets/{dataset_id}/document/create-by-file")
    @r.post("/datasets/{dataset_id}/document/create_by_file")
    async def create_by_file(request: Request, t: Tenant, dataset_id: str) -> Response:
        src, data = await _multipart(request, docs, file_required=True)
        return json_response(await docs.create(t, dataset_id, src, data))

    @r.post("/datasets/{dataset_id}/documents/{document_id}/update-by-text")
    @r.post("/datasets/{dataset_id}/documents/{document_id}/update_by_text")
    async def update_by_text(request: Request, t: Tenant, dataset_id: str, document_id: str) -> Response:
        body = await _json_body(request)
        src = None
        if body.get("text") is not None:
            name = body.get("name")
            if not isinstance(name, str) or not name.strip():
                name = (await docs.get(t, dataset_id, document_id))["name"].removesuffix(".txt")
            src = docs.text_source(name, body["text"])
        return json_response(await docs.update(t, dataset_id, document_id, src, body))

    @r.post("/datasets/{dataset_id}/documents/{document_id}/update-by-file")
    @r.post("/datasets/{dataset_id}/documents/{document_id}/update_by_file")
    async def update_by_file(request: Request, t: Tenant, dataset_id: str, document_id: str) -> Response:
        src, data = await _multipart(request, docs, file_required=False)
        return json_response(await docs.update(t, dataset_id, document_id, src, data))

    @r.get("/datasets/{dataset_id}/documents")
    async def list_documents(t: Tenant, dataset_id: str, page: Page = 1, limit: Limit = 20,
                             keyword: str | None = None, status: str | None = None) -> Response:
        return json_response(await docs.list(t, dataset_id, page=page, limit=limit, keyword=keyword, status=status))

    @r.patch("/datasets/{dataset_id}/documents/status/{action}")
    @r.patch("/datasets/{dataset_id}/documents/status/{action}/batch")
    async def document_status(t: Tenant, dataset_id: str, action: str, body: StatusBody | None = None,
                              document_id: DocumentIds = None) -> Response:
        # the knowledge API sends {"document_ids"}, Dify's console ?document_id=…&document_id=…
        ids = body.document_ids if body is not None else document_id
        if not ids:
            raise invalid("document_ids is required")
        await docs.set_status(t, dataset_id, action, ids)
        return json_response(SUCCESS)

    @r.get("/datasets/{dataset_id}/documents/{batch}/indexing-status")
    async def indexing_status(t: Tenant, dataset_id: str, batch: str) -> Response:
        # the service API names a batch here; Dify's console a document (its batches have /batch/{batch}).
        # Batch names are digits, document ids UUIDs: the console gets the one its caller means
        if prefix == CONSOLE and canonical_uuid(batch) is not None:
            return json_response(await docs.document_indexing_status(t, dataset_id, batch))
        return json_response(await docs.indexing_status(t, dataset_id, batch))

    @r.get("/datasets/{dataset_id}/batch/{batch}/indexing-status")
    async def batch_indexing_status(t: Tenant, dataset_id: str, batch: str) -> Response:
        return json_response(await docs.indexing_status(t, dataset_id, batch))

    @r.get("/datasets/{dataset_id}/documents/{document_id}/upload-file")
    async def upload_file(t: Tenant, dataset_id: str, document_id: str) -> Response:
        return json_response(await docs.upload_file(t, dataset_id, document_id))

    @r.get("/datasets/{dataset_id}/documents/{document_id}")
    async def get_document(t: Tenant, dataset_id: str, document_id: str,
                           metadata: Literal["all", "only", "without"] = "all") -> Response:
        return json_response(await docs.get(t, dataset_id, document_id, metadata))

    @r.delete("/datasets/{dataset_id}/documents/{document_id}")
    async def delete_document(t: Tenant, dataset_id: str, document_id: str) -> Response:
        await docs.delete(t, dataset_id, document_id)
        return json_response(SUCCESS)  # 200 + result, as the SDK's live test expects (reference §10.6)

    # -- segments --------------------------------------------------------------------------------------
    seg_base = "/datasets/{dataset_id}/documents/{document_id}/segments"

    @r.post(seg_base)
    async def add_segments(t: Tenant, dataset_id: str, document_id: str, body: SegmentsBody) -> Response:
        return json_response(await segs.add(t, dataset_id, document_id, body.segments))

    @r.get(seg_base)
    async def list_segments(t: Tenant, dataset_id: str, document_id: str, keyword: str | None = None,
                            status: Annotated[list[str] | None, Query()] = None, page: Page = 1, limit: Limit = 20,
                            enabled: Literal["all", "true", "false"] = "all",
                            hit_count_gte: Annotated[int | None, Query(ge=0)] = None) -> Response:
        return json_response(await segs.list(t, dataset_id, document_id, keyword=keyword, status=status,
                                             page=page, limit=limit, hit_count_gte=hit_count_gte,
                                             enabled=None if enabled == "all" else enabled == "true"))

    @r.get(seg_base + "/{segment_id}")
    async def get_segment(t: Tenant, dataset_id: str, document_id: str, segment_id: str) -> Response:
        return json_response(await segs.get(t, dataset_id, document_id, segment_id))

    @r.api_route(seg_base + "/{segment_id}", methods=["POST", "PATCH"])
    async def update_segment(request: Request, t: Tenant, dataset_id: str, document_id: str,
                             segment_id: str) -> Response:
        body = await _json_body(request)
        # the service API wraps the fields in "segment"; Dify's console sends them bare
        fields = body.get("segment") if prefix == V1 or "segment" in body else body
        if not isinstance(fields, dict):
            raise invalid("segment is required")
        return json_response(await segs.update(t, dataset_id, document_id, segment_id, fields))

    @r.delete(seg_base + "/{segment_id}")
    async def delete_segment(t: Tenant, dataset_id: str, document_id: str, segment_id: str) -> Response:
        await segs.delete(t, dataset_id, document_id, segment_id)
        return json_response(SUCCESS)

    # -- child chunks of a parent-child document's segment ---------------------------------------------------
    child_base = seg_base + "/{segment_id}/child_chunks"

    @r.get(child_base)
    async def list_child_chunks(t: Tenant, dataset_id: str, document_id: str, segment_id: str,
                                keyword: str | None = None, page: Page = 1, limit: Limit = 20) -> Response:
        return json_response(await segs.list_children(t, dataset_id, document_id, segment_id, keyword=keyword,
                                                      page=page, limit=limit))

    @r.post(child_base)
    async def add_child_chunk(request: Request, t: Tenant, dataset_id: str, document_id: str,
                              segment_id: str) -> Response:
        body = await _json_body(request)
        return json_response(await segs.add_child(t, dataset_id, document_id, segment_id, body))

    @r.patch(child_base + "/{child_chunk_id}")
    async def update_child_chunk(request: Request, t: Tenant, dataset_id: str, document_id: str, segment_id: str,
                                 child_chunk_id: str) -> Response:
        body = await _json_body(request)
        return json_response(await segs.update_child(t, dataset_id, document_id, segment_id, child_chunk_id, body))

    @r.delete(child_base + "/{child_chunk_id}")
    async def delete_child_chunk(t: Tenant, dataset_id: str, document_id: str, segment_id: str,
                                 child_chunk_id: str) -> Response:
        await segs.delete_child(t, dataset_id, document_id, segment_id, child_chunk_id)
        return Response(status_code=204)  # as Dify's service API

    # -- retrieval -------------------------------------------------------------------------------------
    @r.post("/datasets/{dataset_id}/retrieve")
    @r.post("/datasets/{dataset_id}/hit-testing")
    async def retrieve(t: Tenant, dataset_id: str, body: RetrieveBody) -> Response:
        return json_response(await search.hit_testing(t, dataset_id, body.query, body.retrieval_model))

    # -- metadata (reference §4.6) ---------------------------------------------------------------------
    @r.get("/datasets/{dataset_id}/metadata")
    async def list_metadata(t: Tenant, dataset_id: str) -> Response:
        return json_response(await meta.list(t, dataset_id))

    @r.post("/datasets/{dataset_id}/metadata")
    async def create_metadata(request: Request, t: Tenant, dataset_id: str) -> Response:
        body = await _json_body(request)
        return json_response(await meta.create(t, dataset_id, body.get("type"), body.get("name")))

    @r.get("/datasets/{dataset_id}/metadata/built-in")
    async def built_in_metadata(t: Tenant, dataset_id: str) -> Response:
        return json_response(meta.built_in_fields())

    @r.post("/datasets/{dataset_id}/metadata/built-in/{action}")
    async def toggle_built_in(t: Tenant, dataset_id: str, action: Literal["enable", "disable"]) -> Response:
        await meta.set_built_in(t, dataset_id, action == "enable")
        return json_response(SUCCESS)

    @r.patch("/datasets/{dataset_id}/metadata/{field_id}")
    async def rename_metadata(request: Request, t: Tenant, dataset_id: str, field_id: str) -> Response:
        body = await _json_body(request)
        return json_response(await meta.rename(t, dataset_id, field_id, body.get("name")))

    @r.delete("/datasets/{dataset_id}/metadata/{field_id}")
    async def delete_metadata(t: Tenant, dataset_id: str, field_id: str) -> Response:
        await meta.delete(t, dataset_id, field_id)
        return json_response(SUCCESS)

    @r.post("/datasets/{dataset_id}/documents/metadata")
    async def document_metadata(request: Request, t: Tenant, dataset_id: str) -> Response:
        body = await _json_body(request)
        await meta.update_documents(t, dataset_id, body.get("operation_data"))
        return json_response(SUCCESS)

    if prefix != V1:  # the console answers its own /workspaces routes
        return r

    # -- models ----------------------------------------------------------------------------------------
    @r.get("/workspaces/current/models/model-types/{model_type}")
    async def model_types(t: Tenant, model_type: str) -> Response:
        """The models of a type a dataset may name (shared.credentials.models_of_type)."""
        check_model_type(model_type)
        async with kn.db.session() as s:
            return json_response({"data": await models_of_type(s, kn.ctx.settings.secret_key, t, model_type)})

    return r


def create_app(ctx: Context) -> FastAPI:
    kn = Knowledge(ctx, build_vector_store(ctx.settings))
    app = create_base_app("indexer", checks={"database": ctx.db.ping, "nats": ctx.bus.ping,
                                             "vectors": kn.vectors.ping})
    app.state.knowledge = kn
    app.include_router(build_router(kn, V1))
    app.include_router(build_router(kn, CONSOLE))
    return app

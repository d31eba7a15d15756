"""Files in workflows (reference §2.15 ``files``, §2.17 file objects, §6 start variables of type ``file`` and
``file-list``, ``sys.files``, the document-extractor node, the LLM node's ``vision``).

A file object sent to a run (a start-node input, or the run's ``files``, which become ``sys.files``) is
checked as a chat message's files are (services/runtime/service/files.py: the same transfer methods, upload
lookup, SSRF-guarded fetch and size limits), against the start variable's own settings or the workflow's
``file_upload`` feature, and becomes a File value: a dict with Dify's File fields, which templates
(``{{#start.doc.filename#}}``), if-else and list-operator conditions and node inputs see. A value holds
references only (the upload id or the URL), as it is stored with the run: a node that needs the bytes
reads them again.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from sqlmodel import select

from services.runtime.service.errors import parse_uuid
from services.runtime.service.files import (
    FILE_OBJECT_TYPES,
    MODEL_IMAGE_FORMATS,
    TRANSFER_METHODS,
    UploadPolicy,
    check_file,
    sniff_of,
)
from services.runtime.workflow.engine import FILE_IDENTITY, NodeError
from shared.errors import ApiError, invalid_param
from shared.files import TOOL_FILES_PREFIX, Sniffed, file_view, preview_url
from shared.models import EndUser, MessageFile, UploadFile, utcnow

if TYPE_CHECKING:
    from services.runtime.service.cache import AppEntry
    from services.runtime.service.core import Runtime
    from services.runtime.service.files import FileService

log = structlog.get_logger("plexus.runtime.workflow.files")

FILE_VARIABLE_TYPES = ("file", "file-list")


def file_value(sniffed: Sniffed, method: str, *, related_id: str | None, remote_url: str | None, filename: str,
               size: int, url: str) -> dict[str, Any]:
    """A File as the variable pool holds it (Dify's File fields; ``extension`` with its dot, as Dify)."""
    return {"dify_model_identity": FILE_IDENTITY, "type": sniffed.type, "transfer_method": method,
            "remote_url": remote_url, "related_id": related_id, "filename": filename,
            "extension": f".{sniffed.extension}", "mime_type": sniffed.mime_type, "size": size, "url": url}


def is_file(value: Any) -> bool:
    return isinstance(value, dict) and value.get("transfer_method") in TRANSFER_METHODS and (
        bool(value.get("related_id")) if value["transfer_method"] == "local_file" else bool(value.get("remote_url")))


def variable_policy(var: dict[str, Any], default_limit: int) -> UploadPolicy:
    """A start variable's ``allowed_file_*`` settings (an empty list allows everything) and, for a
    file-list, ``max_length`` items (default: the deployment's workflow_file_upload_limit)."""
    def names(key: str) -> tuple[str, ...]:
        raw = var.get(key)
        return tuple(str(v) for v in raw) if isinstance(raw, list) else ()

    exts = tuple(e.lower().lstrip(".") for e in names("allowed_file_extensions"))
    limit = var.get("max_length") if var.get("type") == "file-list" else 1
    # Dify: an empty allowed_file_types / allowed_file_upload_methods allows them all
    return UploadPolicy(True, names("allowed_file_types") or FILE_OBJECT_TYPES, exts,
                        names("allowed_file_upload_methods") or TRANSFER_METHODS,
                        int(limit) if isinstance(limit, int) and limit > 0 else default_limit, "high")


class WorkflowFiles:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    @property
    def service(self) -> FileService:
        return self.rt.files  # created after the workflow service: looked up when used

    async def tool_files(self, tenant_id: str, end_user_id: str, files: list[Any]) -> list[dict[str, Any]]:
        """File values of the files a tool node's tool made: uploads of the run's end user, as any other file of
        the run (``local_file``), so later nodes (document extractor, vision, templates) read them."""
        stored = await self.service.store_tool_files(tenant_id, end_user_id, files)
        return [file_value(sniffed, "local_file", related_id=row.id, remote_url=None, filename=row.name,
                           size=row.size, url=self.service.tool_file_url(row)) for row, sniffed in stored]

    async def answer_file(self, tenant_id: str, app_id: str, message_id: str, end_user_id: str,
                          value: dict[str, Any]) -> dict[str, Any] | None:
        """A File an advanced-chat answer shows, recorded on the message as the assistant's (GET /messages lists
        it, and the preview serves a local one); its ``message_files`` item. A local file must be an upload of
        this app's users (a value a node made up cannot reach another app's or workspace's file): anything else
        is not shown (None)."""
        if value.get("transfer_method") == "local_file":
            upload = await self.service.app_upload(tenant_id, app_id, value.get("related_id"))
            if upload is None:
                log.info("answer_file_not_shown", message_id=message_id, related_id=str(value.get("related_id"))[:64])
                return None
            # the stored file speaks for itself; a tool's file is shown by its signed URL
            row = MessageFile(message_id=message_id, type=sniff_of(upload).type, upload_file_id=upload.id,
                              transfer_method="tool_file" if upload.object_name.startswith(TOOL_FILES_PREFIX)
                              else "local_file", filename=upload.name, mime_type=upload.mime_type,
                              size=upload.size, belongs_to="assistant", created_by=end_user_id)
        else:
            url = value.get("remote_url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                return None
            try:
                size = max(0, int(value.get("size") or 0))
            except (TypeError, ValueError):
                size = 0
            row = MessageFile(message_id=message_id, type=str(value.get("type") or "custom")[:16],
                              transfer_method="remote_url", url=url, filename=str(value.get("filename") or "")[:255],
                              mime_type=str(value.get("mime_type") or "")[:128], size=size, belongs_to="assistant",
                              created_by=end_user_id)
        async with self.rt.db.session() as s:
            s.add(row)
            await s.commit()
        return file_view(row, self.service.base, self.service.signer)

    # -- inputs ------------------------------------------------------------------------------------------
    async def start_inputs(self, app: AppEntry, variables: list[dict[str, Any]], cleaned: dict[str, Any],
                           end_user_id: str) -> dict[str, Any]:
        """``cleaned`` (validate_form's output) with the values of file and file-list variables resolved;
        a missing optional file is None, a missing optional file list []."""
        out = dict(cleaned)
        default_limit = self.service.settings.workflow_file_upload_limit
        for var in variables:
            kind, name = var.get("type"), var.get("variable")
            if kind not in FILE_VARIABLE_TYPES or not isinstance(name, str) or name not in cleaned:
                continue
            value = cleaned[name]
            policy = variable_policy(var, default_limit)
            if kind == "file":
                if value is None or value == "":
                    out[name] = None
                    continue
                if not isinstance(value, dict):
                    raise invalid_param(f"{name} in input form must be a file")
                (out[name],), _ = await self.resolve(app, policy, [value], end_user_id, lambda _i, n=name: n)
                continue
            if value is None or value == "":
                value = []
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise invalid_param(f"{name} in input form must be a list of files")
            if not value and var.get("required"):
                raise invalid_param(f"{name} is required in input form")
            if len(value) > policy.number_limits:
                raise invalid_param(f"{name} in input form must have at most {policy.number_limits} files")
            out[name], _ = await self.resolve(app, policy, value, end_user_id, lambda i, n=name: f"{n}[{i}]")
        return out

    async def system(self, app: AppEntry, features: dict[str, Any] | None, files: Any, end_user_id: str
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The run's ``files`` as ``sys.files`` values, and message_files rows for them (advanced-chat),
        checked against the workflow's ``file_upload`` feature. Unlike Dify, which drops files a workflow
        does not accept, a refusal is a 400."""
        if files is None or files == []:
            return [], []
        if not isinstance(files, list):
            raise invalid_param("files must be a list of file objects")
        policy = UploadPolicy.of((features or {}).get("file_upload"))
        if not policy.enabled:
            raise invalid_param("File upload is not enabled for this app.")
        if len(files) > policy.number_limits:
            raise invalid_param(f"Too many files: this app accepts at most {policy.number_limits} per run.")
        return await self.resolve(app, policy, files, end_user_id, lambda i: f"files[{i}]")

    async def resolve(self, app: AppEntry, policy: UploadPolicy, items: list[Any], end_user_id: str,
                      label: Callable[[int], str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """File values of ``items`` and the message_files rows that record them; every refusal is a 4xx that
        names the file (``label(i)``)."""
        values, rows = [], []
        for i, f in enumerate(items):
            where = label(i)
            declared, method, ref = check_file(policy, where, f)
            if method == "local_file":
                row = await self._upload(app, end_user_id, ref, where)
                sniffed = sniff_of(row)
                value = file_value(sniffed, method, related_id=row.id, remote_url=None, filename=row.name,
                                   size=row.size, url=preview_url(self.service.base, row.id))
            else:
                sniffed, data, name = await self.service.fetch(where, ref, declared)
                value = file_value(sniffed, method, related_id=None, remote_url=ref, filename=name,
                                   size=len(data), url=ref)
            if declared == "custom":
                if policy.extensions and sniffed.extension not in policy.extensions:
                    raise invalid_param(f"{where}: .{sniffed.extension} files are not allowed here (allowed: "
                                        f"{', '.join('.' + e for e in policy.extensions)}).")
            elif declared != sniffed.type:
                raise invalid_param(f"{where}: the file is a {sniffed.type}, not a {declared}.")
            values.append(value)
            rows.append({"upload_file_id": value["related_id"], "url": value["remote_url"],
                         "filename": value["filename"][:255], "mime_type": value["mime_type"][:128],
                         "size": value["size"], "type": sniffed.type, "transfer_method": method,
                         "belongs_to": "user", "created_by": end_user_id, "created_at": utcnow()})
        return values, rows

    async def _upload(self, app: AppEntry, end_user_id: str, ref: str, where: str) -> UploadFile:
        """An upload of this app by this end user: a run reads only what its own user uploaded. Another
        user's, app's or workspace's upload is "not found", like an unknown id."""
        missing = invalid_param(f"{where}: upload file {ref} not found.")
        fid = parse_uuid(ref, missing)
        async with self.rt.db.session() as s:
            row = (await s.exec(select(UploadFile).join(EndUser, EndUser.id == UploadFile.created_by).where(
                UploadFile.id == fid, UploadFile.tenant_id == app.tenant_id, EndUser.app_id == app.id,
                UploadFile.created_by == end_user_id))).first()
        if row is None:
            raise missing
        return row

    # -- nodes -------------------------------------------------------------------------------------------
    async def _source(self, tenant_id: str, app_id: str, value: dict[str, Any], declared: str
                      ) -> tuple[Sniffed, UploadFile | bytes, str]:
        """(type, the upload row or the fetched bytes, name) of a File value. A value may come from any node
        (a code node can shape one), so an upload must still be one of this app's, and a URL goes through the
        SSRF guard again."""
        name = str(value.get("filename") or "file")
        if value["transfer_method"] == "local_file":
            async with self.rt.db.session() as s:
                row = (await s.exec(select(UploadFile).join(EndUser, EndUser.id == UploadFile.created_by).where(
                    UploadFile.id == str(value["related_id"]), UploadFile.tenant_id == tenant_id,
                    EndUser.app_id == app_id))).first()
            if row is None:
                raise NodeError(f"{name}: the uploaded file was not found")
            return sniff_of(row), row, row.name
        try:
            sniffed, data, fetched = await self.service.fetch(name, str(value["remote_url"]), declared)
        except ApiError as e:
            raise NodeError(e.message) from None
        return sniffed, data, fetched

    async def text(self, tenant_id: str, app_id: str, value: Any, chars: int) -> str:
        """The text of one document (at most ``chars`` characters), for the document-extractor node."""
        if not is_file(value):
            raise NodeError("the document extractor needs a file, got "
                            f"{'an object' if isinstance(value, dict) else type(value).__name__}")
        sniffed, src, name = await self._source(tenant_id, app_id, value, "document")
        if sniffed.type != "document":
            raise NodeError(f"{name}: {sniffed.type} files have no text to extract; the document extractor "
                            "reads documents (pdf, docx, xlsx, pptx, txt, md, html, csv, eml)")
        text, error = await self.service.parse(sniffed, src, chars)
        if error is not None:
            raise NodeError(f"{name}: {error}")
        return text

    async def image_url(self, tenant_id: str, app_id: str, value: dict[str, Any]) -> str | None:
        """An image File as a data URL for a model (as chat sends images); None for any other file."""
        if not is_file(value) or value.get("type") != "image":
            return None
        sniffed, src, name = await self._source(tenant_id, app_id, value, "image")
        if sniffed.type != "image":
            return None
        if sniffed.kind not in MODEL_IMAGE_FORMATS:
            raise NodeError(f"{name}: {sniffed.kind.upper()} images cannot be sent to a model; "
                            "use PNG, JPEG, GIF or WebP.")
        data = src if isinstance(src, bytes) else await self.service.store.get_bytes(src.object_name)
        return f"data:{sniffed.mime_type};base64,{base64.b64encode(data).decode()}"

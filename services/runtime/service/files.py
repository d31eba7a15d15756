"""App files (reference §2.13, §2.17): uploads with an app key, their preview, and the ``files`` of chat and
completion messages.

An upload is typed by shared.files.sniff_upload (extension confirmed by content), limited per type by the
``files`` settings (what ``/parameters`` shows as ``system_parameters``), stored in the object store and kept
as an upload_files row of the app's workspace, created by the end user. Only files uploaded through the
same app can be attached, and previewed once attached to one of its messages (reference §2.13).

Files sent with a message are checked against the app's ``file_upload`` feature, then made ready for the
model: images become data URLs in the user message (only for a model that takes images), documents are
parsed to text with the indexer's parsers (in a thread, only as far as the prompt takes; kept per upload)
and put in front of the query, capped. A ``remote_url`` is fetched through the SSRF guard (shared.egress,
with the files' own allowlist) under the same size limits. The message keeps references (message_files
rows), never bytes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import structlog
from sqlalchemy import insert
from sqlmodel import select

from services.runtime.service.errors import DEFAULT_USER
from services.runtime.service.prompt import with_documents, with_images
from shared.db import Step
from shared.egress import Egress, EgressError, EgressPolicy
from shared.errors import ApiError, canonical_uuid, invalid_param
from shared.files import (
    EXTENSION_OF_MIME,
    SNIFF_BYTES,
    TOOL_FILE_PATH,
    TOOL_FILES_PREFIX,
    FileSigner,
    FileStore,
    Sniffed,
    UnsupportedFileType,
    extension_of,
    file_type_of,
    file_view,
    preview_url,
    sniff_upload,
    upload_name,
)
from shared.identity import Caller
from shared.lru import Lru
from shared.models import EndUser, Message, MessageFile, UploadFile, new_id, ts, utcnow
from shared.parse import ParseError, extract_head

if TYPE_CHECKING:
    from sqlmodel.ext.asyncio.session import AsyncSession

    from services.runtime.service.cache import AppEntry
    from services.runtime.service.core import Runtime

log = structlog.get_logger("plexus.runtime.files")

FILE_OBJECT_TYPES = ("image", "document", "audio", "video", "custom")
TRANSFER_METHODS = ("local_file", "remote_url")
MODEL_IMAGE_FORMATS = ("png", "jpeg", "gif", "webp")  # what vision APIs take (no SVG)
INSERT_MESSAGE_FILES = insert(MessageFile.__table__)
DOCUMENT_TEXTS_KEPT = 128  # uploads whose prompt text stays in memory (each at most document_prompt_chars)


def file_too_large(limit: int) -> ApiError:
    return ApiError(413, "file_too_large", f"File size exceeded. The limit is {limit // (1024 * 1024)} MB.")


def unsupported(message: str) -> ApiError:
    return ApiError(415, "unsupported_file_type", message)


def file_not_found() -> ApiError:
    return ApiError(404, "file_not_found", "File not found.")


def file_access_denied() -> ApiError:
    return ApiError(403, "file_access_denied",
                    "Access to the requested file is denied: a file can be previewed once it is attached to a message.")


@lru_cache(maxsize=1024)
def _litellm_vision(model: str) -> bool:
    from shared.llm import litellm

    try:
        return bool(litellm().supports_vision(model=model))
    except Exception:  # noqa: BLE001 - litellm raises for models missing from its map: unknown = no
        return False


def takes_images(app: AppEntry) -> bool:
    """Vision per litellm's model map, or declared by the app's model config (``model.features`` containing
    "vision", Dify's word) for models litellm does not know, such as a self-hosted OpenAI-compatible one."""
    assert app.config is not None and app.binding is not None
    features = (app.config.model.model_extra or {}).get("features")
    if isinstance(features, list) and "vision" in features:
        return True
    return _litellm_vision(str(app.binding.kwargs.get("model", "")))


def check_file(policy: UploadPolicy, where: str, f: Any) -> tuple[str, str, str]:
    """(declared type, transfer method, upload id or URL) of one file object (reference §2.17) named ``where`` in
    the messages, against the policy: of a message, a run's ``files`` or a start-node file variable."""
    if not isinstance(f, dict):
        raise invalid_param(f"{where} must be a file object with type and transfer_method")
    declared, method = f.get("type"), f.get("transfer_method")
    if declared not in FILE_OBJECT_TYPES:
        raise invalid_param(f"{where}.type must be one of {', '.join(FILE_OBJECT_TYPES)}")
    if method not in TRANSFER_METHODS:
        raise invalid_param(f"{where}.transfer_method must be local_file or remote_url")
    if declared not in policy.types:
        raise invalid_param(f"{where}: {declared} files are not allowed here (allowed: {', '.join(policy.types)}).")
    if method not in policy.methods:
        raise invalid_param(f"{where}: transfer method {method} is not allowed here "
                            f"(allowed: {', '.join(policy.methods)}).")
    key = "upload_file_id" if method == "local_file" else "url"
    ref = f.get(key)
    if not isinstance(ref, str) or not ref.strip():
        raise invalid_param(f"{where}.{key} is required for transfer_method {method}")
    return str(declared), str(method), ref.strip()


@dataclass(frozen=True, slots=True)
class UploadPolicy:
    """The app's ``file_upload`` feature: Dify's newer keys, or the legacy ``image`` block alone."""

    enabled: bool
    types: tuple[str, ...]
    extensions: tuple[str, ...]  # for "custom", without dots
    methods: tuple[str, ...]
    number_limits: int
    detail: str

    @classmethod
    def of(cls, raw: dict[str, Any] | None) -> UploadPolicy:
        raw = raw if isinstance(raw, dict) else {}
        image = raw.get("image") if isinstance(raw.get("image"), dict) else {}
        detail = str(image.get("detail") or "high")
        if raw.get("enabled"):
            types = tuple(raw.get("allowed_file_types") or ("image",))
            methods = tuple(raw.get("allowed_file_upload_methods") or image.get("transfer_methods")
                            or TRANSFER_METHODS)
            limit = raw.get("number_limits") or image.get("number_limits") or 3
            exts = tuple(str(e).lower().lstrip(".") for e in raw.get("allowed_file_extensions") or ())
            return cls(True, types, exts, methods, int(limit), detail)
        if image.get("enabled"):
            return cls(True, ("image",), (), tuple(image.get("transfer_methods") or TRANSFER_METHODS),
                       int(image.get("number_limits") or 3), detail)
        return cls(False, (), (), (), 0, detail)


@dataclass(slots=True)
class Attachments:
    """What the files of one message add: image data URLs, document texts, and the message_files rows."""

    images: list[str] = field(default_factory=list)
    documents: list[tuple[str, str]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    detail: str = "high"
    max_chars: int = 30_000

    def query(self, query: str) -> str:
        """The user's message text with the attached documents in front."""
        return with_documents(query, self.documents, self.max_chars)

    def apply(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return with_images(messages, self.images, self.detail)

    def record(self, message_id: str) -> Step:
        """The message_files rows, a step of the write that inserts the message."""
        return INSERT_MESSAGE_FILES, [{**r, "id": new_id(), "message_id": message_id} for r in self.rows]


@dataclass(frozen=True, slots=True)
class Preview:
    path: Path  # a temporary copy; the caller deletes it once sent
    filename: str
    mime_type: str
    size: int


class FileService:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.settings = rt.ctx.settings.files
        self.store = FileStore(rt.bus)
        self.base = rt.ctx.settings.public_api_base.rstrip("/")
        secret = rt.ctx.settings.secret_key
        # tool files get signed URLs (an <img> needs no key); without a secret, the keyed preview URL
        self.signer = FileSigner(self.base, secret, self.settings.signed_url_seconds) if secret else None
        # not the tools' allowlist: what an operator opens to custom tools and HTTP nodes is not for every app key
        self.egress = Egress(EgressPolicy.from_allowlist(self.settings.remote_url_allowlist),
                             user_agent="Plexus-Files/1.0")
        # upload id → (its document text for the prompt, or why it cannot be read): uploads never change
        self.texts: Lru[str, tuple[str, str | None]] = Lru(DOCUMENT_TEXTS_KEPT)

    async def close(self) -> None:
        await self.egress.close()

    def system_parameters(self) -> dict[str, int]:
        s = self.settings
        return {"image_file_size_limit": s.image_file_size_limit, "video_file_size_limit": s.video_file_size_limit,
                "audio_file_size_limit": s.audio_file_size_limit, "file_size_limit": s.file_size_limit,
                "workflow_file_upload_limit": s.workflow_file_upload_limit}

    # -- upload and preview -----------------------------------------------------------------------------
    async def upload(self, caller: Caller, filename: str | None, file: BinaryIO, user: str | None
                     ) -> dict[str, Any]:
        app = await self.rt.app_for(caller)
        if not filename or not filename.strip():
            raise ApiError(400, "filename_not_exists_error", "The specified filename does not exist.")
        name = upload_name(filename)
        type_ = file_type_of(extension_of(name))
        if type_ is not None:  # an unknown type is a 415 from the sniffer below, whatever its size
            file.seek(0, io.SEEK_END)
            size = file.tell()
            limit = self.settings.limit_bytes(type_)
            if size > limit:
                raise file_too_large(limit)
        file.seek(0)
        head = file.read(SNIFF_BYTES)
        file.seek(0)
        try:
            sniffed = sniff_upload(name, head)
        except UnsupportedFileType as e:
            raise unsupported(str(e)) from None
        end_user_id = await self.rt.end_users.get(app.tenant_id, app.id, user or DEFAULT_USER)
        row = UploadFile(tenant_id=app.tenant_id, name=name, size=0, extension=sniffed.extension,
                         mime_type=sniffed.mime_type, object_name="", created_by=end_user_id)
        row.object_name = f"upload/{app.tenant_id}/{row.id}"
        row.size = await self.store.put(row.object_name, file)
        async with self.store.kept_if_recorded(row.object_name), self.rt.db.session() as s:
            s.add(row)
            await s.commit()
        return self.upload_view(row)

    async def store_tool_files(self, tenant_id: str, end_user_id: str, files: list[Any]
                               ) -> list[tuple[UploadFile, Sniffed]]:
        """Files a tool made (shared.tool_catalog's {filename, mime_type, data}), stored and recorded as the end
        user's uploads, so that messages and workflow values can refer to them like to any upload. A file whose
        bytes are no type Plexus knows is dropped (logged)."""
        made: list[tuple[UploadFile, Sniffed, bytes]] = []
        for f in files:
            try:
                data = base64.b64decode(f["data"], validate=True)
                name = upload_name(str(f.get("filename") or "file"))
                sniffed = sniff_upload(name, data[:SNIFF_BYTES])
            except (KeyError, TypeError, ValueError, UnsupportedFileType) as e:
                log.warning("tool_file_dropped", reason=str(e))
                continue
            row = UploadFile(tenant_id=tenant_id, name=name, size=len(data), extension=sniffed.extension,
                             mime_type=sniffed.mime_type, object_name="", created_by=end_user_id)
            row.object_name = f"{TOOL_FILES_PREFIX}{tenant_id}/{row.id}"
            made.append((row, sniffed, data))
        async with contextlib.AsyncExitStack() as stack:
            for row, _, data in made:
                await self.store.put(row.object_name, data)
                await stack.enter_async_context(self.store.kept_if_recorded(row.object_name))
            async with self.rt.db.session() as s:
                s.add_all([row for row, _, _ in made])
                await s.commit()
        return [(row, sniffed) for row, sniffed, _ in made]

    async def tool_files(self, tenant_id: str, end_user_id: str, message_id: str, files: list[Any]
                         ) -> list[dict[str, Any]]:
        """An agent's tool files, stored and attached to its message (``belongs_to`` assistant,
        ``transfer_method`` tool_file): GET /messages lists them and the preview serves them. Their
        ``message_files`` items."""
        stored = await self.store_tool_files(tenant_id, end_user_id, files)
        rows = [MessageFile(message_id=message_id, type=sniffed.type, transfer_method="tool_file",
                            upload_file_id=row.id, filename=row.name, mime_type=row.mime_type, size=row.size,
                            belongs_to="assistant", created_by=end_user_id) for row, sniffed in stored]
        async with self.rt.db.session() as s:
            s.add_all(rows)
            await s.commit()
        return [file_view(mf, self.base, self.signer) for mf in rows]

    def tool_file_url(self, row: UploadFile) -> str:
        return self.signer.url(row.id, row.extension) if self.signer else preview_url(self.base, row.id)

    def resigned(self, value: Any) -> Any:
        """``value`` (stored outputs) with a fresh signed URL in every File value that links a tool's file:
        the stored link expired minutes after the run, as Dify's signs each time it shows one."""
        if isinstance(value, list):
            return [self.resigned(v) for v in value]
        if not isinstance(value, dict):
            return value
        if self.signer is not None and value.get("related_id") and TOOL_FILE_PATH in str(value.get("url") or ""):
            return {**value, "url": self.signer.url(str(value["related_id"]),
                                                    str(value.get("extension") or "").lstrip("."))}
        return {k: self.resigned(v) for k, v in value.items()}

    async def signed_tool_file(self, name: str, timestamp: str, nonce: str, sign: str) -> Preview:
        """A tool's file by its signed URL (``<upload id>.<extension>``): 403 for a bad or expired signature,
        404 for what is no tool's file."""
        file_id = name.rsplit(".", 1)[0]
        if self.signer is None or not self.signer.check(file_id, timestamp, nonce, sign):
            raise ApiError(403, "file_access_denied", "The file's link is invalid or has expired.")
        async with self.rt.db.session() as s:
            row = await s.get(UploadFile, file_id)
        if row is None or not row.object_name.startswith(TOOL_FILES_PREFIX):
            raise file_not_found()
        return await self._copy(row)

    def upload_view(self, row: UploadFile) -> dict[str, Any]:
        """The 201 body (reference §2.13): the seven stable fields, then the newer nullable ones."""
        url = preview_url(self.base, row.id)
        return {"id": row.id, "name": row.name, "size": row.size, "extension": row.extension,
                "mime_type": row.mime_type, "created_by": row.created_by, "created_at": ts(row.created_at),
                "preview_url": url, "source_url": url, "original_url": None, "user_id": row.created_by,
                "tenant_id": row.tenant_id, "conversation_id": None, "file_key": None}

    async def app_upload(self, tenant_id: str, app_id: str, file_id: Any) -> UploadFile | None:
        """An upload of this app (uploaded by one of its end users), else None: another workspace's file,
        another app's, a knowledge document's file and an id that is no UUID all look the same from here."""
        fid = canonical_uuid(file_id)
        if fid is None:
            return None
        async with self.rt.db.session() as s:
            return (await s.exec(select(UploadFile).join(EndUser, EndUser.id == UploadFile.created_by).where(
                UploadFile.id == fid, UploadFile.tenant_id == tenant_id, EndUser.app_id == app_id))).first()

    async def _app_file(self, app: AppEntry, file_id: str, missing: ApiError) -> UploadFile:
        row = await self.app_upload(app.tenant_id, app.id, file_id)
        if row is None:
            raise missing
        return row

    async def preview(self, caller: Caller, file_id: str) -> Preview:
        """An upload of this app, once attached to one of its messages (reference §2.13); before that a 403.
        Another app's or workspace's file is a 404, like an unknown id."""
        app = await self.rt.app_for(caller)
        row = await self._app_file(app, file_id, file_not_found())
        async with self.rt.db.session() as s:
            attached = (await s.exec(select(MessageFile.id).join(Message, Message.id == MessageFile.message_id)
                                     .where(MessageFile.upload_file_id == row.id, Message.app_id == app.id)
                                     .limit(1))).first()
        if attached is None:
            raise file_access_denied()
        return await self._copy(row)

    async def _copy(self, row: UploadFile) -> Preview:
        """The stored bytes in a temporary file the response sends and then removes."""
        fd, tmp = tempfile.mkstemp(prefix="plexus-preview-")
        path = Path(tmp)
        os.close(fd)
        try:
            await self.store.get_to(row.object_name, path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return Preview(path, row.name, row.mime_type, path.stat().st_size)

    # -- files of a message -----------------------------------------------------------------------------
    async def attach(self, app: AppEntry, end_user_id: str, files: Any) -> Attachments | None:
        """Check a chat/completion request's ``files`` and make them ready for the prompt; None without
        files. Every refusal is a 4xx that names the file."""
        if files is None or files == []:
            return None
        if not isinstance(files, list):
            raise invalid_param("files must be a list of file objects")
        assert app.config is not None
        policy = UploadPolicy.of(app.config.file_upload)
        if not policy.enabled:
            raise invalid_param("File upload is not enabled for this app.")
        if len(files) > policy.number_limits:
            raise invalid_param(f"Too many files: this app accepts at most {policy.number_limits} per message.")
        items = [self._check(policy, f"files[{i}]", f) for i, f in enumerate(files)]
        if any(declared == "image" for declared, _m, _r in items) and not takes_images(app):
            raise self._no_vision(app)
        out = Attachments(detail=policy.detail if policy.detail in ("high", "low", "auto") else "high",
                          max_chars=self.settings.document_prompt_chars)
        for i, (declared, method, ref) in enumerate(items):
            if method == "local_file":
                row = await self._app_file(app, ref, invalid_param(f"files[{i}]: upload file {ref} not found."))
                sniffed = sniff_of(row)
                data_src: Any = row
                meta = {"upload_file_id": row.id, "url": None, "filename": row.name, "mime_type": row.mime_type,
                        "size": row.size}
            else:
                sniffed, data_src, name = await self.fetch(i, ref, declared)
                meta = {"upload_file_id": None, "url": ref, "filename": name, "mime_type": sniffed.mime_type,
                        "size": len(data_src)}
            if declared == "custom":
                if policy.extensions and sniffed.extension not in policy.extensions:
                    raise invalid_param(f"files[{i}]: .{sniffed.extension} files are not allowed for this app.")
            elif declared != sniffed.type:
                raise invalid_param(f"files[{i}]: the file is a {sniffed.type}, not a {declared}.")
            await self._add(app, out, i, sniffed, data_src, meta["filename"])
            out.rows.append({**meta, "type": sniffed.type, "transfer_method": method, "belongs_to": "user",
                             "created_by": end_user_id, "created_at": utcnow()})
        return out

    @staticmethod
    def _check(policy: UploadPolicy, where: str, f: Any) -> tuple[str, str, str]:
        """check_file, for a message: audio and video have no way to the model."""
        declared, method, ref = check_file(policy, where, f)
        if declared in ("audio", "video"):
            raise invalid_param(f"{where}: {declared} files cannot be sent to the model.")
        return declared, method, ref

    def _no_vision(self, app: AppEntry) -> ApiError:
        assert app.binding is not None
        return invalid_param(
            f"The model {app.binding.model} does not accept images. Use a vision model, or declare "
            '"features": ["vision"] in the app\'s model config if this model does accept them.')

    async def fetch(self, i: int | str, url: str, declared: str) -> tuple[Sniffed, bytes, str]:
        """A remote file through the SSRF guard, at most the declared type's size limit; a "custom" file at most
        the larger of the image and document limits, as only those can go to a model (audio and video are
        refused once sniffed, so their larger limits would only let more bytes into memory). ``i``: the file's
        index in ``files``, or a label for the messages (a workflow input names its variable)."""
        where = i if isinstance(i, str) else f"files[{i}]"
        limit = self.settings.limit_bytes(declared) if declared in ("image", "document") else max(
            self.settings.limit_bytes("image"), self.settings.limit_bytes("document"))
        try:
            resp = await self.egress.request("GET", url, timeout=self.settings.remote_url_timeout,
                                             max_bytes=limit, max_redirects=3)
        except EgressError as e:
            if e.code == "response_too_large":
                raise file_too_large(limit) from None
            # the reason names addresses and DNS answers of the server's network: for the log only
            log.info("remote_file_not_fetched", host=url_host(url), code=e.code, reason=e.message)
            raise invalid_param(f"{where}: the file at this URL cannot be fetched.") from None
        if not 200 <= resp.status < 300:  # a host the guard let through: its status helps the client
            raise invalid_param(f"{where}: the file at this URL cannot be fetched (HTTP {resp.status}).")
        name = remote_name(resp.url, resp.headers.get("Content-Type", ""))
        try:
            sniffed = sniff_upload(name, resp.body[:SNIFF_BYTES])
        except UnsupportedFileType as e:
            raise unsupported(f"{where}: {e}") from None
        if len(resp.body) > self.settings.limit_bytes(sniffed.type):
            raise file_too_large(self.settings.limit_bytes(sniffed.type))
        return sniffed, resp.body, name

    async def _add(self, app: AppEntry, out: Attachments, i: int, sniffed: Sniffed, src: UploadFile | bytes,
                   name: str) -> None:
        if sniffed.type == "image":
            if sniffed.kind not in MODEL_IMAGE_FORMATS:
                raise invalid_param(f"files[{i}]: {sniffed.kind.upper()} images cannot be sent to a model; "
                                    "use PNG, JPEG, GIF or WebP.")
            if not takes_images(app):  # a "custom" file that turned out to be an image
                raise self._no_vision(app)
            data = src if isinstance(src, bytes) else await self.store.get_bytes(src.object_name)
            out.images.append(f"data:{sniffed.mime_type};base64,{base64.b64encode(data).decode()}")
        elif sniffed.type == "document":
            out.documents.append((name, await self._document_text(i, sniffed, src, name)))
        else:
            raise invalid_param(f"files[{i}]: {sniffed.type} files cannot be sent to the model.")

    async def _document_text(self, i: int, sniffed: Sniffed, src: UploadFile | bytes, name: str) -> str:
        """The text of a document, as much as one message's prompt takes; an upload's is kept (uploads are
        immutable), so attaching it to every message of a conversation parses it once."""
        key = src.id if isinstance(src, UploadFile) else None
        parsed = self.texts.get(key) if key is not None else None
        if parsed is None:
            parsed = await self.parse(sniffed, src)
            if key is not None:
                self.texts.put(key, parsed)
        text, error = parsed
        if error is not None:
            raise invalid_param(f"files[{i}] ({name}): {error}")
        return text

    async def parse(self, sniffed: Sniffed, src: UploadFile | bytes, chars: int | None = None
                     ) -> tuple[str, str | None]:
        """(the text, None), or ("", why the document cannot be read); at most ``chars`` characters (default:
        what one message's prompt takes)."""
        with tempfile.TemporaryDirectory(prefix="plexus-doc-") as tmp:
            path = Path(tmp) / "file"
            if isinstance(src, bytes):
                path.write_bytes(src)
            else:
                await self.store.get_to(src.object_name, path)
            try:  # parsing is CPU-bound: off the event loop; and stops at what the prompt takes (cut, not refused)
                elements, _cut = await asyncio.to_thread(extract_head, path, sniffed.kind,
                                                         chars or self.settings.document_prompt_chars)
            except (ParseError, UnsupportedFileType) as e:  # the bytes decide: the same every time
                return "", str(e)
        return "\n\n".join(e.text for e in elements), None

    async def message_files(self, s: AsyncSession, message_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """message id → its ``message_files`` items, oldest first."""
        out: dict[str, list[dict[str, Any]]] = {}
        if not message_ids:
            return out
        rows = (await s.exec(select(MessageFile).where(MessageFile.message_id.in_(message_ids))  # type: ignore[attr-defined]
                             .order_by(MessageFile.created_at, MessageFile.id))).all()
        for row in rows:
            out.setdefault(row.message_id, []).append(file_view(row, self.base, self.signer))
        return out


def sniff_of(row: UploadFile) -> Sniffed:
    """The stored type of an upload (sniffed when it was uploaded)."""
    type_ = file_type_of(row.extension) or "document"
    kind = row.mime_type.split("/", 1)[1] if type_ == "image" and "/" in row.mime_type else row.extension
    if type_ == "image" and kind == "svg+xml":
        kind = "svg"
    if type_ == "document":
        kind = {"markdown": "md", "mdx": "md", "htm": "html"}.get(row.extension, row.extension)
    return Sniffed(type_, row.extension, row.mime_type, kind)


def url_host(url: str) -> str | None:
    """For the log: the host alone (a signed URL's query string is a credential)."""
    try:
        return urllib.parse.urlsplit(url).hostname
    except ValueError:
        return None


def remote_name(url: str, content_type: str) -> str:
    """A file name for a fetched URL: its last path segment, with an extension from the Content-Type when the
    URL has none."""
    path = urllib.parse.urlsplit(url).path
    name = upload_name(urllib.parse.unquote(path.rsplit("/", 1)[-1]), limit=200) or "file"
    if file_type_of(extension_of(name)) is None:
        ext = EXTENSION_OF_MIME.get(content_type.split(";", 1)[0].strip().lower())
        if ext:
            name = f"{name}.{ext}"
    return name

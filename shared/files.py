"""Uploaded files: the object store that keeps their bytes, and the one place that decides what a file
really is.

Bytes live in the object store (ARCHITECTURE §3): NATS JetStream Object Store by default, so no extra server
is needed. Rows keep the object name; bytes never travel in messages.

``sniff_upload`` types a file from its name *and* its first bytes: the extension claims a type (image,
document, audio, video; Dify's sets, reference §2.17), the content must bear it out. Documents are checked by
the parser's own sniffer (shared.parse), so a file the knowledge API or a chat message accepts is one the
parser can read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import re
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import nats.js.errors
import structlog

from shared.bus import Bus

if TYPE_CHECKING:
    from shared.models import MessageFile

from shared.parse import SNIFF_BYTES, SUPPORTED, UnsupportedFileType, sniff

log = structlog.get_logger("plexus.files")

__all__ = ["FILE_TYPES", "MIME", "SNIFF_BYTES", "FileStore", "Sniffed", "UnsupportedFileType", "extension_of",
           "file_type_of", "file_view", "preview_url", "sniff_upload", "upload_name"]

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "gif", "webp", "svg"})
AUDIO_EXTENSIONS = frozenset({"mp3", "m4a", "wav", "webm", "amr", "mpga"})
VIDEO_EXTENSIONS = frozenset({"mp4", "mov", "mpeg"})  # .webm is audio first, as in Dify
# documents: the kinds the parser reads (Dify also lists .doc/.xls/.ppt/.epub …, which nothing here can read)
FILE_TYPES: dict[str, frozenset[str]] = {
    "image": IMAGE_EXTENSIONS,
    "document": SUPPORTED,
    "audio": AUDIO_EXTENSIONS,
    "video": VIDEO_EXTENSIONS,
}
MIME = {
    "pdf": "application/pdf", "txt": "text/plain", "md": "text/markdown", "markdown": "text/markdown",
    "mdx": "text/markdown", "html": "text/html", "htm": "text/html", "csv": "text/csv", "eml": "message/rfc822",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp",
    "svg": "image/svg+xml",
    "mp3": "audio/mpeg", "mpga": "audio/mpeg", "m4a": "audio/mp4", "wav": "audio/wav", "webm": "audio/webm",
    "amr": "audio/amr", "mp4": "video/mp4", "mov": "video/quicktime", "mpeg": "video/mpeg",
}
# what a remote file without an extension in its URL is, by the Content-Type it came with
EXTENSION_OF_MIME = {
    "image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp", "image/svg+xml": "svg",
    "application/pdf": "pdf", "text/plain": "txt", "text/markdown": "md", "text/html": "html", "text/csv": "csv",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "pptx",
    "audio/mpeg": "mp3", "audio/wav": "wav", "audio/x-wav": "wav", "audio/mp4": "m4a", "audio/webm": "webm",
    "video/mp4": "mp4", "video/quicktime": "mov", "video/mpeg": "mpeg",
}
_SVG = re.compile(rb"<svg[\s>/]", re.IGNORECASE)
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")  # MP4/MOV/M4A start with one of these


@dataclass(frozen=True, slots=True)
class Sniffed:
    type: str  # image | document | audio | video
    extension: str  # as named, lowercase, without the dot
    mime_type: str  # of the real content (a PNG named .jpg is image/png)
    kind: str  # documents: the parser's kind (shared.parse.extract); others: the real format


def upload_name(filename: str, limit: int = 255) -> str:
    """The name to keep for an uploaded file: its last path segment (a browser may send a Windows path), at
    most ``limit`` characters. A longer name loses the end of its stem, not its extension, which decides the
    file's type."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if len(name) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    if not stem or len(ext) + 1 >= limit:  # no extension, or one that leaves no room for a stem
        return name[:limit]
    return stem[: limit - len(ext) - 1] + dot + ext


def extension_of(filename: str) -> str:
    return PurePosixPath(filename.replace("\\", "/")).suffix.lower().lstrip(".")


def file_type_of(extension: str) -> str | None:
    """The type an extension claims (image, document, audio, video), or None."""
    for type_, extensions in FILE_TYPES.items():
        if extension in extensions:
            return type_
    return None


def _image_format(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def _audio_video_ok(ext: str, head: bytes) -> bool:
    if ext in ("mp3", "mpga"):
        return head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)
    if ext == "wav":
        return head[:4] == b"RIFF" and head[8:12] == b"WAVE"
    if ext == "webm":
        return head.startswith(b"\x1a\x45\xdf\xa3")  # EBML
    if ext == "amr":
        return head.startswith(b"#!AMR")
    if ext in ("m4a", "mp4", "mov"):
        return head[4:8] in _ISO_BOXES
    if ext == "mpeg":
        return head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")
    return False


def sniff_upload(filename: str, head: bytes) -> Sniffed:
    """What the file is: its extension's type, confirmed by its first bytes (pass ``SNIFF_BYTES`` of them).
    Raises UnsupportedFileType with a message for the user when the type is unknown or the content does not
    match it. Raster images may carry each other's extension (a PNG saved as .jpg): the real format wins."""
    ext = extension_of(filename)
    type_ = file_type_of(ext)
    if type_ is None:
        if ext in ("doc", "xls", "ppt"):
            sniff(filename, head)  # raises the parser's advice (save it as .docx …)
        raise UnsupportedFileType(
            f"File type .{ext} is not supported." if ext else "Files without an extension are not supported.")
    mismatch = UnsupportedFileType(f"The file content does not match its .{ext} extension.")
    if type_ == "document":
        kind = sniff(filename, head)
        return Sniffed("document", ext, MIME.get(ext, "application/octet-stream"), kind)
    if type_ == "image":
        if ext == "svg":
            if _image_format(head) is not None or not _SVG.search(head) or b"\x00" in head:
                raise mismatch
            return Sniffed("image", ext, MIME["svg"], "svg")
        real = _image_format(head)
        if real is None:
            raise mismatch
        return Sniffed("image", ext, f"image/{real}", real)
    if not _audio_video_ok(ext, head):
        raise mismatch
    return Sniffed(type_, ext, MIME[ext], ext)


class FileStore:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def put(self, name: str, data: bytes | io.BufferedIOBase) -> int:
        store = await self.bus.files()
        info = await store.put(name, data)
        return int(info.size or 0)

    async def get_to(self, name: str, path: Path) -> None:
        """Stream the object into ``path`` (writeinto: a plain get of tens of MB is 2x slower)."""
        store = await self.bus.files()
        with path.open("wb") as f:
            await store.get(name, writeinto=f)

    async def get_bytes(self, name: str) -> bytes:
        """A small object (an image for a model call) in memory."""
        buf = io.BytesIO()
        store = await self.bus.files()
        await store.get(name, writeinto=buf)
        return buf.getvalue()

    async def delete(self, name: str) -> None:
        store = await self.bus.files()
        try:
            await store.delete(name)
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.NotFoundError):
            pass

    @asynccontextmanager
    async def kept_if_recorded(self, name: str) -> AsyncIterator[None]:
        """Around the commit of the row that points at object ``name``: when it fails, no row will ever
        point at the object, so it is deleted (best effort; the commit's error is the one raised)."""
        try:
            yield
        except BaseException:
            try:
                await self.delete(name)
            except Exception:
                log.warning("upload_object_not_deleted", object_name=name, exc_info=True)
            raise


CLOCK_SKEW = 30  # seconds
TOOL_FILES_PREFIX = "tool/"  # object-store names of the files tools make: tool/<tenant>/<upload id>


TOOL_FILE_PATH = "/files/tools/"  # where signed tool-file URLs point (the runtime's keyless route)


@dataclass(frozen=True, slots=True)
class FileSigner:
    """Signed URLs for the files tools make, as Dify's ``/files/tools/<id>.<ext>?timestamp&nonce&sign``: they
    open without an API key (an ``<img>`` shows them) for ``seconds`` after they were made; the HMAC is keyed
    from the secret key, so every replica checks what any replica signed."""

    base: str
    secret: str
    seconds: int

    def _sign(self, file_id: str, timestamp: str, nonce: str) -> str:
        mac = hmac.new(self.secret.encode(), f"tool-file|{file_id}|{timestamp}|{nonce}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")

    def url(self, file_id: str, extension: str, now: float | None = None) -> str:
        timestamp, nonce = str(int(time.time() if now is None else now)), secrets.token_hex(16)
        query = urllib.parse.urlencode({"timestamp": timestamp, "nonce": nonce,
                                        "sign": self._sign(file_id, timestamp, nonce)})
        return f"{self.base}{TOOL_FILE_PATH}{file_id}.{extension}?{query}"

    def check(self, file_id: str, timestamp: str, nonce: str, sign: str, now: float | None = None) -> bool:
        if not timestamp.isdigit() or not hmac.compare_digest(self._sign(file_id, timestamp, nonce), sign):
            return False
        # a few seconds before the timestamp are allowed: replicas' clocks differ slightly
        return -CLOCK_SKEW <= (time.time() if now is None else now) - int(timestamp) <= self.seconds


def file_view(row: MessageFile, base: str, signer: FileSigner | None = None) -> dict[str, Any]:
    """One ``message_files`` item of GET /messages (reference §2.5); a tool's file has a signed URL."""
    if row.transfer_method == "remote_url":
        url = row.url
    elif row.transfer_method == "tool_file" and signer is not None:
        url = signer.url(row.upload_file_id or "", PurePosixPath(row.filename).suffix.lstrip(".") or "bin")
    else:
        url = preview_url(base, row.upload_file_id or "")
    return {"id": row.id, "filename": row.filename, "type": row.type, "url": url, "mime_type": row.mime_type,
            "size": row.size, "transfer_method": row.transfer_method, "belongs_to": row.belongs_to,
            "upload_file_id": row.upload_file_id}


def preview_url(base: str, file_id: str) -> str:
    return f"{base}/v1/files/{file_id}/preview"

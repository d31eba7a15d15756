"""Audio (reference §2.14): ``POST /v1/audio-to-text`` and ``POST /v1/text-to-audio`` through the
workspace's default speech2text / tts models (console ``/workspaces/current/default-model``), via litellm.

The app must enable the feature (``speech_to_text`` / ``text_to_speech``; graph apps in their published
workflow's ``features``), as Dify's AudioService checks, in Dify's words. The default model and its provider
credentials are read per request, not cached: a change in the console is then in force on every runtime
replica at once, for one indexed read next to a model call that takes far longer.

An upload is accepted when its extension (or, for a nameless blob, its part's Content-Type) is one of
Dify's audio types and its first bytes bear that out (shared.files.sniff_upload), up to the audio size
limit ``/parameters`` shows (``system_parameters.audio_file_size_limit``, MB).
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, BinaryIO

import structlog
from sqlmodel import select

from services.runtime.llm import ModelBinding, error_message
from services.runtime.service.errors import (
    DEFAULT_USER,
    app_unavailable,
    completion_request_error,
    message_not_exists,
    parse_uuid,
)
from shared.errors import ApiError, invalid_param
from shared.files import EXTENSION_OF_MIME, SNIFF_BYTES, UnsupportedFileType, extension_of, sniff_upload
from shared.identity import Caller
from shared.llm import litellm
from shared.models import Message
from shared.workflow import GRAPH_MODES

if TYPE_CHECKING:
    from services.runtime.service.cache import AppEntry
    from services.runtime.service.core import Runtime

log = structlog.get_logger("plexus.runtime.audio")

AUDIO_EXTENSIONS = ("mp3", "mp4", "mpeg", "mpga", "m4a", "wav", "webm", "amr")  # Dify's ALLOWED_EXTENSIONS
DEFAULT_VOICE = "alloy"  # OpenAI's first voice; used when neither the request nor the app names one
# OpenAI's limit for one /audio/speech input: longer text is read in pieces of at most this, split at sentence
# ends, whose audio is streamed one after the other
TTS_MAX_CHARS = 4096
# what one request reads aloud (ten provider calls): longer request text is refused, a longer answer is cut
TTS_MAX_TOTAL_CHARS = 10 * TTS_MAX_CHARS
SENTENCE_END = re.compile(r"[.!?。！？\n]\s*")


def no_audio_uploaded() -> ApiError:
    return ApiError(400, "no_audio_uploaded", "Please upload your audio.")


def audio_too_large(limit_mb: int) -> ApiError:
    return ApiError(413, "audio_too_large", f"Audio size larger than {limit_mb} mb")


def unsupported_audio_type() -> ApiError:
    return ApiError(415, "unsupported_audio_type", "Audio type not allowed.")


def no_speech_to_text() -> ApiError:
    return ApiError(400, "provider_not_support_speech_to_text", "Provider not support speech to text.")


def no_text_to_speech() -> ApiError:
    return ApiError(400, "provider_not_support_text_to_speech", "Provider not support text to speech.")


def audio_media_type(audio: bytes) -> str:
    """What the provider sent: WAV when the bytes say so, else MPEG audio (what is asked for)."""
    return "audio/wav" if audio[:4] == b"RIFF" and audio[8:12] == b"WAVE" else "audio/mpeg"


def cut_text(text: str, limit: int = TTS_MAX_CHARS) -> str:
    """``text`` shortened to at most ``limit`` characters, at the last sentence end (else space) before it."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    ends = [m.end() for m in SENTENCE_END.finditer(head)]
    cut = ends[-1] if ends else head.rfind(" ") + 1
    return (head[:cut] if cut > limit // 2 else head).rstrip()


def speech_pieces(text: str, limit: int = TTS_MAX_CHARS) -> list[str]:
    """``text`` in consecutive pieces of at most ``limit`` characters, each ending at a sentence end where one
    falls in the second half of the piece (else at a space, else anywhere)."""
    pieces = []
    rest = text.strip()
    while len(rest) > limit:
        head = cut_text(rest, limit)
        pieces.append(head)
        rest = rest[len(head):].lstrip()
    if rest:
        pieces.append(rest)
    return pieces


async def speak(binding: ModelBinding, text: str, voice: str, timeout: float) -> bytes:
    """``text`` (at most TTS_MAX_CHARS) read aloud by the tts model: MP3 where the provider can."""
    resp = await litellm().aspeech(**binding.kwargs, input=text, voice=voice, response_format="mp3",
                                   timeout=timeout, max_retries=0)
    return resp.content


class Speech:
    """The audio of one text-to-audio request: the first piece's bytes (already made, so a provider error is
    the request's 400) and, for a long text, the rest, made one by one as the response streams."""

    def __init__(self, first: bytes, media_type: str, rest: AsyncIterator[bytes] | None = None) -> None:
        self.first, self.media_type, self.rest = first, media_type, rest


class AudioService:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.limit_mb = rt.ctx.settings.files.audio_file_size_limit

    # -- speech to text -------------------------------------------------------------------------------
    async def transcribe(self, caller: Caller, filename: str | None, content_type: str | None,
                         file: BinaryIO | None, user: str | None) -> dict[str, Any]:
        app = await self.rt.app_for(caller)
        await self._feature(app, "speech_to_text", "Speech to text is not enabled")
        if file is None:
            raise no_audio_uploaded()
        name = self._audio_name(filename, content_type)
        file.seek(0, io.SEEK_END)
        if file.tell() > self.limit_mb * 1024 * 1024:
            raise audio_too_large(self.limit_mb)
        file.seek(0)
        head = file.read(SNIFF_BYTES)
        try:
            sniff_upload(name, head)
        except UnsupportedFileType:
            raise unsupported_audio_type() from None
        binding = await self._binding(app.tenant_id, "speech2text", no_speech_to_text)
        audio = head + file.read()  # the rest, after the head already read
        await self.rt.end_users.get(app.tenant_id, app.id, user or DEFAULT_USER)  # Dify records the caller
        try:
            resp = await litellm().atranscription(**binding.kwargs, file=(name, audio),
                                                  timeout=self.rt.settings.llm_timeout, max_retries=0)
        except Exception as e:  # noqa: BLE001 - any provider failure is the request's 400
            message = error_message(e, binding.provider)
            log.info("transcription_failed", app_id=app.id, error=message)
            raise completion_request_error(message) from None
        return {"text": getattr(resp, "text", None) or ""}

    @staticmethod
    def _audio_name(filename: str | None, content_type: str | None) -> str:
        """The name the upload is sniffed and sent to the provider under; 415 when it is not an audio type."""
        name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip() or "audio"
        ext = extension_of(name)
        if ext not in AUDIO_EXTENSIONS:  # a browser's recorded Blob comes as "blob" with a Content-Type
            mime = (content_type or "").split(";", 1)[0].strip().lower()
            # the usual MIME names (audio/mpeg is MP3), else Dify's rule: audio/<one of its extensions>
            ext = EXTENSION_OF_MIME.get(mime) or (mime.removeprefix("audio/") if mime.startswith("audio/") else "")
            if ext not in AUDIO_EXTENSIONS:
                raise unsupported_audio_type()
            name = f"{name}.{ext}"
        return name

    # -- text to speech -------------------------------------------------------------------------------
    async def synthesize(self, caller: Caller, *, message_id: str | None, text: str | None, voice: str | None,
                         user: str | None) -> Speech:
        """The audio of the message's answer (``message_id`` wins) or of ``text``."""
        app = await self.rt.app_for(caller)
        features = await self._feature(app, "text_to_speech", "TTS is not enabled")
        if message_id:
            content = cut_text(await self._answer(app, message_id, user or DEFAULT_USER), TTS_MAX_TOTAL_CHARS)
        else:
            content = (text or "").strip()
            if not content:
                raise invalid_param("Text is required")
            if len(content) > TTS_MAX_TOTAL_CHARS:
                raise invalid_param(f"Text is too long: at most {TTS_MAX_TOTAL_CHARS} characters can be read "
                                    "aloud in one request.")
        voice = str(voice or features.get("voice") or DEFAULT_VOICE)
        binding = await self._binding(app.tenant_id, "tts", no_text_to_speech)
        pieces = speech_pieces(content)
        try:
            first = await self._speak(binding, pieces[0], voice)
        except Exception as e:  # noqa: BLE001 - any provider failure is the request's 400
            message = error_message(e, binding.provider)
            log.info("speech_failed", app_id=app.id, error=message)
            raise completion_request_error(message) from None
        media_type = audio_media_type(first)
        if len(pieces) == 1:
            return Speech(first, media_type)
        if media_type != "audio/mpeg":  # MP3 frames join into one stream; WAV files do not
            raise completion_request_error(
                f"The text-to-speech provider answered {media_type}, which cannot be joined: text longer than "
                f"{TTS_MAX_CHARS} characters needs a provider that answers MP3.")
        return Speech(first, media_type, self._rest(app.id, binding, pieces[1:], voice))

    async def _speak(self, binding: ModelBinding, text: str, voice: str) -> bytes:
        return await speak(binding, text, voice, self.rt.settings.llm_timeout)

    async def _rest(self, app_id: str, binding: ModelBinding, pieces: list[str], voice: str
                    ) -> AsyncIterator[bytes]:
        """The audio of the pieces after the first; the next one is made while the current one is sent. A
        provider failure now ends the audio early (the status is sent already), logged."""
        loop = asyncio.get_running_loop()
        pending = loop.create_task(self._speak(binding, pieces[0], voice))
        try:
            for i in range(len(pieces)):
                audio = await pending
                if i + 1 < len(pieces):
                    pending = loop.create_task(self._speak(binding, pieces[i + 1], voice))
                yield audio
        except Exception as e:  # noqa: BLE001 - see the docstring
            log.warning("speech_cut_short", app_id=app_id, error=error_message(e, binding.provider))
        finally:
            if not pending.done():
                pending.cancel()  # the client went away: the next piece is not needed
            elif not pending.cancelled():
                pending.exception()  # read, so an unsent piece's failure is not reported as never retrieved

    async def _answer(self, app: AppEntry, message_id: str, session_id: str) -> str:
        """The answer of a message of this app and end user (another's is a 404, like a missing one)."""
        mid = parse_uuid(message_id, message_not_exists())
        end_user_id = await self.rt.end_users.get(app.tenant_id, app.id, session_id, create=False)
        if end_user_id is None:
            raise message_not_exists()
        async with self.rt.db.session() as s:
            answer = (await s.exec(select(Message.answer).where(
                Message.id == mid, Message.app_id == app.id, Message.end_user_id == end_user_id))).first()
        if answer is None:
            raise message_not_exists()
        if not answer.strip():
            raise invalid_param("The message has no answer to read aloud.")
        return answer.strip()

    # -- shared ---------------------------------------------------------------------------------------
    async def _feature(self, app: AppEntry, name: str, disabled: str) -> dict[str, Any]:
        """The app's ``name`` feature settings; 400 invalid_param ``disabled`` unless it is enabled."""
        feature: Any = None
        if app.mode in GRAPH_MODES:
            if app.workflow_id:  # the published version's features (cached per version)
                feature = (await self.rt.workflows.published(app))[1].get(name)
        else:
            if app.config is None:
                raise app_unavailable()
            feature = getattr(app.config, name).model_dump()
        if not isinstance(feature, dict) or not feature.get("enabled"):
            raise invalid_param(disabled)
        return feature

    async def _binding(self, tenant_id: str, model_type: str, missing: Any) -> ModelBinding:
        """The workspace's default ``model_type`` model with its provider's credentials, ready to call."""
        binding = await self.rt.helper.default_binding(tenant_id, model_type)
        if binding is None:
            raise missing()
        return binding

"""Dify's text-to-speech auto play: with ``text_to_speech`` enabled and ``autoPlay: "enabled"``, a streamed answer
is also read aloud as it is written, in ``tts_message`` events (base64 audio of the workspace's default tts model),
ended by ``tts_message_end`` (reference §3.3).

The answer's text is cut at sentence ends as it arrives; one reader per run turns what has gathered into audio,
one provider call at a time (at most PIECE_CHARS each), so a fast answer makes few, longer calls and a slow one
starts speaking after its first sentence. As in Dify, the audio still being made when the answer ends follows ``message_end``, and
``tts_message_end`` comes last. Only text the client was sent is read: a flagged answer's replacement takes
the place of what was not read yet. A provider failure ends the audio (logged); the answer is not affected.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from services.runtime.service.audio import (
    DEFAULT_VOICE,
    SENTENCE_END,
    TTS_MAX_TOTAL_CHARS,
    speak,
    speech_pieces,
)

if TYPE_CHECKING:
    from services.runtime.service.cache import AppEntry
    from services.runtime.service.core import Runtime

log = structlog.get_logger("plexus.runtime.autoplay")

MIN_SENTENCE_CHARS = 20  # shorter cuts wait for more text: "Dr." or "1." alone are not worth a call
# text per provider call: about a minute of speech, whose MP3 in base64 stays well under NATS's 1 MB message
# limit (the event log keeps every event) and plays while the next piece is made
PIECE_CHARS = 1000
Emit = Callable[[bytes], Awaitable[None]]


def auto_play(feature: Any) -> bool:
    """Whether an app's ``text_to_speech`` feature asks for auto play (Dify's ``autoPlay: "enabled"``)."""
    return isinstance(feature, dict) and bool(feature.get("enabled")) and feature.get("autoPlay") == "enabled"


async def auto_player(rt: Runtime, app: AppEntry, feature: dict[str, Any], envelope: dict[str, Any],
                      task_id: str) -> AutoPlay | None:
    """What reads a streamed answer aloud (chat and advanced-chat runs) with the workspace's default tts model
    and the feature's voice; none without a usable model (logged): the answer never waits or fails for its
    audio. ``envelope``: the fields every tts event carries."""
    try:
        binding = await rt.helper.default_binding(app.tenant_id, "tts")
    except Exception as e:  # noqa: BLE001 - e.g. the model's provider lost its credentials
        log.warning("auto_play_unavailable", app_id=app.id, error=str(e))
        return None
    if binding is None:
        log.info("auto_play_without_tts_model", app_id=app.id)
        return None
    voice, timeout = str(feature.get("voice") or DEFAULT_VOICE), rt.settings.llm_timeout

    async def read(text: str) -> bytes:
        return await speak(binding, text, voice, timeout)

    return AutoPlay(read, envelope, task_id, app.id)


class AutoPlay:
    """Reads one run's answer aloud. ``start`` with the run's emit, ``feed`` every piece sent to the client,
    ``replace`` when the answer is replaced, then ``finish`` (or ``cancel``); ``abort`` stops it at once."""

    def __init__(self, speak: Callable[[str], Awaitable[bytes]], envelope: dict[str, Any], task_id: str,
                 app_id: str) -> None:
        self._speak = speak
        self._head = orjson.dumps({**envelope, "event": "tts_message", "task_id": task_id})[:-1] + b',"audio":'
        self._end = orjson.dumps({**envelope, "event": "tts_message_end", "task_id": task_id, "audio": ""})
        self.app_id = app_id
        self._pending = ""  # text after the last sentence end
        self._ready: list[str] = []  # whole sentences not read yet
        self._chars = 0  # characters queued so far (at most TTS_MAX_TOTAL_CHARS are read)
        self._wake = asyncio.Event()
        self._done = False  # the answer is complete: the reader stops once nothing is left
        self._task: asyncio.Task[None] | None = None
        self._emit: Emit | None = None
        self.failed = False

    def start(self, emit: Emit) -> None:
        self._emit = emit
        self._task = asyncio.get_running_loop().create_task(self._read(), name="tts-auto-play")

    def feed(self, delta: str) -> None:
        if self.failed or self._done or self._chars >= TTS_MAX_TOTAL_CHARS:
            return
        seen = len(self._pending)
        self._pending += delta
        cut = 0
        # only the new text can hold a new cut (an earlier end was taken, or too close to the start)
        for m in SENTENCE_END.finditer(self._pending, max(0, seen - 1)):
            if m.end() >= MIN_SENTENCE_CHARS:
                cut = m.end()
        if cut:
            self._queue(self._pending[:cut])
            self._pending = self._pending[cut:]

    def replace(self, answer: str) -> None:
        """The answer became ``answer`` (moderation): what was not read yet is dropped, ``answer`` is read."""
        self._chars -= sum(len(t) for t in self._ready)  # dropped unread: no longer counted against the limit
        self._ready.clear()
        self._pending = ""
        self._queue(answer)

    def _queue(self, text: str) -> None:
        text = text.strip()
        room = TTS_MAX_TOTAL_CHARS - self._chars
        if not text or room <= 0:
            return
        if len(text) > room:
            log.info("auto_play_cut", app_id=self.app_id, limit=TTS_MAX_TOTAL_CHARS)
            text = text[:room]
        self._chars += len(text)
        self._ready.append(text)
        self._wake.set()

    def _take(self) -> str:
        """The sentences gathered so far, joined up to PIECE_CHARS (a longer one: its first piece, the rest stays
        first in line)."""
        parts: list[str] = []
        size = 0
        while self._ready and size + len(self._ready[0]) + len(parts) <= PIECE_CHARS:
            text = self._ready.pop(0)
            parts.append(text)
            size += len(text)
        if parts:
            return " ".join(parts)
        first, *rest = speech_pieces(self._ready.pop(0), PIECE_CHARS)
        self._ready[0:0] = rest
        return first

    async def _read(self) -> None:
        assert self._emit is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._ready:
                text = self._take()
                try:
                    audio = await self._speak(text)
                except Exception as e:  # noqa: BLE001 - no more audio; the answer itself goes on
                    log.warning("auto_play_failed", app_id=self.app_id, error=str(e))
                    self.failed = True
                    self._ready.clear()
                    return
                await self._emit(self._head + orjson.dumps(base64.b64encode(audio).decode()) + b"}")
            if self._done:
                return

    async def finish(self) -> None:
        """The answer is complete: read the rest (unless stopped meanwhile), then ``tts_message_end``."""
        if self._task is None or self._emit is None:
            return
        if not self._done:
            self._queue(self._pending)
            self._pending = ""
            self._done = True
            self._wake.set()
        await asyncio.wait([self._task])  # its end, whatever it was (_read logs failures); ours still raises
        await self._emit(self._end)

    async def cancel(self, *, end: bool) -> None:
        """The run stopped or failed: nothing more is read; ``end`` still sends ``tts_message_end``."""
        self.abort()
        if self._task is not None:
            await asyncio.wait([self._task])
            if end and self._emit is not None:
                await self._emit(self._end)

    def abort(self) -> None:
        """No more audio, at once (a stop, or the run torn down): the reader is cancelled; ``finish`` or
        ``cancel`` then sends the end."""
        self._done = True
        if self._task is not None and not self._task.done():
            self._task.cancel()

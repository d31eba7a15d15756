"""A scripted OpenAI-compatible server on 127.0.0.1 for tests: the real litellm path talks to it.

Tests queue ``Script``s (reply text or token list, per-token delay, HTTP error, malformed chunk,
mid-stream disconnect); a request takes the first script whose ``match`` is in its last user message
(or the first one without ``match``). Without a script the answer is deterministic:
``"Echo: <last user message>"`` split into tokens. Every request body is recorded in ``requests``.

Function calling: a script with ``tool_calls`` answers with those calls, streamed in fragments the way
OpenAI does; ``match_last`` (text of the last message of any role, e.g. a tool result) and ``with_tools``
select the turn of an agent loop a script answers. Requests offering tools are recorded with their
``tools`` in the body.

Embeddings (``POST /v1/embeddings``): each input gets a deterministic unit vector of ``embedding_dim``
dimensions (or the request's ``dimensions``) from hashed character trigrams, so similar texts get similar
vectors (``trigram_vector``). Scripts for it are pushed with ``endpoint="embeddings"`` (``match`` is then
looked for in any input; ``status``/``body``/``first_delay``/``gate``/``usage``/``dim`` apply: a ``gate`` holds
the request, recorded, until the test sets it); chat scripts never answer embedding requests nor the reverse.
Embedding requests are recorded in ``embedding_requests``.

Moderation (``POST /v1/moderations``): an input is flagged when it contains (case-insensitively) one of
``moderation_terms``; scripts with ``endpoint="moderations"`` can fail it (``status``/``body``). Requests are
recorded in ``moderation_requests``.

Audio: ``POST /v1/audio/transcriptions`` (multipart, the file in part ``file``) answers
``{"text": ...}``: a script's ``reply`` with ``endpoint="transcriptions"``, else ``transcription_text`` when
set, else ``heard_text(<the bytes>)``; requests are recorded in ``transcription_requests`` with the form
fields as ``body`` and the upload in ``file``/``filename``. ``POST /v1/audio/speech`` (JSON) answers
``speech_bytes(input, response_format)`` with its media type (or a script's ``body`` bytes with status 200);
scripts use ``endpoint="speech"``, requests are recorded in ``speech_requests``. For both, ``match`` is looked for in the input text (transcriptions: the
bytes as latin-1) and ``status``/``body``/``first_delay`` apply, as for chat.

Conversation titles: a chat request whose system message is the runtime's title instruction (``TITLE_SYSTEM``,
sent in the background after a new conversation's first answer) is recorded in ``title_requests``, not
``requests``, only scripts pushed with ``endpoint="title"`` answer it, and it is left out of ``completed``.
Without a script the reply is empty, so the conversation keeps its first-line name and no other test sees
the call.

The session fixture ``llm`` reaches every test through ``pytest_plugins`` in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import math
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from services.runtime.service.prompt import TITLE_SYSTEM
from shared.natsd import free_port
from tests.support import Served, serve


class ScriptedDisconnect(Exception):
    """Raised inside a streaming body: uvicorn then drops the connection mid-stream."""


class _QuietDisconnects(logging.Filter):
    """uvicorn logs the scripted disconnect as an ASGI error; it is the point of the script."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ScriptedDisconnect)


@dataclass
class Script:
    reply: str | None = None  # split into tokens of ``chunk_chars`` characters (or words, if 0)
    tokens: list[str] | None = None  # exact deltas; wins over ``reply``
    reasoning: list[str] | None = None  # ``reasoning_content`` deltas streamed before the answer (a reasoning model)
    delay: float = 0.0  # seconds before each token
    first_delay: float = 0.0  # seconds before the first byte of the response
    gate: asyncio.Event | None = None  # embeddings and the other non-chat endpoints: answer once it is set
    status: int = 200  # != 200: answer this status with ``body`` instead of completing
    body: Any = None
    malformed_after: int | None = None  # send a non-JSON data line after this many tokens
    disconnect_after: int | None = None  # drop the connection after this many tokens
    usage: dict[str, int] | None = None  # overrides the computed usage
    match: str | None = None  # only for requests whose last user message contains this
    times: int = 1  # how many requests this script answers
    endpoint: str = "chat"  # "chat" (chat completions), "title", "embeddings", "moderations", "transcriptions",
    # "speech"
    dim: int | None = None  # embeddings: vector size for this answer (wins over the server's default)
    # function calling: answer with these calls ({"name", "arguments": str | dict, "id"?}) after any reply
    # tokens; arguments are streamed in fragments of ``chunk_args`` characters, finish_reason "tool_calls"
    tool_calls: list[dict[str, Any]] | None = None
    chunk_args: int = 7
    match_last: str | None = None  # only for requests whose last message (any role) contains this
    with_tools: bool | None = None  # only for requests that offer tools (True) or do not (False)


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    at: float = field(default_factory=time.monotonic)
    file: bytes | None = None  # transcriptions: the uploaded audio
    filename: str | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])

    @property
    def last_user(self) -> str:
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return _text(m.get("content"))
        return ""

    @property
    def is_title(self) -> bool:
        """A conversation-title request of the runtime's (see the module docstring)."""
        first = self.messages[0] if self.messages else {}
        return first.get("role") == "system" and _text(first.get("content")) == TITLE_SYSTEM

    @property
    def last_text(self) -> str:
        return _text(self.messages[-1].get("content")) if self.messages else ""

    @property
    def inputs(self) -> list[str]:
        """An embedding request's inputs as text (token-id inputs are rendered as their numbers)."""
        raw = self.body.get("input", [])
        if isinstance(raw, str):
            return [raw]
        if raw and all(isinstance(x, int) for x in raw):
            return [" ".join(map(str, raw))]
        return [x if isinstance(x, str) else " ".join(map(str, x)) for x in raw]


def heard_text(audio: bytes) -> str:
    """The default transcription of ``audio``: its size and a digest, so a test can tell which bytes arrived."""
    return f"heard {len(audio)} bytes {hashlib.sha256(audio).hexdigest()[:12]}"


SPEECH_MEDIA = {"mp3": "audio/mpeg", "wav": "audio/wav", "opus": "audio/ogg", "aac": "audio/aac",
                "flac": "audio/flac", "pcm": "audio/pcm"}


def speech_bytes(text: str, response_format: str | None = "mp3") -> bytes:
    """The scripted synthesis of ``text``: an ID3 header and the text for mp3, a RIFF/WAVE header and the
    text for wav (not playable; enough for content sniffing and byte-for-byte checks)."""
    data = text.encode()
    if response_format == "wav":
        return b"RIFF" + struct.pack("<I", len(data) + 4) + b"WAVE" + data
    return b"ID3" + data


def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def split_words(text: str) -> list[str]:
    """Word tokens that join back to ``text`` (the space stays with the following word)."""
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        out.append(word if i == 0 else " " + word)
    return [t for t in out if t] or [""]


def trigram_vector(text: str, dim: int = 16) -> list[float]:
    """A unit vector from the signed, hashed character trigrams of the lowercased text (whitespace
    collapsed): texts sharing trigrams point the same way. The empty text maps to the first axis."""
    norm = " " + " ".join(text.lower().split()) + " "
    vec = [0.0] * dim
    for i in range(max(0, len(norm) - 2)):
        h = int.from_bytes(hashlib.blake2b(norm[i:i + 3].encode(), digest_size=8).digest(), "big")
        vec[h % dim] += 1.0 if (h >> 32) & 1 else -1.0
    length = math.sqrt(sum(x * x for x in vec))
    if length == 0:
        return [1.0] + [0.0] * (dim - 1)
    return [x / length for x in vec]


class ScriptedLLM:
    def __init__(self) -> None:
        self.scripts: list[Script] = []
        self.requests: list[Received] = []
        self.title_requests: list[Received] = []
        self.embedding_requests: list[Received] = []
        self.moderation_requests: list[Received] = []
        self.transcription_requests: list[Received] = []
        self.speech_requests: list[Received] = []
        self.transcription_text: str | None = None  # the text every transcription returns, when set
        self.moderation_terms: set[str] = {"forbidden-topic"}
        self.embedding_dim = 16  # default size of the scripted embeddings
        self.completed = 0  # streams sent to the end
        self.aborted = 0  # streams whose client went away before the end
        self.streaming = 0  # streams being sent now
        self.peak_streaming = 0  # most streams sent at once since the last reset
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        routes = [
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            Route("/embeddings", self._embeddings, methods=["POST"]),
            Route("/v1/moderations", self._moderations, methods=["POST"]),
            Route("/moderations", self._moderations, methods=["POST"]),
            Route("/v1/audio/transcriptions", self._transcriptions, methods=["POST"]),
            Route("/audio/transcriptions", self._transcriptions, methods=["POST"]),
            Route("/v1/audio/speech", self._speech, methods=["POST"]),
            Route("/audio/speech", self._speech, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/models", self._models, methods=["GET"]),
        ]
        self.app = Starlette(routes=routes)
        self._served: Served | None = None

    # -- control -------------------------------------------------------------------------------
    def push(self, **kw: Any) -> Script:
        script = Script(**kw)
        self.scripts.append(script)
        return script

    def reset(self) -> None:
        self.scripts.clear()
        self.requests.clear()
        self.title_requests.clear()
        self.embedding_requests.clear()
        self.moderation_requests.clear()
        self.transcription_requests.clear()
        self.speech_requests.clear()
        self.transcription_text = None
        self.moderation_terms = {"forbidden-topic"}
        self.embedding_dim = 16
        self.completed = 0
        self.aborted = 0
        self.peak_streaming = 0

    def requests_matching(self, text: str) -> list[Received]:
        return [r for r in self.requests if text in r.last_user]

    def _take(self, received: Received, endpoint: str = "chat") -> Script | None:
        if endpoint in ("embeddings", "moderations"):
            texts = received.inputs
        elif endpoint == "transcriptions":
            texts = [(received.file or b"").decode("latin-1")]
        elif endpoint == "speech":
            texts = [str(received.body.get("input", ""))]
        else:
            texts = [received.last_user]
        for i, s in enumerate(self.scripts):
            if s.endpoint != endpoint:
                continue
            if s.match is not None and not any(s.match in t for t in texts):
                continue
            if s.match_last is not None and s.match_last not in received.last_text:
                continue
            if s.with_tools is not None and s.with_tools != bool(received.body.get("tools")):
                continue
            s.times -= 1
            if s.times <= 0:
                del self.scripts[i]
            return s
        return None

    # -- server --------------------------------------------------------------------------------
    async def start(self) -> None:
        logging.getLogger("uvicorn.error").addFilter(_QuietDisconnects())
        self._served = await serve(self.app, self.port, log_level="critical")

    async def stop(self) -> None:
        if self._served:
            await self._served.stop()
            self._served = None

    async def _models(self, _: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": "scripted", "object": "model", "owned_by": "tests"}]}
        )

    @staticmethod
    def _failure(script: Script) -> Response:
        payload = (
            script.body
            if script.body is not None
            else {
                "error": {
                    "message": f"scripted failure {script.status}",
                    "type": "server_error",
                    "code": None,
                }
            }
        )
        if isinstance(payload, str | bytes):
            return Response(payload, status_code=script.status, media_type="application/json")
        return JSONResponse(payload, status_code=script.status)

    async def _scripted(self, received: Received, log: list[Received], endpoint: str
                        ) -> tuple[Script, Response | None]:
        """Record a non-chat request and take its script; the scripted failure to answer instead, if any."""
        log.append(received)
        script = self._take(received, endpoint) or Script(endpoint=endpoint)
        if script.first_delay:
            await asyncio.sleep(script.first_delay)
        if script.gate is not None:  # held (and recorded) until the test lets it go
            await script.gate.wait()
        return script, self._failure(script) if script.status != 200 else None

    async def _embeddings(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        received = Received(request.url.path, body)
        script, failed = await self._scripted(received, self.embedding_requests, "embeddings")
        if failed is not None:
            return failed
        dim = script.dim or body.get("dimensions") or self.embedding_dim
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(received.inputs):
            vec = trigram_vector(text, dim)
            emb: Any = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode() if as_base64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = sum(len(t) // 4 + 1 for t in received.inputs)
        usage = script.usage or {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse(
            {"object": "list", "data": data, "model": body.get("model", "scripted"), "usage": usage}
        )

    async def _moderations(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        received = Received(request.url.path, body)
        self.moderation_requests.append(received)
        script = self._take(received, "moderations") or Script(endpoint="moderations")
        if script.status != 200:
            return self._failure(script)
        results = []
        for text in received.inputs:
            flagged = any(t.lower() in text.lower() for t in self.moderation_terms)
            results.append({"flagged": flagged, "categories": {"harassment": flagged},
                            "category_scores": {"harassment": 0.99 if flagged else 0.01}})
        return JSONResponse({"id": f"modr-{uuid.uuid4().hex[:12]}", "model": body.get("model", "scripted"),
                             "results": results})

    async def _transcriptions(self, request: Request) -> Response:
        form = await request.form()
        upload = form.get("file")
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        data = await upload.read() if upload is not None and not isinstance(upload, str) else None
        received = Received(request.url.path, fields, file=data,
                            filename=getattr(upload, "filename", None))
        script, failed = await self._scripted(received, self.transcription_requests, "transcriptions")
        if failed is not None:
            return failed
        if data is None:
            return JSONResponse({"error": {"message": "file is required", "type": "invalid_request_error"}},
                                status_code=400)
        text = script.reply if script.reply is not None else self.transcription_text or heard_text(data)
        if fields.get("response_format") == "text":
            return Response(text, media_type="text/plain")
        return JSONResponse({"text": text})

    async def _speech(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        received = Received(request.url.path, body)
        script, failed = await self._scripted(received, self.speech_requests, "speech")
        if failed is not None:
            return failed
        fmt = body.get("response_format") or "mp3"
        if isinstance(script.body, bytes):  # a provider that answers another format than asked
            return Response(script.body, media_type="application/octet-stream")
        return Response(speech_bytes(str(body.get("input", "")), fmt),
                        media_type=SPEECH_MEDIA.get(fmt, "application/octet-stream"))

    async def _chat(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        received = Received(request.url.path, body)
        if received.is_title:
            self.title_requests.append(received)
            script = self._take(received, "title") or Script(endpoint="title", reply="")
        else:
            self.requests.append(received)
            script = self._take(received) or Script()
        if script.first_delay:
            await asyncio.sleep(script.first_delay)
        if script.status != 200:
            return self._failure(script)

        if script.tokens is not None:
            tokens = list(script.tokens)
        elif script.tool_calls and script.reply is None:
            tokens = []  # a pure function-calling turn has no text
        else:
            tokens = split_words(script.reply if script.reply is not None else f"Echo: {received.last_user}")
        prompt_tokens = sum(len(_text(m.get("content"))) for m in received.messages) // 4 + 1
        usage = script.usage or {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        model = body.get("model", "scripted")
        cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())

        calls = [
            {"id": c.get("id") or f"call_{uuid.uuid4().hex[:8]}", "type": "function",
             "function": {"name": c["name"], "arguments": c["arguments"] if isinstance(c["arguments"], str)
                          else orjson.dumps(c["arguments"]).decode()}}
            for c in script.tool_calls or []
        ]
        finish_reason = "tool_calls" if calls else "stop"

        if not body.get("stream"):
            for _ in tokens:
                if script.delay:
                    await asyncio.sleep(script.delay)
            if not received.is_title:  # the runtime's background calls stay out of every count
                self.completed += 1
            message: dict[str, Any] = {"role": "assistant", "content": "".join(tokens)}
            if script.reasoning:
                message["reasoning_content"] = "".join(script.reasoning)
            if calls:
                message["tool_calls"] = calls
            return JSONResponse(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "finish_reason": finish_reason,
                        }
                    ],
                    "usage": usage,
                }
            )

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            data = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + orjson.dumps(data) + b"\n\n"

        async def stream():
            finished = False
            self.streaming += 1
            self.peak_streaming = max(self.peak_streaming, self.streaming)
            try:
                yield chunk({"role": "assistant", "content": ""})
                for tok in script.reasoning or ():
                    if script.delay:
                        await asyncio.sleep(script.delay)
                    yield chunk({"content": None, "reasoning_content": tok})
                for i, tok in enumerate(tokens):
                    if script.malformed_after is not None and i == script.malformed_after:
                        yield b"data: {this is not json\n\n"
                    if script.disconnect_after is not None and i == script.disconnect_after:
                        raise ScriptedDisconnect("scripted mid-stream disconnect")
                    if script.delay:
                        await asyncio.sleep(script.delay)
                    yield chunk({"content": tok})
                if script.malformed_after is not None and script.malformed_after >= len(tokens):
                    yield b"data: {this is not json\n\n"
                for i, call in enumerate(calls):
                    fn = call["function"]
                    yield chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                                 "function": {"name": fn["name"], "arguments": ""}}]})
                    args = fn["arguments"]
                    for j in range(0, len(args), script.chunk_args):
                        yield chunk({"tool_calls": [{"index": i, "function": {"arguments": args[j:j + script.chunk_args]}}]})
                yield chunk({}, finish_reason)
                if include_usage:
                    data = {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                    yield b"data: " + orjson.dumps(data) + b"\n\n"
                yield b"data: [DONE]\n\n"
                finished = True
                self.completed += 1
            finally:
                self.streaming -= 1
                if not finished:
                    self.aborted += 1

        return StreamingResponse(stream(), media_type="text/event-stream")


@pytest.fixture(scope="session")
async def llm():
    server = ScriptedLLM()
    await server.start()
    yield server
    await server.stop()

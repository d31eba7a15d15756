"""Audio end to end through the gateway (`all` stack, SQLite and, in CI, Postgres; the real litellm path against
the scripted server): the workspace default models on the console (set, read, replace, remove, validation,
roles), POST /v1/audio-to-text (the bytes and the default model reach the provider; every §2.14 error), and
POST /v1/text-to-audio by text and by message id (the provider's bytes come back; voice choice; errors)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.runtime.service.audio import TTS_MAX_TOTAL_CHARS, speech_pieces
from shared.settings import FilesSettings
from tests import workflow_graphs as g
from tests.conftest import LiveServer, live_fixture
from tests.llm_server import ScriptedLLM, heard_text, speech_bytes
from tests.support import bearer, envelope, invite_member, new_app, new_app_key, scripted_owner
from tests.workflow_graphs import linear_llm

MB = 1024 * 1024
MODEL = {"provider": "openai-compatible", "name": "scripted"}
DEFAULT_MODEL = "/console/api/workspaces/current/default-model"
STT_ON = {"speech_to_text": {"enabled": True}}
TTS_ON = {"text_to_speech": {"enabled": True, "voice": "nova", "language": "en-US"}}


def mp3(marker: str, size: int = 0) -> bytes:
    """Bytes that start like an MP3 (an ID3 tag), carrying ``marker``, padded to ``size``."""
    data = b"ID3\x04\x00\x00" + marker.encode()
    return data + b"\x00" * max(0, size - len(data))


def wav(marker: str) -> bytes:
    data = marker.encode()
    return b"RIFF" + len(data).to_bytes(4, "little") + b"WAVE" + data


# a 1 MB audio limit keeps the oversize case small
astack = live_fixture("audio", "astack", files=FilesSettings(audio_file_size_limit=1))


class Env:
    def __init__(self, c: httpx.AsyncClient, owner: dict[str, str], llm: ScriptedLLM) -> None:
        self.c, self.owner, self.llm = c, owner, llm

    async def defaults(self, *settings: dict[str, Any], h: dict[str, str] | None = None) -> httpx.Response:
        return await self.c.post(DEFAULT_MODEL, headers=h or self.owner, json={"model_settings": list(settings)})

    async def set_default(self, model_type: str, model: str | None) -> None:
        entry: dict[str, Any] = {"model_type": model_type}
        if model is not None:
            entry.update(provider="openai-compatible", model=model)
        r = await self.defaults(entry)
        assert r.status_code == 200 and r.json() == {"result": "success"}, r.text

    async def default(self, model_type: str, h: dict[str, str] | None = None) -> Any:
        r = await self.c.get(DEFAULT_MODEL, headers=h or self.owner, params={"model_type": model_type})
        assert r.status_code == 200, r.text
        return r.json()["data"]

    async def app(self, mode: str = "chat", **features: Any) -> tuple[str, dict[str, str]]:
        app_id = await new_app(self.c, self.owner, mode, {"model": MODEL, "pre_prompt": "Be brief.", **features},
                               prefix="audio")
        return app_id, bearer(await new_app_key(self.c, self.owner, app_id))

    async def transcribe(self, h: dict[str, str], data: bytes, name: str = "voice.mp3", field: str = "file",
                         ctype: str = "audio/mpeg", user: str = "u1") -> httpx.Response:
        return await self.c.post("/v1/audio-to-text", headers=h, files={field: (name, data, ctype)},
                                 data={"user": user})

    async def speak(self, h: dict[str, str], **body: Any) -> httpx.Response:
        return await self.c.post("/v1/text-to-audio", headers=h, json={"user": "u1", **body})


@pytest.fixture
async def env(astack: LiveServer, llm: ScriptedLLM) -> AsyncIterator[Env]:
    async with httpx.AsyncClient(base_url=astack.base_url, timeout=60) as c:
        e = Env(c, await scripted_owner(c, llm), llm)
        await e.set_default("speech2text", "whisper-test")
        await e.set_default("tts", "tts-test")
        yield e


async def member(c: httpx.AsyncClient, owner: dict[str, str], role: str) -> dict[str, str]:
    """Bearer headers of a new member of the owner's workspace with ``role``."""
    r, _ = await invite_member(c, owner, role)
    return bearer(r.json()["data"]["access_token"])


# ---- default models on the console ------------------------------------------------------------------------


async def test_default_model_set_get_replace_remove(env: Env) -> None:
    assert await env.default("speech2text") == {"model": "whisper-test", "model_type": "speech2text",
                                                "provider": {"provider": "openai-compatible"}}
    assert await env.default("rerank") is None
    # several types in one request; a type named again is replaced, not duplicated
    r = await env.defaults({"model_type": "rerank", "provider": "openai-compatible", "model": "rr-1"},
                           {"model_type": "speech2text", "provider": "openai-compatible", "model": "whisper-2"})
    assert r.status_code == 200, r.text
    assert (await env.default("rerank"))["model"] == "rr-1"
    assert (await env.default("speech2text"))["model"] == "whisper-2"
    # an entry without provider and model removes that type's default only
    r = await env.defaults({"model_type": "rerank"}, {"model_type": "speech2text", "provider": "", "model": ""})
    assert r.status_code == 200, r.text
    assert await env.default("rerank") is None
    assert await env.default("speech2text") is None
    assert (await env.default("tts"))["model"] == "tts-test"


async def test_default_model_validation(env: Env) -> None:
    envelope(await env.c.get(DEFAULT_MODEL, headers=env.owner, params={"model_type": "video"}), 400,
             "invalid_param")
    envelope(await env.c.get(DEFAULT_MODEL, headers=env.owner), 400, "invalid_param")
    bad = [
        {"model_type": "speech", "provider": "openai-compatible", "model": "m"},  # unknown type
        {"model_type": "tts", "provider": "openai-compatible"},  # provider without model
        {"model_type": "tts", "model": "m"},  # model without provider
        {"model_type": "tts", "provider": "no-such-provider", "model": "m"},
        {"model_type": "tts", "provider": "openai-compatible", "model": 5},
    ]
    for entry in bad:
        envelope(await env.defaults(entry), 400, "invalid_param")
    for body in ({}, {"model_settings": []}, {"model_settings": {"model_type": "tts"}}, {"model_settings": ["x"]}):
        envelope(await env.c.post(DEFAULT_MODEL, headers=env.owner, json=body), 400, "invalid_param")
    # a known provider the workspace has no credentials for is refused by name, and nothing of the request is
    # written (the valid entry before it included)
    msg = envelope(await env.defaults({"model_type": "tts", "provider": "openai-compatible", "model": "tts-new"},
                                      {"model_type": "speech2text", "provider": "anthropic", "model": "m"}),
                   400, "invalid_param")
    assert "anthropic" in msg and "credentials" in msg
    assert (await env.default("tts"))["model"] == "tts-test"
    assert (await env.default("speech2text"))["model"] == "whisper-test"


async def test_default_model_roles(env: Env) -> None:
    normal, editor, admin = [await member(env.c, env.owner, role) for role in ("normal", "editor", "admin")]
    entry = {"model_type": "moderation", "provider": "openai-compatible", "model": "mod-1"}
    # every member reads; only admins and the owner change
    assert (await env.default("tts", h=normal))["model"] == "tts-test"
    for h in (normal, editor):
        msg = envelope(await env.defaults(entry, h=h), 403, "forbidden")
        assert "admin role" in msg
    assert await env.default("moderation") is None
    r = await env.defaults(entry, h=admin)
    assert r.status_code == 200, r.text
    assert (await env.default("moderation", h=editor))["model"] == "mod-1"
    assert (await env.defaults({"model_type": "moderation"}, h=admin)).status_code == 200


# ---- audio to text --------------------------------------------------------------------------------------


async def test_transcription_round_trip(env: Env) -> None:
    _, h = await env.app(**STT_ON)
    audio = mp3(f"round-trip-{uuid.uuid4().hex}", size=4096)
    r = await env.transcribe(h, audio)
    assert r.status_code == 200, r.text
    assert r.json() == {"text": heard_text(audio)}
    got = env.llm.transcription_requests[-1]
    assert got.file == audio and got.body["model"] == "whisper-test"
    assert got.filename == "voice.mp3"

    # older SDK builds name the part `audio_file`; a recorded blob comes without an extension
    clip = wav(f"blob-{uuid.uuid4().hex}")
    r = await env.transcribe(h, clip, name="blob", field="audio_file", ctype="audio/wav")
    assert r.status_code == 200, r.text
    assert r.json() == {"text": heard_text(clip)}
    assert env.llm.transcription_requests[-1].file == clip

    # the provider's text comes back as is; a new default is in force for the next request
    env.llm.transcription_text = "Bonjour, le monde."
    try:
        await env.set_default("speech2text", "whisper-next")
        r = await env.transcribe(h, audio)
        assert r.status_code == 200 and r.json() == {"text": "Bonjour, le monde."}, r.text
        assert env.llm.transcription_requests[-1].body["model"] == "whisper-next"
    finally:
        env.llm.transcription_text = None


async def test_transcription_of_a_blob_by_content_type(env: Env) -> None:
    """A nameless recording is taken by its part's Content-Type: Dify's audio/<extension> types, and the
    usual MIME names of them."""
    _, h = await env.app(**STT_ON)
    m4a = b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 24
    for ctype, data in (("audio/mp3", mp3("as mp3")), ("audio/mpga", mp3("as mpga")), ("audio/m4a", m4a),
                        ("audio/amr", b"#!AMR\n" + b"\x00" * 16), ("audio/webm; codecs=opus", b"\x1a\x45\xdf\xa3" + b"\x00" * 16),
                        ("audio/mpeg", mp3("as mpeg")), ("audio/x-wav", wav("as x-wav"))):
        r = await env.transcribe(h, data, name="blob", ctype=ctype)
        assert r.status_code == 200 and r.json() == {"text": heard_text(data)}, (ctype, r.text)
    # the type still has to match the bytes
    envelope(await env.transcribe(h, wav("not an mp3"), name="blob", ctype="audio/mp3"), 415,
             "unsupported_audio_type")


async def test_transcription_size_limit_is_the_parameters_one(env: Env) -> None:
    _, h = await env.app(**STT_ON)
    limit_mb = (await env.c.get("/v1/parameters", headers=h)).json()["system_parameters"]["audio_file_size_limit"]
    assert limit_mb == 1
    exact = mp3("exact", size=limit_mb * MB)
    r = await env.transcribe(h, exact)
    assert r.status_code == 200 and r.json() == {"text": heard_text(exact)}, r.text
    seen = len(env.llm.transcription_requests)
    msg = envelope(await env.transcribe(h, mp3("over", size=limit_mb * MB + 1)), 413, "audio_too_large")
    assert f"{limit_mb} mb" in msg
    assert len(env.llm.transcription_requests) == seen


async def test_transcription_errors(env: Env) -> None:
    _, h = await env.app(**STT_ON)
    seen = len(env.llm.transcription_requests)
    # no file: a form without one, a file under another name, not a form at all
    r = await env.c.post("/v1/audio-to-text", headers=h, data={"user": "u1"})
    assert envelope(r, 400, "no_audio_uploaded") == "Please upload your audio."
    r = await env.c.post("/v1/audio-to-text", headers=h, files={"upload": ("a.mp3", mp3("x"), "audio/mpeg")})
    envelope(r, 400, "no_audio_uploaded")
    envelope(await env.c.post("/v1/audio-to-text", headers=h, json={"user": "u1"}), 400, "no_audio_uploaded")
    # not an audio type, by name or by content
    for name, data, ctype in (("notes.txt", b"hello", "text/plain"), ("fake.mp3", b"plain text, no audio", "audio/mpeg"),
                              ("fake.wav", mp3("not a wav"), "audio/wav"), ("blob", b"\x00\x01", "application/octet-stream"),
                              ("pic.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 16, "image/png")):
        msg = envelope(await env.transcribe(h, data, name=name, ctype=ctype), 415, "unsupported_audio_type")
        assert msg == "Audio type not allowed."
    assert len(env.llm.transcription_requests) == seen  # none of them reached the provider

    # the provider's failure is the request's 400 with its message
    env.llm.push(endpoint="transcriptions", match="please-fail", status=400,
                 body={"error": {"message": "audio is unreadable", "type": "invalid_request_error"}})
    msg = envelope(await env.transcribe(h, mp3("please-fail")), 400, "completion_request_error")
    assert "audio is unreadable" in msg

    # the app's feature off
    _, off = await env.app()
    msg = envelope(await env.transcribe(off, mp3("feature-off")), 400, "invalid_param")
    assert msg == "Speech to text is not enabled"

    # no default speech2text model in the workspace
    await env.set_default("speech2text", None)
    msg = envelope(await env.transcribe(h, mp3("no-model")), 400, "provider_not_support_speech_to_text")
    assert msg == "Provider not support speech to text."


async def test_default_model_without_credentials_any_more(env: Env, llm: ScriptedLLM) -> None:
    """Credentials deleted after the default was set: the audio endpoints say so, like chat does."""
    _, h = await env.app(**STT_ON, **TTS_ON)
    path = "/console/api/workspaces/current/model-providers/openai/credentials"
    r = await env.c.post(path, headers=env.owner, json={"credentials": {"api_key": "sk-y", "api_base": llm.base_url}})
    assert r.status_code == 200, r.text
    r = await env.defaults({"model_type": "tts", "provider": "openai", "model": "tts-openai"})
    assert r.status_code == 200, r.text
    r = await env.speak(h, text="via openai")
    assert r.status_code == 200 and r.content == speech_bytes("via openai"), r.text
    assert env.llm.speech_requests[-1].body["model"] == "tts-openai"
    assert (await env.c.delete(path, headers=env.owner)).status_code == 200
    envelope(await env.speak(h, text="via openai"), 400, "provider_not_initialize")


# ---- text to audio --------------------------------------------------------------------------------------


async def test_text_to_audio_by_text(env: Env) -> None:
    _, h = await env.app(**TTS_ON)
    r = await env.speak(h, text="Hello there.")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/mpeg"
    assert r.content == speech_bytes("Hello there.")
    got = env.llm.speech_requests[-1].body
    assert (got["model"], got["voice"], got["input"]) == ("tts-test", "nova", "Hello there.")
    # the request's voice wins over the app's; an app without one gets the default voice
    r = await env.speak(h, text="Second.", voice="echo", streaming=False)
    assert r.status_code == 200 and r.content == speech_bytes("Second."), r.text
    assert env.llm.speech_requests[-1].body["voice"] == "echo"
    _, plain = await env.app(text_to_speech={"enabled": True})
    assert (await env.speak(plain, text="Third.")).status_code == 200
    assert env.llm.speech_requests[-1].body["voice"] == "alloy"
    # a provider that answers WAV is served as WAV
    clip = wav("wave-form")
    env.llm.push(endpoint="speech", match="as wav", body=clip)
    r = await env.speak(h, text="Say it as wav.")
    assert r.status_code == 200 and r.content == clip, r.text
    assert r.headers["content-type"] == "audio/wav"


async def test_text_to_audio_by_message_id(env: Env) -> None:
    _, h = await env.app(**TTS_ON)
    env.llm.push(reply="The spoken answer.", match="speak-me")
    r = await env.c.post("/v1/chat-messages", headers=h, json={"inputs": {}, "query": "speak-me", "user": "u1",
                                                               "response_mode": "blocking"})
    assert r.status_code == 200, r.text
    message_id = r.json()["message_id"]
    # message_id wins over text
    r = await env.speak(h, message_id=message_id, text="not this")
    assert r.status_code == 200, r.text
    assert r.content == speech_bytes("The spoken answer.")
    assert env.llm.speech_requests[-1].body["input"] == "The spoken answer."
    # another end user's, another app's, a made-up or malformed id: 404
    seen = len(env.llm.speech_requests)
    for body in ({"message_id": message_id, "user": "u2"}, {"message_id": str(uuid.uuid4())},
                 {"message_id": "not-a-uuid"}):
        assert envelope(await env.speak(h, **body), 404, "not_found") == "Message Not Exists."
    _, other = await env.app(**TTS_ON)
    envelope(await env.speak(other, message_id=message_id), 404, "not_found")
    assert len(env.llm.speech_requests) == seen


async def test_long_text_is_read_in_pieces(env: Env) -> None:
    """Text over one provider call's 4,096 characters is read in pieces split at sentence ends, their MP3 audio
    streamed one after the other; a long answer is read the same way."""
    _, h = await env.app(**TTS_ON)
    text = " ".join(f"Sentence number {i} is here." for i in range(400))  # 11,289 characters
    seen = len(env.llm.speech_requests)
    r = await env.speak(h, text=text)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/mpeg", r.text
    inputs = [q.body["input"] for q in env.llm.speech_requests[seen:]]
    assert len(inputs) == 3 and all(len(x) <= 4096 and x.endswith("is here.") for x in inputs)
    assert " ".join(inputs) == text  # nothing lost or read twice
    assert r.content == b"".join(speech_bytes(x) for x in inputs)

    # a later piece that fails ends the audio early (the status went out with the first piece)
    env.llm.push(endpoint="speech", match="Sentence number 399 ", status=500,
                 body={"error": {"message": "voice engine down", "type": "server_error"}})
    r = await env.speak(h, text=text)
    assert r.status_code == 200 and r.content == b"".join(speech_bytes(x) for x in inputs[:2])
    # a provider answering WAV cannot be joined: refused with the reason
    env.llm.push(endpoint="speech", match="Sentence number 0 ", body=wav("first-piece"))
    msg = envelope(await env.speak(h, text=text), 400, "completion_request_error")
    assert "MP3" in msg

    # a long answer, by message id
    env.llm.push(reply=text, match="read-long")
    r = await env.c.post("/v1/chat-messages", headers=h, json={"inputs": {}, "query": "read-long", "user": "u1",
                                                               "response_mode": "blocking"})
    assert r.status_code == 200, r.text
    seen = len(env.llm.speech_requests)
    r = await env.speak(h, message_id=r.json()["message_id"])
    assert r.status_code == 200
    assert [q.body["input"] for q in env.llm.speech_requests[seen:]] == inputs
    assert r.content == b"".join(speech_bytes(x) for x in inputs)


def test_speech_pieces() -> None:
    assert speech_pieces("One. Two.", 100) == ["One. Two."]
    assert speech_pieces("Aaaa. Bbbb. Cccc.", 12) == ["Aaaa. Bbbb.", "Cccc."]
    assert speech_pieces("abcdefghij klm", 8) == ["abcdefgh", "ij klm"]  # no sentence end or space far enough in
    assert speech_pieces("  ") == []


async def test_text_to_audio_errors(env: Env) -> None:
    _, h = await env.app(**TTS_ON)
    seen = len(env.llm.speech_requests)
    for body in ({}, {"text": ""}, {"text": "   "}, {"message_id": "", "text": None}):
        envelope(await env.speak(h, **body), 400, "invalid_param")
    msg = envelope(await env.speak(h, text="x" * (TTS_MAX_TOTAL_CHARS + 1)), 400, "invalid_param")
    assert str(TTS_MAX_TOTAL_CHARS) in msg
    _, off = await env.app(**STT_ON)
    assert envelope(await env.speak(off, text="hello"), 400, "invalid_param") == "TTS is not enabled"
    assert len(env.llm.speech_requests) == seen

    env.llm.push(endpoint="speech", match="fail-tts", status=500,
                 body={"error": {"message": "voice engine down", "type": "server_error"}})
    msg = envelope(await env.speak(h, text="please fail-tts"), 400, "completion_request_error")
    assert "voice engine down" in msg

    await env.set_default("tts", None)
    msg = envelope(await env.speak(h, text="hello"), 400, "provider_not_support_text_to_speech")
    assert msg == "Provider not support text to speech."


async def test_workflow_app_features(env: Env) -> None:
    """Graph apps take the features of their published workflow."""
    c, owner = env.c, env.owner
    r = await c.post("/console/api/apps", headers=owner, json={"name": f"audio-wf-{uuid.uuid4().hex[:6]}",
                                                                "mode": "workflow"})
    app_id = r.json()["id"]
    h = bearer(await new_app_key(c, owner, app_id))
    # not published yet: the features are off
    envelope(await env.speak(h, text="hi"), 400, "invalid_param")
    features = {**STT_ON, "text_to_speech": {"enabled": True, "voice": "shimmer"}}
    r = await c.post(f"/console/api/apps/{app_id}/workflows/draft", headers=owner,
                     json={"graph": linear_llm(), "features": features})
    assert r.status_code == 200, r.text
    assert (await c.post(f"/console/api/apps/{app_id}/workflows/publish", headers=owner, json={})).status_code == 200
    r = await env.speak(h, text="From a workflow.")
    assert r.status_code == 200 and r.content == speech_bytes("From a workflow."), r.text
    assert env.llm.speech_requests[-1].body["voice"] == "shimmer"
    audio = mp3("workflow-audio")
    r = await env.transcribe(h, audio)
    assert r.status_code == 200 and r.json() == {"text": heard_text(audio)}, r.text


async def test_scoped_key_needs_chat(env: Env) -> None:
    app_id, _ = await env.app(**STT_ON, **TTS_ON)
    keys = {}
    for perms in (["history"], ["chat"]):
        r = await env.c.post(f"/console/api/apps/{app_id}/api-keys", headers=env.owner, json={"permissions": perms})
        assert r.status_code == 201, r.text
        keys[perms[0]] = bearer(r.json()["token"])
    seen = (len(env.llm.transcription_requests), len(env.llm.speech_requests))
    msg = envelope(await env.transcribe(keys["history"], mp3("scoped")), 403, "forbidden")
    assert "'chat'" in msg
    envelope(await env.speak(keys["history"], text="scoped"), 403, "forbidden")
    assert (len(env.llm.transcription_requests), len(env.llm.speech_requests)) == seen
    assert (await env.transcribe(keys["chat"], mp3("scoped"))).status_code == 200
    assert (await env.speak(keys["chat"], text="scoped")).status_code == 200


# ---- auto play: the answer read aloud in the stream (tts_message … tts_message_end) ------------------------

AUTO_PLAY = {"text_to_speech": {"enabled": True, "voice": "nova", "language": "en-US", "autoPlay": "enabled"}}


async def stream(env: Env, h: dict[str, str], query: str, path: str = "/v1/chat-messages",
                 **extra: Any) -> list[dict[str, Any]]:
    body = {"inputs": {}, "query": query, "user": "u1", "response_mode": "streaming", **extra}
    async with env.c.stream("POST", path, headers=h, json=body) as r:
        assert r.status_code == 200
        return [json.loads(line[6:]) async for line in r.aiter_lines() if line.startswith("data: ")]


def spoken(events: list[dict[str, Any]]) -> list[str]:
    """The text of each tts_message (the scripted provider answers ID3 + the text it was given)."""
    out = []
    for e in events:
        if e["event"] == "tts_message":
            audio = base64.b64decode(e["audio"])
            assert audio.startswith(b"ID3"), audio[:10]
            out.append(audio[3:].decode())
    return out


async def test_auto_play_reads_the_streamed_answer(env: Env) -> None:
    _, h = await env.app(**AUTO_PLAY)
    answer = "The tide comes in twice a day. It turns every six hours or so! Ask me more?"
    env.llm.push(match="tides", reply=answer)
    seen = len(env.llm.speech_requests)
    events = await stream(env, h, "tell me about tides")
    kinds = [e["event"] for e in events]
    # Dify's order: the audio still being made follows message_end; tts_message_end comes last
    assert kinds[-1] == "tts_message_end" and "message_end" in kinds, kinds
    # "Ask me more?" is too short a sentence to be read before the answer is complete: its audio follows
    last = next(i for i, e in enumerate(events) if e["event"] == "tts_message"
                and "Ask me more?" in base64.b64decode(e["audio"]).decode())
    assert last > kinds.index("message_end"), kinds
    end = events[-1]
    assert end["audio"] == "" and end["message_id"] == events[0]["message_id"], end
    assert {e["task_id"] for e in events if e["event"].startswith("tts")} == {events[0]["task_id"]}
    said = spoken(events)
    assert said and " ".join(said) == answer, said  # every sentence once, in order
    new = env.llm.speech_requests[seen:]
    assert [r.body["voice"] for r in new] == ["nova"] * len(new)
    assert {r.body["model"] for r in new} == {"tts-test"}
    # blocking answers are not read, nor apps without autoPlay
    env.llm.push(match="quiet", reply="Nothing to hear.")
    r = await env.c.post("/v1/chat-messages", headers=h, json={"inputs": {}, "query": "quiet", "user": "u1"})
    assert r.status_code == 200 and r.json()["answer"] == "Nothing to hear."
    _, plain = await env.app(**TTS_ON)
    env.llm.push(match="plain", reply="Not read aloud.")
    assert not [e for e in await stream(env, plain, "plain") if e["event"].startswith("tts")]
    assert len(env.llm.speech_requests) == seen + len(new)


async def test_auto_play_completion_and_agent(env: Env) -> None:
    _, h = await env.app("completion", **AUTO_PLAY)
    env.llm.push(match="Be brief", reply="Roses are red, violets are blue.")  # a completion's prompt
    events = await stream(env, h, "", path="/v1/completion-messages")
    assert spoken(events) == ["Roses are red, violets are blue."] and events[-1]["event"] == "tts_message_end"

    agent = {"enabled": True, "strategy": "function_call", "max_iteration": 2, "tools": [
        {"provider_type": "builtin", "provider_id": "time", "tool_name": "current_time", "tool_parameters": {},
         "enabled": True}]}
    _, k = await env.app("agent-chat", agent_mode=agent, **AUTO_PLAY)
    env.llm.push(match="what now", reply="It is late in the evening now.")
    events = await stream(env, k, "what now")
    assert spoken(events) == ["It is late in the evening now."], [e["event"] for e in events]


async def test_auto_play_failures_and_limits(env: Env) -> None:
    _, h = await env.app(**AUTO_PLAY)
    # the provider failing ends the audio, not the answer
    env.llm.push(endpoint="speech", match="doomed", status=500,
                 body={"error": {"message": "voice engine down", "type": "server_error"}})
    env.llm.push(match="fail please", reply="This sentence is doomed to silence. This one too.")
    events = await stream(env, h, "fail please")
    kinds = [e["event"] for e in events]
    assert "message_end" in kinds and kinds[-1] == "tts_message_end" and spoken(events) == [], kinds
    assert "".join(e["answer"] for e in events if e["event"] == "message") == \
        "This sentence is doomed to silence. This one too."
    # a flagged answer: its replacement is read, never the flagged words
    swa = {"enabled": True, "type": "keywords", "config": {
        "keywords": "badword", "inputs_config": {"enabled": False, "preset_response": ""},
        "outputs_config": {"enabled": True, "preset_response": "I cannot say that."}}}
    _, m = await env.app(sensitive_word_avoidance=swa, **AUTO_PLAY)
    env.llm.push(match="rude", tokens=["A first harmless sentence here. ", "Then a bad", "word follows."])
    events = await stream(env, m, "rude")
    kinds = [e["event"] for e in events]
    assert "message_replace" in kinds and kinds[-1] == "tts_message_end", kinds
    said = spoken(events)
    assert said[-1] == "I cannot say that." and not [t for t in said if "bad" in t], said
    # no default tts model: the answer streams without audio
    await env.set_default("tts", None)
    env.llm.push(match="silent", reply="Nobody reads this aloud.")
    events = await stream(env, h, "silent")
    assert not [e for e in events if e["event"].startswith("tts")] and events[-1]["event"] == "message_end"


async def test_a_stop_ends_the_audio_that_follows_the_answer(env: Env) -> None:
    """A stop while the audio still follows message_end ends it at once with tts_message_end (chat and
    chatflow runs share the rule; here a chat)."""
    _, h = await env.app(**AUTO_PLAY)
    env.llm.push(endpoint="speech", match="slowly", first_delay=5)  # this sentence takes its time
    env.llm.push(match="stop me", reply="A first sentence is quick to read. Read me slowly")
    body = {"inputs": {}, "query": "stop me", "user": "u1", "response_mode": "streaming"}
    events: list[dict[str, Any]] = []
    async with env.c.stream("POST", "/v1/chat-messages", headers=h, json=body) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            events.append(json.loads(line[6:]))
            if events[-1]["event"] == "message_end":
                t0 = time.monotonic()
                stop = await env.c.post(f"/v1/chat-messages/{events[-1]['task_id']}/stop", headers=h,
                                        json={"user": "u1"})
                assert stop.status_code == 200, stop.text
    assert time.monotonic() - t0 < 3  # not the 5 s the slow piece takes
    assert events[-1]["event"] == "tts_message_end", [e["event"] for e in events]
    assert not [t for t in spoken(events) if "slowly" in t]


async def test_auto_play_reads_direct_answers(env: Env) -> None:
    """An answer given without the model (here an input moderation preset) is read too, after message_end."""
    swa = {"enabled": True, "type": "keywords", "config": {
        "keywords": "forbidden", "inputs_config": {"enabled": True, "preset_response": "Let us talk about tea."},
        "outputs_config": {"enabled": False, "preset_response": ""}}}
    _, h = await env.app(sensitive_word_avoidance=swa, **AUTO_PLAY)
    before = len(env.llm.requests)
    events = await stream(env, h, "tell me forbidden things")
    kinds = [e["event"] for e in events]
    assert kinds == ["message", "message_end", "tts_message", "tts_message_end"], kinds
    assert spoken(events) == ["Let us talk about tea."] and len(env.llm.requests) == before


async def test_auto_play_advanced_chat(env: Env) -> None:
    """A chatflow's answer is read aloud too, from its published workflow's text_to_speech feature."""
    c, owner = env.c, env.owner
    app_id = await new_app(c, owner, "advanced-chat", prefix="audio-flow")
    graph = g.graph([
        g.start(),
        g.node(g.LLM, "llm", "Chat", model=g.MODEL, context={"enabled": False, "variable_selector": []},
               memory={"window": {"enabled": False, "size": 10}, "query_prompt_template": "{{#sys.query#}}"},
               prompt_template=[{"role": "system", "text": "You are terse."}]),
        g.node(g.ANSWER, "answer", "Answer", answer="{{#" + g.LLM + ".text#}}"),
    ], [g.edge(g.START, g.LLM), g.edge(g.LLM, g.ANSWER)])
    r = await c.post(f"/console/api/apps/{app_id}/workflows/draft", headers=owner,
                     json={"graph": graph, "features": AUTO_PLAY})
    assert r.status_code == 200, r.text
    assert (await c.post(f"/console/api/apps/{app_id}/workflows/publish", headers=owner, json={})).status_code == 200
    h = bearer(await new_app_key(c, owner, app_id))
    env.llm.push(match="flow", reply="Flows carry water downhill. Rivers join the sea.")
    events = await stream(env, h, "tell me about flow")
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "tts_message_end" and "workflow_finished" in kinds, kinds
    assert " ".join(spoken(events)) == "Flows carry water downhill. Rivers join the sea."
    tts = [e for e in events if e["event"] == "tts_message"]
    assert {(e["conversation_id"], e["message_id"]) for e in tts} == {(events[-1]["conversation_id"],
                                                                       events[-1]["message_id"])}

"""TTS auto play's reader (services/runtime/service/autoplay.py) on its own: how an answer is cut into provider
calls, in order, within the limits; what a replacement, a failure and a cancel send. The provider is a recorder
that answers each text's bytes."""

from __future__ import annotations

import asyncio
import base64

import orjson

from services.runtime.service.audio import TTS_MAX_TOTAL_CHARS
from services.runtime.service.autoplay import MIN_SENTENCE_CHARS, PIECE_CHARS, AutoPlay, auto_play

ENVELOPE = {"conversation_id": "c1", "message_id": "m1", "created_at": 1}


class Recorder:
    def __init__(self, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.texts: list[str] = []
        self.events: list[dict] = []
        self.delay, self.fail_on = delay, fail_on

    async def speak(self, text: str) -> bytes:
        self.texts.append(text)
        await asyncio.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in text:
            raise RuntimeError("voice engine down")
        return text.encode()

    async def emit(self, data: bytes) -> None:
        self.events.append(orjson.loads(data))

    def spoken(self) -> list[str]:
        return [base64.b64decode(e["audio"]).decode() for e in self.events if e["event"] == "tts_message"]


def player(rec: Recorder) -> AutoPlay:
    p = AutoPlay(rec.speak, ENVELOPE, "t1", "a1")
    p.start(rec.emit)
    return p


def test_auto_play_wants_enabled_and_auto_play() -> None:
    assert auto_play({"enabled": True, "autoPlay": "enabled"})
    assert not auto_play({"enabled": True, "autoPlay": "disabled"})
    assert not auto_play({"enabled": False, "autoPlay": "enabled"})
    assert not auto_play(None)


async def test_a_fast_long_answer_is_read_in_order_in_bounded_pieces() -> None:
    rec = Recorder(delay=0.01)
    p = player(rec)
    sentences = [f"Sentence number {i} says something worth hearing." for i in range(200)]
    for s in sentences:
        p.feed(s + " ")
        await asyncio.sleep(0)  # the reader runs between pieces, as it does beside a streaming model
    await p.finish()
    assert " ".join(rec.spoken()) == " ".join(sentences)  # every sentence once, in order
    assert all(len(t) <= PIECE_CHARS for t in rec.texts)
    assert len(rec.texts) < len(sentences) // 5  # gathered while a call ran, not one call per sentence
    assert rec.events[-1] == {**ENVELOPE, "event": "tts_message_end", "task_id": "t1", "audio": ""}
    assert {e["message_id"] for e in rec.events} == {"m1"}


async def test_short_cuts_wait_and_the_rest_is_read_at_the_end() -> None:
    rec = Recorder()
    p = player(rec)
    p.feed("Hi. ")  # shorter than MIN_SENTENCE_CHARS: not a call of its own
    await asyncio.sleep(0.01)
    assert rec.texts == [] and len("Hi. ") < MIN_SENTENCE_CHARS
    p.feed("Here is the rest without an end")
    await p.finish()
    assert rec.texts == ["Hi. Here is the rest without an end"]


async def test_one_sentence_longer_than_a_piece_is_split() -> None:
    rec = Recorder()
    p = player(rec)
    words = " ".join(f"word{i}" for i in range(600))  # ~4,500 characters, no sentence end
    p.feed(words)
    await p.finish()
    assert all(len(t) <= PIECE_CHARS for t in rec.texts) and len(rec.texts) >= 4
    assert " ".join(rec.spoken()).split() == words.split()


async def test_at_most_the_total_limit_is_read() -> None:
    rec = Recorder()
    p = player(rec)
    p.feed("A sentence of some length goes here. " * 2000)
    await p.finish()
    assert TTS_MAX_TOTAL_CHARS - PIECE_CHARS < sum(len(t) for t in rec.texts) <= TTS_MAX_TOTAL_CHARS


async def test_a_replacement_is_read_even_after_the_limit() -> None:
    rec = Recorder(delay=0.05)
    p = player(rec)
    p.feed("A sentence of some length goes here. " * 2000)  # the whole limit queued, little of it read yet
    await asyncio.sleep(0.01)
    p.replace("I cannot say that.")
    await p.finish()
    assert rec.spoken()[-1] == "I cannot say that."


async def test_replacement_drops_what_was_not_read() -> None:
    rec = Recorder(delay=0.05)
    p = player(rec)
    p.feed("The first sentence is read already. ")
    await asyncio.sleep(0.01)  # the first call is under way
    p.feed("This one was flagged and must not be read. ")
    p.replace("I cannot say that.")
    await p.finish()
    assert rec.spoken() == ["The first sentence is read already.", "I cannot say that."]


async def test_a_failure_ends_the_audio_but_still_ends_it() -> None:
    rec = Recorder(fail_on="broken")
    p = player(rec)
    p.feed("This sentence is broken on purpose. ")
    await asyncio.sleep(0.01)
    p.feed("And this one is never read. ")
    await p.finish()
    assert p.failed and rec.spoken() == []
    assert [e["event"] for e in rec.events] == ["tts_message_end"]


async def test_cancel_sends_the_end_only_when_asked() -> None:
    rec = Recorder(delay=1.0)
    p = player(rec)
    p.feed("A long call is under way right now. ")
    await asyncio.sleep(0.01)
    await p.cancel(end=True)
    assert [e["event"] for e in rec.events] == ["tts_message_end"]
    rec2 = Recorder(delay=1.0)
    p2 = player(rec2)
    p2.feed("Another long call is under way now. ")
    await asyncio.sleep(0.01)
    await p2.cancel(end=False)
    assert rec2.events == []

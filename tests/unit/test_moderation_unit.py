"""Output review by keywords and the per-config caches of moderators and answer-cache versions
(services/runtime/service/moderation.py, answer_cache.py; docs/moderation.md)."""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace
from typing import Any

import pytest

from services.runtime import llm
from services.runtime.service import answer_cache, moderation
from services.runtime.service.answer_cache import AnswerCache
from services.runtime.service.cache import AppEntry
from services.runtime.service.moderation import KeywordMatcher, ModerationService, Moderator
from shared.app_config import parse_model_config


async def feed(review: Any, delta: str) -> bool:
    result = review.feed(delta)
    return await result if inspect.isawaitable(result) else result


def keyword_review(*keywords: str) -> Any:
    mod = Moderator(kind="keywords", input_preset=None, output_preset="[removed]", matcher=KeywordMatcher(list(keywords)))
    review = mod.output_review()
    assert review is not None
    return review


@pytest.mark.parametrize(("keyword", "deltas"), [
    ("café", ["A ", "caf", "e", "\u0301", " au lait"]),  # e + combining acute, streamed apart
    ("café", ["A cafe", "\u0301 au lait"]),
    ("각", ["\u1100", "\u1161", "\u11a8"]),  # Hangul jamo L, V, T compose to one syllable
    ("ガ", ["ｶ", "ﾞ"]),  # half-width katakana and its voiced mark: NFKC makes one character
])
async def test_keyword_split_inside_a_character_is_caught(keyword: str, deltas: list[str]) -> None:
    review = keyword_review(keyword)
    hits = [await feed(review, d) for d in deltas]
    assert any(hits), hits
    whole = keyword_review(keyword)  # the same text in one piece matches too
    assert await feed(whole, "".join(deltas))


async def test_keyword_completed_by_a_delta_is_caught_on_that_delta() -> None:
    review = keyword_review("badword", "café")
    assert [await feed(review, d) for d in ["Sure, bad", "word"]] == [False, True]
    review = keyword_review("café")
    assert [await feed(review, d) for d in ["a caf", "é"]] == [False, True]


async def test_combining_marks_do_not_make_false_matches() -> None:
    review = keyword_review("café", "각")
    assert not any([await feed(review, d) for d in ["cafe", "s and ", "\u1100", "\u1161", " more"]])


async def test_keyword_review_keeps_bounded_state() -> None:
    """A long answer: the review keeps what a match may still need, not the whole folded answer."""
    review = keyword_review("secret plan", "违禁词")
    for i in range(5000):
        assert not await feed(review, f"word {i} ")

    def retained(value: Any) -> int:
        if isinstance(value, str):
            return len(value)
        if isinstance(value, list):
            return sum(retained(v) for v in value)
        return 0

    kept = sum(retained(getattr(review, name, None)) for name in type(review).__slots__)
    assert kept < 100, kept
    assert await feed(review, "the secret p") is False and await feed(review, "lan") is True


# -- the moderation model ---------------------------------------------------------------------------------

class HeldModel:
    """Stands in for the moderation model's HTTP call (``llm.moderate``): records what each review sends and
    answers only when ``gate`` is set; flags texts containing "forbidden"."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []
        self.gate = asyncio.Event()
        self.cancelled = 0

    async def __call__(self, kwargs: Any, text: str | list[str], timeout: float) -> bool:
        texts = [text] if isinstance(text, str) else list(text)
        self.sent.append(texts)
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return any("forbidden" in t for t in texts)


def model_review(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, HeldModel]:
    held = HeldModel()
    monkeypatch.setattr(llm, "moderate", held)
    mod = Moderator(kind="openai_moderation", input_preset=None, output_preset="[removed]",
                    model_kwargs={"model": "m"})
    return mod.output_review(), held


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_model_review_runs_beside_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    review, held = model_review(monkeypatch)
    async with asyncio.timeout(5):  # a review awaited inside feed would wait for the gate forever
        for i in range(100):
            assert await feed(review, f"part {i:03d}. ") is False  # 10 characters each
        await settle()
        assert len(held.sent) == 1 and held.sent[0] == ["".join(f"part {i:03d}. " for i in range(30))]
        held.gate.set()  # the first review comes back clean: the next one covers what came since
        await settle()
        assert await feed(review, "forbidden ") is False
        await settle()
        assert len(held.sent) == 2
        second = "".join(held.sent[1])
        overlap = moderation.MODEL_OVERLAP_CHARS  # the end of the first review's text, then the new text
        assert second.startswith("".join(f"part {i:03d}. " for i in range(30))[-overlap:])
        assert second.endswith("part 099. forbidden ") and len(second) == overlap + 710
        assert await feed(review, "more ") is True  # the flagged result is read on the next delta
        assert review.flagged


async def test_model_review_finish_waits_for_the_running_review(monkeypatch: pytest.MonkeyPatch) -> None:
    review, held = model_review(monkeypatch)
    async with asyncio.timeout(5):
        for i in range(40):
            assert await feed(review, "forbidden " if i == 3 else f"part {i:03d}. ") is False
        await settle()
        assert len(held.sent) == 1
        finish = asyncio.ensure_future(review.finish())
        await settle()
        assert not finish.done()
        held.gate.set()
        assert await finish is True
        assert len(held.sent) == 1  # flagged by the running review: no further one


async def test_model_review_close_cancels_the_running_review(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that ends early (stopped, failed) does not leave its review running."""
    review, held = model_review(monkeypatch)
    async with asyncio.timeout(5):
        for _ in range(31):
            await feed(review, "x" * 10)
    await settle()
    assert len(held.sent) == 1
    review.close()
    await settle()
    assert held.cancelled == 1


# -- the caches ---------------------------------------------------------------------------------------

CTX = SimpleNamespace(db=None, mode="all", redis=None,
                      settings=SimpleNamespace(runtime=SimpleNamespace(moderation_timeout=10.0,
                                                                       answer_cache_max_entries=10)))


def entry(app_id: str = "app-1", config_id: str = "cfg-1", keywords: str = "badword",
          answer_cache_on: bool = False) -> AppEntry:
    raw: dict[str, Any] = {"model": {"provider": "openai-compatible", "name": "scripted"},
                           "sensitive_word_avoidance": {"enabled": True, "type": "keywords", "config": {
                               "keywords": keywords, "inputs_config": {"enabled": True, "preset_response": "no"},
                               "outputs_config": {"enabled": False}}}}
    if answer_cache_on:
        raw["answer_cache"] = {"enabled": True}
    # a new parsed object each time, as every reload of the app cache makes
    return AppEntry(id=app_id, tenant_id="t", name="n", description="", mode="chat", author_name="",
                    config=parse_model_config(raw), binding=None, loaded_at=0.0, config_id=config_id)


async def test_moderator_survives_reloads_of_an_unchanged_config() -> None:
    svc = ModerationService(CTX)
    first = await svc.for_app(entry())
    assert first is not None
    assert await svc.for_app(entry()) is first  # the app cache loaded it again: same config, same moderator
    changed = await svc.for_app(entry(keywords="otherword"))  # edited in place under the same version id
    assert changed is not None and changed is not first
    assert (await changed.check_inputs({}, "an otherword"))[0] == "no"
    assert (await changed.check_inputs({}, "a badword"))[0] is None


async def test_moderators_are_bounded_and_forgotten_with_their_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(moderation, "MAX_MODERATORS", 3)
    svc = ModerationService(CTX)
    mods = [await svc.for_app(entry(app_id=f"app-{i}")) for i in range(10)]
    assert len(svc._entries) == 3  # the least recently used were dropped
    assert await svc.for_app(entry(app_id="app-9")) is mods[9]
    svc.forget_app("app-9")
    assert await svc.for_app(entry(app_id="app-9")) is not mods[9]


async def test_answer_cache_versions_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answer_cache, "MAX_VERSIONS", 3)
    cache = AnswerCache(CTX)
    ask = {"endpoint": "chat", "new_conversation": True, "query": "hi", "inputs": {}, "system": ""}
    for i in range(10):
        assert await cache.lookup(entry(app_id=f"app-{i}", answer_cache_on=True), **ask) is not None
    assert len(cache._versions) == 3

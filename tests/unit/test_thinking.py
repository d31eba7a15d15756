"""A reasoning model's <think> blocks: found in whole answers and in streams cut anywhere."""

from __future__ import annotations

import random

import pytest

from services.runtime.service.prompt import memory_turns
from services.runtime.thinking import CLOSE, OPEN, ThinkingSplitter, split_thinking, without_thinking

CASES = [
    # (answer as stored/streamed, answer without thinking, thinking)
    (OPEN + "The user greets me." + CLOSE + "Ahoy!", "Ahoy!", "The user greets me."),  # Dify's wrapping
    ("<think>\nhmm, JSON\n</think>\n\n{\"a\": 1}", "{\"a\": 1}", "hmm, JSON"),  # inline, as R1 writes it
    ("No thinking at all.", "No thinking at all.", ""),
    ("<think>first</think>A<think>second</think>B", "AB", "first\n\nsecond"),
    (OPEN + "one" + CLOSE + "A" + OPEN + "two" + CLOSE + "B", "AB", "one\n\ntwo"),
    (OPEN + "cut off while thinking", "", "cut off while thinking"),  # never closed
    ("a <thing> that is not a tag </thin>", "a <thing> that is not a tag </thin>", ""),
    ("", "", ""),
]


@pytest.mark.parametrize(("text", "answer", "thought"), CASES)
def test_split_thinking(text: str, answer: str, thought: str) -> None:
    assert split_thinking(text) == (answer, thought)
    assert without_thinking(text) == answer


def _stream(text: str, cuts: list[int]) -> tuple[str, str, list[str]]:
    s = ThinkingSplitter()
    pieces, last = [], 0
    for cut in [*cuts, len(text)]:
        pieces.append(s.feed(text[last:cut]))
        last = cut
    pieces.append(s.close())
    return "".join(pieces), s.reasoning, pieces


@pytest.mark.parametrize(("text", "answer", "thought"), CASES)
def test_splitter_matches_the_whole_text_split_for_any_cuts(text: str, answer: str, thought: str) -> None:
    rnd = random.Random(7)
    for _ in range(200):  # tags cut across deltas at every kind of place
        cuts = sorted(rnd.sample(range(1, len(text)), min(len(text) - 1, rnd.randint(0, 12)))) if len(text) > 1 else []
        got, reasoning, _ = _stream(text, cuts)
        assert (got, reasoning) == (answer, thought), cuts
    for cuts in ([], list(range(1, len(text)))):  # one delta; one character at a time
        got, reasoning, _ = _stream(text, cuts)
        assert got == answer


def test_splitter_emits_the_answer_as_it_comes_and_holds_back_only_a_possible_tag() -> None:
    s = ThinkingSplitter()
    assert s.feed("<thi") == "" and s.feed("nk>reasoning") == "" and s.feed("</think>\n\nThe ans") == "The ans"
    assert s.feed("wer <") == "wer " and s.feed("b>") == "<b>"  # "<" could have started a tag until "b"
    assert s.close() == "" and s.reasoning == "reasoning"
    s = ThinkingSplitter()
    assert s.feed("plain <thin") == "plain " and s.close() == "<thin"  # the end: what was held goes out


def test_memory_turns_leave_thinking_and_unanswered_turns_out() -> None:
    rows = [  # newest first, as the conversation query reads them
        ("m3", "q3", OPEN + "only thinking" + CLOSE),
        ("m2", "q2", ""),
        ("m1", "q1", OPEN + "why" + CLOSE + "Because."),
        ("m0", "q0", "Plain."),
    ]
    assert memory_turns(rows) == [("q0", "Plain."), ("q1", "Because.")]

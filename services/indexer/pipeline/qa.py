"""Q&A documents (doc_form ``qa_model``, Dify's "Q&A format"): the workspace's default LLM reads each chunk
of the document and writes question-answer pairs from it. The pairs are the document's segments (content:
the question, answer: the answer); the question is what is embedded and searched, so a user's question
meets the questions the document answers."""

from __future__ import annotations

import re
from typing import Any

DEFAULT_LANGUAGE = "English"
QA_NEEDS_MODEL = ("Q&A documents are written by the workspace's default LLM model: set one in Settings → Model "
                  "Provider → System Model Settings, with its credentials.")
MAX_LANGUAGE_CHARS = 64

_SYSTEM = """You turn a text into question-and-answer pairs for a knowledge base.
Read the text the user sends. Work out its main points, the facts and concepts it states, and how they
combine. Then write questions a reader could ask about them, each with a complete answer taken only from
the text. Questions must be clear and specific; answers must be detailed and correct, and must not add
anything the text does not say.
Write every question and answer in {language}, and in no other language.
Reply with the pairs only, numbered in this format:
Q1: <question>
A1: <answer>
Q2: <question>
A2: <answer>"""

# "Q1:" … "A1:" …, full-width colons too (models writing Chinese use them); an answer runs to the next question.
# The lookbehinds keep "FAQ1:" or "MQ2:" inside a text from counting as a marker.
_Q = r"(?<![A-Za-z0-9])Q\d+\s*[:：]"
_A = r"(?<![A-Za-z0-9])A\d+\s*[:：]"
_PAIR = re.compile(rf"{_Q}\s*(.*?)\s*{_A}\s*(.*?)\s*(?={_Q}|\Z)", re.DOTALL)


def qa_language(value: Any) -> str:
    return value.strip()[:MAX_LANGUAGE_CHARS] if isinstance(value, str) and value.strip() else DEFAULT_LANGUAGE


def qa_messages(text: str, language: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": _SYSTEM.format(language=language)}, {"role": "user", "content": text}]


def parse_pairs(reply: str) -> list[tuple[str, str]]:
    """The (question, answer) pairs of a model's reply; pairs with an empty side are dropped."""
    return [(q.strip(), a.strip()) for q, a in _PAIR.findall(reply or "") if q.strip() and a.strip()]

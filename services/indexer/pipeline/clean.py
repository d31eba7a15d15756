"""Text cleaning before splitting: Dify's CleanProcessor rules (always-on sanitising + the two optional
pre_processing_rules), applied per element."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class PreProcessing:
    """The enabled flags of process_rule.rules.pre_processing_rules (see split.ProcessRule.pre_processing)."""

    remove_extra_spaces: bool = True
    remove_urls_emails: bool = False


_SPECIAL_TOKEN_OPEN = re.compile(r"<\|")  # "<|endoftext|>"-style markers must not reach an LLM verbatim
_SPECIAL_TOKEN_CLOSE = re.compile(r"\|>")
_VERTICAL_BREAKS = re.compile(r"[\v\f\u2028\u2029]")  # page / line separators from PDF and Office text
# C0/C1 controls except \t and \n, DEL, BOM/zero-width no-break space and the U+FFFE non-character
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\ufeff\ufffe]")
_BLANK_LINE = re.compile(r"\n[^\S\n]+(?=\n)")  # whitespace-only lines, so they count as blank below
_MANY_NEWLINES = re.compile(r"\n{3,}")
# Dify's set of horizontal spaces (incl. NBSP, ideographic space); a run of two or more becomes one space
_SPACE_RUN = re.compile(r"[\t\f\r\x20\u00a0\u1680\u180e\u2000-\u200a\u202f\u205f\u3000]{2,}")
_EMAIL = re.compile(r"[a-zA-Z0-9_.+-]+@[a-zA-Z0-9-]+\.[a-zA-Z0-9-.]+")
# [text](url) and ![alt](url) whose target is absolute: keep the text, lose the target
_MD_LINK = re.compile(r"!?\[([^\]\n]*)\]\(\s*<?(?:https?://|mailto:|www\.)[^)\s]*>?(?:\s+\"[^\"\n]*\")?\s*\)")
# a bare URL, without trailing sentence punctuation ("see https://x.org." keeps its full stop)
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"'()\[\]]*[^\s<>\"'()\[\].,;:!?]")


def clean(text: str, rules: PreProcessing) -> str:
    """Always: normalise line endings, drop control characters (keeping \\n and \\t) and special-token
    brackets.
    remove_extra_spaces: 3+ newlines → 2, runs of spaces/tabs → one space (Dify's patterns).
    remove_urls_emails: drop e-mail addresses and URLs; markdown links keep their text."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _VERTICAL_BREAKS.sub("\n", text)
    text = _CONTROL.sub("", text)
    text = _SPECIAL_TOKEN_CLOSE.sub(">", _SPECIAL_TOKEN_OPEN.sub("<", text))
    if rules.remove_urls_emails:  # first, so that the gaps they leave are collapsed below
        text = _MD_LINK.sub(r"\1", text)
        text = _EMAIL.sub("", text)
        text = _URL.sub("", text)
    if rules.remove_extra_spaces:
        text = _MANY_NEWLINES.sub("\n\n", _BLANK_LINE.sub("\n", text))
        text = _SPACE_RUN.sub(" ", text)
    return text

"""A reasoning model's thinking in an answer, as Dify shows it: ``<think>\\n…\\n</think>`` before the answer.

Providers send reasoning either as ``reasoning_content`` deltas (DeepSeek, o-series and Claude through litellm),
which ``llm.stream_chat`` wraps in these tags the way Dify's model runtime does, or inline in the text (models
served without a reasoning parser). Either way the answer text carries the block; this module finds it again:
memory and helper calls leave it out, and a workflow LLM node with ``reasoning_format: separated`` streams and
outputs the answer without it and the thinking as ``reasoning_content``.
"""

from __future__ import annotations

import re

OPEN = "<think>\n"  # what stream_chat puts around reasoning_content deltas (Dify's wrapping)
CLOSE = "\n</think>"
_OPEN_TAG, _CLOSE_TAG = "<think>", "</think>"
# a closed block, or one left open at the end (a stream cut while the model was still thinking)
_BLOCK = re.compile(r"<think>(.*?)(?:</think>|\Z)", re.DOTALL)


def split_thinking(text: str) -> tuple[str, str]:
    """(the answer without its thinking blocks, the thinking), both stripped."""
    thoughts = [m.group(1).strip() for m in _BLOCK.finditer(text)]
    if not thoughts:
        return text, ""
    return _BLOCK.sub("", text).strip(), "\n\n".join(t for t in thoughts if t)


def without_thinking(text: str) -> str:
    """The answer as a next turn's memory or a helper's result should read it: no thinking (models are
    told not to be sent their reasoning back, and it costs context)."""
    return split_thinking(text)[0] if _OPEN_TAG in text else text


class ThinkingSplitter:
    """Splits a streamed answer into thinking and answer text as the deltas come, with a tag that may be cut
    across deltas: ``feed`` returns the answer text that can be shown now, ``close`` the rest."""

    def __init__(self) -> None:
        self._pending = ""  # text that may be the start of a tag
        self._inside = False
        self._started = False  # some answer text went out (whitespace before it is dropped)
        self._blocks: list[str] = []  # the thinking, one entry per <think> block
        self._block: list[str] = []

    @property
    def reasoning(self) -> str:
        """The thinking so far, as split_thinking gives it."""
        blocks = [*self._blocks, "".join(self._block).strip()]
        return "\n\n".join(b for b in blocks if b)

    def feed(self, delta: str) -> str:
        text, out = self._pending + delta, []
        self._pending = ""
        while text:
            tag = _CLOSE_TAG if self._inside else _OPEN_TAG
            i = text.find(tag)
            if i >= 0:
                self._take(text[:i], out)
                text = text[i + len(tag):]
                if self._inside:
                    self._blocks.append("".join(self._block).strip())
                    self._block = []
                self._inside = not self._inside
                continue
            keep = _partial_tag(text, tag)  # hold back what could still become the tag
            self._take(text[:len(text) - keep], out)
            self._pending = text[len(text) - keep:]
            break
        return "".join(out)

    def close(self) -> str:
        out: list[str] = []
        self._take(self._pending, out)
        self._pending = ""
        return "".join(out)

    def _take(self, text: str, out: list[str]) -> None:
        if self._inside:
            self._block.append(text)
            return
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        out.append(text)


def _partial_tag(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` are a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0

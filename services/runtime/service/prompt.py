"""Prompt assembly: system prompt, conversation memory trimmed to the model's context, titles.

Pure functions. Token counts are approximated as characters / 4: a tokenizer per request costs more
than the answer is worth here, and the budget only decides how many old turns to drop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from services.runtime.thinking import without_thinking

MESSAGE_OVERHEAD = 4  # role and separators per chat message, roughly as OpenAI counts them
NAME_MAX = 75  # Dify trims generated conversation names to this


def approx_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def context_budget(context_tokens: int, max_tokens: int) -> int:
    """Input tokens available once the answer's own max_tokens is reserved."""
    return max(context_tokens - max(max_tokens, 0), 0)


def memory_turns(rows: Iterable[tuple[Any, str, str]]) -> list[tuple[str, str]]:
    """A conversation's stored (id, query, answer) rows, newest first, as memory turns, oldest first: the
    answered ones, without a reasoning model's thinking."""
    turns = [(q, without_thinking(a)) for _, q, a in rows if a]
    return [(q, a) for q, a in reversed(turns) if a]


def chat_messages(
    system: str, history: list[tuple[str, str]], query: str, budget: int
) -> list[dict[str, Any]]:
    """System prompt, then as many of the newest (query, answer) turns as fit ``budget``, oldest first, then
    the new query. The system prompt and the query are always sent, even when they alone exceed it."""
    head: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    used = sum(approx_tokens(m["content"]) + MESSAGE_OVERHEAD for m in head)
    used += approx_tokens(query) + MESSAGE_OVERHEAD
    kept: list[tuple[str, str]] = []
    for q, a in reversed(history):  # newest first: the oldest turns are the ones dropped
        cost = approx_tokens(q) + approx_tokens(a) + 2 * MESSAGE_OVERHEAD
        if used + cost > budget:
            break
        used += cost
        kept.append((q, a))
    turns: list[dict[str, Any]] = []
    for q, a in reversed(kept):
        turns.append({"role": "user", "content": q})
        turns.append({"role": "assistant", "content": a})
    return [*head, *turns, {"role": "user", "content": query}]


def completion_messages(prompt: str, query: str) -> list[dict[str, Any]]:
    """Completion apps send one user message: the rendered pre_prompt, then the query when given."""
    text = f"{prompt}\n{query}" if prompt and query else (prompt or query)
    return [{"role": "user", "content": text}]


def with_documents(query: str, documents: list[tuple[str, str]], max_chars: int) -> str:
    """The user's message with the text of the documents attached to it in front, at most ``max_chars`` of
    document text in all (each document shares what is left; a cut one says so)."""
    if not documents:
        return query
    parts: list[str] = []
    left = max(max_chars, 0)
    for i, (name, text) in enumerate(documents):
        share = left // (len(documents) - i)  # an early short document leaves room for the later ones
        # no count of what is left: the parser itself stops at the prompt's budget (files.py), so it is unknown
        body = text if len(text) <= share else text[:share].rstrip() + "\n[… the rest of this document is cut]"
        left -= min(len(text), share)
        parts.append(f'<document name="{_attr(name)}">\n{body}\n</document>')
    docs = "\n".join(parts)
    return f"Documents attached to this message:\n<documents>\n{docs}\n</documents>\n\n{query}"


def _attr(name: str) -> str:
    return name.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def with_images(messages: list[dict[str, Any]], image_urls: list[str], detail: str = "high") -> list[dict[str, Any]]:
    """The last user message as OpenAI-style content parts: its text, then one ``image_url`` part per image
    (data URLs; litellm translates the parts for providers with another wire format)."""
    if not image_urls:
        return messages
    out = list(messages)
    for i in range(len(out) - 1, -1, -1):
        if out[i].get("role") == "user":
            text = out[i].get("content") or ""
            parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
            parts += [{"type": "image_url", "image_url": {"url": url, "detail": detail}} for url in image_urls]
            out[i] = {**out[i], "content": parts}
            break
    return out


def content_text(content: Any) -> str:
    """The text of a message's content, plain or as parts (images count as nothing here)."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content or "")


IMAGE_TOKENS = 765  # what OpenAI bills a high-detail 512x512-tile image at; an estimate when none is reported


def default_name(query: str) -> str:
    """A conversation's name until someone renames it: the first line of its first query."""
    line = next((ln.strip() for ln in query.splitlines() if ln.strip()), "")
    if not line:
        return "New conversation"
    return line if len(line) <= NAME_MAX else line[:NAME_MAX] + "..."


def clean_title(text: str) -> str:
    """A model-written title: first non-empty line, without quotes or a trailing full stop."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = line.strip().strip("\"'“”‘’`").strip()
    if line.lower().startswith("title:"):
        line = line[6:].strip()
    line = line.rstrip(".").strip()
    return line if len(line) <= NAME_MAX else line[:NAME_MAX] + "..."


TITLE_SYSTEM = (
    "Write a short title (at most 8 words) for a conversation that starts with the user's message "
    "below. Use the message's language. Reply with the title only."
)


def title_messages(first_query: str) -> list[dict[str, Any]]:
    q = first_query if len(first_query) <= 2000 else first_query[:1000] + " … " + first_query[-500:]
    return [{"role": "system", "content": TITLE_SYSTEM}, {"role": "user", "content": q}]


def estimate_usage(usage: Any, messages: list[dict[str, Any]], text: str) -> None:
    """Fill ``usage`` (an llm.Usage) from the text when the provider sent no usage chunk (a call stopped or
    failed before the end)."""
    if not usage.from_provider:
        usage.prompt_tokens = sum(approx_tokens(content_text(m.get("content"))) + MESSAGE_OVERHEAD
                                  + IMAGE_TOKENS * _images(m.get("content")) for m in messages)
        usage.completion_tokens = approx_tokens(text)


def _images(content: Any) -> int:
    return sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image_url") \
        if isinstance(content, list) else 0

"""Prompt assembly: system prompt, conversation memory trimmed to the model's context, titles.

Pure functions. Token counts are approximated as characters / 4: a tokenizer per request costs more
than the answer is worth here, and the budget only decides how many old turns to drop.
"""

from __future__ import annotations

from typing import Any

MESSAGE_OVERHEAD = 4  # role and separators per chat message, roughly as OpenAI counts them
NAME_MAX = 75  # Dify trims generated conversation names to this


def approx_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def context_budget(context_tokens: int, max_tokens: int) -> int:
    """Input tokens available once the answer's own max_tokens is reserved."""
    return max(context_tokens - max(max_tokens, 0), 0)


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
        usage.prompt_tokens = sum(approx_tokens(str(m.get("content") or "")) + MESSAGE_OVERHEAD for m in messages)
        usage.completion_tokens = approx_tokens(text)

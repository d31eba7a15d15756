"""The runtime's litellm call: one streamed chat completion, usage in Dify's shape, prices from litellm.

litellm is imported once per process (shared.llm.litellm()); everything per model (context size, unit
prices, call kwargs) is computed once per app-cache entry, so a request only builds its messages.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import structlog

from services.runtime import thinking as thinking_
from shared.llm import call_kwargs, canonical_provider, litellm

log = structlog.get_logger("plexus.runtime.llm")

PRICE_UNIT = Decimal("0.000001")  # unit prices are per million tokens, like Dify's model YAMLs
_PRICE_Q = Decimal("0.0000001")
_ZERO = Decimal(0)
# completion_params passed to the provider; anything else in the stored config is UI state
PASSED_PARAMS = (
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "response_format",
)


@dataclass(frozen=True, slots=True)
class ModelBinding:
    """A model of a provider with a workspace's credentials, ready to call."""

    provider: str  # as configured (e.g. "openai" or "langgenius/openai/openai")
    model: str
    kwargs: dict[str, Any]  # litellm model/api_key/api_base …
    params: dict[str, Any] = field(default_factory=dict)  # completion params
    context_tokens: int | None = None  # max input tokens when litellm knows the model
    prompt_cost: Decimal = _ZERO  # USD per token
    completion_cost: Decimal = _ZERO

    @property
    def max_tokens(self) -> int:
        v = self.params.get("max_tokens")
        return v if isinstance(v, int) and v > 0 else 0


def bind_model(
    provider: str, model: str, credentials: dict[str, Any], completion_params: dict[str, Any]
) -> ModelBinding:
    params = {k: v for k, v in completion_params.items() if k in PASSED_PARAMS and v not in (None, "", [])}
    context, p_cost, c_cost = model_info(provider, model)
    return ModelBinding(
        provider=provider,
        model=model,
        kwargs=call_kwargs(provider, model, credentials),
        params=params,
        context_tokens=context,
        prompt_cost=p_cost,
        completion_cost=c_cost,
    )


def model_info(provider: str, model: str) -> tuple[int | None, Decimal, Decimal]:
    """(max input tokens, prompt cost per token, completion cost per token); unknown models → (None, 0, 0)."""
    try:
        info = litellm().get_model_info(model=model, custom_llm_provider=canonical_provider(provider))
    except Exception:  # noqa: BLE001 - litellm raises for models missing from its cost map
        return None, _ZERO, _ZERO
    context = info.get("max_input_tokens") or info.get("max_tokens")
    return (
        int(context) if context else None,
        Decimal(str(info.get("input_cost_per_token") or 0)),
        Decimal(str(info.get("output_cost_per_token") or 0)),
    )


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    from_provider: bool = False


@dataclass(slots=True)
class ToolCall:
    """A function call the model asked for, assembled from streamed fragments."""

    id: str = ""
    name: str = ""
    arguments: str = ""  # JSON text as the model wrote it (may be malformed)


async def stream_chat(
    binding: ModelBinding, messages: list[dict[str, Any]], timeout: float, usage: Usage, *,
    tools: list[dict[str, Any]] | None = None, tool_calls: list[ToolCall] | None = None,
    stop: list[str] | None = None,
) -> AsyncIterator[str]:
    """Yield answer deltas; fills ``usage`` from the provider's include_usage chunk when it comes. With
    ``tools``, the calls the model makes are assembled into ``tool_calls`` (by their stream index)."""
    extra: dict[str, Any] = {}
    if tools:
        extra["tools"] = tools
    if stop:
        extra["stop"] = stop
    stream = await litellm().acompletion(
        **binding.kwargs,
        **binding.params,
        **extra,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        timeout=timeout,
        num_retries=0,
        max_retries=0,
    )
    calls: dict[int, ToolCall] = {}
    thinking = False  # inside reasoning_content deltas, wrapped in <think> as Dify's model runtime does
    try:
        async for chunk in stream:
            u = getattr(chunk, "usage", None)
            if u is not None:
                usage.prompt_tokens = u.prompt_tokens or 0
                usage.completion_tokens = u.completion_tokens or 0
                usage.from_provider = True
            choices = chunk.choices
            if choices:
                d = choices[0].delta
                if tools is not None and d.tool_calls:
                    for frag in d.tool_calls:
                        call = calls.setdefault(frag.index or 0, ToolCall())
                        call.id = frag.id or call.id
                        fn = frag.function
                        if fn is not None:
                            call.name = call.name or fn.name or ""  # sent once, in the first fragment
                            call.arguments += fn.arguments or ""
                reasoning = getattr(d, "reasoning_content", None)
                if reasoning:
                    yield reasoning if thinking else thinking_.OPEN + reasoning
                    thinking = True
                delta = d.content
                if delta:
                    if thinking:
                        delta, thinking = thinking_.CLOSE + delta, False
                    yield delta
        if thinking:  # the model stopped while still thinking (a length cut, a tool call)
            yield thinking_.CLOSE
    finally:
        # release the provider connection at once on stop/error (cleanup is shielded inside litellm)
        await stream.aclose()
    if tool_calls is not None:
        tool_calls.extend(calls[i] for i in sorted(calls))


async def complete_text(
    binding: ModelBinding, messages: list[dict[str, Any]], timeout: float, max_tokens: int = 64
) -> str:
    resp = await litellm().acompletion(
        **binding.kwargs,
        messages=messages,
        max_tokens=max_tokens,
        timeout=timeout,
        num_retries=0,
        max_retries=0,
    )
    # a helper's result (a title, a class, JSON): the answer only, never a reasoning model's inline thinking
    return thinking_.without_thinking(resp.choices[0].message.content or "")


def _price(tokens: int, cost: Decimal) -> Decimal:
    return (Decimal(tokens) * cost).quantize(_PRICE_Q)


def _plain(d: Decimal) -> str:
    return format(d.normalize(), "f") if d else "0"


def dify_usage(
    binding: ModelBinding, prompt_tokens: int, completion_tokens: int, latency: float
) -> dict[str, Any]:
    """The 12-key LLMUsage of reference §3.4 (Decimal fields as strings)."""
    p_price = _price(prompt_tokens, binding.prompt_cost)
    c_price = _price(completion_tokens, binding.completion_cost)
    return {
        "prompt_tokens": prompt_tokens,
        "prompt_unit_price": _plain(binding.prompt_cost / PRICE_UNIT),
        "prompt_price_unit": format(PRICE_UNIT, "f"),
        "prompt_price": format(p_price, "f"),
        "completion_tokens": completion_tokens,
        "completion_unit_price": _plain(binding.completion_cost / PRICE_UNIT),
        "completion_price_unit": format(PRICE_UNIT, "f"),
        "completion_price": format(c_price, "f"),
        "total_tokens": prompt_tokens + completion_tokens,
        "total_price": format((p_price + c_price).quantize(_PRICE_Q), "f"),
        "currency": "USD",
        "latency": round(latency, 3),
    }


_PREFIX_RE = re.compile(r"^(?:litellm\.\w+:\s*)+(?:\w+Error:\s*)*")


def error_message(exc: BaseException, provider: str) -> str:
    """The provider's description of a failure, without litellm's repeated class-name prefixes."""
    text = str(getattr(exc, "message", None) or exc or type(exc).__name__)
    text = text.split(" Original exception:", 1)[0]
    text = _PREFIX_RE.sub("", text).strip() or type(exc).__name__
    return f"[{canonical_provider(provider)}] {type(exc).__name__}: {text}"


def moderation_kwargs(provider: str, model: str, credentials: dict[str, Any]) -> dict[str, Any]:
    """litellm.amoderation arguments, built once per app config: its own OpenAI client, so a failing
    moderation model is not retried behind our back (the SDK's default is two retries with backoff)."""
    from openai import AsyncOpenAI

    kwargs = call_kwargs(provider, model, credentials)
    client = AsyncOpenAI(api_key=kwargs.get("api_key") or "unused", base_url=kwargs.get("api_base"), max_retries=0)
    return {"model": kwargs["model"], "client": client}


async def moderate(kwargs: dict[str, Any], text: str | list[str], timeout: float) -> bool:
    """True when the moderation model flags ``text``, or any piece of it (litellm's OpenAI moderation API)."""
    async with asyncio.timeout(timeout):
        resp = await litellm().amoderation(input=text, **kwargs)
    return any(bool(getattr(r, "flagged", False)) for r in resp.results or [])

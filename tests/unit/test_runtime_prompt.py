"""Pure parts of the runtime: memory trimming, names, Dify usage and error texts (no litellm import)."""

from __future__ import annotations

from decimal import Decimal

from services.runtime.llm import ModelBinding, dify_usage, error_message
from services.runtime.service.prompt import (
    MESSAGE_OVERHEAD,
    approx_tokens,
    chat_messages,
    clean_title,
    completion_messages,
    context_budget,
    default_name,
)


def test_approx_tokens_rounds_up() -> None:
    assert [approx_tokens(x) for x in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]


def test_context_budget_reserves_answer() -> None:
    assert context_budget(8192, 1000) == 7192
    assert context_budget(100, 1000) == 0
    assert context_budget(100, 0) == 100


def test_chat_messages_keep_newest_turns_oldest_first() -> None:
    history = [(f"q{i}" * 10, f"a{i}" * 10) for i in range(5)]  # 20 chars each → 5 tokens each
    per_turn = 5 + 5 + 2 * MESSAGE_OVERHEAD
    fixed = approx_tokens("sys") + MESSAGE_OVERHEAD + approx_tokens("now") + MESSAGE_OVERHEAD
    msgs = chat_messages("sys", history, "now", budget=fixed + 2 * per_turn)
    assert msgs[0] == {"role": "system", "content": "sys"}
    assert msgs[-1] == {"role": "user", "content": "now"}
    assert [m["content"] for m in msgs[1:-1]] == [history[3][0], history[3][1], history[4][0], history[4][1]]
    assert [m["role"] for m in msgs[1:-1]] == ["user", "assistant", "user", "assistant"]
    # one token short of two turns: only the newest stays
    assert len(chat_messages("sys", history, "now", budget=fixed + 2 * per_turn - 1)) == 4
    # everything fits
    assert len(chat_messages("sys", history, "now", budget=10_000)) == 2 + 2 * len(history)


def test_chat_messages_always_send_system_and_query() -> None:
    msgs = chat_messages("s" * 400, [("q", "a")], "x" * 400, budget=10)
    assert msgs == [{"role": "system", "content": "s" * 400}, {"role": "user", "content": "x" * 400}]
    assert chat_messages("", [], "hi", budget=0) == [{"role": "user", "content": "hi"}]


def test_completion_messages() -> None:
    assert completion_messages("Write.", "more") == [{"role": "user", "content": "Write.\nmore"}]
    assert completion_messages("Write.", "") == [{"role": "user", "content": "Write."}]
    assert completion_messages("", "just this") == [{"role": "user", "content": "just this"}]


def test_names() -> None:
    assert default_name("\n  Hello there \nsecond line") == "Hello there"
    assert default_name("") == "New conversation"
    assert default_name("x" * 80) == "x" * 75 + "..."
    assert clean_title('"Sailing the Seas."\nextra') == "Sailing the Seas"
    assert clean_title("Title: Ocean facts") == "Ocean facts"
    assert clean_title("“Quoted”") == "Quoted"


def _binding(prompt: str = "0", completion: str = "0") -> ModelBinding:
    return ModelBinding(
        provider="openai",
        model="m",
        kwargs={},
        prompt_cost=Decimal(prompt),
        completion_cost=Decimal(completion),
    )


def test_dify_usage_known_prices() -> None:
    u = dify_usage(_binding("0.0000025", "0.00001"), 1000, 3, 1.23456)
    assert u == {
        "prompt_tokens": 1000,
        "prompt_unit_price": "2.5",
        "prompt_price_unit": "0.000001",
        "prompt_price": "0.0025000",
        "completion_tokens": 3,
        "completion_unit_price": "10",
        "completion_price_unit": "0.000001",
        "completion_price": "0.0000300",
        "total_tokens": 1003,
        "total_price": "0.0025300",
        "currency": "USD",
        "latency": 1.235,
    }


def test_dify_usage_unknown_model_is_free_but_complete() -> None:
    u = dify_usage(_binding(), 7, 2, 0.5)
    assert (
        u["prompt_unit_price"] == "0" and u["prompt_price"] == "0.0000000" and u["total_price"] == "0.0000000"
    )
    assert len(u) == 12 and isinstance(u["latency"], float)


def test_error_message_strips_litellm_prefixes() -> None:
    class InternalServerError(Exception):
        message = (
            "litellm.InternalServerError: InternalServerError: OpenAIException - boom "
            "Original exception: more noise"
        )

    assert error_message(InternalServerError(), "langgenius/openai/openai") == (
        "[openai] InternalServerError: OpenAIException - boom"
    )
    assert error_message(TimeoutError(), "openai") == "[openai] TimeoutError: TimeoutError"

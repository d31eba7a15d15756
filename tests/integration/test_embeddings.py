"""Embedders: the built-in MiniLM (real ONNX model, no network) and LiteLLMEmbedder through the real
litellm path against the scripted OpenAI-compatible server (fixture ``llm``)."""

from __future__ import annotations

import asyncio
import math
import uuid

import pytest

from shared.knowledge.embeddings import LiteLLMEmbedder, LocalEmbedder, local_embedder, space_name


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (_norm(a) * _norm(b))


# -- LocalEmbedder -------------------------------------------------------------------------------------


async def test_local_dimension_norm_and_identity() -> None:
    emb = local_embedder()
    assert emb is local_embedder() and isinstance(emb, LocalEmbedder)
    assert (emb.dim, emb.space, emb.provider, emb.model_name) == (
        384, "minilm_l6_int8_384", "plexus", "all-MiniLM-L6-v2")
    vec = await emb.embed_query("How do I reset my password?")
    assert len(vec) == 384 and abs(_norm(vec) - 1.0) < 1e-5
    assert await emb.embed_query("How do I reset my password?") == vec  # deterministic
    assert await emb.embed_documents([]) == []


async def test_local_batch_equals_one_by_one() -> None:
    texts = [
        "short",
        "A somewhat longer sentence about vector databases and hybrid retrieval.",
        "北京大学的人工智能研究很有名。",
        "",
        " ".join(["padding makes this one much longer than the others"] * 12),
    ] * 3
    emb = LocalEmbedder(batch_size=4)  # batches that mix lengths, so padding is exercised
    batched = await emb.embed_documents(texts)
    single = [await emb.embed_query(t) for t in texts]
    assert len(batched) == len(texts)
    worst = max(abs(x - y) for b, s in zip(batched, single, strict=True) for x, y in zip(b, s, strict=True))
    assert worst < 1e-5


async def test_local_paraphrase_is_closer_than_unrelated() -> None:
    q, para, other = await local_embedder().embed_documents(
        ["How do I reset my password?", "Steps to change a forgotten password", "The weather in Paris is sunny"])
    assert _cos(q, para) > _cos(q, other) + 0.2
    assert _cos(q, para) > 0.5


async def test_local_empty_string() -> None:
    vec = await local_embedder().embed_query("")
    assert len(vec) == 384 and abs(_norm(vec) - 1.0) < 1e-5 and all(math.isfinite(x) for x in vec)


async def test_local_truncates_at_256_tokens_not_128() -> None:
    emb = local_embedder()
    words80 = " ".join(f"word{i % 7}" for i in range(80))  # "word3" is 2 WordPiece tokens: ~162 tokens
    a, b = await emb.embed_documents([words80 + " apples and pears", words80 + " quantum chromodynamics"])
    assert a != b  # the tail is seen: truncation is not tokenizer.json's 128
    words400 = " ".join(f"word{i % 7}" for i in range(400))
    c, d = await emb.embed_documents([words400 + " apples and pears", words400 + " quantum chromodynamics"])
    assert c == d  # the tail is cut at 256 tokens


async def test_local_inference_does_not_block_the_event_loop() -> None:
    emb = local_embedder()
    await emb.embed_query("warm up")
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    loop = asyncio.get_running_loop()
    started = loop.time()
    await emb.embed_documents([f"paragraph {i} about retrieval augmented generation" * 4 for i in range(64)])
    elapsed = loop.time() - started
    done.set()
    await task
    assert elapsed > 0.05  # long enough that a blocked loop would show
    assert ticks >= 3


# -- LiteLLMEmbedder -----------------------------------------------------------------------------------


def _remote(llm, model: str, **kw) -> LiteLLMEmbedder:
    return LiteLLMEmbedder("openai-compatible", model, {"api_key": "sk-test", "api_base": llm.base_url}, **kw)


async def test_litellm_batches_preserve_order_and_learn_dim(llm) -> None:
    model = f"embed-{uuid.uuid4().hex[:8]}"
    emb = _remote(llm, model, batch_size=2)
    assert emb.dim is None
    with pytest.raises(RuntimeError):
        _ = emb.space
    texts = ["alpha beta", "gamma delta", "epsilon zeta", "eta theta", "iota kappa"]
    vectors = await emb.embed_documents(texts)

    sent = [r for r in llm.embedding_requests if r.body.get("model") == model]
    assert [r.inputs for r in sent] == [texts[0:2], texts[2:4], texts[4:5]]
    assert emb.dim == 16 and all(len(v) == 16 for v in vectors)
    assert emb.space == f"e_openai_{model.replace('-', '_')}_16" == space_name("openai-compatible", model, 16)
    # Order: each vector is the one the server derives from that text.
    for text, vec in zip(texts, vectors, strict=True):
        assert vec == pytest.approx(await emb.embed_query(text), abs=1e-6)
    assert vectors[0] != vectors[1]


async def test_litellm_similar_texts_and_empty_input(llm) -> None:
    emb = _remote(llm, f"embed-{uuid.uuid4().hex[:8]}")
    a, b, c, empty = await emb.embed_documents(
        ["reset my password please", "reset my password", "weather in paris", ""])
    assert _cos(a, b) > _cos(a, c)
    assert len(empty) == 16  # an empty text is sent as " " (providers reject "")


async def test_litellm_error_propagates(llm) -> None:
    tag = uuid.uuid4().hex
    llm.push(endpoint="embeddings", status=401, match=tag)
    emb = _remote(llm, "embed-fail", batch_size=2)
    with pytest.raises(Exception) as info:
        await emb.embed_documents(["fine", "also fine", f"this one {tag} fails"])
    assert "401" in str(info.value) or type(info.value).__name__ == "AuthenticationError"

    # 5xx: litellm turns max_retries=0 into the SDK default (its `max_retries or DEFAULT_MAX_RETRIES`),
    # so the openai SDK itself retries twice before the error reaches us; script enough failures.
    llm.push(endpoint="embeddings", status=500, match=tag, times=3)
    with pytest.raises(Exception, match="500|scripted failure"):
        await emb.embed_query(f"again {tag}")


async def test_litellm_dimension_change_is_an_error(llm) -> None:
    tag = uuid.uuid4().hex
    emb = _remote(llm, "embed-dims", batch_size=1)
    assert await emb.probe_dim() == 16
    llm.push(endpoint="embeddings", dim=8, match=tag)
    with pytest.raises(ValueError, match="8-dimensional"):
        await emb.embed_documents([f"x {tag}"])


def test_space_names_are_collection_safe() -> None:
    assert space_name("openai", "text-embedding-3-small", 1536) == "e_openai_text_embedding_3_small_1536"
    assert space_name("langgenius/openai/openai", "Text.Embedding-3", 8) == "e_openai_text_embedding_3_8"
    long_a = space_name("openai-compatible", "x" * 80 + "a", 1024)
    long_b = space_name("openai-compatible", "x" * 80 + "b", 1024)
    for name in (long_a, long_b):
        assert len(name) <= 60 and name.endswith("_1024")
        assert all(ch.isdigit() or ch == "_" or "a" <= ch <= "z" for ch in name)
    assert long_a != long_b

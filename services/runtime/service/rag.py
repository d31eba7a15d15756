"""Retrieval-augmented answers: before the model is called, the runtime asks the indexer (the vector
store's only client, over NATS request/reply) for the segments of the app's linked datasets that match
the query, puts them into the prompt as context, and reports them as ``retriever_resources``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import orjson
from pydantic import ValidationError

from shared.app_config import ModelConfig
from shared.bus import Bus
from shared.errors import ApiError
from shared.knowledge.models import DatasetConfigs, segment_text
from shared.subjects import KNOWLEDGE_RETRIEVE

CONTEXT_VAR = "{{#context#}}"
CONTEXT_PROMPT = (
    "Use the following context as your learned knowledge, inside <context></context> XML tags.\n"
    "<context>\n{context}\n</context>\n"
    "When you answer the user:\n"
    "- If you don't know, just say that you don't know.\n"
    "- If you are not sure, ask for clarification.\n"
    "Avoid mentioning that you obtained the information from the context.\n"
    "Answer in the language of the user's question."
)


@dataclass(slots=True)
class Retrieved:
    context: str = ""
    resources: list[dict[str, Any]] = field(default_factory=list)  # retriever_resources, wire shape
    trace: dict[str, Any] = field(default_factory=dict)


def dataset_configs(config: ModelConfig) -> DatasetConfigs | None:
    if not config.dataset_configs:  # most apps: nothing to parse on the request path
        return None
    try:
        dc = DatasetConfigs.model_validate(config.dataset_configs or {})
    except ValidationError:
        return None  # the console validates on save; an old row that no longer parses retrieves nothing
    return dc if dc.dataset_ids() else None


def retrieval_query(endpoint: str, config: ModelConfig, inputs: dict[str, Any], query: str) -> str:
    """Chat retrieves with the query; completion with the input named by dataset_query_variable."""
    if endpoint == "completion" and config.dataset_query_variable:
        return str(inputs.get(config.dataset_query_variable) or "")
    return query


def resource(position: int, rec: dict[str, Any]) -> dict[str, Any]:
    """A retrieval record as Dify's RetrievalSourceMetadata (reference §3.5)."""
    seg = rec["segment"]
    doc = seg.get("document") or {}
    ds = rec.get("dataset") or {}
    return {
        "position": position, "dataset_id": ds.get("id"), "dataset_name": ds.get("name"),
        "document_id": doc.get("id"), "document_name": doc.get("name"),
        "data_source_type": doc.get("data_source_type"), "segment_id": seg["id"], "retriever_from": "api",
        "score": float(rec.get("score") or 0.0), "hit_count": seg.get("hit_count", 0),
        "word_count": seg.get("word_count", 0), "segment_position": seg.get("position"),
        "index_node_hash": seg.get("index_node_hash"), "content": segment_text(seg), "page": None,
        "doc_metadata": doc.get("doc_metadata") or {}, "title": doc.get("name"), "files": [], "summary": None,
    }


async def retrieve(bus: Bus, tenant_id: str, dc: DatasetConfigs, query: str, timeout: float) -> Retrieved:
    if not query.strip():
        return Retrieved(trace={"retrieval": {"query": query, "skipped": "empty query"}})
    t0 = time.perf_counter()
    payload = {"tenant_id": tenant_id, "dataset_ids": dc.dataset_ids(), "query": query,
               "retrieval_model": dc.retrieval_override()}
    try:
        msg = await bus.nc.request(KNOWLEDGE_RETRIEVE, orjson.dumps(payload), timeout=timeout)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError) as e:
        raise ApiError(503, "service_unavailable",
                       f"Knowledge retrieval is unavailable ({type(e).__name__}); try again shortly.") from None
    reply = orjson.loads(msg.data)
    if "error" in reply:
        err = reply["error"]
        raise ApiError(int(err.get("status", 400)), err.get("code"), err.get("message", "retrieval failed"))
    records = reply.get("records") or []
    resources = [resource(i, r) for i, r in enumerate(records, 1)]
    context = "\n\n".join(r["content"] for r in resources)
    return Retrieved(context=context, resources=resources, trace={"retrieval": {
        "query": query, "dataset_ids": payload["dataset_ids"], "retrieval_model": payload["retrieval_model"],
        "ms": round((time.perf_counter() - t0) * 1000, 2),
        "hits": [{"segment_id": r["segment_id"], "document_id": r["document_id"], "score": r["score"]}
                 for r in resources]}})


def with_context(system: str, context: str) -> str:
    """Put the retrieved context where the prompt asks for it ({{#context#}}), else ahead of the prompt."""
    if CONTEXT_VAR in system:
        return system.replace(CONTEXT_VAR, context)
    if not context:
        return system
    block = CONTEXT_PROMPT.format(context=context)
    return f"{block}\n\n{system}" if system else block

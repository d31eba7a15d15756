"""Annotation reply vectors (docs/annotations.md): the runtime owns annotations; the indexer, the vector store's
only client, embeds their questions, stores and deletes the points and searches them, over NATS request/reply.

Each embedding model has its own space (``ann_…``), apart from the datasets' spaces. A point carries the app id
where a segment carries its dataset id, so every search and bulk delete is filtered by tenant and app with the
same port calls. Point ids derive from annotation ids: re-embedding an annotation overwrites its point.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any

from services.indexer.service.core import Knowledge
from shared.errors import ApiError, invalid_param
from shared.knowledge.embeddings import Embedder
from shared.knowledge.models import LOCAL_EMBEDDING_PROVIDER
from shared.knowledge.vectors import (
    P_DATASET,
    P_DOCUMENT,
    P_ENABLED,
    P_METADATA,
    P_SEGMENT,
    P_TENANT,
    VectorFilter,
    VectorPoint,
)

ANNOTATION_NS = uuid.UUID("5d6c2a8e-7f0b-4e59-a1c3-2b9e8d4f6a17")
MAX_TEXT = 4000  # characters embedded of a question or query (models truncate far earlier anyway)
MAX_TOP_K = 10
_SPACE_RE = re.compile(r"[^a-z0-9]+")


def annotation_space(provider: str | None, model: str | None) -> str:
    """The collection of one embedding model's annotation vectors (named like a dataset's, prefix ``ann_``):
    known without embedding anything, so a delete needs neither the model nor its credentials."""
    provider = provider or LOCAL_EMBEDDING_PROVIDER
    base = _SPACE_RE.sub("_", f"{provider}_{model or ''}".lower()).strip("_")[:40]
    digest = hashlib.sha1(f"annotation\0{provider}\0{model}".encode()).hexdigest()[:8]
    return f"ann_{base}_{digest}"


def point_id(annotation_id: str) -> str:
    return str(uuid.uuid5(ANNOTATION_NS, annotation_id))


def _str(req: dict[str, Any], key: str) -> str:
    v = req.get(key)
    if not isinstance(v, str) or not v:
        raise invalid_param(f"{key} is required")
    return v


def _opt(req: dict[str, Any], key: str) -> str | None:
    v = req.get(key)
    return v if isinstance(v, str) and v else None


class AnnotationVectors:
    def __init__(self, kn: Knowledge) -> None:
        self.kn = kn

    async def _embedder(self, tenant_id: str, provider: str | None, model: str | None) -> Embedder:
        # the same choice a dataset's embedding model gets: the built-in one unless a workspace model is named
        async with self.kn.db.session() as s:
            return await self.kn.embedder(s, tenant_id, provider, model)

    async def upsert(self, req: dict[str, Any]) -> dict[str, Any]:
        tenant_id, app_id = _str(req, "tenant_id"), _str(req, "app_id")
        provider, model = _opt(req, "provider"), _opt(req, "model")
        items = [i for i in req.get("items") or [] if isinstance(i, dict) and isinstance(i.get("id"), str)]
        if not items:
            return {"ok": True, "count": 0}
        emb = await self._embedder(tenant_id, provider, model)
        try:
            vectors = await emb.embed_documents([str(i.get("question") or "")[:MAX_TEXT] for i in items])
        except Exception as e:
            raise ApiError(400, "invalid_param", f"Embedding the annotations failed: {e}") from e
        space = annotation_space(provider, model)
        await self.kn.vectors.ensure_space(space, len(vectors[0]))
        points = [VectorPoint(id=point_id(i["id"]), dense=v, payload={
            P_TENANT: tenant_id, P_DATASET: app_id, P_DOCUMENT: i["id"], P_SEGMENT: i["id"], P_ENABLED: True,
            P_METADATA: {}}) for i, v in zip(items, vectors, strict=True)]
        await self.kn.vectors.upsert(space, points)
        return {"ok": True, "count": len(points)}

    async def delete(self, req: dict[str, Any]) -> dict[str, Any]:
        tenant_id, app_id = _str(req, "tenant_id"), _str(req, "app_id")
        space = annotation_space(_opt(req, "provider"), _opt(req, "model"))
        ids = req.get("ids")
        if isinstance(ids, list):
            await self.kn.vectors.delete_ids(space, [point_id(str(i)) for i in ids])
        else:
            await self.kn.vectors.delete_dataset(space, tenant_id, app_id)
        return {"ok": True}

    async def search(self, req: dict[str, Any]) -> dict[str, Any]:
        tenant_id, app_id = _str(req, "tenant_id"), _str(req, "app_id")
        provider, model = _opt(req, "provider"), _opt(req, "model")
        query = str(req.get("query") or "")[:MAX_TEXT]
        if not query.strip():
            return {"hits": []}
        threshold = req.get("score_threshold")
        top_k = req.get("top_k")
        top_k = min(max(top_k, 1), MAX_TOP_K) if isinstance(top_k, int) else 1
        emb = await self._embedder(tenant_id, provider, model)
        try:
            vector = await emb.embed_query(query)
        except Exception as e:
            raise ApiError(400, "invalid_param", f"Embedding the query failed: {e}") from e
        hits = await self.kn.vectors.search_dense(
            annotation_space(provider, model), vector, VectorFilter(tenant_id=tenant_id, dataset_ids=(app_id,)),
            top_k, float(threshold) if isinstance(threshold, int | float) else None)
        return {"hits": [{"id": h.payload.get(P_SEGMENT), "score": float(h.score)} for h in hits
                         if h.payload.get(P_SEGMENT)]}

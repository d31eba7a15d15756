"""The knowledge service object: what the datasets, documents, segments and retrieval services share
(database, object store, vector store, embedders, the job queue)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from sqlmodel.ext.asyncio.session import AsyncSession

from services.indexer.service.common import provider_not_initialize
from shared import subjects
from shared.context import Context
from shared.credentials import provider_credentials
from shared.files import FileStore
from shared.knowledge.embeddings import Embedder, LiteLLMEmbedder, local_embedder
from shared.knowledge.models import LOCAL_EMBEDDING_PROVIDER
from shared.knowledge.vectors import VectorStore
from shared.subjects import parse_config_subject


class Knowledge:
    def __init__(self, ctx: Context, vectors: VectorStore) -> None:
        self.ctx = ctx
        self.db = ctx.db
        self.bus = ctx.bus
        self.settings = ctx.settings.knowledge
        self.files = FileStore(ctx.bus)
        self.vectors = vectors
        # (tenant, provider, model, credentials digest) → embedder; dropped when the tenant's providers change
        self._embedders: dict[tuple[str, str, str, str], Embedder] = {}

    async def embedder(self, s: AsyncSession, tenant_id: str, provider: str | None, model: str | None) -> Embedder:
        """The embedding model a high-quality dataset uses; the built-in one needs no credentials."""
        if not provider or provider == LOCAL_EMBEDDING_PROVIDER:
            return local_embedder()
        creds = await provider_credentials(s, self.ctx.settings.secret_key, tenant_id, provider, model,
                                           "text-embedding")
        if creds is None:
            raise provider_not_initialize(f"(provider '{provider}')")
        digest = hashlib.sha256(orjson.dumps(creds, option=orjson.OPT_SORT_KEYS)).hexdigest()
        key = (tenant_id, provider, model or "", digest)
        emb = self._embedders.get(key)
        if emb is None:
            emb = LiteLLMEmbedder(provider, model or "", creds, batch_size=self.settings.embedding_batch)
            self._embedders[key] = emb
        return emb

    def on_config(self, subject: str, payload: dict[str, Any]) -> None:
        kind, ident = parse_config_subject(subject)
        if kind in ("provider", "tenant"):
            for key in [k for k in self._embedders if k[0] == ident]:
                self._embedders.pop(key, None)

    async def enqueue_job(self, payload: dict[str, Any], msg_id: str) -> None:
        """Queue another kind of index job (``payload["kind"]``); ``msg_id`` de-duplicates re-publishes."""
        await self.bus.js.publish(subjects.INDEX_JOBS, orjson.dumps(payload), headers={"Nats-Msg-Id": msg_id})

    async def enqueue(self, document_id: str, version: int) -> None:
        """Queue one index job. The message id makes a re-publish (the requeue sweep) a no-op within
        the stream's duplicate window; a stale version is skipped by the worker anyway."""
        await self.bus.js.publish(
            subjects.INDEX_JOBS,
            orjson.dumps({"document_id": document_id, "version": version}),
            headers={"Nats-Msg-Id": f"{document_id}:{version}"},
        )

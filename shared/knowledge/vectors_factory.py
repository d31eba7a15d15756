"""Which vector store a process uses (ARCHITECTURE §4): a Qdrant server when one is configured, else the
embedded engine under the data dir (one process owns it: the indexer, which serves retrieval to the
runtime over NATS)."""

from __future__ import annotations

from shared.knowledge.vectors import VectorStore
from shared.settings import Settings


def build_vector_store(settings: Settings) -> VectorStore:
    ks = settings.knowledge
    kind = ks.vector_store
    if kind == "auto":
        kind = "qdrant" if ks.qdrant_url else "edge"
    if kind == "qdrant":
        if not ks.qdrant_url:
            raise SystemExit("PLEXUS_KNOWLEDGE__VECTOR_STORE=qdrant needs PLEXUS_KNOWLEDGE__QDRANT_URL")
        from shared.knowledge.vectors_qdrant import QdrantStore

        return QdrantStore(url=ks.qdrant_url, api_key=ks.qdrant_api_key)
    from shared.knowledge.vectors_edge import EdgeStore

    return EdgeStore(settings.data_dir / "vectors")

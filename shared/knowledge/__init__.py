"""Knowledge primitives shared by the indexer and the runtime: contract models, vector-store port and adapters, embeddings, full-text encoding."""

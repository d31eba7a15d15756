"""Knowledge business logic (no HTTP types): datasets, documents, segments, retrieval, the index pipeline."""

from services.indexer.service.core import Knowledge

__all__ = ["Knowledge"]

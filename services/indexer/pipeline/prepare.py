"""The CPU-bound stages as two picklable calls for the parse process pool: extract (parsing), then clean +
split + full-text encoding (cleaning, splitting). Running them in child processes keeps the event loop
(and in `all` mode every other service) responsive, lets a second core work, and confines a parser
that blows up on a hostile file to a child with a memory cap."""

from __future__ import annotations

import hashlib
import resource
from dataclasses import dataclass, field
from pathlib import Path

from services.indexer.pipeline.split import Chunk, split, split_parent_child, validate_process_rule
from shared.knowledge.sparse import encode_document, keywords
from shared.parse import Element, extract

CHILD_MEMORY_BYTES = 4 * 1024**3  # address-space cap of a parse process


@dataclass(slots=True)
class PreparedChunk:
    position: int
    content: str
    tokens: int
    page: int | None
    content_hash: str
    keywords: list[str]
    sparse_indices: list[int]
    sparse_values: list[float]
    # a hierarchical rule's parent: its child chunks are what gets embedded and searched (the parent's own
    # sparse vector is left empty); None for a chunk that is searched itself
    children: list[PreparedChunk] | None = field(default=None)
    answer: str | None = None  # a Q&A document's segment: content is the question


def init_child() -> None:
    """Pool initializer: a parse process may not grow past CHILD_MEMORY_BYTES."""
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = CHILD_MEMORY_BYTES if hard == resource.RLIM_INFINITY else min(CHILD_MEMORY_BYTES, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ValueError, OSError):  # not permitted here: the parsers' own limits still apply
        pass


def extract_elements(path: str, kind: str) -> list[Element]:
    return extract(Path(path), kind)


def chunk_elements(elements: list[Element], rule: dict, automatic_max_tokens: int | None = None
                   ) -> list[PreparedChunk]:
    """``automatic_max_tokens``: a smaller chunk size for the automatic rule (an embedding model with a
    short input limit, which would otherwise drop the end of each chunk)."""
    pr = validate_process_rule(rule, required=True)
    if pr.mode == "automatic" and automatic_max_tokens:
        seg = pr.segmentation
        seg.max_tokens = min(seg.max_tokens, automatic_max_tokens)
        seg.chunk_overlap = min(seg.chunk_overlap, seg.max_tokens // 10)
    if pr.mode == "hierarchical":
        return [prepared(p.chunk, sparse=False, children=[prepared(c) for c in p.children])
                for p in split_parent_child(elements, pr)]
    return [prepared(c) for c in split(elements, pr)]


def prepared(c: Chunk, *, sparse: bool = True, children: list[PreparedChunk] | None = None,
             answer: str | None = None) -> PreparedChunk:
    """A chunk with its hash, keywords and (unless it is a parent, which is not searched) full-text vector."""
    sv = encode_document(c.content) if sparse else None
    return PreparedChunk(
        position=c.position,
        content=c.content,
        tokens=c.tokens,
        page=c.page,
        content_hash=hashlib.sha256(c.content.encode()).hexdigest(),
        keywords=keywords(c.content, 10),
        sparse_indices=list(sv.indices) if sv else [],
        sparse_values=list(sv.values) if sv else [],
        children=children,
        answer=answer,
    )

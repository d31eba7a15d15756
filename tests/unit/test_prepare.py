"""The pool-side stages of the indexer: chunking with the automatic-rule cap, and full-text encoding."""

from services.indexer.pipeline.prepare import chunk_elements
from shared.knowledge.sparse import encode_document
from shared.parse import Element

TEXT = " ".join(f"Sentence number {i} talks about kettles and tea." for i in range(400))


def test_automatic_rule_is_capped_for_short_input_models_and_custom_rules_are_not() -> None:
    plain = chunk_elements([Element("text", TEXT)], {"mode": "automatic"})
    capped = chunk_elements([Element("text", TEXT)], {"mode": "automatic"}, 200)
    assert max(c.tokens for c in plain) > 400 and max(c.tokens for c in capped) <= 200
    assert len(capped) > len(plain)
    custom = {"mode": "custom", "rules": {"pre_processing_rules": [],
                                          "segmentation": {"separator": "\\n\\n", "max_tokens": 1000}}}
    assert [c.tokens for c in chunk_elements([Element("text", TEXT)], custom, 200)] == \
        [c.tokens for c in chunk_elements([Element("text", TEXT)], custom)]


def test_chunks_carry_their_full_text_vector_hash_and_keywords() -> None:
    (c,) = chunk_elements([Element("text", "Kettles boil water. Kettles whistle.")], {"mode": "automatic"})
    sv = encode_document(c.content)
    assert (c.sparse_indices, c.sparse_values) == (list(sv.indices), list(sv.values))
    assert c.keywords[0] == "kettles" and len(c.content_hash) == 64 and c.position == 1


def test_a_hierarchical_rule_prepares_parents_whose_children_are_the_searched_chunks() -> None:
    rule = {"mode": "hierarchical", "rules": {
        "pre_processing_rules": [], "segmentation": {"separator": "\\n\\n", "max_tokens": 500},
        "parent_mode": "paragraph", "subchunk_segmentation": {"separator": "\\n", "max_tokens": 30}}}
    parents = chunk_elements([Element("text", "Kettles boil water.\nTea needs hot water.\n\nCups hold tea.")], rule)
    assert [p.content for p in parents] == ["Kettles boil water.\nTea needs hot water.", "Cups hold tea."]
    assert all(p.sparse_indices == [] for p in parents)  # a parent is not searched itself
    first = parents[0].children
    assert first is not None and [k.content for k in first] == ["Kettles boil water.", "Tea needs hot water."]
    sv = encode_document(first[1].content)
    assert (first[1].sparse_indices, first[1].sparse_values) == (list(sv.indices), list(sv.values))
    assert chunk_elements([Element("text", "Cups hold tea.")], {"mode": "automatic"})[0].children is None

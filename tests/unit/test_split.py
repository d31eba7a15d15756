"""process_rule validation, cleaning and chunking: limits, overlap, headings, CJK, tables."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest

from services.indexer.pipeline.clean import PreProcessing, clean
from services.indexer.pipeline.split import (
    Chunk,
    ProcessRule,
    count_tokens,
    split,
    split_children,
    split_parent_child,
    unescape_separator,
    validate_process_rule,
)
from shared.parse import Element


def custom(
    max_tokens: int = 100,
    overlap: int = 0,
    separator: str = "\n",
    *,
    split_by_title: bool = False,
    remove_extra_spaces: bool = True,
    remove_urls_emails: bool = False,
) -> ProcessRule:
    return validate_process_rule(
        {
            "mode": "custom",
            "rules": {
                "pre_processing_rules": [
                    {"id": "remove_extra_spaces", "enabled": remove_extra_spaces},
                    {"id": "remove_urls_emails", "enabled": remove_urls_emails},
                ],
                "segmentation": {
                    "separator": separator,
                    "max_tokens": max_tokens,
                    "chunk_overlap": overlap,
                    "split_by_title": split_by_title,
                },
            },
        },
        required=True,
    )


def text(body: str, page: int | None = None) -> Element:
    return Element("text", body, page=page)


def sentences(count: int, start: int = 0) -> str:
    return " ".join(f"Sentence number {n} tells a short story." for n in range(start, start + count))


def assert_within_limit(chunks: list[Chunk], max_tokens: int) -> None:
    assert chunks
    assert [chunk.position for chunk in chunks] == list(range(1, len(chunks) + 1))
    for chunk in chunks:
        assert chunk.content.strip()
        assert chunk.tokens == count_tokens(chunk.content)
        assert chunk.tokens <= max_tokens, chunk.content


def squeeze(value: str) -> str:
    return re.sub(r"\s+", "", value)


# ------------------------------------------------------------------------------------------ tokens


@pytest.mark.parametrize(
    ("value", "tokens"),
    [
        ("", 0),
        ("abcd", 1),
        ("abcde", 2),
        ("word " * 100, 125),
        ("中文分词", 4),
        ("中文，标点。", 6),
        ("こんにちは", 5),
        ("한국어", 3),
        ("abcd中文", 3),
        ("héllo", 2),
    ],
)
def test_count_tokens_english_and_cjk(value: str, tokens: int) -> None:
    assert count_tokens(value) == tokens


# ------------------------------------------------------------------------------------------- clean


def test_clean_always_strips_control_characters_and_normalises_newlines() -> None:
    raw = "a\x00b\x07c\r\nd\re\tf\x7fg\ufeff<|endoftext|>"
    assert clean(raw, PreProcessing(remove_extra_spaces=False)) == "abc\nd\ne\tfg<endoftext>"


def test_clean_remove_extra_spaces() -> None:
    raw = "one  two\t\tthree\u3000\u3000four\n\n\n\nfive\n \n\t\nsix"
    assert clean(raw, PreProcessing(remove_extra_spaces=True)) == "one two three four\n\nfive\n\nsix"
    assert clean(raw, PreProcessing(remove_extra_spaces=False)) == raw


def test_clean_remove_urls_and_emails_keeps_link_text() -> None:
    raw = (
        "Mail ana@example.com or see https://example.com/docs?a=1. "
        "Read [the guide](https://example.com/guide) and ![a chart](http://x.org/c.png), "
        "or [write us](mailto:team@example.com); [local](./docs.md) stays."
    )
    cleaned = clean(raw, PreProcessing(remove_extra_spaces=False, remove_urls_emails=True))
    assert cleaned == "Mail  or see . Read the guide and a chart, or write us; [local](./docs.md) stays."
    assert clean(raw, PreProcessing(remove_urls_emails=False)) == raw


# ------------------------------------------------------------------------------------------ limits


@pytest.mark.parametrize("max_tokens", [50, 120, 500])
@pytest.mark.parametrize("overlap", [0, 10, 49])
def test_max_tokens_is_never_exceeded(max_tokens: int, overlap: int) -> None:
    elements = [
        Element("title", "Heading", 1),
        text(sentences(200)),
        text("x" * 5000),  # no break at all: cut by characters
        text("中文句子没有任何标点符号" * 300),
        text("短句。" * 400),
        Element("table", "\n".join(f"| row {n} | {'cell ' * 30} |" for n in range(30))),
        Element("code", "\n".join(f"    line_{n} = compute({n})" for n in range(200))),
        Element("list_item", "item " * 400, level=2),
    ]
    rule = custom(max_tokens, min(overlap, max_tokens - 1))
    assert_within_limit(split(elements, rule), max_tokens)


def test_without_overlap_nothing_is_lost_or_repeated() -> None:
    body = sentences(300) + "\n" + "中文内容。" * 200
    chunks = split([text(body)], custom(80))
    assert len(chunks) > 10
    assert squeeze("".join(chunk.content for chunk in chunks)) == squeeze(body)


def test_automatic_mode_merges_small_pieces_up_to_max_tokens() -> None:
    lines = [f"Line {n} of the file." for n in range(300)]
    chunks = split([text("\n".join(lines))], ProcessRule.automatic())
    assert len(chunks) > 2
    assert all(chunk.tokens > 400 for chunk in chunks[:-1])
    assert chunks[0].content.startswith("Line 0 of the file.\nLine 1 of the file.\n")
    paragraphs = [text(f"Paragraph {n}.") for n in range(5)]
    assert [c.content for c in split(paragraphs, ProcessRule.automatic())] == [
        "\n\n".join(f"Paragraph {n}." for n in range(5))
    ]


# ------------------------------------------------------------------------------ custom separators

CHINESE_PARAGRAPHS = [
    "北京大学是中国著名的高等学府，位于北京市海淀区。",
    "人工智能是计算机科学的一个分支，研究如何让机器具有智能。",
    "长城是中国古代的军事防御工程，绵延数千公里。",
]


def test_custom_separator_is_a_hard_boundary() -> None:
    raw = {
        "mode": "custom",
        "rules": {"pre_processing_rules": [], "segmentation": {"separator": "\\n\\n", "max_tokens": 60}},
    }
    rule = validate_process_rule(raw, required=True)
    chunks = split([text("\n\n".join(CHINESE_PARAGRAPHS))], rule)
    assert [chunk.content for chunk in chunks] == CHINESE_PARAGRAPHS
    assert [chunk.position for chunk in chunks] == [1, 2, 3]
    # the same paragraphs as separate elements (how .txt files are parsed) give the same chunks
    assert [c.content for c in split([text(p) for p in CHINESE_PARAGRAPHS], rule)] == CHINESE_PARAGRAPHS
    # small pieces are never merged or overlapped across the separator, whatever the room left
    lines = [f"Line {n} of the file." for n in range(20)]
    chunks = split([text("\n".join(lines))], custom(500, overlap=100, separator="\\n"))
    assert [chunk.content for chunk in chunks] == lines
    chunks = split([text("a***b***c"), text("d"), text("e***f")], custom(100, separator="***"))
    assert [chunk.content for chunk in chunks] == ["a", "b", "c\n\nd\n\ne", "f"]
    # hierarchical rules chunk like custom ones
    hierarchical = validate_process_rule({**raw, "mode": "hierarchical"}, required=True)
    assert [c.content for c in split([text("\n\n".join(CHINESE_PARAGRAPHS))], hierarchical)] == (
        CHINESE_PARAGRAPHS
    )


def test_element_boundaries_follow_the_separator() -> None:
    elements = [
        Element("list_item", "first"),
        Element("list_item", "second"),
        text("After the list."),
        Element("table", "| a | b |\n| 1 | 2 |"),
    ]
    blank_lines = split(elements, custom(100, separator="\\n\\n"))
    assert [c.content for c in blank_lines] == [
        "- first\n- second",
        "After the list.",
        "| a | b |\n| 1 | 2 |",
    ]
    assert len(split(elements, custom(100, separator="\\n"))) == 4
    assert len(split(elements, custom(100, separator="***"))) == 1


def test_split_by_title_keeps_a_heading_with_the_first_piece_under_it() -> None:
    elements = [
        Element("title", "Guide", 1),
        Element("title", "Setup", 2),
        text("Step one.\n\nStep two."),
        text("Step three."),
    ]
    chunks = split(elements, custom(100, separator="\\n\\n", split_by_title=True))
    assert [(c.title_path, c.content) for c in chunks] == [
        ("Guide > Setup", "Guide\n\nSetup\n\nStep one."),
        ("Guide > Setup", "Step two."),
        ("Guide > Setup", "Step three."),
    ]


def test_an_oversized_piece_is_split_and_merged_within_itself_with_overlap() -> None:
    body = "\n\n".join(["Short intro.", sentences(40), "Short outro."])
    chunks = split([text(body)], custom(100, overlap=30, separator="\\n\\n"))
    assert_within_limit(chunks, 100)
    assert chunks[0].content == "Short intro." and chunks[-1].content == "Short outro."
    middle = chunks[1:-1]
    assert len(middle) > 3
    assert middle[0].content.startswith("Sentence number 0 ")
    assert all("Short" not in chunk.content for chunk in middle)
    assert all(chunk.tokens > 60 for chunk in middle[:-1])  # sub-pieces are merged up to max_tokens
    for previous, following in itertools.pairwise(middle):
        edge = shared_edge(previous.content, following.content)
        assert edge.startswith("Sentence number") and 0 < count_tokens(edge) <= 30
    assert not shared_edge(chunks[0].content, chunks[1].content)
    assert not shared_edge(middle[-1].content, chunks[-1].content)


# ----------------------------------------------------------------------------------------- overlap


def shared_edge(previous: str, following: str) -> str:
    """The longest suffix of `previous` that starts `following`."""
    for size in range(min(len(previous), len(following)), 0, -1):
        if following.startswith(previous[-size:]):
            return previous[-size:]
    return ""


def test_consecutive_chunks_overlap_by_at_most_chunk_overlap_tokens() -> None:
    chunks = split([text(sentences(100))], custom(100, overlap=30))
    assert len(chunks) > 5
    for previous, following in itertools.pairwise(chunks):
        edge = shared_edge(previous.content, following.content)
        assert edge.startswith("Sentence number"), (previous.content, following.content)
        assert 0 < count_tokens(edge) <= 30


def test_overlap_falls_back_to_the_tail_of_a_long_sentence() -> None:
    words = " ".join(f"w{n}" for n in range(600))  # one unpunctuated sentence, far longer than the overlap
    chunks = split([text(words)], custom(60, overlap=20))
    for previous, following in itertools.pairwise(chunks):
        edge = shared_edge(previous.content, following.content)
        assert 10 <= count_tokens(edge) <= 20
        assert re.fullmatch(r"w\d+( w\d+)*", edge)  # word-aligned


def test_no_overlap_when_disabled_or_across_sections() -> None:
    assert all(
        not shared_edge(a.content, b.content)
        for a, b in zip(*[split([text(sentences(100))], custom(100))] * 2, strict=False)
        if a.position + 1 == b.position
    )
    elements = [
        Element("title", "A", 1),
        text(sentences(3)),
        Element("title", "B", 1),
        text(sentences(3, 10)),
    ]
    _, second = split(elements, custom(500, overlap=100, split_by_title=True))
    assert second.content.startswith("B\n\nSentence number 10")


# ------------------------------------------------------------------------------------------ titles


def test_split_by_title_starts_chunks_at_headings_with_the_heading_path() -> None:
    elements = [
        Element("title", "Manual", 1),
        Element("title", "Install", 2),
        text("Run the installer."),
        Element("title", "Linux", 3),
        text("Use apt."),
        Element("title", "Usage", 2),
        text("Start the app."),
        Element("title", "Appendix", 1),
        text("Extra notes."),
    ]
    chunks = split(elements, custom(500, split_by_title=True))
    assert [(c.title_path, c.content) for c in chunks] == [
        ("Manual > Install", "Manual\n\nInstall\n\nRun the installer."),  # consecutive headings share a chunk
        ("Manual > Install > Linux", "Linux\n\nUse apt."),
        ("Manual > Usage", "Usage\n\nStart the app."),
        ("Appendix", "Appendix\n\nExtra notes."),
    ]
    merged = split(elements, custom(500, separator="***"))
    assert len(merged) == 1 and merged[0].title_path == ""
    assert len(split(elements, custom(500))) == len(elements)  # "\n" separates every element


def test_automatic_mode_splits_by_title_and_later_chunks_keep_the_path() -> None:
    elements = [Element("title", "Guide", 1), text(sentences(200))]
    chunks = split(elements, validate_process_rule({"mode": "automatic"}, required=True))
    assert len(chunks) > 2
    assert {chunk.title_path for chunk in chunks} == {"Guide"}
    assert chunks[0].content.startswith("Guide\n\nSentence number 0")
    assert not chunks[1].content.startswith("Guide")


# --------------------------------------------------------------------------------------------- CJK


def test_chinese_text_splits_at_sentence_ends() -> None:
    body = "".join(f"这是第{n}个句子，内容很简短{'！' if n % 3 else '。'}" for n in range(120))
    chunks = split([text(body)], custom(50))
    assert len(chunks) > 5
    assert_within_limit(chunks, 50)
    assert all(chunk.content[-1] in "。！" for chunk in chunks)
    assert squeeze("".join(chunk.content for chunk in chunks)) == body


def test_chinese_quote_stays_with_its_sentence() -> None:
    body = "他说：“今天下雨。”" * 60
    chunks = split([text(body)], custom(50))
    assert all(chunk.content.endswith("。”") for chunk in chunks)


# ------------------------------------------------------------------------------------------ tables


def test_table_rows_are_never_cut_and_parts_repeat_the_header() -> None:
    header = "| id | name | comment |"
    rows = [f"| {n} | person {n} | likes item {n} a lot |" for n in range(100)]
    chunks = split([Element("table", "\n".join([header, *rows]))], custom(60))
    assert len(chunks) > 3
    assert_within_limit(chunks, 60)
    seen = []
    for chunk in chunks:
        lines = chunk.content.split("\n")
        assert lines[0] == header
        assert all(line in rows or line == header for line in lines)
        seen.extend(line for line in lines if line != header)
    assert seen == rows


def test_only_a_row_longer_than_max_tokens_is_cut() -> None:
    long_row = "| " + " | ".join(f"value{n}" for n in range(100)) + " |"
    chunks = split([Element("table", f"| a |\n{long_row}\n| b |")], custom(50))
    assert_within_limit(chunks, 50)
    lines = [line for chunk in chunks for line in chunk.content.split("\n")]
    assert lines[0] == "| a |"
    rest = [line for line in lines[1:] if line != "| a |"]  # later parts repeat the header row
    assert rest[-1] == "| b |" and len(rest) > 3
    assert squeeze("".join(rest[:-1])) == squeeze(long_row)


def test_small_table_joins_the_surrounding_text() -> None:
    elements = [text("Before."), Element("table", "| a | b |\n| 1 | 2 |"), text("After.")]
    joined = ["Before.\n\n| a | b |\n| 1 | 2 |\n\nAfter."]
    assert [c.content for c in split(elements, ProcessRule.automatic())] == joined
    assert [c.content for c in split(elements, custom(100, separator="***"))] == joined
    # a separator found between the elements keeps them apart, but never cuts the table itself
    assert [c.content for c in split(elements, custom(100))] == ["Before.", "| a | b |\n| 1 | 2 |", "After."]


# ----------------------------------------------------------------------------------------- details


def test_separator_is_unescaped_and_marker_separators_are_dropped() -> None:
    assert unescape_separator("\\n\\n") == "\n\n"
    assert custom(separator="\\n\\n").segmentation.delimiter == "\n\n"
    chunks = split([text("part one***part two***part three")], custom(100, separator="***"))
    assert [c.content for c in chunks] == ["part one", "part two", "part three"]
    assert split([text("******"), text("x")], custom(100, separator="***"))[0].content == "x"
    big = "***".join(sentences(8, start) for start in range(0, 80, 8))
    chunks = split([text(big)], custom(100, separator="***"))
    assert all("***" not in chunk.content for chunk in chunks)
    assert all(chunk.content.startswith("Sentence number") for chunk in chunks)


def test_lists_code_pages_and_empty_elements() -> None:
    elements = [
        text("\x00\x01  \n", page=1),
        Element("list_item", "first", 0, page=1),
        Element("list_item", "nested", 1, page=1),
        Element("code", "def f():\n    return 1", page=2),
        text(sentences(40), page=3),
    ]
    chunks = split(elements, custom(100, overlap=20, separator="***"))
    assert chunks[0].content.startswith("- first\n  - nested\n\ndef f():\n    return 1")
    assert chunks[0].page == 1
    assert [chunk.page for chunk in chunks[1:]] == [3] * (len(chunks) - 1)


def test_pre_processing_rules_are_applied_per_element() -> None:
    elements = [text("See   https://example.com  now"), Element("code", "x  =  1")]
    rule = custom(100, remove_urls_emails=True)
    assert [c.content for c in split(elements, rule)] == ["See now", "x  =  1"]
    assert split(elements, custom(100, remove_extra_spaces=False))[0].content.startswith("See   https://")


# -------------------------------------------------------------------------------------- validation


def test_automatic_defaults_and_round_trip() -> None:
    rule = validate_process_rule({"mode": "automatic", "rules": {"anything": "ignored"}}, required=True)
    segmentation = rule.segmentation
    assert (segmentation.separator, segmentation.max_tokens, segmentation.chunk_overlap) == ("\n", 500, 50)
    assert segmentation.split_by_title is True
    assert rule.pre_processing == PreProcessing(remove_extra_spaces=True, remove_urls_emails=False)
    assert validate_process_rule(None, required=False) == rule
    dumped = custom(300, 20, "\\n\\n").model_dump(exclude_none=True)
    assert validate_process_rule(dumped, required=True).model_dump(exclude_none=True) == dumped
    assert dumped["rules"]["segmentation"]["separator"] == "\\n\\n"


@pytest.mark.parametrize(
    "raw",
    [
        {"mode": "automatic"},
        {"mode": "custom", "rules": {"pre_processing_rules": [], "segmentation": {"max_tokens": 300}}},
        {
            "mode": "hierarchical",
            "rules": {
                "pre_processing_rules": [],
                "segmentation": {"separator": "x"},
                "parent_mode": "full-doc",
            },
        },
    ],
)
def test_a_stored_rule_validates_again_unchanged(raw: dict) -> None:
    """The indexer stores model_dump(mode="json") (None fields included) and re-validates it later."""
    stored = validate_process_rule(raw, required=True).model_dump(mode="json")
    assert validate_process_rule(stored, required=True).model_dump(mode="json") == stored


def test_duplicate_pre_processing_ids_keep_the_last() -> None:
    rules = [{"id": "remove_urls_emails", "enabled": True}, {"id": "remove_urls_emails", "enabled": False}]
    rule = validate_process_rule(
        {"mode": "custom", "rules": {"pre_processing_rules": rules, "segmentation": {"max_tokens": 100}}},
        required=True,
    )
    assert rule.pre_processing == PreProcessing(remove_extra_spaces=False, remove_urls_emails=False)
    assert rule.segmentation.separator == "\n" and rule.segmentation.chunk_overlap == 0


def test_hierarchical_is_validated_and_chunked_like_custom() -> None:
    raw = {
        "mode": "hierarchical",
        "rules": {
            "pre_processing_rules": [],
            "segmentation": {"separator": "\\n\\n", "max_tokens": 200},
            "parent_mode": "paragraph",
            "subchunk_segmentation": {"separator": "\\n", "max_tokens": 50, "chunk_overlap": 5},
        },
    }
    rule = validate_process_rule(raw, required=True)
    assert rule.rules.parent_mode == "paragraph"
    assert rule.rules.subchunk_segmentation is not None and rule.rules.subchunk_segmentation.max_tokens == 50
    assert_within_limit(split([text(sentences(100))], rule), 200)
    full_doc = {
        **raw,
        "rules": {**raw["rules"], "parent_mode": "full-doc", "segmentation": {"separator": "\n"}},
    }
    assert validate_process_rule(full_doc, required=True).segmentation.max_tokens == 500


def segmentation_rule(**segmentation: Any) -> dict:
    return {"mode": "custom", "rules": {"pre_processing_rules": [], "segmentation": segmentation}}


def hierarchical_rule(**rules: Any) -> dict:
    base = {"pre_processing_rules": [], "segmentation": {"max_tokens": 200}}
    return {"mode": "hierarchical", "rules": {**base, **rules}}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "process_rule is required."),
        ({}, "process_rule is required."),
        ("automatic", "Process rule is invalid"),
        ({"rules": {}}, "Process rule mode is required"),
        ({"mode": "smart"}, "Process rule mode is invalid"),
        ({"mode": ["custom"]}, "Process rule mode is invalid"),
        ({"mode": "custom"}, "Process rule rules is required"),
        ({"mode": "custom", "rules": {}}, "Process rule rules is required"),
        ({"mode": "custom", "rules": ["x"]}, "Process rule rules is invalid"),
        (
            {"mode": "custom", "rules": {"segmentation": {"max_tokens": 100}}},
            "Process rule pre_processing_rules is required",
        ),
        (
            {"mode": "custom", "rules": {"pre_processing_rules": {"id": "x"}}},
            "Process rule pre_processing_rules is invalid",
        ),
        (
            {"mode": "custom", "rules": {"pre_processing_rules": [{"enabled": True}]}},
            "Process rule pre_processing_rules id is required",
        ),
        (
            {
                "mode": "custom",
                "rules": {"pre_processing_rules": [{"id": "remove_stopwords", "enabled": True}]},
            },
            "Process rule pre_processing_rules id is invalid",
        ),
        (
            {"mode": "custom", "rules": {"pre_processing_rules": [{"id": "remove_extra_spaces"}]}},
            "Process rule pre_processing_rules enabled is required",
        ),
        (
            {
                "mode": "custom",
                "rules": {"pre_processing_rules": [{"id": "remove_extra_spaces", "enabled": "yes"}]},
            },
            "Process rule pre_processing_rules enabled is invalid",
        ),
        ({"mode": "custom", "rules": {"pre_processing_rules": []}}, "Process rule segmentation is required"),
        (
            {"mode": "custom", "rules": {"pre_processing_rules": [], "segmentation": "500"}},
            "Process rule segmentation is invalid",
        ),
        (segmentation_rule(separator=5, max_tokens=100), "Process rule segmentation separator is invalid"),
        (segmentation_rule(separator="", max_tokens=100), "Process rule segmentation separator is required"),
        (segmentation_rule(separator="\n"), "Process rule segmentation max_tokens is required"),
        (segmentation_rule(max_tokens="500"), "Process rule segmentation max_tokens is invalid"),
        (segmentation_rule(max_tokens=True), "Process rule segmentation max_tokens is invalid"),
        (segmentation_rule(max_tokens=49), "Process rule segmentation max_tokens is invalid"),
        (segmentation_rule(max_tokens=4001), "Process rule segmentation max_tokens is invalid"),
        (
            segmentation_rule(max_tokens=100, chunk_overlap=-1),
            "Process rule segmentation chunk_overlap is invalid",
        ),
        (
            segmentation_rule(max_tokens=100, chunk_overlap=100),
            "Process rule segmentation chunk_overlap is invalid",
        ),
        (
            segmentation_rule(max_tokens=100, chunk_overlap=1.5),
            "Process rule segmentation chunk_overlap is invalid",
        ),
        (
            segmentation_rule(max_tokens=100, split_by_title="y"),
            "Process rule segmentation split_by_title is invalid",
        ),
        (hierarchical_rule(parent_mode="chapter"), "Process rule parent_mode is invalid"),
        (hierarchical_rule(subchunk_segmentation=[]), "Process rule subchunk_segmentation is invalid"),
        (
            hierarchical_rule(subchunk_segmentation={"separator": ""}),
            "Process rule subchunk_segmentation separator is invalid",
        ),
        (
            hierarchical_rule(subchunk_segmentation={}),
            "Process rule subchunk_segmentation max_tokens is required",
        ),
        (
            hierarchical_rule(subchunk_segmentation={"max_tokens": 200}),
            "Process rule subchunk_segmentation max_tokens is invalid",
        ),
        (
            hierarchical_rule(subchunk_segmentation={"max_tokens": 50, "chunk_overlap": 50}),
            "Process rule subchunk_segmentation chunk_overlap is invalid",
        ),
    ],
)
def test_validation_messages(raw: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        validate_process_rule(raw, required=True)
    assert str(caught.value) == message


# ---- parent-child ----------------------------------------------------------------------------------


def test_paragraph_parents_are_split_again_into_children() -> None:
    rule = validate_process_rule(hierarchical_rule(
        segmentation={"separator": "\\n\\n", "max_tokens": 200}, parent_mode="paragraph",
        subchunk_segmentation={"separator": "\\n", "max_tokens": 20}), required=True)
    paragraphs = [sentences(3, 0), f"{sentences(1, 10)}\n{sentences(1, 11)}", sentences(8, 20)]
    parents = split_parent_child([text("\n\n".join(paragraphs))], rule)
    assert [p.chunk.content for p in parents] == [c.content for c in split([text("\n\n".join(paragraphs))], rule)]
    assert [p.chunk.position for p in parents] == [1, 2, 3]
    for p in parents:
        assert [k.position for k in p.children] == list(range(1, len(p.children) + 1))
        assert all(k.content in p.chunk.content and k.tokens <= 20 for k in p.children)
    # the subchunk separator is a hard boundary; a long paragraph is cut further by length
    assert [k.content for k in parents[1].children] == [sentences(1, 10), sentences(1, 11)]
    assert len(parents[2].children) >= 4


def test_full_doc_is_one_parent_cut_at_ten_thousand_tokens() -> None:
    rule = validate_process_rule(hierarchical_rule(segmentation={"separator": "\\n"}, parent_mode="full-doc"),
                                 required=True)
    short = [Element("title", "Tea", level=1), text(sentences(5)), text(sentences(5, 5))]
    (only,) = split_parent_child(short, rule)
    assert only.chunk.content.startswith("Tea\n\n") and sentences(5, 5) in only.chunk.content
    # no subchunk rule: children of at most 200 tokens, split at line ends
    assert only.children and all(k.tokens <= 200 for k in only.children)
    assert "".join(k.content for k in only.children).replace(" ", "") == \
        only.chunk.content.replace("\n", "").replace(" ", "")
    long = [text(sentences(40, n * 40)) for n in range(50)]  # ~ 20,000 tokens
    (cut,) = split_parent_child(long, rule)
    assert 9_000 < cut.chunk.tokens <= 10_000 and cut.chunk.content.startswith(sentences(1))
    assert cut.chunk.content.endswith(".")


def test_a_parent_too_small_to_split_is_its_own_child() -> None:
    sub = validate_process_rule(hierarchical_rule(subchunk_segmentation={"separator": "***", "max_tokens": 50}),
                                required=True).rules.subchunk_segmentation
    assert sub is not None
    assert [c.content for c in split_children("One short line.", sub)] == ["One short line."]
    assert [c.content for c in split_children("first***second", sub)] == ["first", "second"]

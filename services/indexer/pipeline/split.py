"""process_rule validation (Dify service API §4.3) and element-aware chunking.

Chunking, per section (a section starts at a heading when `split_by_title` is on; otherwise the whole document
is one section):
1. each element is cleaned (clean.py) and split by the rule's separator, then - only where a piece is
   still larger than max_tokens - recursively by blank lines, lines, sentence ends (. ! ? 。！？), clauses,
   spaces and finally characters;
2. pieces are merged greedily up to max_tokens (see below for where); consecutive chunks that were merged
   this way share up to chunk_overlap tokens (whole trailing pieces, or the word-aligned tail of the last
   piece), never across a section or a hard boundary;
3. tables are split between rows only (a row is cut only when it alone exceeds max_tokens) and every part of a
   large table starts with the header row again.

Where merging may happen depends on the mode:
- custom and hierarchical (Dify's FixedRecursiveCharacterTextSplitter): the user's separator is a hard
  boundary. Every separator-delimited piece becomes its own chunk, or several when the piece alone exceeds
  max_tokens (only those sub-pieces are merged, with overlap); nothing is merged or overlapped across a
  separator. Elements count as joined by a blank line (a line break between consecutive list items), as in
  the document's text, so an element boundary is a hard one when that joiner contains the separator: with
  "\n\n" (or "\n") every paragraph is a chunk of its own, with "***" only the marker splits. With
  `split_by_title`, a heading stays with the start of the text under it. The separator does not cut inside
  tables and code blocks.
- automatic: the separator ("\n") marks preferred boundaries only: small pieces of a section are merged up to
  max_tokens.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from services.indexer.pipeline.clean import PreProcessing, clean
from shared.parse import Element

MODES = ("automatic", "custom", "hierarchical")
PRE_PROCESSING_IDS = ("remove_extra_spaces", "remove_urls_emails")
MIN_MAX_TOKENS = 50  # Dify's IndexingRunner bounds for a custom segment length
MAX_MAX_TOKENS = 4000  # Dify's INDEXING_MAX_SEGMENTATION_TOKENS_LENGTH default
AUTOMATIC_MAX_TOKENS = 500
AUTOMATIC_CHUNK_OVERLAP = 50
FULL_DOC_MAX_TOKENS = 10_000  # Dify truncates a full-doc parent chunk here
CHILD_MAX_TOKENS = 200  # child chunk length when a hierarchical rule names no subchunk_segmentation
CHILD_SEPARATOR = "\n"


# ------------------------------------------------------------------------------------------ models


class PreProcessingRule(BaseModel):
    id: Literal["remove_extra_spaces", "remove_urls_emails"]
    enabled: bool


class Segmentation(BaseModel):
    separator: str = "\n"  # as sent: JSON-escaped forms like "\\n\\n" are kept; see `delimiter`
    max_tokens: int = AUTOMATIC_MAX_TOKENS
    chunk_overlap: int = 0
    split_by_title: bool = (
        False  # Plexus extension: headings start a new chunk, chunks carry the heading path
    )

    @property
    def delimiter(self) -> str:
        """The separator with the escapes Dify's UI sends turned into real characters."""
        return unescape_separator(self.separator)


class SubchunkSegmentation(BaseModel):
    separator: str = "***"
    max_tokens: int
    chunk_overlap: int = 0


class Rules(BaseModel):
    pre_processing_rules: list[PreProcessingRule]
    segmentation: Segmentation
    parent_mode: Literal["full-doc", "paragraph"] | None = None  # hierarchical only
    subchunk_segmentation: SubchunkSegmentation | None = None  # hierarchical only


class ProcessRule(BaseModel):
    """A validated process_rule. `model_dump(exclude_none=True)` gives Dify's JSON shape back.

    hierarchical (parent-child) rules make parent chunks (by `segmentation`, or the whole document in
    full-doc mode) that are each split again into child chunks by `subchunk_segmentation`
    (see `split_parent_child`)."""

    mode: Literal["automatic", "custom", "hierarchical"]
    rules: Rules

    @classmethod
    def automatic(cls) -> ProcessRule:
        return cls(
            mode="automatic",
            rules=Rules(
                pre_processing_rules=[
                    PreProcessingRule(id="remove_extra_spaces", enabled=True),
                    PreProcessingRule(id="remove_urls_emails", enabled=False),
                ],
                segmentation=Segmentation(
                    separator="\n",
                    max_tokens=AUTOMATIC_MAX_TOKENS,
                    chunk_overlap=AUTOMATIC_CHUNK_OVERLAP,
                    split_by_title=True,
                ),
            ),
        )

    @property
    def segmentation(self) -> Segmentation:
        return self.rules.segmentation

    @property
    def pre_processing(self) -> PreProcessing:
        enabled = {rule.id for rule in self.rules.pre_processing_rules if rule.enabled}
        return PreProcessing(
            remove_extra_spaces="remove_extra_spaces" in enabled,
            remove_urls_emails="remove_urls_emails" in enabled,
        )


_ESCAPES = re.compile(r"\\([ntr])")


def unescape_separator(separator: str) -> str:
    """Dify replaces the two characters `\\n` by a newline; `\\t` and `\\r` are treated the same way."""
    return _ESCAPES.sub(lambda match: {"n": "\n", "t": "\t", "r": "\r"}[match[1]], separator)


# -------------------------------------------------------------------------------------- validation


def validate_process_rule(raw: Any, *, required: bool) -> ProcessRule:
    """Validate a request's process_rule with Dify's ValueError messages (→ 400 invalid_param).

    A missing rule is an error when `required`; otherwise the automatic defaults are returned (callers that
    inherit the dataset's existing rule must check for a missing rule before calling).
    Bounds: 50 <= max_tokens <= 4000 (Dify's IndexingRunner check, made at validation time here);
    0 <= chunk_overlap < max_tokens.
    """
    if not raw:
        if required:
            raise ValueError("process_rule is required.")
        return ProcessRule.automatic()
    _check(isinstance(raw, dict), "Process rule is invalid")
    mode = raw.get("mode")
    if not mode:
        raise ValueError("Process rule mode is required")
    _check(isinstance(mode, str) and mode in MODES, "Process rule mode is invalid")
    if mode == "automatic":
        return ProcessRule.automatic()  # Dify ignores `rules` in automatic mode
    rules = raw.get("rules")
    if not rules:
        raise ValueError("Process rule rules is required")
    _check(isinstance(rules, dict), "Process rule rules is invalid")
    pre_processing_rules = _pre_processing_rules(rules.get("pre_processing_rules"))  # Dify checks these first
    parent_mode = _parent_mode(rules) if mode == "hierarchical" else None
    segmentation = _segmentation(rules.get("segmentation"), max_tokens_required=parent_mode != "full-doc")
    subchunks = None
    if mode == "hierarchical":
        parent_max = segmentation.max_tokens if parent_mode == "paragraph" else MAX_MAX_TOKENS + 1
        subchunks = _subchunk_segmentation(rules.get("subchunk_segmentation"), parent_max)
    return ProcessRule(
        mode=mode,
        rules=Rules(
            pre_processing_rules=pre_processing_rules,
            segmentation=segmentation,
            parent_mode=parent_mode,
            subchunk_segmentation=subchunks,
        ),
    )


def _check(valid: bool, message: str) -> None:
    if not valid:
        raise ValueError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pre_processing_rules(value: Any) -> list[PreProcessingRule]:
    if value is None:
        raise ValueError("Process rule pre_processing_rules is required")
    _check(isinstance(value, list), "Process rule pre_processing_rules is invalid")
    by_id: dict[str, PreProcessingRule] = {}  # Dify de-duplicates by id, the last one wins
    for item in value:
        _check(
            isinstance(item, dict) and bool(item.get("id")),
            "Process rule pre_processing_rules id is required",
        )
        _check(
            isinstance(item["id"], str) and item["id"] in PRE_PROCESSING_IDS,
            "Process rule pre_processing_rules id is invalid",
        )
        if item.get("enabled") is None:
            raise ValueError("Process rule pre_processing_rules enabled is required")
        _check(isinstance(item["enabled"], bool), "Process rule pre_processing_rules enabled is invalid")
        by_id[item["id"]] = PreProcessingRule(id=item["id"], enabled=item["enabled"])
    return list(by_id.values())


def _segmentation(value: Any, *, max_tokens_required: bool) -> Segmentation:
    if not value:
        raise ValueError("Process rule segmentation is required")
    _check(isinstance(value, dict), "Process rule segmentation is invalid")
    separator = value.get("separator", "\n")
    _check(isinstance(separator, str), "Process rule segmentation separator is invalid")
    if not separator:
        raise ValueError("Process rule segmentation separator is required")
    max_tokens = value.get("max_tokens")
    if max_tokens is None:
        if max_tokens_required:
            raise ValueError("Process rule segmentation max_tokens is required")
        max_tokens = AUTOMATIC_MAX_TOKENS  # full-doc parents have no length; chunk like automatic
    if not _is_int(max_tokens) or not MIN_MAX_TOKENS <= max_tokens <= MAX_MAX_TOKENS:
        raise ValueError("Process rule segmentation max_tokens is invalid")
    overlap = value.get("chunk_overlap")
    overlap = 0 if overlap is None else overlap
    if not _is_int(overlap) or not 0 <= overlap < max_tokens:
        raise ValueError("Process rule segmentation chunk_overlap is invalid")
    split_by_title = value.get("split_by_title", False)
    _check(isinstance(split_by_title, bool), "Process rule segmentation split_by_title is invalid")
    return Segmentation(
        separator=separator, max_tokens=max_tokens, chunk_overlap=overlap, split_by_title=split_by_title
    )


def _parent_mode(rules: dict) -> str:
    parent_mode = rules.get("parent_mode") or "paragraph"
    if parent_mode not in ("full-doc", "paragraph"):
        raise ValueError("Process rule parent_mode is invalid")
    return parent_mode


def _subchunk_segmentation(value: Any, parent_max_tokens: int) -> SubchunkSegmentation | None:
    """Child-chunk settings: max_tokens below the parent's (paragraph mode) or at most 4000 (full-doc)."""
    if value is None:
        return None
    _check(isinstance(value, dict), "Process rule subchunk_segmentation is invalid")
    separator = value.get("separator", "***")
    _check(
        isinstance(separator, str) and bool(separator),
        "Process rule subchunk_segmentation separator is invalid",
    )
    max_tokens = value.get("max_tokens")
    if max_tokens is None:
        raise ValueError("Process rule subchunk_segmentation max_tokens is required")
    if not _is_int(max_tokens) or not 1 <= max_tokens < parent_max_tokens:
        raise ValueError("Process rule subchunk_segmentation max_tokens is invalid")
    overlap = value.get("chunk_overlap")
    overlap = 0 if overlap is None else overlap
    if not _is_int(overlap) or not 0 <= overlap < max_tokens:
        raise ValueError("Process rule subchunk_segmentation chunk_overlap is invalid")
    return SubchunkSegmentation(separator=separator, max_tokens=max_tokens, chunk_overlap=overlap)


# ------------------------------------------------------------------------------------------ tokens

# Runs of CJK ideographs (incl. extensions), radicals, CJK punctuation, kana, bopomofo, hangul, full-width
# forms; matching runs rather than single characters makes counting ~80x faster on Chinese text.
_CJK_RUN = re.compile(
    r"[\u2e80-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef\U00020000-\U0003134f]+"
)


def _measure(text: str) -> tuple[int, int]:
    """(CJK characters, other characters): the two quantities count_tokens is built from."""
    if text.isascii():
        return 0, len(text)
    cjk = sum(map(len, _CJK_RUN.findall(text)))
    return cjk, len(text) - cjk


def _tokens(cjk: int, other: int) -> int:
    return cjk + (other + 3) // 4


def count_tokens(text: str) -> int:
    """Approximate token count: one per CJK character, one per four other characters (rounded up).

    BPE tokenizers (cl100k, o200k, Qwen, ...) give English about 4 characters per token and most CJK
    characters one token each, so this is close for both without loading a tokenizer; it is linear,
    regex-only, and exact under concatenation (the sums of both character classes add up), which the chunk
    packer relies on."""
    return _tokens(*_measure(text))


# ------------------------------------------------------------------------------------------ chunks


@dataclass
class Chunk:
    content: str
    position: int  # 1..n over the whole document
    tokens: int
    title_path: str = ""  # "Chapter > Section" when split_by_title is on
    page: int | None = None  # page / slide where the chunk's own (non-overlap) content starts


@dataclass
class _Unit:
    """A piece that is never split again while packing."""

    text: str
    joiner: str  # whitespace put before this unit when it follows another one in a chunk
    page: int | None
    atomic: bool = False  # table blocks: no partial tail is cut from them for an overlap
    boundary: bool = False  # after a user separator: starts a new chunk in custom / hierarchical mode
    cjk: int = 0
    other: int = 0

    def __post_init__(self) -> None:
        self.cjk, self.other = _measure(self.text)

    @property
    def tokens(self) -> int:
        return _tokens(self.cjk, self.other)


@dataclass
class _Section:
    title_path: str
    units: list[_Unit] = dataclasses.field(default_factory=list)
    has_body: bool = False  # False while only headings were added: consecutive headings share a section


def split(elements: list[Element], rule: ProcessRule) -> list[Chunk]:
    """Chunks no longer than rule.segmentation.max_tokens (per count_tokens), positions 1..n."""
    segmentation = rule.segmentation
    hard = rule.mode != "automatic"  # custom / hierarchical: never merge across a user separator
    chunks: list[Chunk] = []
    for section in _sections(elements, rule):
        for group in _groups(section.units, hard):
            packer = _Packer(segmentation.max_tokens, segmentation.chunk_overlap)
            for unit in group:
                packer.add(unit)
            for content, page in packer.finish():
                chunks.append(
                    Chunk(content, len(chunks) + 1, count_tokens(content), section.title_path, page)
                )
    return chunks


@dataclass
class ParentChunk:
    chunk: Chunk
    children: list[Chunk]


def split_parent_child(elements: list[Element], rule: ProcessRule) -> list[ParentChunk]:
    """Parent chunks with their child chunks (a hierarchical rule).

    paragraph: the parents are the chunks `split` makes with the rule's segmentation. full-doc: one parent,
    the whole cleaned document up to FULL_DOC_MAX_TOKENS (cut at a paragraph or sentence end; the rest is
    dropped, as in Dify). Each parent is split again, with hard separators, by the subchunk segmentation;
    a parent with nothing left to split is its own single child."""
    if rule.rules.parent_mode == "full-doc":
        whole = Segmentation(separator="\n\n", max_tokens=FULL_DOC_MAX_TOKENS, chunk_overlap=0)
        parents = split(elements, rule.model_copy(update={
            "mode": "automatic", "rules": rule.rules.model_copy(update={"segmentation": whole})}))[:1]
    else:
        parents = split(elements, rule)
    sub = child_segmentation(rule)
    return [ParentChunk(p, split_children(p.content, sub)) for p in parents]


def child_segmentation(rule: ProcessRule) -> SubchunkSegmentation:
    """How a hierarchical rule splits a parent into children (defaults when it names none)."""
    return rule.rules.subchunk_segmentation or SubchunkSegmentation(
        separator=CHILD_SEPARATOR, max_tokens=min(CHILD_MAX_TOKENS, rule.segmentation.max_tokens - 1))


def split_children(text: str, sub: SubchunkSegmentation) -> list[Chunk]:
    """Child chunks of one parent's (already cleaned) text, positions 1..n."""
    rule = ProcessRule(mode="custom", rules=Rules(
        pre_processing_rules=[
            PreProcessingRule(id="remove_extra_spaces", enabled=False),
            PreProcessingRule(id="remove_urls_emails", enabled=False),
        ],
        segmentation=Segmentation(separator=sub.separator, max_tokens=sub.max_tokens,
                                  chunk_overlap=sub.chunk_overlap)))
    return split([Element("text", text)], rule) or [Chunk(text, 1, count_tokens(text))]


def _groups(units: list[_Unit], hard: bool) -> list[list[_Unit]]:
    """The units packed independently: split at every boundary when separators are hard, else all of them."""
    if not hard:
        return [units]
    groups: list[list[_Unit]] = []
    for unit in units:
        if unit.boundary or not groups:
            groups.append([])
        groups[-1].append(unit)
    return groups


# ---------------------------------------------------------------------------------------- sections


def _sections(elements: list[Element], rule: ProcessRule) -> list[_Section]:
    segmentation = rule.segmentation
    pre = rule.pre_processing
    forced = _Level(re.compile(re.escape(segmentation.delimiter)), _separator_joiner(segmentation.delimiter))
    sections = [_Section("")]
    headings: list[tuple[int, str]] = []
    previous: Element | None = None
    for element in elements:
        text = _render(element, pre)
        units = _units(element, text, forced, segmentation.max_tokens) if text else []
        if not units:  # empty, or nothing but separators
            continue
        if element.type == "title" and segmentation.split_by_title:
            level = max(element.level, 1)
            headings = [heading for heading in headings if heading[0] < level] + [
                (level, " ".join(text.split()))
            ]
            path = " > ".join(title for _, title in headings)
            if sections[-1].has_body:
                sections.append(_Section(path))
            else:
                sections[-1].title_path = path
        units[0].joiner = _element_joiner(previous, element)
        # the elements' joiner stands for the text between them: a separator it contains is a boundary,
        # except that split_by_title keeps a heading with what follows it
        glued = segmentation.split_by_title and "title" in (previous.type if previous else "", element.type)
        units[0].boundary = previous is not None and not glued and segmentation.delimiter in units[0].joiner
        sections[-1].units.extend(units)
        sections[-1].has_body |= element.type != "title"
        previous = element
    return [section for section in sections if section.units]


def _separator_joiner(delimiter: str) -> str:
    # Whitespace separators are put back when pieces merge (automatic mode only: elsewhere pieces on either
    # side of a separator never share a chunk); marker separators such as "***" are dropped.
    return delimiter if delimiter.isspace() else "\n"


def _render(element: Element, pre: PreProcessing) -> str:
    if element.type == "code":  # indentation is meaning in code: never collapse its spaces
        return clean(element.text, dataclasses.replace(pre, remove_extra_spaces=False)).strip("\n").rstrip()
    text = clean(element.text, pre).strip()
    if element.type == "list_item" and text:
        return "  " * max(element.level, 0) + "- " + text
    return text


def _element_joiner(previous: Element | None, element: Element) -> str:
    if previous is None:
        return ""
    return "\n" if previous.type == element.type == "list_item" else "\n\n"


def _units(element: Element, text: str, forced: _Level, max_tokens: int) -> list[_Unit]:
    if element.type == "table":
        return [_Unit(block, "\n", element.page, atomic=True) for block in _table_blocks(text, max_tokens)]
    if element.type == "code":
        groups = _split_text(text, None, _CODE_LEVELS, max_tokens, keep_indent=True)
    else:
        groups = _split_text(text, forced, _TEXT_LEVELS, max_tokens, keep_indent=element.type == "list_item")
    return [
        _Unit(piece, joiner, element.page, boundary=index > 0 and position == 0)
        for index, group in enumerate(groups)
        for position, (piece, joiner) in enumerate(group)
    ]


# --------------------------------------------------------------------------------------- splitting


@dataclass(frozen=True)
class _Level:
    pattern: re.Pattern[str]
    joiner: str | None  # None: a space if the separator matched whitespace, else nothing (CJK sentence ends)


_TEXT_LEVELS = (
    _Level(re.compile(r"\n{2,}"), "\n\n"),
    _Level(re.compile(r"\n"), "\n"),
    # sentence ends, a closing quote or bracket staying with its sentence; CJK needs no following space
    _Level(
        re.compile(
            r"(?<=[.!?…])\s+|(?<=[.!?…][\"'”’)\]])\s+"
            r"|(?<=[。！？][”’」』）】])\s*|(?<=[。！？])(?![”’」』）】])\s*"
        ),
        None,
    ),
    _Level(re.compile(r"(?<=[;,:])\s+|(?<=[；，、：])\s*"), None),
    _Level(re.compile(r"\s+"), " "),
)
_CODE_LEVELS = (
    _Level(re.compile(r"\n{2,}"), "\n\n"),
    _Level(re.compile(r"\n"), "\n"),
    _Level(re.compile(r" +"), " "),
)

_Piece = tuple[str, str]  # (text, joiner before it)


def _split_text(
    text: str, forced: _Level | None, levels: tuple[_Level, ...], max_tokens: int, *, keep_indent: bool
) -> list[list[_Piece]]:
    """Split by `forced` unconditionally (one group per piece), then split further only what still exceeds
    max_tokens (into the pieces of that group)."""
    pieces = _cut(text, forced, keep_indent) if forced else [(text, "")]
    groups: list[list[_Piece]] = []
    for piece, joiner in pieces:
        out: list[_Piece] = []
        _refine(piece, joiner, levels, max_tokens, keep_indent, out)
        groups.append(out)
    return groups


def _refine(
    text: str, joiner: str, levels: tuple[_Level, ...], max_tokens: int, keep_indent: bool, out: list[_Piece]
) -> None:
    if count_tokens(text) <= max_tokens:
        out.append((text, joiner))
        return
    for index, level in enumerate(levels):
        parts = _cut(text, level, keep_indent)
        if len(parts) > 1:
            parts[0] = (parts[0][0], joiner)
            for part, part_joiner in parts:
                _refine(part, part_joiner, levels[index + 1 :], max_tokens, keep_indent, out)
            return
    for index, part in enumerate(_hard_cut(text, max_tokens)):
        out.append((part, joiner if index == 0 else ""))


def _cut(text: str, level: _Level, keep_indent: bool) -> list[_Piece]:
    """Split at every match of the level's pattern; empty pieces are dropped."""
    raw: list[_Piece] = []
    start, joiner = 0, ""
    for match in level.pattern.finditer(text):
        raw.append((text[start : match.start()], joiner))
        joiner = level.joiner if level.joiner is not None else (" " if match.group() else "")
        start = match.end()
    raw.append((text[start:], joiner))
    pieces = [((part.strip("\n").rstrip() if keep_indent else part.strip()), sep) for part, sep in raw]
    return [(part, sep) for part, sep in pieces if part.strip()]


def _hard_cut(text: str, max_tokens: int) -> list[str]:
    """Last resort for a run without any break (a long URL, an unpunctuated CJK passage)."""
    parts = []
    while text:
        size = _longest_prefix(text, max_tokens)
        parts.append(text[:size])
        text = text[size:]
    return parts


def _longest_prefix(text: str, budget: int) -> int:
    # count_tokens grows monotonically with the prefix length, so binary search; at least one character
    low, high = 1, min(len(text), budget * 4)
    while low < high:
        middle = (low + high + 1) // 2
        if count_tokens(text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def _tail(text: str, budget: int) -> str:
    """The longest word-aligned suffix of `text` within `budget` tokens (character-aligned without spaces)."""
    low, high = 0, len(text)  # smallest start whose suffix fits; the suffix shrinks as the start grows
    while low < high:
        middle = (low + high) // 2
        if count_tokens(text[middle:]) <= budget:
            high = middle
        else:
            low = middle + 1
    tail = text[low:]
    if 0 < low and not text[low - 1].isspace():
        space = re.search(r"\s", tail)
        if space:
            tail = tail[space.end() :]
    return tail.strip()


# ------------------------------------------------------------------------------------------ tables


def _table_blocks(text: str, max_tokens: int) -> list[str]:
    """A table as blocks of whole rows within max_tokens; each later block repeats a short header row."""
    if count_tokens(text) <= max_tokens:
        return [text]
    rows = [row for row in text.split("\n") if row.strip()]
    header = rows[0]
    header_tokens = count_tokens(header)
    repeat = header_tokens * 4 <= max_tokens  # a header taking over a quarter of every block is not worth it
    pieces = [
        piece
        for row in rows
        for group in _split_text(row, None, _TEXT_LEVELS, max_tokens, keep_indent=False)
        for piece, _ in group
    ]
    blocks: list[str] = []
    current: list[str] = []
    size = 0
    for index, piece in enumerate(pieces):
        tokens = count_tokens(piece)
        if current and size + 1 + tokens <= max_tokens:
            current.append(piece)
            size += 1 + tokens
            continue
        if current:
            blocks.append("\n".join(current))
        if index > 0 and repeat and header_tokens + 1 + tokens <= max_tokens:
            current, size = [header, piece], header_tokens + 1 + tokens
        else:
            current, size = [piece], tokens
    blocks.append("\n".join(current))
    return blocks


# ----------------------------------------------------------------------------------------- packing


class _Packer:
    """Greedy packing of units into chunks of at most max_tokens, carrying an overlap between chunks."""

    def __init__(self, max_tokens: int, overlap: int) -> None:
        self.max_tokens = max_tokens
        self.overlap = overlap
        self.units: list[_Unit] = []
        self.cjk = self.other = 0  # running size of `units` joined, kept so that adding a unit is O(1)
        self.carried = 0  # leading units repeated from the previous chunk
        self.drafts: list[tuple[str, int | None]] = []

    def add(self, unit: _Unit) -> None:
        if self.units and not self._fits(unit):
            if len(self.units) > self.carried:
                self._emit()
                tail = self._overlap_tail()
                self._reset(tail, carried=len(tail))
            while self.units and not self._fits(
                unit
            ):  # the overlap must never push new content over the limit
                self._reset(self.units[1:], carried=self.carried - 1)
        if self.units:
            self.other += len(unit.joiner)
        self.cjk += unit.cjk
        self.other += unit.other
        self.units.append(unit)

    def finish(self) -> list[tuple[str, int | None]]:
        if len(self.units) > self.carried:
            self._emit()
        return self.drafts

    def _fits(self, unit: _Unit) -> bool:
        return _tokens(self.cjk + unit.cjk, self.other + len(unit.joiner) + unit.other) <= self.max_tokens

    def _reset(self, units: list[_Unit], *, carried: int) -> None:
        self.units, self.carried = units, carried
        self.cjk, self.other = _size(units)

    def _emit(self) -> None:
        content = self.units[0].text + "".join(unit.joiner + unit.text for unit in self.units[1:])
        if content.strip():
            self.drafts.append((content, self.units[self.carried].page))

    def _overlap_tail(self) -> list[_Unit]:
        if self.overlap <= 0:
            return []
        tail: list[_Unit] = []
        for unit in reversed(self.units):
            if _tokens(*_size([unit, *tail])) > self.overlap:
                break
            tail.insert(0, unit)
        last = self.units[-1]
        if tail or last.atomic:
            return tail
        text = _tail(last.text, self.overlap)  # no whole piece fits: repeat the end of the last one
        return [_Unit(text, "", last.page)] if text else []


def _size(units: list[_Unit]) -> tuple[int, int]:
    """(CJK, other) character counts of the units joined; the first unit's joiner is not emitted."""
    cjk = sum(unit.cjk for unit in units)
    other = sum(unit.other for unit in units) + sum(len(unit.joiner) for unit in units[1:])
    return cjk, other

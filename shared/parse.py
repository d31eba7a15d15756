"""Sniff an upload's real type and extract its text as ordered, typed elements.

Synchronous and side-effect free apart from reading the given file; callers run it off the event loop (the
indexer in its parse processes, the runtime in a thread for documents attached to a message).
Both exceptions carry messages meant for the end user: `UnsupportedFileType` becomes a 415 at upload,
`ParseError` becomes the document's `error`.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import email
import io
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import lxml.etree
import lxml.html
from markdown_it import MarkdownIt
from markdown_it.token import Token

# python-docx, openpyxl, python-pptx and pypdf are imported by the function that reads their format: together
# they take longer to import than the rest of a service (1–4 s), and every process that imports this module for
# sniffing (gateway-facing services, each restart of an indexer) would pay for them before its first request.
if TYPE_CHECKING:
    from docx.document import Document as DocxDocument
    from docx.table import Table
    from docx.text.paragraph import Paragraph
    from pptx.shapes.base import BaseShape


class UnsupportedFileType(Exception):
    """Not a kind we index, or the bytes contradict the extension (→ 415 unsupported_file_type)."""


class ParseError(Exception):
    """A supported kind that cannot be read; the message is shown to the user on the document."""


SUPPORTED = frozenset(
    {"pdf", "docx", "md", "markdown", "mdx", "html", "htm", "txt", "csv", "xlsx", "pptx", "eml"}
)
SNIFF_BYTES = 8192  # how much of the upload the caller passes to sniff()
MAX_TABLE_ROWS = 100_000  # per sheet / CSV / table: beyond this a spreadsheet is a database, not a document

_ALIASES = {"markdown": "md", "mdx": "md", "htm": "html"}
_LEGACY = {"doc": "docx", "xls": "xlsx", "ppt": "pptx"}
_OOXML_MAIN = {"docx": "word/document.xml", "xlsx": "xl/workbook.xml", "pptx": "ppt/presentation.xml"}
_OLE_MAGIC = b"\xd0\xcf\x11\xe0"  # CFB container: legacy .doc/.xls/.ppt, and also password-encrypted OOXML
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_MESSAGES = {"pdf": "No text could be extracted from the PDF (scanned images are not supported)."}


@dataclass
class Element:
    """One block of the document in reading order. type: title | text | list_item | table | code."""

    type: str
    text: str
    level: int = 0  # title: 1-6; list_item: nesting depth from 0
    page: int | None = None  # PDF page / PPTX slide number


# ------------------------------------------------------------------------------------------- sniff


def sniff(filename: str, head: bytes) -> str:
    """The canonical kind (pdf, docx, xlsx, pptx, md, html, txt, csv, eml) of an upload, from its extension
    checked against its first bytes. Raises UnsupportedFileType with a readable message."""
    ext = PurePosixPath(filename.replace("\\", "/")).suffix.lower().lstrip(".")
    kind = _kind_for_extension(ext)
    if kind == "pdf":
        if b"%PDF-" not in head[:1024]:
            raise _mismatch(ext)
    elif kind in _OOXML_MAIN:
        _sniff_ooxml(ext, head)
    elif head:  # an empty text file is accepted here and reported as empty by extract()
        _sniff_text(kind, ext, head)
    return kind


def _kind_for_extension(ext: str) -> str:
    if ext in _LEGACY:
        raise UnsupportedFileType(
            f"Legacy binary Office files (.{ext}) are not supported; "
            f"save it as .{_LEGACY[ext]} and upload it again."
        )
    if ext not in SUPPORTED:
        raise UnsupportedFileType(
            f"File type .{ext} is not supported." if ext else "Files without an extension are not supported."
        )
    return _ALIASES.get(ext, ext)


def _mismatch(ext: str) -> UnsupportedFileType:
    return UnsupportedFileType(f"The file content does not match its .{ext} extension.")


def _sniff_ooxml(ext: str, head: bytes) -> None:
    # The member listing lives at the end of a ZIP, so only extract() can check it; here: "is it a ZIP".
    if head.startswith(_OLE_MAGIC):
        raise UnsupportedFileType(
            f"The .{ext} file is password-protected or a legacy binary Office file; "
            f"remove the password or save it as .{ext} and upload it again."
        )
    if not head.startswith(_ZIP_MAGIC):
        raise _mismatch(ext)


def _sniff_text(kind: str, ext: str, head: bytes) -> None:
    text = _decode_head(head)
    if text is None:
        raise _mismatch(ext)
    if kind == "html" and not _MARKUP.search(text):
        raise _mismatch(ext)
    if kind == "eml" and not _looks_like_rfc822(text):
        raise _mismatch(ext)


_MARKUP = re.compile(r"<(?:!doctype|!--|/?[a-z][a-z0-9-]*(?:\s[^<>]*)?/?>)", re.IGNORECASE)
_HEADER_LINE = re.compile(r"[!-9;-~]+:")  # RFC 5322 field-name: printable ASCII except ':'
_COMMON_HEADERS = {"from", "to", "subject", "date", "message-id", "mime-version", "received", "return-path"}


def _looks_like_rfc822(text: str) -> bool:
    lines = text.lstrip("\r\n").splitlines()[:60]
    if not lines or not (_HEADER_LINE.match(lines[0]) or lines[0].startswith("From ")):
        return False
    names = {line.split(":", 1)[0].lower() for line in lines if _HEADER_LINE.match(line)}
    return bool(names & _COMMON_HEADERS)


# ---------------------------------------------------------------------------------------- decoding

_BOMS = (  # UTF-32 before UTF-16: FF FE 00 00 also starts with the UTF-16-LE BOM
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Control characters that do not occur in real text (tab, newlines, form feed and ESC for coloured logs do).
_BINARY_CHARS = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f-\x9f]")


def _decode_head(head: bytes) -> str | None:
    """Decode the first bytes of a text upload, or None when they look binary. The head may end mid-character,
    hence the incremental decoders."""
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return _texty(_try_decode(head[len(bom) :], codec, final=False))
    if b"\x00" in head:
        return None
    for codec in ("utf-8", "gb18030", "cp1252"):
        text = _try_decode(head, codec, final=False)
        if text is not None and (codec != "gb18030" or _is_chinese(text)):
            return _texty(text)
    return _texty(head.decode("latin-1"))


def _decode_all(data: bytes) -> str:
    """Decode a whole text file the way _decode_head judged its beginning; never raises."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return data[len(bom) :].decode(codec, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not data[: exc.start].isascii():  # real UTF-8 seen before the bad byte: a damaged UTF-8 file
            return data.decode("utf-8", errors="replace")
    for codec in ("gb18030", "cp1252"):
        text = _try_decode(data, codec, final=True)
        if text is not None and (codec != "gb18030" or _is_chinese(text)):
            return text
    return data.decode("latin-1")


def _try_decode(data: bytes, codec: str, *, final: bool) -> str | None:
    try:
        return codecs.getincrementaldecoder(codec)("strict").decode(data, final=final)
    except UnicodeDecodeError:
        return None


def _is_chinese(text: str) -> bool:
    """GB18030 decodes much Western cp1252 text without error, but GBK Chinese is almost all GB2312 characters
    (both bytes >= 0xA1), which Latin text practically never produces."""
    sample = [c for c in text[:65536] if ord(c) > 127]
    if not sample:
        return False
    in_gb2312 = sum(1 for c in sample if _encodable(c, "gb2312"))
    return in_gb2312 >= 0.95 * len(sample)


def _encodable(char: str, codec: str) -> bool:
    try:
        char.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def _texty(text: str | None) -> str | None:
    if text is None or "\x00" in text:
        return None
    return text if len(_BINARY_CHARS.findall(text)) <= 0.02 * len(text) else None


# ----------------------------------------------------------------------------------------- extract


class _Enough(Exception):
    """Raised by _Out.add once a head extraction has its characters: unwinds the extractor at that point."""


class _Out:
    """Collects elements and enforces the character budget while extracting, so a huge file fails early; with
    ``cut``, the element that crosses the budget is cut and extraction stops there instead (extract_head)."""

    def __init__(self, max_chars: int, *, cut: bool = False) -> None:
        self.elements: list[Element] = []
        self.max_chars = max_chars
        self.chars = 0
        self.cut = cut
        self.truncated = False

    @property
    def room(self) -> int:
        """Characters the budget still takes: an extractor that builds a large element (a table) from many
        parts stops building it beyond this, since the element is refused or cut there anyway."""
        return self.max_chars - self.chars

    def reset(self) -> None:
        self.elements.clear()
        self.chars = 0

    def add(self, type_: str, text: str, level: int = 0, page: int | None = None) -> None:
        # code keeps its first line's indentation; everything else is trimmed
        text = text.strip("\n").rstrip() if type_ == "code" else text.strip()
        if not text:
            return
        if self.chars + len(text) > self.max_chars:
            if not self.cut:
                raise ParseError(
                    f"The document has more than {self.max_chars:,} characters of text; "
                    "split it into smaller files."
                )
            text = text[: self.room]
            if text:
                self.chars += len(text)
                self.elements.append(Element(type_, text, level, page))
            self.truncated = True
            raise _Enough
        self.chars += len(text)
        self.elements.append(Element(type_, text, level, page))


def extract(
    path: Path,
    kind: str,
    *,
    max_chars: int = 20_000_000,
    max_unzipped_bytes: int = 500 * 2**20,
    max_ratio: int = 200,
) -> list[Element]:
    """The document's elements in reading order. `kind` is what sniff() returned.

    Raises ParseError (readable, at most ~200 chars) for damaged, encrypted, empty, oversized or zip-bomb
    files.
    OSError reading `path` itself propagates: that is the server's problem, not the user's.
    """
    return _run(path, kind, _Out(max_chars), max_unzipped_bytes, max_ratio).elements


def extract_head(
    path: Path,
    kind: str,
    chars: int,
    *,
    max_unzipped_bytes: int = 500 * 2**20,
    max_ratio: int = 200,
) -> tuple[list[Element], bool]:
    """The document's first ``chars`` characters of text as elements (the last one cut), and whether anything
    was left out: for a prompt, which takes only so much. A longer document is cut, never refused.

    Extraction stops once it has the characters: PDF pages, DOCX blocks, PPTX slides, spreadsheet and CSV rows,
    HTML and text blocks after the cut are never read, and markdown is parsed from a slice of the source only.
    What each library does up front still covers the whole file (bounded by the upload size and the zip-bomb
    check): python-docx/python-pptx parse every XML part, lxml the whole HTML, the email package the whole
    message, and text kinds are decoded whole. Errors as extract().
    """
    out = _run(path, kind, _Out(chars, cut=True), max_unzipped_bytes, max_ratio)
    return out.elements, out.truncated


def _run(path: Path, kind: str, out: _Out, max_unzipped_bytes: int, max_ratio: int) -> _Out:
    extractor = _EXTRACTORS.get(kind)
    if extractor is None:
        raise UnsupportedFileType(f"File type .{kind} is not supported.")
    path.stat()
    if kind in _OOXML_MAIN:
        _check_ooxml(path, kind, max_unzipped_bytes, max_ratio)
    try:
        extractor(path, out)
    except _Enough:
        pass
    except (ParseError, UnsupportedFileType):
        raise
    except Exception as exc:  # parsers raise anything on malformed input; the user gets one short reason
        raise ParseError(_damaged(exc)) from exc
    if not out.elements and not out.truncated:
        raise ParseError(_EMPTY_MESSAGES.get(kind, "The document contains no text."))
    return out


def _damaged(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    reason = lines[0].strip() if lines and lines[0].strip() else type(exc).__name__
    if len(reason) > 120:
        reason = reason[:117] + "..."
    return f"The file is damaged and cannot be read ({reason})."


def _check_ooxml(path: Path, kind: str, max_unzipped_bytes: int, max_ratio: int) -> None:
    """Zip-bomb and structure check from the central directory alone, before any library inflates a member.
    Python's zipfile never inflates past a member's declared size, so trusting the declared sizes is safe."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise ParseError(f"The file is damaged and cannot be read (not a valid .{kind} archive).") from exc
    names = {info.filename for info in infos}
    if "[Content_Types].xml" not in names or _OOXML_MAIN[kind] not in names:
        raise ParseError(f"The file is not a valid .{kind} file.")
    if sum(info.file_size for info in infos) > max_unzipped_bytes:
        raise ParseError(
            f"The archive expands to more than {max_unzipped_bytes // 2**20} MB; "
            "refusing to extract it (possible zip bomb)."
        )
    for info in infos:
        if info.file_size > 2**20 and info.file_size > max_ratio * max(info.compress_size, 1):
            raise ParseError(
                f"An archive member expands more than {max_ratio} times; "
                "refusing to extract it (possible zip bomb)."
            )


# ------------------------------------------------------------------------------------------ tables


def _rows_to_table(rows: Iterable[Sequence[object]], room: int) -> tuple[str, bool]:
    """Markdown-style `| a | b |` lines (header row first, no `---` rule), empty rows dropped;
    True when MAX_TABLE_ROWS cut it short. Rows stop being read once the text is longer than ``room``
    (the budget cuts or refuses it there)."""
    lines: list[str] = []
    size = 0
    for row in rows:
        cells = [_cell_text(value) for value in row]
        while cells and not cells[-1]:
            cells.pop()
        if not cells:
            continue
        if len(lines) == MAX_TABLE_ROWS:
            return "\n".join(lines), True
        line = "| " + " | ".join(cells) + " |"
        size += len(line) + bool(lines)  # + the newline joining it to the previous line
        lines.append(line)
        if size > room:
            break
    return "\n".join(lines), False


def _cell_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        text = str(int(value))  # spreadsheets store 3 as 3.0
    elif isinstance(value, dt.datetime):
        text = value.date().isoformat() if value.time() == dt.time() else value.isoformat(sep=" ")
    elif isinstance(value, dt.date | dt.time):
        text = value.isoformat()
    else:
        text = str(value)
    # one row per line: cell-internal line breaks and pipes would break the row structure
    return " ".join(text.split()).replace("|", "\\|")


def _add_table(out: _Out, rows: Iterable[Sequence[object]], page: int | None = None) -> None:
    text, truncated = _rows_to_table(rows, out.room)
    out.add("table", text, page=page)
    if truncated:
        out.add("text", f"(Table truncated: only the first {MAX_TABLE_ROWS:,} rows are indexed.)", page=page)


# --------------------------------------------------------------------------------------------- pdf

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def _pdf(path: Path, out: _Out) -> None:
    from pypdf import PasswordType, PdfReader

    reader = PdfReader(path)
    if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
        raise ParseError("The PDF is encrypted; upload it without a password.")
    for number, page in enumerate(reader.pages, start=1):
        text = page.extract_text(extraction_mode="plain") or ""
        for paragraph in _PARAGRAPH_BREAK.split(text):
            out.add("text", paragraph, page=number)


# -------------------------------------------------------------------------------------------- docx

_HEADING_STYLE = re.compile(r"(?:heading|标题)\s*(\d)", re.IGNORECASE)
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"  # python-docx's qn("w:…") prefix
_W_P, _W_TBL, _W_SDT, _W_SDT_CONTENT = _W + "p", _W + "tbl", _W + "sdt", _W + "sdtContent"


def _docx(path: Path, out: _Out) -> None:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    document = docx.Document(str(path))
    styles = _DocxStyles(document)
    for block in _docx_blocks(document.element.body):
        if block.tag == _W_TBL:
            _add_table(out, _docx_rows(Table(block, document)))
        else:
            _docx_paragraph(Paragraph(block, document), styles, out)


def _docx_blocks(parent: lxml.etree._Element) -> Iterator[lxml.etree._Element]:
    """Body paragraphs and tables in document order; content controls (w:sdt, e.g. a TOC) are unwrapped."""
    for child in parent.iterchildren():
        if child.tag in (_W_P, _W_TBL):
            yield child
        elif child.tag == _W_SDT:
            for content in child.iterchildren(_W_SDT_CONTENT):
                yield from _docx_blocks(content)


class _DocxStyles:
    """Paragraph style names by style id. python-docx's ``paragraph.style`` scans every style of the document
    (~160 in Word's template) on each call: per paragraph, that was most of the time on long documents."""

    def __init__(self, document: DocxDocument) -> None:
        self.part = document.part
        self.names: dict[str | None, str] = {}

    def name(self, paragraph: Paragraph) -> str:
        style_id = paragraph._p.style
        if style_id not in self.names:  # resolved as paragraph.style does (unknown ids → the default style)
            from docx.enum.style import WD_STYLE_TYPE

            style = self.part.get_style(style_id, WD_STYLE_TYPE.PARAGRAPH)
            self.names[style_id] = (style.name or "") if style is not None else ""
        return self.names[style_id]


def _docx_paragraph(paragraph: Paragraph, styles: _DocxStyles, out: _Out) -> None:
    style = styles.name(paragraph)
    level = _docx_heading_level(paragraph, style)
    if level:
        out.add("title", paragraph.text, level=level)
    elif paragraph._p.xpath("./w:pPr/w:numPr") or style.startswith("List"):
        out.add("list_item", paragraph.text, level=_docx_list_depth(paragraph, style))
    else:
        out.add("text", paragraph.text)


def _docx_list_depth(paragraph: Paragraph, style: str) -> int:
    """Direct numbering level, else the digit of styles like "List Bullet 2" (0-based)."""
    level = paragraph._p.xpath("./w:pPr/w:numPr/w:ilvl/@w:val")
    if level and level[0].isdigit():
        return int(level[0])
    match = re.search(r"(\d)$", style)
    return max(int(match[1]) - 1, 0) if match else 0


def _docx_heading_level(paragraph: Paragraph, style: str) -> int:
    if style == "Title":
        return 1
    match = _HEADING_STYLE.fullmatch(style)
    if match and match[1] != "0":
        return min(int(match[1]), 6)
    outline = paragraph._p.xpath("./w:pPr/w:outlineLvl/@w:val")  # direct outline level: 0-8, 9 = body text
    if outline and outline[0].isdigit() and int(outline[0]) < 6:
        return int(outline[0]) + 1
    return 0


def _docx_rows(table: Table) -> Iterator[list[str]]:
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            if cell._tc is previous:  # a horizontally merged cell is returned once per grid column
                continue
            previous = cell._tc
            cells.append(cell.text)
        yield cells


# -------------------------------------------------------------------------------------------- xlsx


def _xlsx(path: Path, out: _Out) -> None:
    import openpyxl

    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        for sheet in workbook.worksheets:
            text, truncated = _rows_to_table(sheet.iter_rows(values_only=True), out.room)
            if not text:
                continue  # an empty sheet contributes nothing, not even its name
            out.add("title", sheet.title, level=1)
            out.add("table", text)
            if truncated:
                out.add("text", f"(Sheet truncated: only the first {MAX_TABLE_ROWS:,} rows are indexed.)")
    finally:
        workbook.close()  # read-only workbooks keep the archive open


# -------------------------------------------------------------------------------------------- pptx

def _pptx(path: Path, out: _Out) -> None:
    import pptx

    presentation = pptx.Presentation(str(path))
    for number, slide in enumerate(presentation.slides, start=1):
        title = slide.shapes.title
        heading = (
            " ".join(title.text_frame.text.split()) if title is not None and title.has_text_frame else ""
        )
        out.add("title", heading or f"Slide {number}", level=1, page=number)
        for shape in slide.shapes:
            if title is None or shape.shape_id != title.shape_id:
                _pptx_shape(shape, out, number)
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            notes = slide.notes_slide.notes_text_frame.text.strip()
            if notes:
                out.add("text", "Notes: " + notes, page=number)


def _pptx_shape(shape: BaseShape, out: _Out, number: int) -> None:
    from pptx.enum.shapes import MSO_SHAPE_TYPE, PP_PLACEHOLDER

    if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
        for child in shape.shapes:
            _pptx_shape(child, out, number)
    elif shape.has_table:
        _add_table(out, ([cell.text for cell in row.cells] for row in shape.table.rows), page=number)
    elif shape.has_text_frame:
        placeholder = shape.placeholder_format.type if shape.is_placeholder else None
        if placeholder in (PP_PLACEHOLDER.DATE, PP_PLACEHOLDER.FOOTER, PP_PLACEHOLDER.SLIDE_NUMBER,
                           PP_PLACEHOLDER.HEADER):
            return
        bullets = (PP_PLACEHOLDER.BODY, PP_PLACEHOLDER.OBJECT, PP_PLACEHOLDER.VERTICAL_BODY,
                   PP_PLACEHOLDER.VERTICAL_OBJECT)
        kind = "list_item" if placeholder in bullets else "text"
        for paragraph in shape.text_frame.paragraphs:
            out.add(kind, paragraph.text.replace("\v", "\n"), level=paragraph.level, page=number)


# ---------------------------------------------------------------------------------------- markdown

_MARKDOWN = MarkdownIt("commonmark").enable("table")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n.*?\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_TAG = re.compile(r"<[^>]+>")


def _md(path: Path, out: _Out) -> None:
    # YAML front matter would otherwise parse as a rule plus a setext heading
    text = _FRONT_MATTER.sub("", _decode_all(path.read_bytes()), count=1)
    # markdown-it tokenizes everything before the walk starts: parse a slice that likely holds the budget's
    # text (markup only adds characters), and a 4x longer one while a slice falls short
    size = 2 * out.room + 8192
    while size < len(text):
        cut = text.rfind("\n\n", 0, size)  # at a block boundary, else a line's
        if cut < size // 2:
            cut = text.rfind("\n", 0, size)
        _MarkdownWalker(out).walk(_MARKDOWN.parse(text[: cut + 1 if cut > 0 else size]))
        out.reset()  # the budget was not reached (that ends extraction): start over on a longer slice
        size *= 4
    _MarkdownWalker(out).walk(_MARKDOWN.parse(text))


class _MarkdownWalker:
    """Turns markdown-it's flat token stream into elements; the state is which block we are inside."""

    def __init__(self, out: _Out) -> None:
        self.out = out
        self.heading = 0
        self.items: list[int] = []  # per open list item: paragraphs seen so far (the first one is the item)
        self.rows: list[list[str]] | None = None

    def walk(self, tokens: list[Token]) -> None:
        for token in tokens:
            handler = getattr(self, "_" + token.type, None)
            if handler is not None:
                handler(token)

    def _heading_open(self, token: Token) -> None:
        self.heading = int(token.tag[1])

    def _heading_close(self, token: Token) -> None:
        self.heading = 0

    def _list_item_open(self, token: Token) -> None:
        self.items.append(0)

    def _list_item_close(self, token: Token) -> None:
        self.items.pop()

    def _table_open(self, token: Token) -> None:
        self.rows = []

    def _tr_open(self, token: Token) -> None:
        if self.rows is not None:
            self.rows.append([])

    def _table_close(self, token: Token) -> None:
        _add_table(self.out, self.rows or [])
        self.rows = None

    def _fence(self, token: Token) -> None:
        self.out.add("code", token.content)

    _code_block = _fence

    def _html_block(self, token: Token) -> None:
        self.out.add("text", " ".join(_TAG.sub(" ", _HTML_COMMENT.sub("", token.content)).split()))

    def _inline(self, token: Token) -> None:
        if self.rows is not None:
            self.rows[-1].append(token.content)
        elif self.heading:
            self.out.add("title", token.content, level=self.heading)
        elif self.items and self.items[-1] == 0:
            self.items[-1] = 1
            self.out.add("list_item", token.content, level=len(self.items) - 1)
        else:
            self.out.add("text", token.content)


# -------------------------------------------------------------------------------------------- html

_HTML_DROP = (
    "//script|//style|//nav|//footer|//noscript|//template|//svg|//iframe|//object|//head|//*[@hidden]"
)
_HTML_BLOCKS = frozenset(
    {
        *(
            "address",
            "article",
            "aside",
            "blockquote",
            "body",
            "caption",
            "center",
            "dd",
            "details",
            "dialog",
        ),
        *("div", "dl", "dt", "fieldset", "figcaption", "figure", "form", "header", "hgroup", "hr", "html"),
        *("main", "p", "section", "summary", "tbody", "td", "tfoot", "th", "thead", "tr"),
    }
)
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([a-zA-Z0-9_-]+)""", re.IGNORECASE)
_XML_DECLARATION = re.compile(r"\A\s*<\?xml[^>]*\?>")
_LINE_BREAK = "\ue000"  # private-use sentinel for <br>, so whitespace squashing cannot eat it


def _html(path: Path, out: _Out) -> None:
    _html_into(_html_text(path.read_bytes()), out)


def _html_text(data: bytes) -> str:
    """Valid UTF-8 wins (a stale <meta charset="iso-8859-1"> on UTF-8 pages is common); otherwise a declared
    <meta charset> (e.g. gbk) is honoured; otherwise sniff like plain text."""
    if not data.startswith(tuple(bom for bom, _ in _BOMS)):
        utf8 = _try_decode(data, "utf-8", final=True)
        if utf8 is not None:
            return utf8
        declared = _META_CHARSET.search(data[:4096])
        if declared:
            try:
                return data.decode(declared[1].decode("ascii"), errors="replace")
            except LookupError:
                pass  # unknown charset name: fall back to sniffing
    return _decode_all(data)


def _html_into(text: str, out: _Out) -> None:
    text = _XML_DECLARATION.sub("", text, count=1)  # lxml refuses str input that declares an encoding
    if not text.strip():
        return
    try:
        root = lxml.html.document_fromstring(text)
    except lxml.etree.ParserError:  # "Document is empty": comments or whitespace only
        return
    for node in root.xpath(_HTML_DROP):
        if node.getparent() is not None:
            node.drop_tree()
    walker = _HtmlWalker(out)
    walker.visit(root)
    walker.flush()


def _squash(text: str) -> str:
    """HTML whitespace semantics: runs collapse to one space; only <br> makes a line break."""
    text = " ".join(text.split())
    return "\n".join(line.strip() for line in text.split(_LINE_BREAK)).strip()


class _HtmlWalker:
    """Depth-first walk; inline content accumulates in `buffer` until a block boundary flushes it as one
    element of the innermost context's type (text, or list_item inside <li>)."""

    def __init__(self, out: _Out) -> None:
        self.out = out
        self.buffer: list[str] = []
        self.context: tuple[str, int] = ("text", 0)
        self.depth = 0  # open <ul>/<ol>

    def flush(self) -> None:
        text = _squash("".join(self.buffer))
        self.buffer = []
        self.out.add(self.context[0], text, level=self.context[1])

    def walk(self, element: lxml.html.HtmlElement) -> None:
        self.buffer.append(element.text or "")
        for child in element:
            self.visit(child)
            self.buffer.append(child.tail or "")

    def visit(self, element: lxml.html.HtmlElement) -> None:
        tag = element.tag if isinstance(element.tag, str) else None  # comments and PIs have callable tags
        if tag is None:
            return
        tag = tag.lower()
        if tag == "br":
            self.buffer.append(_LINE_BREAK)
        elif tag in _HEADINGS:
            self.flush()
            self.out.add("title", " ".join(element.text_content().split()), level=_HEADINGS[tag])
        elif tag == "pre":
            self.flush()
            self.out.add("code", element.text_content())
        elif tag == "table":
            self.flush()
            _add_table(self.out, _html_rows(element))
        elif tag in ("ul", "ol"):
            self._nested(element, self.context, self.depth + 1)
        elif tag == "li":
            self._nested(element, ("list_item", max(self.depth - 1, 0)), self.depth)
        elif tag in _HTML_BLOCKS:
            self._nested(element, self.context, self.depth)
        else:
            self.walk(element)  # inline: joins the running text

    def _nested(self, element: lxml.html.HtmlElement, context: tuple[str, int], depth: int) -> None:
        saved = self.context, self.depth
        self.flush()
        self.context, self.depth = context, depth
        self.walk(element)
        self.flush()
        self.context, self.depth = saved


def _html_rows(table: lxml.html.HtmlElement) -> Iterator[list[str]]:
    for row in table.iter("tr"):
        if next(row.iterancestors("table"), None) is table:  # rows of nested tables stay inside their cell
            yield [" ".join(cell.text_content().split()) for cell in row if cell.tag in ("td", "th")]


# -------------------------------------------------------------------------------------- text kinds


def _paragraphs(text: str, out: _Out) -> None:
    for paragraph in _PARAGRAPH_BREAK.split(text.replace("\r\n", "\n")):
        out.add("text", paragraph)


def _txt(path: Path, out: _Out) -> None:
    _paragraphs(_decode_all(path.read_bytes()), out)


def _csv(path: Path, out: _Out) -> None:
    text = _decode_all(path.read_bytes())
    sample = text[:16384]
    sample = (
        sample[: sample.rfind("\n")] if "\n" in sample else sample
    )  # a cut last line confuses the sniffer
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    _add_table(out, csv.reader(io.StringIO(text, newline=""), dialect))


def _eml(path: Path, out: _Out) -> None:
    """Subject as the title, a From/To/Cc/Date line, then the text/plain body (or the text/html one through
    the HTML path). Attachments are not indexed."""
    # policy.default makes the parser build an EmailMessage (get_body, get_content)
    message: EmailMessage = email.message_from_bytes(path.read_bytes(), policy=policy.default)  # type: ignore
    out.add("title", " ".join(str(message.get("subject", "")).split()), level=1)
    out.add(
        "text",
        "\n".join(f"{name}: {message[name]}" for name in ("From", "To", "Cc", "Date") if message[name]),
    )
    body = message.get_body(preferencelist=("plain", "html"))
    if body is None:
        return
    content = body.get_content()
    if body.get_content_type() == "text/html":
        _html_into(content, out)
    else:
        _paragraphs(content, out)


_EXTRACTORS: dict[str, Callable[[Path, _Out], None]] = {
    "pdf": _pdf,
    "docx": _docx,
    "xlsx": _xlsx,
    "pptx": _pptx,
    "md": _md,
    "html": _html,
    "txt": _txt,
    "csv": _csv,
    "eml": _eml,
}

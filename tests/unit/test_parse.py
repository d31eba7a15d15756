"""sniff(), extract() and extract_head() on real files generated here: PDF (fpdf2/pypdf), DOCX, XLSX, PPTX,
HTML, MD, CSV, EML, TXT, plus damaged, disguised, encrypted and zip-bomb inputs."""

from __future__ import annotations

import datetime as dt
import os
import zipfile
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import docx
import openpyxl
import pptx
import pypdf
import pytest
from docx.parts.document import DocumentPart
from fpdf import FPDF
from pptx.util import Inches
from pypdf import PdfReader, PdfWriter

import shared.parse
from shared.parse import (
    SNIFF_BYTES,
    Element,
    ParseError,
    UnsupportedFileType,
    extract,
    extract_head,
    sniff,
)


def parse(path: Path, **limits: int) -> list[Element]:
    """What the indexer does: sniff the head like the upload API, then extract."""
    with path.open("rb") as handle:
        kind = sniff(path.name, handle.read(SNIFF_BYTES))
    return extract(path, kind, **limits)


def texts(elements: list[Element], type_: str | None = None) -> list[str]:
    return [element.text for element in elements if type_ is None or element.type == type_]


def write_pdf(path: Path, pages: list[str]) -> Path:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 8, text)
        else:
            pdf.rect(20, 20, 80, 80)  # a page with graphics only, like a scan without OCR
    pdf.output(str(path))
    return path


# ------------------------------------------------------------------------------------------- sniff


@pytest.mark.parametrize(
    ("filename", "head", "kind"),
    [
        ("a.pdf", b"%PDF-1.7\n%\xe2\xe3", "pdf"),
        ("A.PDF", b"\xef\xbb\xbf junk %PDF-1.4", "pdf"),
        ("a.docx", b"PK\x03\x04rest", "docx"),
        ("a.xlsx", b"PK\x03\x04rest", "xlsx"),
        ("a.pptx", b"PK\x03\x04rest", "pptx"),
        ("notes.markdown", b"# Title\n", "md"),
        ("page.mdx", b"# Title\n", "md"),
        ("page.htm", b"<!DOCTYPE html><p>x</p>", "html"),
        ("page.html", b"  <div class='a'>hello</div>", "html"),
        ("mail.eml", b"Received: by x\r\nFrom: a@b.c\r\nSubject: hi\r\n\r\nbody", "eml"),
        ("data.csv", b"a,b\n1,2\n", "csv"),
        ("empty.txt", b"", "txt"),
        ("utf16.txt", "hello wörld".encode("utf-16"), "txt"),
        ("latin.txt", "café crème brûlée".encode("cp1252"), "txt"),
        ("cut.txt", "中文".encode()[:-1], "txt"),  # the 8 KiB head may end mid-character
    ],
)
def test_sniff_accepts_matching_content(filename: str, head: bytes, kind: str) -> None:
    assert sniff(filename, head) == kind


@pytest.mark.parametrize(
    ("filename", "head", "message"),
    [
        ("setup.exe", b"MZ\x90\x00", "File type .exe is not supported."),
        ("README", b"hello", "Files without an extension are not supported."),
        ("random.pdf", os.urandom(4096), "The file content does not match its .pdf extension."),
        (
            "image.txt",
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00",
            "does not match its .txt extension",
        ),
        (
            "legacy.doc",
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
            "Legacy binary Office files (.doc) are not supported",
        ),
        ("sheet.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "save it as .xlsx"),
        (
            "locked.docx",
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100),
            "password-protected or a legacy binary",
        ),
        ("fake.docx", b"%PDF-1.4", "does not match its .docx extension"),
        ("plain.html", b"just some words, no markup at all", "does not match its .html extension"),
        ("letter.eml", b"Dear John,\n\nthanks.", "does not match its .eml extension"),
        ("binary.md", bytes(range(1, 32)) * 20, "does not match its .md extension"),
    ],
)
def test_sniff_refuses_unsupported_or_disguised_files(filename: str, head: bytes, message: str) -> None:
    with pytest.raises(
        UnsupportedFileType, match=message.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")
    ):
        sniff(filename, head)


# --------------------------------------------------------------------------------------------- pdf


def test_pdf_text_per_page_with_page_numbers(tmp_path: Path) -> None:
    pages = [f"Page {n} is about topic {n}.\n\nA second paragraph on page {n}." for n in (1, 2, 3)]
    elements = parse(write_pdf(tmp_path / "report.pdf", pages))
    assert {element.type for element in elements} == {"text"}
    for number in (1, 2, 3):
        on_page = " ".join(texts([e for e in elements if e.page == number]))
        assert f"Page {number} is about topic {number}." in on_page
        assert f"A second paragraph on page {number}." in on_page
    assert [element.page for element in elements] == sorted(element.page for element in elements)


def test_pdf_pages_without_text_are_skipped(tmp_path: Path) -> None:
    elements = parse(write_pdf(tmp_path / "mixed.pdf", ["First page text.", "", "Third page text."]))
    assert {element.page for element in elements} == {1, 3}


def test_pdf_without_any_text_is_reported_as_scanned(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "scan.pdf", ["", ""])
    with pytest.raises(ParseError, match=r"^No text could be extracted from the PDF \(scanned images"):
        parse(path)


def _encrypt(source: Path, target: Path, user_password: str) -> Path:
    writer = PdfWriter(clone_from=PdfReader(source))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="AES-256")
    with target.open("wb") as handle:
        writer.write(handle)
    return target


def test_encrypted_pdf_with_a_password_is_refused(tmp_path: Path) -> None:
    plain = write_pdf(tmp_path / "plain.pdf", ["Confidential numbers."])
    locked = _encrypt(plain, tmp_path / "locked.pdf", user_password="secret")
    with pytest.raises(ParseError, match=r"^The PDF is encrypted; upload it without a password\.$"):
        parse(locked)


def test_pdf_encrypted_with_an_empty_user_password_is_read(tmp_path: Path) -> None:
    plain = write_pdf(tmp_path / "plain.pdf", ["Owner-protected but readable."])
    elements = parse(_encrypt(plain, tmp_path / "owner-only.pdf", user_password=""))
    assert "Owner-protected but readable." in " ".join(texts(elements))


def test_truncated_pdf_is_a_readable_parse_error(tmp_path: Path) -> None:
    whole = write_pdf(tmp_path / "whole.pdf", ["Some text here."]).read_bytes()
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(whole[:200])
    with pytest.raises(ParseError) as caught:
        parse(broken)
    assert len(str(caught.value)) <= 200
    assert "Traceback" not in str(caught.value)


# -------------------------------------------------------------------------------------------- docx


def write_docx(path: Path) -> Path:
    document = docx.Document()
    document.add_heading("Annual Report", 0)
    document.add_heading("Introduction", 1)
    document.add_paragraph("This report covers the year.")
    document.add_paragraph("First point", style="List Bullet")
    document.add_paragraph("Nested point", style="List Bullet 2")
    table = document.add_table(rows=2, cols=2)
    for row, values in zip(table.rows, [("Region", "Sales"), ("EU", "10 | 12")], strict=True):
        for cell, value in zip(row.cells, values, strict=True):
            cell.text = value
    document.add_heading("Details", 2)
    document.add_paragraph("Written after the table.")
    document.save(str(path))
    return path


def test_docx_headings_lists_and_tables_in_body_order(tmp_path: Path) -> None:
    elements = parse(write_docx(tmp_path / "report.docx"))
    assert [(e.type, e.text, e.level) for e in elements] == [
        ("title", "Annual Report", 1),
        ("title", "Introduction", 1),
        ("text", "This report covers the year.", 0),
        ("list_item", "First point", 0),
        ("list_item", "Nested point", 1),
        ("table", "| Region | Sales |\n| EU | 10 \\| 12 |", 0),
        ("title", "Details", 2),
        ("text", "Written after the table.", 0),
    ]


def test_chinese_docx(tmp_path: Path) -> None:
    document = docx.Document()
    document.add_heading("第一章 概述", 1)
    document.add_paragraph("本文档介绍系统的设计。它包含三个部分！")
    path = tmp_path / "中文.docx"
    document.save(str(path))
    elements = parse(path)
    assert [(e.type, e.text) for e in elements] == [
        ("title", "第一章 概述"),
        ("text", "本文档介绍系统的设计。它包含三个部分！"),
    ]


def test_truncated_docx_is_damaged(tmp_path: Path) -> None:
    whole = write_docx(tmp_path / "whole.docx").read_bytes()
    broken = tmp_path / "broken.docx"
    broken.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ParseError, match=r"^The file is damaged and cannot be read \(") as caught:
        parse(broken)
    assert len(str(caught.value)) <= 200


def test_zip_without_the_main_part_is_not_a_valid_docx(tmp_path: Path) -> None:
    path = tmp_path / "other.docx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("ppt/presentation.xml", "<p/>")
    with pytest.raises(ParseError, match=r"^The file is not a valid \.docx file\.$"):
        parse(path)


# --------------------------------------------------------------------------------------- zip bombs


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .docx-looking archive whose document.xml is 600 MB of zeros, streamed in 1 MiB writes: ~1 s and
    a few MB on disk (compresslevel 1 keeps it fast; the default level gives ~600 KB but takes 2x longer)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.docx"
    chunk = bytes(2**20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("word/document.xml", "w", force_zip64=True) as member:
            for _ in range(600):
                member.write(chunk)
    return path


def test_zip_bomb_is_refused_before_inflating(zip_bomb: Path) -> None:
    assert zip_bomb.stat().st_size < 5 * 2**20
    with pytest.raises(
        ParseError, match=r"expands to more than 500 MB; refusing to extract it \(possible zip bomb\)"
    ):
        parse(zip_bomb)


def test_highly_compressed_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dense.xlsx"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/workbook.xml", bytes(8 * 2**20))  # ~1000:1
    with pytest.raises(ParseError, match=r"expands more than 200 times"):
        parse(path)
    with pytest.raises(ParseError, match=r"expands to more than 4 MB"):
        parse(path, max_unzipped_bytes=4 * 2**20)


# ------------------------------------------------------------------------------------- xlsx / pptx


def write_xlsx(path: Path) -> Path:
    workbook = openpyxl.Workbook()
    first = workbook.active
    first.title = "Sales"
    first.append(["Region", "Amount", "Date"])
    first.append(["EU", 3.0, dt.datetime(2024, 5, 1)])
    first.append(["US", 2.5, None])
    second = workbook.create_sheet("Staff")
    second.append(["Name", "Role"])
    second.append(["Ana", "Engineer"])
    workbook.create_sheet("Empty")
    workbook.save(path)
    return path


def test_xlsx_two_sheets(tmp_path: Path) -> None:
    elements = parse(write_xlsx(tmp_path / "book.xlsx"))
    assert [(e.type, e.text) for e in elements] == [
        ("title", "Sales"),
        ("table", "| Region | Amount | Date |\n| EU | 3 | 2024-05-01 |\n| US | 2.5 |"),
        ("title", "Staff"),
        ("table", "| Name | Role |\n| Ana | Engineer |"),
    ]


def write_pptx(path: Path) -> Path:
    presentation = pptx.Presentation()
    slide = presentation.slides.add_slide(presentation.slide_layouts[1])  # "Title and Content"
    slide.shapes.title.text = "Quarterly Review"
    body = slide.placeholders[1].text_frame
    body.text = "Revenue grew"
    nested = body.add_paragraph()
    nested.text = "Costs fell"
    nested.level = 1
    table = slide.shapes.add_table(2, 2, Inches(1), Inches(5), Inches(4), Inches(1)).table
    for (row, col), value in {(0, 0): "Region", (0, 1): "Sales", (1, 0): "EU", (1, 1): "10"}.items():
        table.cell(row, col).text = value
    slide.notes_slide.notes_text_frame.text = "Mention the hiring freeze."
    blank = presentation.slides.add_slide(presentation.slide_layouts[6])
    blank.shapes.add_textbox(Inches(1), Inches(1), Inches(4), Inches(1)).text_frame.text = "Closing remarks"
    presentation.save(str(path))
    return path


def test_pptx_titles_bullets_tables_and_notes(tmp_path: Path) -> None:
    elements = parse(write_pptx(tmp_path / "deck.pptx"))
    assert [(e.type, e.text, e.level, e.page) for e in elements] == [
        ("title", "Quarterly Review", 1, 1),
        ("list_item", "Revenue grew", 0, 1),
        ("list_item", "Costs fell", 1, 1),
        ("table", "| Region | Sales |\n| EU | 10 |", 0, 1),
        ("text", "Notes: Mention the hiring freeze.", 0, 1),
        ("title", "Slide 2", 1, 2),
        ("text", "Closing remarks", 0, 2),
    ]


# --------------------------------------------------------------------------------------- html / md


HTML = """<!DOCTYPE html>
<html><head><title>Ignored</title><style>p { color: red }</style></head>
<body>
<nav><a href="/">Home</a> | <a href="/docs">Docs</a></nav>
<script>var secret = "do not index";</script>
<h1>Install  Guide</h1>
<p>Run the <b>installer</b><br>then restart.</p>
<ul><li>Linux<ul><li>Debian</li></ul></li><li>macOS</li></ul>
<div>Loose text in a div <span>with inline parts</span>.</div>
<pre>def main():
    return 0</pre>
<table><tr><th>OS</th><th>Size</th></tr><tr><td>Linux</td><td>10 MB</td></tr></table>
<footer>Copyright footer</footer>
</body></html>"""


def test_html_blocks_and_dropped_chrome(tmp_path: Path) -> None:
    path = tmp_path / "guide.html"
    path.write_text(HTML, encoding="utf-8")
    elements = parse(path)
    assert [(e.type, e.text, e.level) for e in elements] == [
        ("title", "Install Guide", 1),
        ("text", "Run the installer\nthen restart.", 0),
        ("list_item", "Linux", 0),
        ("list_item", "Debian", 1),
        ("list_item", "macOS", 0),
        ("text", "Loose text in a div with inline parts.", 0),
        ("code", "def main():\n    return 0", 0),
        ("table", "| OS | Size |\n| Linux | 10 MB |", 0),
    ]


def test_html_declared_charset_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "gbk.html"
    path.write_bytes(
        '<html><head><meta charset="gbk"></head><body><p>你好，世界</p></body></html>'.encode("gbk")
    )
    assert texts(parse(path)) == ["你好，世界"]


MARKDOWN = """---
title: front matter is not content
---
# Guide

Intro with a [link](https://example.com).

## Setup

1. Download
2. Install
   - with pip

```python
print("hi")
```

| Key | Value |
|-----|-------|
| a   | 1     |
"""


def test_markdown_tokens_become_elements(tmp_path: Path) -> None:
    path = tmp_path / "guide.md"
    path.write_text(MARKDOWN, encoding="utf-8")
    assert [(e.type, e.text, e.level) for e in parse(path)] == [
        ("title", "Guide", 1),
        ("text", "Intro with a [link](https://example.com).", 0),
        ("title", "Setup", 2),
        ("list_item", "Download", 0),
        ("list_item", "Install", 0),
        ("list_item", "with pip", 1),
        ("code", 'print("hi")', 0),
        ("table", "| Key | Value |\n| a | 1 |", 0),
    ]


# -------------------------------------------------------------------------------------- text kinds


def test_csv_delimiter_is_sniffed(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text('name;city\n"Doe, Jane";Paris\nLi;"Bei\njing"\n', encoding="utf-8")
    assert [(e.type, e.text) for e in parse(path)] == [
        ("table", "| name | city |\n| Doe, Jane | Paris |\n| Li | Bei jing |")
    ]


def test_eml_subject_headers_and_plain_body_without_attachments(tmp_path: Path) -> None:
    message = EmailMessage()
    message["Subject"] = "Budget 2025"
    message["From"] = "Ana <ana@example.com>"
    message["To"] = "team@example.com"
    message.set_content("Hello team,\n\nThe budget is approved.\n")
    message.add_attachment(b"%PDF-1.4 secret", maintype="application", subtype="pdf", filename="secret.pdf")
    path = tmp_path / "budget.eml"
    path.write_bytes(message.as_bytes())
    elements = parse(path)
    assert elements[0] == Element("title", "Budget 2025", 1)
    assert elements[1].text == "From: Ana <ana@example.com>\nTo: team@example.com"
    assert texts(elements)[2:] == ["Hello team,", "The budget is approved."]
    assert "secret" not in " ".join(texts(elements))


def test_eml_html_body_goes_through_the_html_path(tmp_path: Path) -> None:
    message = EmailMessage()
    message["Subject"] = "News"
    message["From"] = "a@example.com"
    message.set_content(
        "<html><body><h2>Launch</h2><p>Ships today.</p><script>x()</script></body></html>", "html"
    )
    path = tmp_path / "news.eml"
    path.write_bytes(message.as_bytes())
    assert [(e.type, e.text) for e in parse(path)][2:] == [("title", "Launch"), ("text", "Ships today.")]


def test_chinese_txt_paragraphs(tmp_path: Path) -> None:
    path = tmp_path / "说明.txt"
    path.write_text("第一段：系统介绍。\n第一段第二行。\n\n第二段：安装步骤！\n", encoding="utf-8")
    assert [(e.type, e.text) for e in parse(path)] == [
        ("text", "第一段：系统介绍。\n第一段第二行。"),
        ("text", "第二段：安装步骤！"),
    ]


@pytest.mark.parametrize(
    ("encoding", "text"),
    [
        ("gb18030", "中文文本，包含标点。Mixed English."),
        ("utf-16", "中文文本，包含标点。Mixed English."),
        ("utf-8-sig", "中文文本，包含标点。Mixed English."),
        ("cp1252", "Crème brûlée, naïve café."),
        ("cp1252", "Größe für Müller"),  # also valid GB18030 byte pairs: must not be read as Chinese
    ],
)
def test_txt_encodings(tmp_path: Path, encoding: str, text: str) -> None:
    path = tmp_path / "encoded.txt"
    path.write_bytes(text.encode(encoding))
    assert texts(parse(path)) == [text]


def test_empty_and_oversized_documents(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ", encoding="utf-8")
    with pytest.raises(ParseError, match=r"^The document contains no text\.$"):
        parse(empty)
    big = tmp_path / "big.txt"
    big.write_text("word " * 1000, encoding="utf-8")
    with pytest.raises(ParseError, match=r"more than 100 characters"):
        parse(big, max_chars=100)
    # the head of a message's document is cut, not refused; an empty document is still an error
    elements, cut = extract_head(big, "txt", 100)
    assert (texts(elements), cut) == ([("word " * 1000).strip()[:100]], True)
    with pytest.raises(ParseError, match=r"^The document contains no text\.$"):
        extract_head(empty, "txt", 100)


def test_unknown_kind_in_extract(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"x")
    with pytest.raises(UnsupportedFileType):
        extract(path, "bin")


# ------------------------------------------------------------- extract_head (documents sent with a message)


def head_of(elements: list[Element], chars: int) -> list[Element]:
    """The first ``chars`` characters of the elements' text, the last element cut: what extract_head gives."""
    out: list[Element] = []
    for element in elements:
        if len(element.text) > chars:
            if chars:
                out.append(Element(element.type, element.text[:chars], element.level, element.page))
            break
        out.append(element)
        chars -= len(element.text)
    return out


def write(name: str, content: str) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        (tmp / name).write_text(content, encoding="utf-8")
        return tmp / name

    return build


def write_eml(tmp: Path) -> Path:
    message = EmailMessage()
    message["Subject"] = "Minutes"
    message["From"] = "ana@example.com"
    message.set_content("\n\n".join(f"Point {n}: the team agreed on item {n}." for n in range(12)))
    (tmp / "minutes.eml").write_bytes(message.as_bytes())
    return tmp / "minutes.eml"


@pytest.mark.parametrize("build", [
    lambda tmp: write_pdf(tmp / "a.pdf", [f"Page {n}.\n\nIt says thing {n}." for n in range(1, 4)]),
    lambda tmp: write_docx(tmp / "a.docx"),
    lambda tmp: write_xlsx(tmp / "a.xlsx"),
    lambda tmp: write_pptx(tmp / "a.pptx"),
    write("a.md", MARKDOWN),
    write("a.html", HTML),
    write("a.csv", "".join(f"name {n},city {n}\n" for n in range(30))),
    write("a.txt", "\n\n".join(f"Paragraph {n} of the text." for n in range(20))),
    write_eml,
], ids=["pdf", "docx", "xlsx", "pptx", "md", "html", "csv", "txt", "eml"])
def test_head_is_the_start_of_the_full_extraction(tmp_path: Path, build: Callable[[Path], Path]) -> None:
    path = build(tmp_path)
    full = parse(path)
    kind = sniff(path.name, path.read_bytes()[:SNIFF_BYTES])
    total = sum(len(e.text) for e in full)
    for chars in (0, 1, 10, total // 3, total // 2 + 7, total - 1, total, total + 50):
        assert extract_head(path, kind, chars) == (head_of(full, chars), chars < total), chars


def test_docx_head_stops_reading_paragraphs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    document = docx.Document()
    for n in range(2000):
        document.add_paragraph(f"Paragraph number {n}.")
    path = tmp_path / "long.docx"
    document.save(str(path))
    seen: list[int] = []
    real = shared.parse._docx_paragraph

    def counted(*args: Any) -> None:
        seen.append(1)
        real(*args)

    monkeypatch.setattr(shared.parse, "_docx_paragraph", counted)
    elements, cut = extract_head(path, "docx", 500)
    assert cut and sum(len(e.text) for e in elements) == 500 and texts(elements)[0] == "Paragraph number 0."
    assert len(seen) < 40


def test_docx_styles_are_looked_up_once_per_style(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """python-docx scans all ~160 styles of a document on every ``paragraph.style``: per paragraph, that was
    most of the time spent on a document of many short paragraphs."""
    document = docx.Document()
    for n in range(100):
        document.add_heading(f"Part {n}", 1)
        document.add_paragraph(f"Point {n}", style="List Bullet")
        document.add_paragraph(f"Text {n}")
    path = tmp_path / "styled.docx"
    document.save(str(path))
    calls: list[object] = []
    real = DocumentPart.get_style

    def counted(self: DocumentPart, *args: Any) -> Any:
        calls.append(args)
        return real(self, *args)

    monkeypatch.setattr(DocumentPart, "get_style", counted)
    elements = parse(path)
    assert [(e.type, e.text) for e in elements[:3]] == [("title", "Part 0"), ("list_item", "Point 0"),
                                                        ("text", "Text 0")]
    assert len(elements) == 300 and len(calls) <= 3


def test_pdf_head_stops_reading_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_pdf(tmp_path / "long.pdf", [f"Page {n} has a sentence of its own." for n in range(1, 41)])
    pages: list[int] = []
    real = pypdf.PageObject.extract_text

    def counted(self: pypdf.PageObject, *args: Any, **kwargs: Any) -> str:
        pages.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pypdf.PageObject, "extract_text", counted)
    elements, cut = extract_head(path, "pdf", 80)
    assert cut and texts(elements)[0] == "Page 1 has a sentence of its own." and len(pages) <= 3


def test_pptx_head_stops_reading_slides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    presentation = pptx.Presentation()
    for n in range(40):
        slide = presentation.slides.add_slide(presentation.slide_layouts[6])
        slide.shapes.add_textbox(Inches(1), Inches(1), Inches(4), Inches(1)).text_frame.text = f"Remark {n}"
    path = tmp_path / "long.pptx"
    presentation.save(str(path))
    shapes: list[int] = []
    real = shared.parse._pptx_shape

    def counted(*args: Any) -> None:
        shapes.append(1)
        real(*args)

    monkeypatch.setattr(shared.parse, "_pptx_shape", counted)
    elements, cut = extract_head(path, "pptx", 40)
    assert cut and texts(elements)[:2] == ["Slide 1", "Remark 0"] and len(shapes) <= 5


def test_table_heads_stop_reading_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workbook = openpyxl.Workbook()
    for n in range(3000):
        workbook.active.append([f"row {n}", n, "x"])
    xlsx = tmp_path / "rows.xlsx"
    workbook.save(xlsx)
    csv_path = tmp_path / "rows.csv"
    csv_path.write_text("".join(f"row {n},{n},x\n" for n in range(3000)), encoding="utf-8")
    cells: list[int] = []
    real = shared.parse._cell_text

    def counted(value: object) -> str:
        cells.append(1)
        return real(value)

    monkeypatch.setattr(shared.parse, "_cell_text", counted)
    for path, kind in ((xlsx, "xlsx"), (csv_path, "csv")):
        cells.clear()
        elements, cut = extract_head(path, kind, 300)
        assert cut and sum(len(e.text) for e in elements) == 300 and "| row 0 | 0 | x |" in texts(elements)[-1]
        assert len(cells) < 100, kind


def test_csv_head_never_reaches_a_damaged_row(tmp_path: Path) -> None:
    path = tmp_path / "late.csv"
    rows = "".join(f"a {n},b {n}\n" for n in range(50))
    path.write_text(rows + "x," + "y" * 200_000 + "\n", encoding="utf-8")  # beyond csv's field size limit
    with pytest.raises(ParseError, match="damaged"):
        parse(path)
    elements, cut = extract_head(path, "csv", 200)
    assert cut and texts(elements)[0].startswith("| a 0 | b 0 |\n| a 1 | b 1 |")


def test_markdown_head_parses_only_the_start_of_a_long_file(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "long.md"
    path.write_text("".join(f"## Part {n}\n\nSome text for part {n}.\n\n- item {n}\n- another\n\n```\ncode {n}\n```\n\n"
                            for n in range(4000)), encoding="utf-8")
    full = parse(path)
    parsed: list[int] = []
    real = shared.parse._MARKDOWN

    class Counted:
        def parse(self, text: str) -> Any:
            parsed.append(len(text))
            return real.parse(text)

    monkeypatch.setattr(shared.parse, "_MARKDOWN", Counted())
    assert extract_head(path, "md", 2000) == (head_of(full, 2000), True)
    assert sum(parsed) < 20_000 < path.stat().st_size
    # a head longer than the first slice: a longer one is parsed, with the same result
    parsed.clear()
    assert extract_head(path, "md", 20_000) == (head_of(full, 20_000), True)
    assert sum(parsed) < path.stat().st_size

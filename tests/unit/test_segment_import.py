"""The console's CSV import of segments: reading the rows, with the header and Dify's columns."""

import pytest

from services.indexer.service.segment_import import MAX_ROWS, read_rows


def test_rows_follow_the_header_and_keep_quoted_commas_and_lines() -> None:
    data = b'content\nFirst segment.\n"Second, with a comma\nand a line."\n\n,\n'
    assert read_rows(data, qa=False) == [("First segment.", None, None), ("Second, with a comma\nand a line.", None, None)]
    bom = "\ufeffquestion,answer\nWhat is tea?,A drink.\n".encode()
    assert read_rows(bom, qa=True) == [("What is tea?", "A drink.", None)]


@pytest.mark.parametrize(("data", "qa", "message"), [
    (b"content\n", False, "no rows"),
    (b"content\n\xff\xfe\n", False, "UTF-8"),
    (b"question,answer\nWhat?,\n", True, "Row 2: a Q&A document needs the answer"),
    (b"content\n  ,x\n", False, "Row 2: the content is empty"),
    (("content\n" + "row\n" * (MAX_ROWS + 1)).encode(), False, f"at most {MAX_ROWS}"),
])
def test_bad_csvs_say_what_is_wrong(data: bytes, qa: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_rows(data, qa)

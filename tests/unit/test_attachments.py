"""The pure parts of app files: type sniffing beyond documents, the file_upload policy, and how attached
documents and images enter the prompt (tests/integration/test_files.py drives them end to end)."""

from __future__ import annotations

import pytest

from services.runtime.service.files import UploadPolicy, remote_name
from services.runtime.service.prompt import estimate_usage, with_documents, with_images
from shared.files import UnsupportedFileType, sniff_upload, upload_name

PNG = b"\x89PNG\r\n\x1a\n" + bytes(40)


@pytest.mark.parametrize(("name", "head", "type_", "mime"), [
    ("a.png", PNG, "image", "image/png"),
    ("a.jpg", PNG, "image", "image/png"),  # raster images may wear each other's extension: the content wins
    ("a.JPEG", b"\xff\xd8\xff\xe0" + bytes(20), "image", "image/jpeg"),
    ("a.gif", b"GIF89a" + bytes(20), "image", "image/gif"),
    ("a.webp", b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image", "image/webp"),
    ("a.mp3", b"ID3\x04" + bytes(20), "audio", "audio/mpeg"),
    ("a.wav", b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio", "audio/wav"),
    ("a.m4a", b"\x00\x00\x00\x20ftypM4A ", "audio", "audio/mp4"),
    ("a.mp4", b"\x00\x00\x00\x20ftypisom", "video", "video/mp4"),
    ("a.csv", b"a,b\n1,2\n", "document", "text/csv"),
])
def test_sniff_upload_accepts_matching_content(name: str, head: bytes, type_: str, mime: str) -> None:
    s = sniff_upload(name, head)
    assert (s.type, s.mime_type) == (type_, mime)


@pytest.mark.parametrize(("name", "head"), [
    ("a.png", b"hello"), ("a.svg", PNG), ("a.png", b"<svg></svg>"), ("a.mp4", b"ID3\x04" + bytes(20)),
    ("a.mp3", PNG), ("a.pdf", PNG), ("a", PNG), ("a.exe", b"MZ"),
])
def test_sniff_upload_refuses_disguised_or_unknown_files(name: str, head: bytes) -> None:
    with pytest.raises(UnsupportedFileType):
        sniff_upload(name, head)


def test_upload_policy_reads_new_and_legacy_configs() -> None:
    assert not UploadPolicy.of({"image": {"enabled": False}}).enabled
    legacy = UploadPolicy.of({"image": {"enabled": True, "number_limits": 5, "transfer_methods": ["local_file"]}})
    assert (legacy.types, legacy.methods, legacy.number_limits) == (("image",), ("local_file",), 5)
    new = UploadPolicy.of({"enabled": True, "allowed_file_types": ["document", "custom"],
                           "allowed_file_extensions": [".MD"], "number_limits": 2})
    assert new.types == ("document", "custom") and new.extensions == ("md",) and new.number_limits == 2
    assert set(new.methods) == {"local_file", "remote_url"}


def test_documents_are_capped_and_shared_fairly() -> None:
    text = with_documents("the question", [("short.txt", "tiny"), ("long.txt", "x" * 1000)], max_chars=100)
    assert text.endswith("the question") and "tiny" in text
    assert "x" * 96 in text and "x" * 97 not in text and "[… the rest of this document is cut]" in text
    assert with_documents("q", [], 10) == "q"
    assert 'name="a&quot;b.txt"' in with_documents("q", [('a"b.txt', "t")], 10)


def test_images_become_parts_of_the_last_user_message() -> None:
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "old"},
            {"role": "assistant", "content": "a"}, {"role": "user", "content": "look"}]
    out = with_images(msgs, ["data:image/png;base64,AA=="], "low")
    assert out[:3] == msgs[:3] and msgs[3]["content"] == "look"  # the input list is not changed
    assert out[3]["content"] == [{"type": "text", "text": "look"},
                                 {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA==",
                                                                     "detail": "low"}}]

    class U:
        from_provider = False
        prompt_tokens = completion_tokens = 0

    u = U()
    estimate_usage(u, out, "ok")  # the base64 data is not counted as text
    assert 765 < u.prompt_tokens < 800


def test_remote_name_takes_the_extension_from_the_content_type() -> None:
    assert remote_name("https://x.test/files/report%20v2.pdf?sig=1", "text/html") == "report v2.pdf"
    assert remote_name("https://x.test/render?id=3", "image/png; q=1") == "render.png"
    assert remote_name("https://x.test/", "text/plain") == "file.txt"
    assert remote_name("https://x.test/" + "a" * 300 + ".png", "") == "a" * 196 + ".png"


def test_long_file_names_keep_their_extension() -> None:
    """The extension decides the type: a long name loses the end of its stem (the runtime's uploads and the
    knowledge API's documents share this)."""
    assert upload_name("a" * 300 + ".png") == "a" * 251 + ".png"
    assert upload_name("notes.md") == "notes.md"
    assert upload_name("C:\\Users\\me\\report.pdf") == "report.pdf"
    assert upload_name("dir/sub/ notes.txt ") == "notes.txt"
    assert upload_name("x" * 300) == "x" * 255  # no extension to keep
    assert upload_name("a." + "b" * 300) == ("a." + "b" * 300)[:255]  # an "extension" longer than the limit
    assert upload_name("b" * 30 + ".txt", limit=10) == "bbbbbb.txt"

"""Secrets at rest, subject names, and the embedded nats-server lifecycle."""

import socket

import pytest
from cryptography.fernet import InvalidToken

from shared import subjects
from shared.crypto import decrypt_json, encrypt_json, generate_api_key, hash_token, token_hint
from shared.natsd import EmbeddedNats


def test_api_key_format_and_hash() -> None:
    key = generate_api_key("app")
    assert key.startswith("app-") and len(key) == 28 and key[4:].isalnum()
    assert generate_api_key("app") != key
    assert hash_token(key) == hash_token(key) != hash_token(key + "x")
    assert key not in token_hint(key) and token_hint(key).startswith("app-")


def test_credentials_round_trip_and_wrong_key_fails() -> None:
    blob = encrypt_json("secret-a", {"api_key": "sk-live-123"})
    assert "sk-live-123" not in blob
    assert decrypt_json("secret-a", blob) == {"api_key": "sk-live-123"}
    with pytest.raises(InvalidToken):
        decrypt_json("secret-b", blob)


def test_subjects_are_versionable_and_parseable() -> None:
    assert subjects.task_events("t1") == "plexus.tasks.t1.events"
    assert subjects.task_stop("t1") == "plexus.tasks.t1.stop"
    assert subjects.task_of(subjects.task_stop("t-1")) == "t-1" == subjects.task_of(subjects.task_events("t-1"))
    assert subjects.parse_config_subject(subjects.config_changed("apikey", "k1")) == ("apikey", "k1")


def test_embedded_nats_starts_and_stops(tmp_path) -> None:
    n = EmbeddedNats(tmp_path / "js")
    n.start()
    try:
        socket.create_connection(("127.0.0.1", n.port), timeout=1).close()
        pid = n.proc.pid
    finally:
        n.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", n.port), timeout=1)
    assert (tmp_path / "js").exists() and pid


async def test_unreachable_nats_fails_fast_and_clearly() -> None:
    from shared.bus import Bus
    from shared.natsd import free_port

    with pytest.raises(RuntimeError, match="cannot reach NATS at nats://127.0.0.1"):
        await Bus.connect(f"nats://127.0.0.1:{free_port()}", deadline=1.0)


def test_lru_drops_the_least_recently_used_and_says_so() -> None:
    from shared.lru import Lru

    dropped: list[str] = []
    lru: Lru[str, str] = Lru(2, dropped.append)
    lru.put("a", "A")
    lru.put("b", "B")
    assert lru.get("a") == "A"  # now b is the least recently used
    lru.put("c", "C")
    assert dropped == ["B"] and lru.get("b") is None and len(lru) == 2
    lru.put("a", "A2")  # a replaced value is not an eviction
    assert dropped == ["B"] and lru.get("a") == "A2"
    assert lru.pop_where(lambda k: k in ("a", "x")) == ["A2"]
    assert len(lru) == 1 and lru.get("c") == "C" and dropped == ["B"]
    assert lru.pop("c") == "C" and lru.pop("c") is None and len(lru) == 0 and dropped == ["B"]


@pytest.mark.parametrize(("name", "provider"), [
    ("openai", "openai"), ("openai-compatible", "openai"), ("azure_openai", "azure"),
    ("langgenius/openai/openai", "openai"), ("langgenius/gemini/gemini", "gemini"),  # Dify 1.x plugin ids
    ("langgenius/openai_api_compatible/openai_api_compatible", "openai"),
    ("langgenius/agent/agent", "langgenius/agent/agent"), ("nonsense", "nonsense"),
])
def test_canonical_provider(name: str, provider: str) -> None:
    from shared.llm import canonical_provider, is_known_provider

    assert canonical_provider(name) == provider
    assert is_known_provider(name) == (provider != name or name == "openai")


def test_provider_of_plugin() -> None:
    from shared.llm import provider_of_plugin

    assert provider_of_plugin("langgenius/openai:0.0.26@4f2a") == "openai"
    assert provider_of_plugin("langgenius/anthropic:0.0.14") == "anthropic"
    assert provider_of_plugin("langgenius/agent:0.0.9@77aa") is None  # a plugin that is no model provider
    assert provider_of_plugin("openai") is None and provider_of_plugin("a/b/c") is None


def test_signed_tool_file_urls_open_for_their_file_and_their_time_only() -> None:
    from urllib.parse import parse_qs, urlsplit

    from shared.files import FileSigner

    signer = FileSigner("https://api.example.com", "secret-1", seconds=300)
    url = signer.url("f1", "png", now=1_000_000)
    parts = urlsplit(url)
    assert parts.path == "/files/tools/f1.png"
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert signer.check("f1", q["timestamp"], q["nonce"], q["sign"], now=1_000_000 + 300)
    assert not signer.check("f1", q["timestamp"], q["nonce"], q["sign"], now=1_000_000 + 301)  # expired
    assert signer.check("f1", q["timestamp"], q["nonce"], q["sign"], now=999_990)  # a replica's clock behind
    assert not signer.check("f1", q["timestamp"], q["nonce"], q["sign"], now=999_960)  # from the future
    assert not signer.check("f2", q["timestamp"], q["nonce"], q["sign"], now=1_000_000)  # another file
    assert not signer.check("f1", q["timestamp"], "other-nonce", q["sign"], now=1_000_000)
    assert not signer.check("f1", "abc", q["nonce"], q["sign"], now=1_000_000)
    other_key = FileSigner("https://api.example.com", "secret-2", seconds=300)
    assert not other_key.check("f1", q["timestamp"], q["nonce"], q["sign"], now=1_000_000)
    assert signer.url("f1", "png", now=1_000_000) != url  # a fresh nonce each time

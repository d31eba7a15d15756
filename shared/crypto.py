"""Secrets at rest: API keys as SHA-256 hashes (shown once), credentials with Fernet."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string

import orjson
from cryptography.fernet import Fernet, InvalidToken

_ALPHABET = string.ascii_letters + string.digits


def generate_api_key(prefix: str, length: int = 24) -> str:
    return f"{prefix}-" + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_hint(token: str) -> str:
    return f"{token[:6]}…{token[-4:]}"


def _fernet(secret_key: str) -> Fernet:
    digest = hashlib.sha256(b"plexus-credentials:" + secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt_json(secret_key: str, data: dict) -> str:
    return _fernet(secret_key).encrypt(orjson.dumps(data)).decode()


def decrypt_json(secret_key: str, token: str) -> dict:
    return orjson.loads(_fernet(secret_key).decrypt(token.encode()))


def try_decrypt_json(secret_key: str | None, token: str) -> dict | None:
    """``decrypt_json``, or None when the value cannot be read: encrypted under an earlier secret key, or
    corrupt. Callers treat such a secret as absent."""
    if not secret_key:
        return None
    try:
        return decrypt_json(secret_key, token)
    except (InvalidToken, ValueError):
        return None


def constant_eq(a: str, b: str) -> bool:
    """Equal, in time independent of where they differ; any client text (a lone surrogate too) compares."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))

"""Who is calling, as the gateway tells the services behind it.

The gateway authenticates the key and forwards these headers plus the internal secret; a service
reached directly without the secret rejects the call (401). Header names live only here.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import Headers

from shared.crypto import constant_eq
from shared.errors import unauthorized

H_SECRET = "x-plexus-internal"
H_TENANT = "x-plexus-tenant-id"
H_APP = "x-plexus-app-id"
H_KEY = "x-plexus-key-id"
H_KEY_TYPE = "x-plexus-key-type"
H_REQUEST_ID = "x-request-id"
IDENTITY_HEADERS = (H_SECRET, H_TENANT, H_APP, H_KEY, H_KEY_TYPE)
H_CSRF = "x-csrf-token"  # the console's CSRF token, for requests signed in by cookie

# The console's knowledge routes (/console/api + path) are served by the indexer: everything under /datasets but
# the workspace's dataset keys, which are the console's, and console file uploads. The gateway routes by this rule
# and the console's access table decides them by it.
CONSOLE_PREFIX = "/console/api"
_CONSOLE_KEY_PATHS = ("/datasets/api-keys", "/datasets/api-base-info")


def console_knowledge(path: str) -> bool:
    """Whether ``path`` (after /console/api) is one of the indexer's console routes."""
    if path == "/files/upload":
        return True
    if path != "/datasets" and not path.startswith("/datasets/"):
        return False
    return not any(path == k or path.startswith(k + "/") for k in _CONSOLE_KEY_PATHS)


# Dify's 401 messages (reference §1.1), for app keys at the gateway and console JWTs alike
AUTH_MISSING = "Authorization header must be provided and start with 'Bearer'"
AUTH_SCHEME = "Authorization scheme must be 'Bearer'"
AUTH_INVALID = "Access token is invalid"


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bearer_token(header: bytes | None) -> bytes:
    """The token from an ``Authorization`` header, checked the way Dify checks it (bytes: the gateway
    reads raw ASGI headers)."""
    if header is None or b" " not in header:
        raise AuthError(401, AUTH_MISSING)
    parts = header.split(None, 1)
    if parts[0].lower() != b"bearer":
        raise AuthError(401, AUTH_SCHEME)
    token = parts[1].strip() if len(parts) == 2 else b""
    if not token:
        raise AuthError(401, AUTH_INVALID)
    return token


def cookie_header(headers: Headers) -> str | None:
    """The request's cookies as one Cookie header (HTTP/2 may split them over several), or None."""
    values = headers.getlist("cookie")
    return "; ".join(values) if values else None


@dataclass(frozen=True, slots=True)
class Caller:
    tenant_id: str
    app_id: str | None
    key_id: str
    key_type: str  # app | dataset


def identity_headers(secret: str, caller: Caller) -> list[tuple[bytes, bytes]]:
    pairs = [(H_SECRET, secret), (H_TENANT, caller.tenant_id), (H_KEY, caller.key_id), (H_KEY_TYPE, caller.key_type)]
    if caller.app_id:
        pairs.append((H_APP, caller.app_id))
    return [(k.encode(), v.encode()) for k, v in pairs]


def caller_from_request(request: Request, secret: str) -> Caller:
    h = request.headers
    if not constant_eq(h.get(H_SECRET, ""), secret) or not h.get(H_TENANT):
        raise unauthorized(AUTH_MISSING)
    return Caller(
        tenant_id=h[H_TENANT], app_id=h.get(H_APP), key_id=h.get(H_KEY, ""), key_type=h.get(H_KEY_TYPE, "app")
    )

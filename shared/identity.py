"""Who is calling, as the gateway tells the services behind it.

The gateway authenticates the key and forwards these headers plus the internal secret; a service
reached directly without the secret rejects the call (401). Header names live only here.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from shared.crypto import constant_eq
from shared.errors import unauthorized

H_SECRET = "x-plexus-internal"
H_TENANT = "x-plexus-tenant-id"
H_APP = "x-plexus-app-id"
H_KEY = "x-plexus-key-id"
H_KEY_TYPE = "x-plexus-key-type"
H_REQUEST_ID = "x-request-id"
IDENTITY_HEADERS = (H_SECRET, H_TENANT, H_APP, H_KEY, H_KEY_TYPE)


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
        raise unauthorized("Authorization header must be provided and start with 'Bearer'")
    return Caller(
        tenant_id=h[H_TENANT], app_id=h.get(H_APP), key_id=h.get(H_KEY, ""), key_type=h.get(H_KEY_TYPE, "app")
    )

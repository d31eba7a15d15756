"""The gateway's ASGI app: route by path, authenticate the key, apply limits, forward.

The forward path is a plain ASGI callable (no framework routing or middleware): one pass over the
request headers, a dict lookup for the key, one limiter decision, then the service's own ASGI app
(`all` mode) or the pooled HTTP client (split mode). Only /healthz, /readyz and /metrics go to a
small FastAPI sub-app.

Routes: /console/api/* → console (no key: the console checks its own JWT), except its knowledge routes
(/console/api/datasets* but the dataset keys, /console/api/files/upload) → indexer, which asks the console
who the caller is; /v1/datasets* and
/v1/workspaces/* → indexer with a ``dataset`` key; other /v1/* → runtime with an ``app`` key;
GET /v1 → the Dify welcome document; GET /files/tools/* (signed URLs of files tools made) → runtime without
a key. Client-sent identity headers are always stripped, and the
API key itself is not passed on to the services behind /v1 (they get the identity headers).
/api/* is the same public API under the seeds' prefix: rewritten to /v1/* before routing. App keys limited
to permissions are checked per route (auth.required_permission); a rotated key is refused once expired.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import itertools
import os
import time
import tomllib
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import structlog
from starlette.types import Message, Receive, Scope, Send

from services.gateway.auth import KeyCache, permission_denied
from services.gateway.proxy import Exchange, HttpForwarder, Meter, forward_local, reply
from shared.context import Context
from shared.errors import KEY_EXPIRED
from shared.http import create_base_app
from shared.identity import (
    AUTH_INVALID,
    CONSOLE_PREFIX,
    H_REQUEST_ID,
    IDENTITY_HEADERS,
    AuthError,
    bearer_token,
    console_knowledge,
)
from shared.limiter import Limiter, LimiterUnavailable, build_limiter
from shared.metrics import RATE_LIMITED

log = structlog.get_logger("plexus.gateway")

NOT_FOUND = "The requested URL was not found on the server."
_V1 = "/v1/"
_DATASETS = "/v1/datasets"
_WORKSPACES = "/v1/workspaces/"
# app uploads (files, audio for speech-to-text): the larger upload limit, like knowledge files
_UPLOADS = frozenset(("/v1/files/upload", "/v1/audio-to-text"))
_CONSOLE = CONSOLE_PREFIX
_API = "/api"  # the public API's second prefix (the seeds call /api/chat-messages): served as /v1
_OWN = frozenset({"/healthz", "/readyz", "/metrics"})
# signed URLs of files tools made: no key, the runtime checks the signature (shared.files.TOOL_FILE_PATH; not
# imported from there, which would load image libraries into the gateway)
_TOOL_FILES = "/files/tools/"
_STRIP = frozenset(h.encode() for h in (*IDENTITY_HEADERS, H_REQUEST_ID))  # the gateway sets these
_WWW_AUTH = [(b"www-authenticate", b'Bearer realm="api"')]
_UPSTREAMS = ("console", "runtime", "indexer", "tools")


def server_version() -> str:
    try:
        return importlib.metadata.version("plexus")
    except importlib.metadata.PackageNotFoundError:  # a source checkout that was not installed
        try:
            data = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
            return data["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0.0.0"


# request ids: a random per-process prefix and a counter (unique, 32 hex chars, no syscall per request)
_RID_PREFIX = os.urandom(8).hex()
_rid_seq = itertools.count(1)


class _Headers(NamedTuple):
    authorization: bytes | None
    length: bytes | None
    chunked: bool
    request_id: bytes
    forward: list[tuple[bytes, bytes]]


def _scan_headers(scope: Scope, keep_authorization: bool) -> _Headers:
    """One pass over the request headers: what to forward (spoofable identity headers dropped), the
    body framing for the size limit, the request id, and the Authorization value."""
    auth = length = rid = trace = None
    chunked = False
    fwd: list[tuple[bytes, bytes]] = []
    for k, v in scope["headers"]:
        if k in _STRIP:
            if k == b"x-request-id":
                rid = v
            continue
        if k == b"x-trace-id":  # Dify's client trace id: the request id when the client sends no X-Request-ID
            trace = v
        elif k == b"authorization":
            auth = v
            if not keep_authorization:
                continue
        elif k == b"content-length":
            length = v
        elif k == b"transfer-encoding":
            chunked = True
        fwd.append((k, v))
    return _Headers(auth, length, chunked, _request_id(rid or trace), fwd)


def _request_id(given: bytes | None) -> bytes:
    if given and len(given) <= 128:
        return given
    return f"{_RID_PREFIX}{next(_rid_seq):016x}".encode()


class Gateway:
    def __init__(self, ctx: Context, limiter: Limiter | None = None) -> None:
        gs = ctx.settings.gateway
        self.ctx = ctx
        self.max_body = gs.max_body_bytes
        # uploads may be larger than other bodies: the largest file limit plus room for the form around it
        self.max_upload = max(self.max_body, ctx.settings.knowledge.max_file_bytes + 1024 * 1024,
                              ctx.settings.files.max_bytes + 1024 * 1024)
        self.keys = KeyCache(ctx.db, ctx.internal_secret, gs.key_cache_seconds)
        self.limiter = limiter if limiter is not None else build_limiter(ctx)
        self.http = HttpForwarder(gs.upstream_timeout)
        self.meter = Meter()
        self.upstream_urls = {
            name: url.rstrip("/") for name in _UPSTREAMS if (url := getattr(gs, f"{name}_url", None))
        }
        self.maintenance_interval = 1.0
        self._maintenance: asyncio.Task | None = None
        self._welcome = orjson.dumps({"welcome": "Dify OpenAPI", "api_version": "v1",
                                      "server_version": server_version()})
        checks: dict[str, Any] = {"database": ctx.db.ping, "nats": ctx.bus.ping}
        if ctx.redis is not None:
            checks["redis"] = ctx.redis.ping
        self.health = create_base_app("gateway", checks=checks, docs_url=None, redoc_url=None,
                                      openapi_url=None)

    # --- ASGI entry -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":  # start/stop are driven by the stack, not the server
                await _lifespan(receive, send)
            return
        t0 = time.perf_counter()
        path: str = scope["path"]
        if path.startswith(_API) and (len(path) == len(_API) or path[len(_API)] == "/"):
            scope = _as_v1(scope)
            path = scope["path"]
        if path.startswith(_V1):
            if path == _V1:
                return await self._welcome_doc(scope, send, t0)
            if (path.startswith(_DATASETS) and (len(path) == len(_DATASETS) or path[len(_DATASETS)] == "/")) \
                    or path.startswith(_WORKSPACES):
                return await self._api(scope, receive, send, "indexer", "dataset", t0)
            return await self._api(scope, receive, send, "runtime", "app", t0)
        if path == "/v1":
            return await self._welcome_doc(scope, send, t0)
        if path.startswith(_CONSOLE) and (len(path) == len(_CONSOLE) or path[len(_CONSOLE)] == "/"):
            return await self._console(scope, receive, send, t0)
        if path.startswith(_TOOL_FILES) and scope["method"] in ("GET", "HEAD"):
            return await self._public(scope, receive, send, "runtime", t0)
        if path in _OWN:
            return await self.health(scope, receive, send)
        rid = _request_id(_header(scope, b"x-request-id"))
        await self._error(send, "gateway", scope["method"], t0, rid, 404, "not_found", NOT_FOUND)

    # --- routes -----------------------------------------------------------------------------------

    async def _api(self, scope: Scope, receive: Receive, send: Send, service: str, key_type: str,
                   t0: float) -> None:
        # the key stays here: services get the identity headers instead
        h = _scan_headers(scope, keep_authorization=False)
        auth, length, chunked, rid, fwd = h.authorization, h.length, h.chunked, h.request_id, h.forward
        method = scope["method"]
        limit = self.max_upload if service == "indexer" or scope["path"] in _UPLOADS else self.max_body
        if length is not None and await self._too_large(send, service, method, t0, rid, length, limit):
            return
        try:
            entry = await self.keys.lookup(bearer_token(auth))
        except AuthError as e:
            return await self._error(send, service, method, t0, rid, e.status, "unauthorized", e.message,
                                     _WWW_AUTH)
        except Exception as e:  # noqa: BLE001 - the key store is down: say so, don't 500
            log.warning("key_lookup_failed", error=repr(e), request_id=rid.decode("latin-1"))
            return await self._error(send, service, method, t0, rid, 503, "service_unavailable",
                                     "Authentication is temporarily unavailable.")
        if entry.key_type != key_type:
            return await self._error(send, service, method, t0, rid, 401, "unauthorized", AUTH_INVALID,
                                     _WWW_AUTH)
        if entry.not_after is not None and entry.not_after <= time.time():  # rotated, grace period over
            return await self._error(send, service, method, t0, rid, 401, "unauthorized", KEY_EXPIRED, _WWW_AUTH)
        if entry.denied is not None:
            return await self._error(send, service, method, t0, rid, 403, "forbidden", entry.denied)
        if entry.permissions is not None:
            denied = permission_denied(entry, method, scope["path"][len(_V1) - 1:])
            if denied is not None:
                return await self._error(send, service, method, t0, rid, 403, "forbidden", denied)
        self.keys.touch(entry)

        extra: list[tuple[bytes, bytes]] = []
        release = None
        limits = entry.limits
        if limits is not None:
            try:
                d = await self.limiter.acquire(entry.app_id, limits, os.urandom(12).hex())
            except LimiterUnavailable:
                return await self._error(send, service, method, t0, rid, 503, "service_unavailable",
                                         "Rate limiter unavailable")
            if not d.admitted:
                RATE_LIMITED.labels(d.kind).inc()
                return await self._error(send, service, method, t0, rid, 429, "too_many_requests", d.message,
                                         d.headers)
            extra = d.headers
            if d.slot is not None:
                release = partial(self.limiter.release, entry.app_id, d.slot)
        fwd += entry.headers
        fwd.append((b"x-request-id", rid))
        ex = Exchange(scope, receive, send, meter=self.meter, route=service, t0=t0, request_id=rid,
                      extra=extra, max_body=limit, release=release)
        await self._dispatch(ex, service, fwd, _has_body(length, chunked))

    async def _console(self, scope: Scope, receive: Receive, send: Send, t0: float) -> None:
        # the console authenticates its own JWTs (for the indexer too), so Authorization passes through, as do
        # Cookie and X-CSRF-Token (cookie sign-in) and, back, the console's Set-Cookie headers
        service = "indexer" if console_knowledge(scope["path"][len(_CONSOLE):]) else "console"
        limit = self.max_upload if service == "indexer" else self.max_body
        h = _scan_headers(scope, keep_authorization=True)
        length, chunked, rid, fwd = h.length, h.chunked, h.request_id, h.forward
        if length is not None and await self._too_large(send, service, scope["method"], t0, rid, length, limit):
            return
        fwd.append((b"x-request-id", rid))
        ex = Exchange(scope, receive, send, meter=self.meter, route=service, t0=t0, request_id=rid,
                      extra=[], max_body=limit, release=None)
        await self._dispatch(ex, service, fwd, _has_body(length, chunked))

    async def _public(self, scope: Scope, receive: Receive, send: Send, service: str, t0: float) -> None:
        """A route without a key (signed tool-file URLs: the service checks the signature). Nothing of the
        caller's identity or credentials goes on."""
        h = _scan_headers(scope, keep_authorization=False)
        h.forward.append((b"x-request-id", h.request_id))
        ex = Exchange(scope, receive, send, meter=self.meter, route=service, t0=t0, request_id=h.request_id,
                      extra=[], max_body=self.max_body, release=None)
        await self._dispatch(ex, service, h.forward, False)

    async def _dispatch(self, ex: Exchange, service: str, headers: list[tuple[bytes, bytes]],
                        has_body: bool) -> None:
        try:
            if self.ctx.mode == "all":
                app = self.ctx.local_apps.get(service)
                if app is not None:
                    return await forward_local(ex, app, headers)
            url = self.upstream_urls.get(service)
            if url is not None:
                return await self.http.forward(ex, url, headers, has_body)
            log.warning("upstream_not_configured", service=service)
            ex.started = True
            ex.meter.observe(service, ex.method, 502, ex.t0)
            await reply(ex._send, 502, "bad_gateway", f"The {service} service is not configured.",
                        ex.request_id)
        finally:
            await ex.finish()

    async def _welcome_doc(self, scope: Scope, send: Send, t0: float) -> None:
        rid = _request_id(_header(scope, b"x-request-id"))
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            return await self._error(send, "gateway", method, t0, rid, 405, "method_not_allowed",
                                     "The method is not allowed for the requested URL.")
        self.meter.observe("gateway", method, 200, t0)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", b"%d" % len(self._welcome)),
            (b"x-request-id", rid)]})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else self._welcome})

    async def _too_large(self, send: Send, route: str, method: str, t0: float, rid: bytes, length: bytes,
                         limit: int) -> bool:
        try:
            n = int(length)
        except ValueError:
            await self._error(send, route, method, t0, rid, 400, "bad_request",
                              "Invalid Content-Length header.")
            return True
        if n <= limit:
            return False
        if route == "indexer":  # the knowledge API's word for it (reference §1.2)
            await self._error(send, route, method, t0, rid, 413, "file_too_large",
                              f"File size exceeded. The limit is {limit} bytes.")
        else:
            await self._error(send, route, method, t0, rid, 413, "request_entity_too_large",
                              f"Request body exceeds the limit of {limit} bytes.")
        return True

    async def _error(self, send: Send, route: str, method: str, t0: float, rid: bytes, status: int, code: str,
                     message: str, headers: list[tuple[bytes, bytes]] | tuple = ()) -> None:
        self.meter.observe(route, method, status, t0)
        await reply(send, status, code, message, rid, headers)

    # --- lifecycle (driven by handlers.start/stop) ------------------------------------------------

    async def startup(self) -> None:
        if self.ctx.mode != "all":
            missing = [n for n in ("runtime", "indexer", "console") if n not in self.upstream_urls]
            if missing:
                log.warning("upstreams_not_configured", services=missing,
                            hint="set PLEXUS_GATEWAY__<SERVICE>_URL")
        if self._maintenance is None:
            self._maintenance = asyncio.get_running_loop().create_task(self._maintain())

    async def shutdown(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            try:
                await self._maintenance
            except asyncio.CancelledError:
                pass
            self._maintenance = None
        await self.keys.flush_last_used()
        await self.http.close()

    async def _maintain(self) -> None:
        """Batch last_used_at writes; forget cached keys while NATS (and so invalidation) is away."""
        nc = self.ctx.bus.nc
        reconnects = nc.stats.get("reconnects", 0)
        while True:
            await asyncio.sleep(self.maintenance_interval)
            try:
                await self.keys.flush_last_used()
                now = nc.stats.get("reconnects", 0)
                if now != reconnects or not nc.is_connected:
                    if len(self.keys):
                        log.warning("key_cache_cleared",
                                    reason="nats connection lost; invalidations may be missed")
                    self.keys.clear()
                    reconnects = now
            except Exception:
                log.exception("gateway_maintenance_failed")


def _as_v1(scope: Scope) -> Scope:
    """/api/... → /v1/...: one routing table serves both prefixes (SSE and uploads included)."""
    out = dict(scope)
    out["path"] = "/v1" + scope["path"][len(_API):]
    raw = scope.get("raw_path")
    if raw and raw.startswith(b"/api"):
        out["raw_path"] = b"/v1" + raw[len(_API):]
    return out


def _has_body(length: bytes | None, chunked: bool) -> bool:
    return chunked or (length is not None and length != b"0")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return v
    return None


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        msg: Message = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_app(ctx: Context, limiter: Limiter | None = None) -> Gateway:
    return Gateway(ctx, limiter)

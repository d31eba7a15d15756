"""Forwarding one request to the service that owns it, streaming both ways.

`all` mode calls the service's ASGI app in-process with a rewritten scope; split mode sends it to
the upstream URL with a pooled aiohttp client (why not httpx: see ``HttpForwarder``). Both go
through an ``Exchange`` that wraps the client's ``receive`` (body limit, disconnect) and ``send``
(rate-limit and SSE headers added to the start message, so before the first byte; end of body),
and releases the concurrency slot exactly once: when the body is finished, the client disconnects,
or the exchange ends.

A disconnect is noticed by whoever reads the client channel. Downstream apps that listen for it
(Starlette's StreamingResponse, sse-starlette) read through ``Exchange.receive``; for streamed
responses nobody is listening to, the exchange starts its own reader (``watch``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from yarl import URL

from shared.errors import INTERNAL, envelope_bytes
from shared.metrics import ACTIVE_STREAMS, HTTP_LATENCY, HTTP_REQUESTS

log = structlog.get_logger("plexus.gateway")

DISCONNECT: Message = {"type": "http.disconnect"}
_SSE = b"text/event-stream"
_STREAMS = ACTIVE_STREAMS.labels("gateway")
_RELEASES: set[asyncio.Task] = set()  # strong refs: a shielded release must outlive its waiter
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# hop-by-hop headers (RFC 9110 §7.6.1) and the ones each side sets for itself
_REQ_DROP = frozenset({b"host", b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                       b"transfer-encoding", b"upgrade", b"expect"})
_RESP_DROP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"date", b"server"})


class Meter:
    """Metric children cached per label set: ``labels()`` on every request costs more than the hop."""

    def __init__(self) -> None:
        self._latency: dict[str, Any] = {}
        self._count: dict[tuple[str, str, int], Any] = {}

    def observe(self, route: str, method: str, status: int, t0: float) -> None:
        lat = self._latency.get(route)
        if lat is None:
            lat = self._latency[route] = HTTP_LATENCY.labels("gateway", route)
        lat.observe(time.perf_counter() - t0)
        key = (route, method, status)
        c = self._count.get(key)
        if c is None:
            m = method if method in _METHODS else "OTHER"  # client-chosen methods must not grow labels
            c = self._count[key] = HTTP_REQUESTS.labels("gateway", route, m, str(status))
        c.inc()


async def reply(send: Send, status: int, code: str, message: str, request_id: bytes,
                headers: list[tuple[bytes, bytes]] | tuple = (), **extra: Any) -> None:
    """A gateway-made error in the Dify envelope."""
    body = envelope_bytes(status, code, message, **extra)
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                    (b"x-request-id", request_id), *headers],
    })
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


class Exchange:
    __slots__ = (
        "_receive", "_send", "auto_watch", "disconnected", "extra", "finished", "max_body", "meter",
        "method", "on_disconnect", "overflow", "received", "release", "replied", "request_id", "route",
        "rx_pending", "scope", "sse", "sse_open", "started", "stash", "t0", "wake", "watcher",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send, *, meter: Meter, route: str, t0: float,
                 request_id: bytes, extra: list[tuple[bytes, bytes]], max_body: int,
                 release: Callable[[], Awaitable[None]] | None) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.meter = meter
        self.route = route
        self.method = scope["method"]
        self.t0 = t0
        self.request_id = request_id
        self.extra = extra
        self.max_body = max_body
        self.release = release
        self.auto_watch = False
        self.received = 0
        self.started = False
        self.replied = False  # the gateway answered itself (413); downstream output is dropped
        self.finished = False
        self.sse = False
        self.sse_open = False  # counted in ACTIVE_STREAMS
        self.disconnected = False
        self.overflow = False
        self.rx_pending = 0
        self.watcher: asyncio.Task | None = None
        self.stash: deque[Message] | None = None
        self.wake: asyncio.Event | None = None
        self.on_disconnect: Callable[[], Any] | None = None

    # --- client → service -----------------------------------------------------------------------

    async def receive(self) -> Message:
        if self.overflow or self.disconnected:
            return DISCONNECT
        if self.watcher is not None:
            return await self._from_watcher()
        self.rx_pending += 1
        try:
            msg = await self._receive()
        finally:
            self.rx_pending -= 1
        return await self._inbound(msg)

    async def _inbound(self, msg: Message) -> Message:
        kind = msg["type"]
        if kind == "http.request":
            body = msg.get("body")
            if body:
                self.received += len(body)
                if self.received > self.max_body:
                    await self._too_large()
                    return DISCONNECT
        elif kind == "http.disconnect":
            await self._gone()
        return msg

    async def _too_large(self) -> None:
        # chunked body over the limit: answer 413 if we still can; the service sees a disconnect
        self.overflow = True
        if not self.started:
            self.started = self.replied = True
            self.meter.observe(self.route, self.method, 413, self.t0)
            await reply(self._send, 413, "request_entity_too_large",
                        f"Request body exceeds the limit of {self.max_body} bytes.", self.request_id)
        await self.finish()

    async def _gone(self) -> None:
        if self.disconnected:
            return
        self.disconnected = True
        if self.on_disconnect is not None:
            self.on_disconnect()
        await self.finish()

    # --- the exchange's own reader, for streamed responses ---------------------------------------

    def watch(self) -> None:
        """Read the client channel ourselves while a streamed response runs, to see a disconnect.

        Only when nobody is reading it already; later ``receive`` calls are served from what the
        reader saw, so the channel always has exactly one reader.
        """
        if self.watcher is None and self.rx_pending == 0 and not self.finished:
            self.stash = deque()
            self.wake = asyncio.Event()
            self.watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            msg = await self._inbound(await self._receive())
            if msg["type"] == "http.disconnect":
                self._wake()
                return
            self.stash.append(msg)  # a body chunk the service has not asked for yet
            self._wake()

    def _wake(self) -> None:
        # swap in a fresh event so every current waiter wakes and later ones wait anew
        ev, self.wake = self.wake, asyncio.Event()
        ev.set()

    async def _from_watcher(self) -> Message:
        while True:
            if self.stash:
                return self.stash.popleft()
            if self.disconnected or self.overflow or self.watcher.done():
                return DISCONNECT
            await self.wake.wait()

    # --- service → client -----------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        if self.replied:
            return
        kind = message["type"]
        if kind == "http.response.body":
            more = message.get("more_body", False)
            try:
                await self._send(message)
            except BaseException:
                await self.finish()
                raise
            if not more:
                await self.finish()
            elif self.auto_watch and self.watcher is None:
                self.watch()
            return
        if kind == "http.response.start":
            self.started = True
            message = self._start(message)
            self.meter.observe(self.route, self.method, message["status"], self.t0)
            await self._send(message)
            if self.sse and self.auto_watch:
                self.watch()
            return
        await self._send(message)

    def _start(self, message: Message) -> Message:
        headers = list(message.get("headers") or ())
        has_rid = False
        for k, v in headers:
            if k == b"content-type":
                if v.startswith(_SSE):
                    self.sse = True
            elif k == b"x-request-id":
                has_rid = True
        if self.sse:
            # proxies in front of us must not buffer or cache the stream
            headers = [(k, v) for k, v in headers if k != b"cache-control" and k != b"x-accel-buffering"]
            headers.append((b"cache-control", b"no-cache"))
            headers.append((b"x-accel-buffering", b"no"))
            if not self.finished:  # a client gone before the stream began is no open stream
                self.sse_open = True
                _STREAMS.inc()
        if not has_rid:
            headers.append((b"x-request-id", self.request_id))
        if self.extra:
            headers += self.extra
        out = dict(message)
        out["headers"] = headers
        return out

    async def finish(self) -> None:
        """Idempotent end of the exchange: stop the reader, count the stream, free the slot."""
        if self.finished:
            return
        self.finished = True
        w = self.watcher
        if w is not None:
            if w is not asyncio.current_task():
                w.cancel()
            self._wake()
        if self.sse_open:
            self.sse_open = False
            _STREAMS.dec()
        release, self.release = self.release, None
        if release is not None:
            # finish() often runs inside the service's send(), which Starlette cancels when the client
            # goes away; a cancelled HDEL would hold the slot until the stale purge, so shield it
            task = asyncio.ensure_future(release())
            _RELEASES.add(task)
            task.add_done_callback(_RELEASES.discard)
            await asyncio.shield(task)


# --- `all` mode: in-process ------------------------------------------------------------------------

async def forward_local(ex: Exchange, app: ASGIApp, headers: list[tuple[bytes, bytes]]) -> None:
    scope = dict(ex.scope)
    scope["headers"] = headers
    ex.auto_watch = True
    try:
        await app(scope, ex.receive, ex.send)
    except Exception:
        if ex.replied or ex.disconnected:
            return  # the service noticed the client is gone (or was told so after a 413)
        if not ex.started:
            log.exception("service_failed", route=ex.route, request_id=ex.request_id.decode("latin-1"))
            ex.started = True
            ex.meter.observe(ex.route, ex.method, 500, ex.t0)
            await reply(ex._send, 500, "internal_server_error", INTERNAL, ex.request_id)
        elif not ex.finished:
            raise  # half-sent response: let the server cut the connection
        # a finished response whose app raised afterwards (Starlette re-raises after its 500): logged there


# --- split mode: HTTP upstream --------------------------------------------------------------------
# aiohttp, not httpx: on the project machine an httpx.AsyncClient round trip costs ~1 ms (streamed:
# ~1.3 ms) against ~0.14 ms for aiohttp (encode/httpx#3215), and the gateway's whole budget in split
# mode is 1 ms. aiohttp is already in the lock (litellm depends on it).

_TIMEOUT_ERRORS = (asyncio.TimeoutError, aiohttp.ServerTimeoutError)
# resumable: the run's events stay in its log (GET /v1/chat-messages/{task_id}/events on any replica)
_STREAM_BROKEN = (b'data: {"event": "error", "status": 502, "code": "bad_gateway", "message": '
                  b'"The service running this stream stopped; resume it from its events endpoint."}\n\n')


class HttpForwarder:
    def __init__(self, timeout: float) -> None:
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(10.0, timeout), sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=30),
                timeout=self.timeout,
                auto_decompress=False,  # bytes pass through as the service encoded them
                cookie_jar=aiohttp.DummyCookieJar(),  # never carry one client's cookies to another
                # forward exactly the client's headers, nothing aiohttp would add on its own
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(self, ex: Exchange, base_url: str, headers: list[tuple[bytes, bytes]],
                      has_body: bool) -> None:
        scope = ex.scope
        out = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers if k not in _REQ_DROP]
        client_addr = scope.get("client")
        if client_addr:
            out.append(("x-forwarded-for", client_addr[0]))
        out.append(("x-forwarded-proto", scope.get("scheme", "http")))
        url = base_url + (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        try:
            resp = await self.session.request(
                ex.method, URL(url, encoded=True), headers=out, data=self._body(ex) if has_body else None,
                allow_redirects=False,
            )
        except Exception as e:
            if ex.overflow or ex.disconnected:
                return  # 413 already sent, or nobody left to answer
            if isinstance(e, _TIMEOUT_ERRORS):
                log.warning("upstream_timeout", url=base_url, error=repr(e),
                            request_id=ex.request_id.decode("latin-1"))
                return await self._fail(ex, 504, "gateway_timeout",
                                        "The upstream service did not respond in time.")
            if not isinstance(e, aiohttp.ClientError):
                raise
            log.warning("upstream_unreachable", url=base_url, error=repr(e),
                        request_id=ex.request_id.decode("latin-1"))
            return await self._fail(ex, 502, "bad_gateway", "The upstream service is unavailable.")
        await self._relay(ex, resp)

    async def _fail(self, ex: Exchange, status: int, code: str, message: str) -> None:
        if ex.started or ex.disconnected:
            return
        ex.started = True
        ex.meter.observe(ex.route, ex.method, status, ex.t0)
        await reply(ex._send, status, code, message, ex.request_id)

    @staticmethod
    async def _body(ex: Exchange):
        while True:
            msg = await ex.receive()
            if msg["type"] != "http.request":
                raise BodyTooLarge() if ex.overflow else ClientGone()
            body = msg.get("body")
            if body:
                yield body
            if not msg.get("more_body", False):
                return

    @staticmethod
    async def _relay(ex: Exchange, resp: aiohttp.ClientResponse) -> None:
        task = asyncio.current_task()
        complete = False
        at_boundary = True  # the last chunk relayed ended an SSE event
        try:
            headers = []
            length = -1
            for k, v in resp.raw_headers:
                k = k.lower()
                if k in _RESP_DROP:
                    continue
                if k == b"content-length":
                    length = int(v)
                headers.append((k, v))
            await ex.send({"type": "http.response.start", "status": resp.status, "headers": headers})
            if ex.sse or length < 0:
                # a stream: on disconnect, cancel the relay so the upstream sees the close too
                ex.on_disconnect = task.cancel
                ex.watch()
            if length == 0 or ex.method == "HEAD":
                await ex.send({"type": "http.response.body", "body": b"", "more_body": False})
                complete = True
                return
            async for chunk in resp.content.iter_any():
                at_boundary = chunk.endswith(b"\n\n")
                if length >= 0:
                    length -= len(chunk)
                    more = length > 0
                else:
                    more = True
                await ex.send({"type": "http.response.body", "body": chunk, "more_body": more})
                if ex.finished:
                    complete = not ex.disconnected
                    return
            await ex.send({"type": "http.response.body", "body": b"", "more_body": False})
            complete = True
        except asyncio.CancelledError:
            if not ex.disconnected:
                raise
            task.uncancel()
        except (aiohttp.ClientError, *_TIMEOUT_ERRORS) as e:
            # headers are out: an event stream cut between two events (the replica running it died) ends
            # with an `error` event; anything else is cut so the client sees it incomplete
            log.warning("upstream_stream_broken", error=repr(e), request_id=ex.request_id.decode("latin-1"))
            if ex.sse and at_boundary and not ex.disconnected and not ex.finished:
                try:
                    await ex.send({"type": "http.response.body", "body": _STREAM_BROKEN, "more_body": False})
                except Exception:  # noqa: BLE001, S110 - the client is gone as well
                    pass
        finally:
            ex.on_disconnect = None
            if complete:
                resp.release()  # back to the pool
            else:
                resp.close()  # mid-body: this connection cannot be reused

"""Egress against real local HTTP servers: loopback blocked unless allowlisted, redirects re-checked per hop,
DNS rebinding impossible, body cap (gzip bombs too), timeouts, credentials on redirects, 303 semantics."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from shared.egress import Egress, EgressError, EgressPolicy
from tests.support import Served, serve

LOCAL = EgressPolicy.from_allowlist(["127.0.0.1/32"])


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Target:
    """A real HTTP server on 127.0.0.1 that records every request it sees."""

    hits: list[Hit] = field(default_factory=list)
    served: Served | None = None

    @property
    def url(self) -> str:
        assert self.served
        return self.served.url

    @property
    def port(self) -> int:
        assert self.served
        return self.served.port

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.hits.append(Hit(request.method, request.url.path, dict(request.headers), body))
        path, q = request.url.path, request.query_params
        if path == "/redirect":
            return Response(status_code=int(q.get("status", "302")), headers={"Location": q["to"]})
        if path == "/bye":
            return PlainTextResponse("bye", headers={"Connection": "close"})
        if path == "/loop":
            return Response(status_code=302, headers={"Location": "/loop"})
        if path == "/big":
            return Response(b"x" * int(q["n"]))
        if path == "/gzip":
            return Response(gzip.compress(b"\0" * int(q["n"])), headers={"Content-Encoding": "gzip"})
        if path == "/slow":
            for _ in range(int(float(q["s"]) / 0.05)):
                await asyncio.sleep(0.05)
                if await request.is_disconnected():
                    break
            return PlainTextResponse("late")
        return JSONResponse({"method": request.method, "path": path, "body": body.decode(),
                             "headers": dict(request.headers)})


async def start_target() -> Target:
    t = Target()
    t.served = await serve(Starlette(routes=[Route("/{path:path}", t.handle, methods=[
        "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"])]))
    return t


@pytest.fixture(scope="module")
async def servers() -> AsyncIterator[tuple[Target, Target]]:
    a, b = await start_target(), await start_target()
    yield a, b
    for t in (a, b):
        assert t.served
        await t.served.stop()


@pytest.fixture
async def target(servers: tuple[Target, Target]) -> Target:
    for t in servers:
        t.hits.clear()
    return servers[0]


@pytest.fixture
async def other(servers: tuple[Target, Target]) -> Target:
    return servers[1]


class Trap:
    """A bare TCP listener: any connection to it means a blocked address was reached."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> Trap:
        def on_connect(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.connections += 1
            w.close()

        try:
            self.server = await asyncio.start_server(on_connect, host, port)
        except OSError:  # e.g. no IPv6 on this host: nothing can be reached there either
            self.server = None
        return self

    async def stop(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()


class DNS:
    """An injected resolver that records every lookup; answers may change per call (rebinding)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers, self.calls = answers, []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        seq = self.answers[host]
        return seq[min(self.calls.count(host), len(seq)) - 1]


async def call(egress: Egress, method: str, url: str, **kw) -> EgressError:
    with pytest.raises(EgressError) as e:
        await egress.request(method, url, **kw)
    return e.value


async def test_loopback_blocked_unless_allowlisted(target: Target) -> None:
    closed, open_ = Egress(EgressPolicy()), Egress(LOCAL)
    try:
        err = await call(closed, "GET", f"{target.url}/hello")
        assert (err.code, err.category) == ("ssrf_blocked", "loopback")
        assert target.hits == []
        r = await open_.request("GET", f"{target.url}/hello", params={"q": "1 2"})
        assert r.status == 200 and r.json()["path"] == "/hello" and r.url.startswith(target.url)
        assert r.json()["headers"]["user-agent"] == "Plexus-Tools/1.0" and r.elapsed > 0
        assert [(h.method, h.path) for h in target.hits] == [("GET", "/hello")]
    finally:
        await closed.close()
        await open_.close()


async def test_localhost_name_is_blocked(target: Target) -> None:
    egress = Egress(EgressPolicy())  # the real resolver: localhost is 127.0.0.1 (and maybe ::1)
    try:
        err = await call(egress, "GET", f"http://localhost:{target.port}/")
        assert (err.code, err.category) == ("ssrf_blocked", "loopback") and "localhost" in str(err)
        assert target.hits == []
    finally:
        await egress.close()


async def test_allowlisted_hostname_reaches_loopback(target: Target) -> None:
    dns = DNS({"tools.internal": [["127.0.0.1"]]})
    egress = Egress(EgressPolicy.from_allowlist(["tools.internal"]), resolve=dns)
    try:
        r = await egress.request("GET", f"http://tools.internal:{target.port}/x")
        assert r.status == 200 and r.json()["headers"]["host"] == f"tools.internal:{target.port}"
        err = await call(egress, "GET", f"{target.url}/x")  # the name is allowed, not the address
        assert err.code == "ssrf_blocked"
        assert len(target.hits) == 1
    finally:
        await egress.close()


@pytest.mark.parametrize("to", [
    "http://169.254.169.254/latest/meta-data/", "http://[::1]:{port}/", "http://127.0.0.2:{port}/",
    "http://internal.test:{port}/", "http://2130706434:{port}/", "http://[::ffff:127.0.0.2]:{port}/",
])
async def test_redirect_to_blocked_target_is_refused(target: Target, to: str) -> None:
    to = to.format(port=target.port)
    traps = [await Trap().start("127.0.0.2", target.port), await Trap().start("::1", target.port)]
    dns = DNS({"internal.test": [["10.0.0.1"]]})
    egress = Egress(LOCAL, resolve=dns)
    try:
        err = await call(egress, "GET", f"{target.url}/redirect", params={"to": to})
        assert err.code == "ssrf_blocked", str(err)
        assert [h.path for h in target.hits] == ["/redirect"]  # nothing but the redirecting hop
        assert [t.connections for t in traps] == [0, 0]
        assert dns.calls == (["internal.test"] if "internal.test" in to else [])
    finally:
        await egress.close()
        for t in traps:
            await t.stop()


async def test_dns_rebinding_cannot_swap_the_checked_address(target: Target) -> None:
    # First answer: the allowlisted 127.0.0.1; every later answer: 127.0.0.2, where a trap listens on the
    # same port. Code that checks one lookup and connects with another would land in the trap (or look up
    # twice); code that reuses an earlier answer for a new connection would not be refused at /three.
    trap = await Trap().start("127.0.0.2", target.port)
    dns = DNS({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    egress = Egress(LOCAL, resolve=dns)
    base = f"http://rebind.test:{target.port}"
    try:
        r = await egress.request("GET", f"{base}/one")
        assert r.status == 200 and dns.calls == ["rebind.test"]  # one lookup for one connection
        r = await egress.request("GET", f"{base}/bye")  # same (pooled) connection: no lookup; server closes it
        assert r.status == 200 and r.headers["Connection"] == "close" and dns.calls == ["rebind.test"]
        err = await call(egress, "GET", f"{base}/three")  # a new connection: looked up and checked again
        assert (err.code, err.category) == ("ssrf_blocked", "loopback") and "127.0.0.2" in str(err)
        assert dns.calls == ["rebind.test", "rebind.test"]
        assert [h.path for h in target.hits] == ["/one", "/bye"]
        assert trap.server is None or trap.connections == 0
    finally:
        await egress.close()
        await trap.stop()


async def test_mixed_answer_with_one_blocked_address_is_refused(target: Target) -> None:
    dns = DNS({"mixed.test": [["127.0.0.1", "10.0.0.1"]]})
    egress = Egress(LOCAL, resolve=dns)
    try:
        err = await call(egress, "GET", f"http://mixed.test:{target.port}/")
        assert (err.code, err.category) == ("ssrf_blocked", "private")
        assert target.hits == []
    finally:
        await egress.close()


async def test_body_cap_counts_decompressed_bytes(target: Target) -> None:
    egress = Egress(LOCAL)
    try:
        r = await egress.request("GET", f"{target.url}/big?n=100000", max_bytes=100_000)
        assert r.body == b"x" * 100_000  # exactly the cap is fine
        err = await call(egress, "GET", f"{target.url}/big?n=100001", max_bytes=100_000)
        assert err.code == "response_too_large"
        err = await call(egress, "GET", f"{target.url}/big?n=5000000", max_bytes=100_000)
        assert err.code == "response_too_large"
        assert len(gzip.compress(b"\0" * 20_000_000)) < 100_000  # the bomb is small on the wire
        err = await call(egress, "GET", f"{target.url}/gzip?n=20000000", max_bytes=100_000)
        assert err.code == "response_too_large" and "100000" in str(err)
        r = await egress.request("GET", f"{target.url}/gzip?n=50000", max_bytes=100_000)
        assert r.body == b"\0" * 50_000
    finally:
        await egress.close()


async def test_slow_server_times_out(target: Target) -> None:
    egress = Egress(LOCAL)
    try:
        t0 = time.monotonic()
        err = await call(egress, "GET", f"{target.url}/slow?s=3", timeout=0.3)
        assert err.code == "timeout" and time.monotonic() - t0 < 1.5
    finally:
        await egress.close()


async def test_nothing_listening_is_a_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connection refused
        egress = Egress(LOCAL)
        try:
            assert (await call(egress, "GET", f"http://127.0.0.1:{port}/")).code == "connection_error"
        finally:
            await egress.close()


async def test_credentials_dropped_on_cross_origin_redirect_only(target: Target, other: Target) -> None:
    egress = Egress(LOCAL)
    headers = {"Authorization": "Bearer s3cret", "Cookie": "sid=1", "X-Api-Key": "k", "X-Trace": "t1"}
    try:
        r = await egress.request("GET", f"{target.url}/redirect", params={"to": "/echo"}, headers=headers,
                                 sensitive_headers=["x-api-key"])
        got = r.json()["headers"]
        assert (got["authorization"], got["cookie"], got["x-api-key"], got["x-trace"]) == (
            "Bearer s3cret", "sid=1", "k", "t1")
        r = await egress.request("GET", f"{target.url}/redirect", params={"to": f"{other.url}/echo"},
                                 headers=headers, sensitive_headers=["x-api-key"])
        got = r.json()["headers"]
        assert r.url == f"{other.url}/echo" and got["x-trace"] == "t1"
        assert not {"authorization", "cookie", "x-api-key"} & set(got)
        assert "authorization" not in other.hits[-1].headers
    finally:
        await egress.close()


@pytest.mark.parametrize(("status", "method", "body"), [
    (303, "GET", ""), (302, "GET", ""), (301, "GET", ""), (307, "POST", "payload"), (308, "POST", "payload"),
])
async def test_redirect_method_semantics(target: Target, status: int, method: str, body: str) -> None:
    egress = Egress(LOCAL)
    try:
        r = await egress.request("POST", f"{target.url}/redirect", params={"status": status, "to": "/echo"},
                                 content=b"payload", headers={"Content-Type": "text/plain"})
        assert (r.json()["method"], r.json()["body"]) == (method, body)
        assert [(h.method, h.path, h.body) for h in target.hits] == [
            ("POST", "/redirect", b"payload"), (method, "/echo", body.encode())]
        assert ("content-type" in target.hits[-1].headers) == (method == "POST")
    finally:
        await egress.close()


async def test_redirect_limit(target: Target) -> None:
    egress = Egress(LOCAL)
    try:
        err = await call(egress, "GET", f"{target.url}/loop", max_redirects=3)
        assert err.code == "too_many_redirects"
        assert len(target.hits) == 4  # the first request and three followed redirects
        target.hits.clear()
        r = await egress.request("GET", f"{target.url}/redirect", params={"to": "/redirect?to=/done"})
        assert r.status == 200 and r.json()["path"] == "/done" and r.url == f"{target.url}/done"
    finally:
        await egress.close()


async def test_redirect_to_other_scheme_is_refused(target: Target) -> None:
    egress = Egress(LOCAL)
    try:
        err = await call(egress, "GET", f"{target.url}/redirect", params={"to": "file:///etc/passwd"})
        assert err.code == "invalid_url"
    finally:
        await egress.close()

"""The one guarded way to call user-configured URLs (custom tools, webhooks, HTTP nodes): blocks SSRF.

Every address a connection may use is checked, and aiohttp connects only to the addresses our resolver
returned, so the DNS answer that was checked is the one that is used (no rebinding window). IP literals
never reach a resolver in aiohttp, so ``EgressPolicy.check_url`` judges them before each hop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolve = Callable[[str, int], Awaitable[list[str]]]

_net = ipaddress.ip_network
# 168.63.129.16 (Azure wireserver) is public address space: only an explicit list catches it.
METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "168.63.129.16"))
_PRIVATE = tuple(map(_net, ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fec0::/10")))
_CGNAT = _net("100.64.0.0/10")
_THIS_NET = _net("0.0.0.0/8")
_NAT64_LOCAL = _net("64:ff9b:1::/48")  # local-use translation prefix: a site's own network
# IPv6 forms whose last 32 bits are an IPv4 address the packet ends up at: NAT64, SIIT, IPv4-compatible.
_EMBED_LOW32 = (_net("64:ff9b::/96"), _net("::ffff:0:0:0/96"), _net("::/96"))
# Dropped when a redirect changes origin: they were meant for the first one (Host would misroute).
_SENSITIVE = frozenset({"authorization", "cookie", "proxy-authorization", "host"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HOSTNAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")
_IPV4_PART = re.compile(r"0x(?P<hex>[0-9a-f]*)|(?P<oct>0[0-7]*)|(?P<dec>[1-9][0-9]*)")


class EgressError(Exception):
    """A refused or failed outbound call. ``code``: ssrf_blocked, invalid_url, timeout, response_too_large,
    too_many_redirects or connection_error; ``category`` names the address class for ssrf_blocked."""

    def __init__(self, code: str, message: str, *, category: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.category = code, message, category


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form really reaches: it must be judged as that address."""
    if ip.version == 4:
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in n for n in _EMBED_LOW32) and int(ip) > 1:  # :: and ::1 are themselves
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _category(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be reached, or None if it is a global unicast address."""
    if ip in METADATA:
        return "cloud metadata endpoint"
    if ip.is_unspecified or ip in _THIS_NET:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip in _CGNAT:
        return "shared address space (CGNAT)"
    if any(ip in n for n in _PRIVATE):
        return "private"
    if not ip.is_global or ip in _NAT64_LOCAL:
        return "reserved (not globally routable)"
    return None


def _legacy_ipv4(labels: list[str]) -> ipaddress.IPv4Address | None:
    """inet_aton forms (2130706433, 0x7f.1, 0177.0.0.1, 127.1) that resolvers turn into addresses."""
    nums = []
    for label in labels:
        if (m := _IPV4_PART.fullmatch(label)) is None:
            return None
        hex_, oct_, dec = m["hex"], m["oct"], m["dec"]
        nums.append(int(hex_ or "0", 16) if hex_ is not None else int(oct_, 8) if oct_ else int(dec))
    if not 1 <= len(nums) <= 4:
        return None
    *head, last = nums
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    return ipaddress.IPv4Address(sum(n << 8 * (3 - i) for i, n in enumerate(head)) + last)


@dataclass(frozen=True)
class EgressPolicy:
    """Which destinations are allowed: global unicast addresses, plus the operator's allowlist."""

    allow_nets: tuple[IPNetwork, ...] = ()
    allow_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_allowlist(cls, entries: Iterable[str]) -> EgressPolicy:
        """CIDRs (or bare addresses) and exact hostnames; anything else is a config error (ValueError)."""
        nets: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if not _HOSTNAME.fullmatch(entry):
                    raise ValueError(f"egress allowlist: {raw!r} is neither a CIDR nor a hostname") from None
                hosts.add(entry.rstrip("."))
        return cls(tuple(nets), frozenset(hosts))

    def check_ip(self, ip: str | IPAddress, *, host: str | None = None) -> None:
        """Raise ssrf_blocked unless ``ip`` may be reached (for ``host``, if it is an allowlisted name).
        Metadata endpoints stay blocked unless the allowlist names that exact address: a broad CIDR
        such as 169.254.0.0/16 is likelier an accident than a wish to expose instance credentials."""
        addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        embedded = _embedded_v4(addr)
        judged = addr if embedded is None else embedded
        category = _category(judged)
        if category is None:
            return
        if host is not None and host.rstrip(".").lower() in self.allow_hosts and judged not in METADATA:
            return
        for net in self.allow_nets:
            if (addr in net or judged in net) and (judged not in METADATA or net.num_addresses == 1):
                return
        via = f" (embeds {judged})" if judged is not addr else ""
        name = f" for host {host!r}" if host else ""
        raise EgressError("ssrf_blocked", f"{addr}{via}{name} is blocked: {category} address",
                          category=category)

    def check_url(self, url: str | URL) -> URL:
        """Parse and vet one hop: http(s) only, no userinfo, a sane host; IP literals are judged here."""
        try:
            u = url if isinstance(url, URL) else URL(url)
            host = u.host
        except (ValueError, TypeError) as e:
            raise EgressError("invalid_url", f"invalid URL {url!s:.200}: {e}") from e
        if u.scheme not in ("http", "https"):
            raise EgressError("invalid_url", f"scheme {u.scheme!r} not allowed: only http and https")
        if u.user is not None or u.password is not None:
            raise EgressError("invalid_url", "credentials in the URL are not allowed (send a header instead)")
        if not host:
            raise EgressError("invalid_url", f"URL {url!s:.200} has no host")
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            labels = host.rstrip(".").split(".")
            literal = None
            if _NUMERIC_LABEL.fullmatch(labels[-1]):  # as in the WHATWG URL spec: then it is an IPv4 host
                literal = _legacy_ipv4(labels)
                if literal is None:
                    raise EgressError("invalid_url", f"host {host!r} is not a valid IPv4 address") from None
            elif len(host) > 253 or not _HOSTNAME.fullmatch(host):
                raise EgressError("invalid_url", f"invalid host name {host!r}") from None
        if literal is not None:
            self.check_ip(literal)
            if literal.version == 4 and str(literal) != host:
                raise EgressError("invalid_url", f"non-canonical IPv4 host {host!r}: write {literal}")
        return u


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _CheckedResolver(AbstractResolver):
    """Resolves once per new connection (the connector's DNS cache is off) and returns only checked
    addresses; aiohttp connects to exactly these, so no second lookup can swap in another address."""

    def __init__(self, policy: EgressPolicy, resolve: Resolve) -> None:
        self._policy, self._resolve = policy, resolve

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_UNSPEC) -> list[ResolveResult]:
        try:
            addrs = [ipaddress.ip_address(a) for a in await self._resolve(host, port)]
        except (OSError, ValueError) as e:
            raise EgressError("connection_error", f"cannot resolve {host!r}: {e}") from e
        if not addrs:
            raise EgressError("connection_error", f"{host!r} resolved to no address")
        for ip in addrs:  # ANY blocked answer refuses the host: never pick the "good" one of a mixed set
            self._policy.check_ip(ip, host=host)
        flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        found = [(ip, socket.AF_INET if ip.version == 4 else socket.AF_INET6) for ip in addrs]
        return [{"hostname": host, "host": str(ip), "port": port, "family": fam, "proto": 0, "flags": flags}
                for ip, fam in found if family in (0, fam)]

    async def close(self) -> None:
        pass


@dataclass(frozen=True)
class EgressResponse:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str  # after redirects
    elapsed: float  # seconds, the whole call

    def text(self) -> str:
        m = re.search(r'charset="?([\w.:-]+)', self.headers.get("Content-Type", ""), re.IGNORECASE)
        try:
            return self.body.decode(m.group(1) if m else "utf-8", errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


class Egress:
    """Outbound HTTP under an ``EgressPolicy``. Proxies and environment settings are ignored (a proxy
    would do its own resolving), cookies are never stored (one session serves every user's calls)."""

    def __init__(self, policy: EgressPolicy, *, resolve: Resolve | None = None,
                 user_agent: str = "Plexus-Tools/1.0") -> None:
        self.policy = policy
        self._resolve = resolve or _getaddrinfo
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:  # created inside the running loop
            connector = aiohttp.TCPConnector(resolver=_CheckedResolver(self.policy, self._resolve),
                                             use_dns_cache=False)
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None), headers={"User-Agent": self._user_agent})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                      params: Mapping[str, Any] | Sequence[tuple[str, str]] | None = None,
                      content: bytes | None = None, timeout: float = 10.0, max_bytes: int = 1_000_000, max_redirects: int = 5,
                      sensitive_headers: Iterable[str] = ()) -> EgressResponse:
        """One call, redirects included, within ``timeout`` seconds. ``sensitive_headers`` (besides
        Authorization, Cookie, Proxy-Authorization) are dropped when a redirect changes origin."""
        started, method = time.monotonic(), method.upper()
        secret = _SENSITIVE | {h.lower() for h in sensitive_headers}
        hdrs: CIMultiDict[str] = CIMultiDict(headers or {})
        async with _guarded(timeout):
            target = self.policy.check_url(url)
            try:
                target = target.extend_query(params or {})
            except (TypeError, ValueError) as e:
                raise EgressError("invalid_url", f"invalid query parameters: {e}") from e
            for hop in range(max_redirects + 1):
                async with self._client().request(method, target, headers=hdrs, data=content,
                                                  allow_redirects=False) as resp:
                    location = resp.headers.get("Location") if resp.status in _REDIRECTS else None
                    if location is None:
                        body = await _read_capped(resp, max_bytes)
                        return EgressResponse(resp.status, CIMultiDictProxy(CIMultiDict(resp.headers)), body,
                                              str(target), time.monotonic() - started)
                if hop == max_redirects:
                    raise EgressError("too_many_redirects", f"more than {max_redirects} redirects")
                try:
                    nxt = self.policy.check_url(target.join(URL(location)))
                except ValueError as e:  # yarl's parse errors (EgressError is no ValueError)
                    raise EgressError("invalid_url", f"invalid redirect Location {location!r:.200}") from e
                to_get = resp.status == 303 and method != "HEAD"
                if to_get or (resp.status in (301, 302) and method == "POST"):
                    method, content = "GET", None  # as browsers do; 307/308 keep method and body
                    for h in ("Content-Type", "Content-Length", "Transfer-Encoding"):
                        hdrs.popall(h, None)
                if nxt.origin() != target.origin():
                    for h in [k for k in hdrs if k.lower() in secret]:
                        hdrs.popall(h, None)
                target = nxt
        raise AssertionError("unreachable")


@asynccontextmanager
async def _guarded(timeout: float) -> AsyncIterator[None]:
    """The whole call under one deadline; aiohttp and OS errors never escape, only EgressError."""
    try:
        async with asyncio.timeout(timeout):
            yield
    except EgressError:
        raise
    except TimeoutError as e:  # before ClientError: aiohttp's own timeouts are both
        raise EgressError("timeout", f"no complete response within {timeout:g}s") from e
    except aiohttp.InvalidURL as e:
        raise EgressError("invalid_url", f"invalid URL: {e}") from e
    except (aiohttp.ClientError, OSError) as e:
        raise EgressError("connection_error", f"{type(e).__name__}: {e}") from e


async def _read_capped(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The (decompressed) body, refused as soon as it exceeds ``max_bytes``: a gzip bomb stops early."""
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        buf += chunk
        if len(buf) > max_bytes:
            resp.close()
            raise EgressError("response_too_large", f"response body exceeds {max_bytes} bytes")
    return bytes(buf)

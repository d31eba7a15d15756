"""The egress policy: every blocked address class, embedded IPv4, the allowlist, URL vetting; and the
request path refusing before any connection (an injected resolver: no network)."""

from __future__ import annotations

import ipaddress

import pytest

from shared.egress import Egress, EgressError, EgressPolicy

LOOP, PRIV, LL, CGNAT = "loopback", "private", "link-local", "shared address space (CGNAT)"
MCAST, UNSPEC = "multicast", "unspecified"
RES, META = "reserved (not globally routable)", "cloud metadata endpoint"

BLOCKED = [
    ("127.0.0.1", LOOP), ("127.255.255.254", LOOP), ("::1", LOOP),
    ("10.0.0.1", PRIV), ("10.255.255.255", PRIV), ("172.16.0.1", PRIV), ("172.31.255.254", PRIV),
    ("192.168.1.1", PRIV), ("fc00::1", PRIV), ("fd12:3456:789a::1", PRIV), ("fec0::1", PRIV),
    ("169.254.0.1", LL), ("169.254.255.254", LL), ("fe80::1", LL), ("febf::1", LL),
    ("100.64.0.1", CGNAT), ("100.127.255.254", CGNAT),
    ("224.0.0.1", MCAST), ("239.255.255.250", MCAST), ("ff02::1", MCAST), ("ff0e::1", MCAST),
    ("0.0.0.0", UNSPEC), ("0.1.2.3", UNSPEC), ("::", UNSPEC),
    ("240.0.0.1", RES), ("255.255.255.255", RES), ("198.18.0.1", RES), ("198.19.255.254", RES),
    ("192.0.2.1", RES), ("198.51.100.7", RES), ("203.0.113.9", RES), ("192.0.0.1", RES),
    ("2001:db8::1", RES), ("100::1", RES), ("2001::1", RES), ("64:ff9b:1::a00:1", RES),
    ("169.254.169.254", META), ("169.254.170.2", META), ("fd00:ec2::254", META),
    ("100.100.100.200", META), ("168.63.129.16", META),
    # IPv6 forms that reach an IPv4 address are judged as that address
    ("::ffff:127.0.0.1", LOOP), ("::ffff:7f00:1", LOOP), ("::ffff:10.1.1.1", PRIV),
    ("::ffff:169.254.169.254", META), ("::ffff:168.63.129.16", META), ("::ffff:0.0.0.0", UNSPEC),
    ("64:ff9b::127.0.0.1", LOOP), ("64:ff9b::a9fe:a9fe", META), ("64:ff9b::c0a8:101", PRIV),
    ("2002:7f00:1::", LOOP), ("2002:a00:1::1", PRIV), ("2002:a9fe:a9fe::", META), ("2002::1", UNSPEC),
    ("::127.0.0.1", LOOP), ("::10.0.0.1", PRIV), ("::169.254.169.254", META), ("::0.0.0.2", UNSPEC),
    ("::ffff:0:127.0.0.1", LOOP),
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2001:4860:4860::8888",
           "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", "100.128.0.1", "172.32.0.1", "11.0.0.1"]


@pytest.mark.parametrize(("ip", "category"), BLOCKED)
def test_blocked_addresses_name_their_category(ip: str, category: str) -> None:
    with pytest.raises(EgressError) as e:
        EgressPolicy().check_ip(ip)
    assert e.value.code == "ssrf_blocked" and e.value.category == category
    assert category in str(e.value) and str(ipaddress.ip_address(ip)) in str(e.value)


@pytest.mark.parametrize("ip", ALLOWED)
def test_global_addresses_pass(ip: str) -> None:
    EgressPolicy().check_ip(ip)


def test_allowlist_cidr_permits_only_its_addresses() -> None:
    p = EgressPolicy.from_allowlist(["127.0.0.1/32", " 10.20.0.0/16 ", "fd00:1::/64", ""])
    for ok in ("127.0.0.1", "10.20.3.4", "fd00:1::5", "::ffff:127.0.0.1", "::ffff:10.20.0.1"):
        p.check_ip(ok)
    for bad in ("127.0.0.2", "10.21.0.1", "fd00:2::5", "192.168.0.1", "::1"):
        with pytest.raises(EgressError):
            p.check_ip(bad)


def test_metadata_needs_an_exact_allowlist_entry() -> None:
    broad = EgressPolicy.from_allowlist(["169.254.0.0/16", "168.63.0.0/16"])
    broad.check_ip("169.254.1.1")
    for meta in ("169.254.169.254", "168.63.129.16"):
        with pytest.raises(EgressError, match="metadata"):
            broad.check_ip(meta)
    EgressPolicy.from_allowlist(["169.254.169.254"]).check_ip("169.254.169.254")


def test_allowlist_hostname_skips_the_address_check_for_that_host_only() -> None:
    p = EgressPolicy.from_allowlist(["Intranet.Example.COM", "10.9.9.9"])
    assert p.allow_hosts == frozenset({"intranet.example.com"})
    p.check_ip("10.0.0.5", host="intranet.example.com")
    p.check_ip("127.0.0.1", host="INTRANET.example.com.")
    with pytest.raises(EgressError):
        p.check_ip("10.0.0.5", host="other.example.com")
    with pytest.raises(EgressError):
        p.check_ip("10.0.0.5")
    with pytest.raises(EgressError, match="metadata"):
        p.check_ip("169.254.169.254", host="intranet.example.com")


@pytest.mark.parametrize("entry", ["not a host", "10.0.0.0/33", "http://x.com/", "a@b"])
def test_allowlist_rejects_garbage(entry: str) -> None:
    with pytest.raises(ValueError):
        EgressPolicy.from_allowlist([entry])


@pytest.mark.parametrize(("url", "code", "category"), [
    ("ftp://example.com/", "invalid_url", None),
    ("file:///etc/passwd", "invalid_url", None),
    ("gopher://127.0.0.1:6379/_INFO", "invalid_url", None),
    ("javascript:alert(1)", "invalid_url", None),
    ("/relative/path", "invalid_url", None),
    ("http:///no-host", "invalid_url", None),
    ("http://user:pw@example.com/", "invalid_url", None),
    ("http://example.com@127.0.0.1/", "invalid_url", None),
    ("http://127.0.0.1\\@example.com/", "invalid_url", None),
    ("http://%31%32%37.0.0.1/", "invalid_url", None),
    ("http://1.2.3.4.5/", "invalid_url", None),
    ("http://256.1.1.1/", "invalid_url", None),
    ("http://134744072/", "invalid_url", None),  # 8.8.8.8, but not written canonically
    ("http://127.0.0.1:8080/", "ssrf_blocked", LOOP),
    ("http://2130706433/", "ssrf_blocked", LOOP),
    ("http://0x7f.1/", "ssrf_blocked", LOOP),
    ("http://0x7f000001/", "ssrf_blocked", LOOP),
    ("http://0177.0.0.1/", "ssrf_blocked", LOOP),
    ("http://127.1/", "ssrf_blocked", LOOP),
    ("http://0/", "ssrf_blocked", UNSPEC),
    ("http://0.0.0.0:80/", "ssrf_blocked", UNSPEC),
    ("http://[::1]/", "ssrf_blocked", LOOP),
    ("http://[::]/", "ssrf_blocked", UNSPEC),
    ("http://[::ffff:7f00:1]/", "ssrf_blocked", LOOP),
    ("http://[::ffff:127.0.0.1]/", "ssrf_blocked", LOOP),
    ("http://[fe80::1%25eth0]/", "ssrf_blocked", LL),
    ("http://169.254.169.254/latest/meta-data/", "ssrf_blocked", META),
    ("https://[fd00:ec2::254]/", "ssrf_blocked", META),
    ("http://0xa9fea9fe/", "ssrf_blocked", META),
    ("http://①②⑦.0.0.1/", "ssrf_blocked", LOOP),
])
def test_check_url_rejects(url: str, code: str, category: str | None) -> None:
    with pytest.raises(EgressError) as e:
        EgressPolicy().check_url(url)
    assert (e.value.code, e.value.category) == (code, category), str(e.value)


@pytest.mark.parametrize("url", ["http://example.com/a?b=1", "HTTPS://Example.COM:8443/", "http://8.8.8.8/",
                                 "http://[2606:4700:4700::1111]/", "http://my_host.example./x"])
def test_check_url_accepts(url: str) -> None:
    assert EgressPolicy().check_url(url).scheme in ("http", "https")


class FakeDNS:
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers, self.calls = answers, []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host not in self.answers:
            raise OSError(f"no such host {host}")
        return self.answers[host]


@pytest.mark.parametrize(("answer", "category"), [
    (["10.0.0.1"], PRIV), (["127.0.0.1"], LOOP), (["169.254.169.254"], META), (["::1"], LOOP),
    (["8.8.8.8", "192.168.0.10"], PRIV),  # any blocked answer refuses the host
    (["2606:4700:4700::1111", "::ffff:127.0.0.1"], LOOP),
])
async def test_request_refuses_a_host_resolving_to_a_blocked_address(answer: list[str], category: str
                                                                     ) -> None:
    dns = FakeDNS({"api.example.test": answer})
    egress = Egress(EgressPolicy(), resolve=dns)
    try:
        with pytest.raises(EgressError) as e:
            await egress.request("GET", "http://api.example.test:8080/x")
        assert (e.value.code, e.value.category) == ("ssrf_blocked", category)
        assert "api.example.test" in str(e.value)
        assert dns.calls == [("api.example.test", 8080)]
    finally:
        await egress.close()


async def test_request_errors_are_egress_errors() -> None:
    dns = FakeDNS({"empty.test": []})
    egress = Egress(EgressPolicy(), resolve=dns)
    try:
        for url, code in [("http://nowhere.test/", "connection_error"),
                          ("http://empty.test/", "connection_error"),
                          ("ftp://x.test/", "invalid_url"), ("http://[::1]:1/", "ssrf_blocked")]:
            with pytest.raises(EgressError) as e:
                await egress.request("GET", url)
            assert e.value.code == code, (url, str(e.value))
        with pytest.raises(EgressError) as e:
            await egress.request("GET", "http://x.test/", params={"a": object()})
        assert e.value.code == "invalid_url"
        assert [h for h, _ in dns.calls] == ["nowhere.test", "empty.test"]
    finally:
        await egress.close()


def test_response_helpers() -> None:
    from multidict import CIMultiDict, CIMultiDictProxy

    from shared.egress import EgressResponse

    h = CIMultiDictProxy(CIMultiDict({"Content-Type": "text/plain; charset=latin-1"}))
    r = EgressResponse(200, h, "café".encode("latin-1"), "http://x/", 0.1)
    assert r.text() == "café"
    r = EgressResponse(200, CIMultiDictProxy(CIMultiDict()), b'{"a": [1]}', "http://x/", 0.1)
    assert r.json() == {"a": [1]} and r.text() == '{"a": [1]}'

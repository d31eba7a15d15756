"""Tools: what a custom tool call costs on its way runtime → NATS → tools service → webhook → back, and
what a second tools replica buys under load.

Setup: an embedded nats-server, a SQLite file migrated with `plexus migrate`, one tenant and two webhook
tool providers (`lookup_order`, POST, API-key header, HMAC signing secret) inserted with SQLModel, one or
two `plexus run tools` processes on production settings (egress allowlist 127.0.0.1/32), and a webhook
in a process of its own (raw ASGI on uvicorn + uvloop + httptools, this module with --serve-webhook). The
webhook checks the API key and the X-Plexus-Signature HMAC of every request (401 otherwise), then answers
`{"order": <the order argument>, "status": "shipped"}`; provider `hook-0ms` answers at once, `hook-5ms`
after `asyncio.sleep(0.005)`. This process plays the runtime: `shared.tool_catalog.call_tool` over its own
NATS connection. Every call must come back ok=True with exactly the expected output, else the bench stops.

1. roundtrip  sequential calls, one at a time, in alternating blocks (noise hits every path alike):
              (a) the same signed POST straight to the webhook with aiohttp (keep-alive): the webhook's own
                  time as a client sees it;
              (b) `call_tool` through ONE tools process to the same webhook; the tools service's own
                  `elapsed` splits (b) into tools-internal time and NATS hops + (de)serialisation;
              (c) `call_tool` of the built-in calculator (no HTTP): the NATS + service floor.
              Target: (b) adds ≤ 2 ms over (a).
2. replicas   C concurrent callers for a fixed time against 1 and then 2 tools processes (the same queue
              group), for each webhook delay; replica counts run in the order --replica-order (default
              1,2,2,1, so drift hits both alike), figures are medians over the runs of a count. The webhook
              alone under the same load is measured once per delay for reference.

    python -m bench.tools [--only roundtrip,replicas] [--requests 2000] [--block 100] [--warmup 200]
                          [--concurrency 32] [--duration 10] [--delays 0,5] [--replica-order 1,2,2,1]
                          [--quick] [--keep-logs]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import orjson

from bench.common import (
    HOST,
    NOFILE,
    Service,
    cpu_seconds,
    free_port,
    median,
    percentile,
    plexus_argv,
    print_machine,
    python_env,
    run_async,
    table,
    verdict,
    workdir,
)

SECTIONS = ("roundtrip", "replicas")
TOOL = "lookup_order"
CALL_TIMEOUT = 10.0
TARGET_ADDED_MS = 2.0
WEBHOOK_KEY_ENV, WEBHOOK_SECRET_ENV = "BENCH_WEBHOOK_API_KEY", "BENCH_WEBHOOK_SIGNING_SECRET"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """X-Plexus-Signature as docs/tools.md defines it (written out here, not imported from the service)."""
    return "v1=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def expected_output(order: int) -> str:
    return orjson.dumps({"order": order, "status": "shipped"}).decode()


# ---- the webhook (its own process: python -m bench.tools --serve-webhook PORT) -------------------


def webhook_app(api_key: str, signing_secret: str) -> Any:
    """Raw ASGI. /hook/<ms>: check X-Api-Key and the HMAC signature (docs/tools.md), sleep <ms>, answer
    {"order": <from the JSON body>, "status": "shipped"}. /readyz: 200."""
    key, secret = api_key.encode(), signing_secret.encode()
    json_headers = [(b"content-type", b"application/json")]

    async def respond(send: Any, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [*json_headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/readyz":
            await respond(send, 200, b'{"status":"ok"}')
            return
        body, more = b"", True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        headers = dict(scope["headers"])
        stamp = headers.get(b"x-plexus-timestamp", b"")
        mac = hmac.new(secret, stamp + b"." + body, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(headers.get(b"x-api-key", b""), key):
            await respond(send, 401, b'{"error":"bad api key"}')
            return
        if (not stamp.isdigit() or abs(time.time() - int(stamp)) > 300
                or not hmac.compare_digest(headers.get(b"x-plexus-signature", b""), b"v1=" + mac)):
            await respond(send, 401, b'{"error":"bad signature"}')
            return
        m = re.fullmatch(r"/hook/(\d+)", path)
        if m is None:
            await respond(send, 404, b'{"error":"not found"}')
            return
        if delay := int(m.group(1)):
            await asyncio.sleep(delay / 1000)
        await respond(send, 200, orjson.dumps({"order": orjson.loads(body).get("order"), "status": "shipped"}))

    return app


def serve_webhook(port: int) -> None:
    import uvicorn

    app = webhook_app(os.environ[WEBHOOK_KEY_ENV], os.environ[WEBHOOK_SECRET_ENV])
    # same uvicorn settings as bench.hello / `plexus run`; a long keep-alive so no idle pooled connection
    # of a tools process is closed between the bench's phases
    uvicorn.run(app, host=HOST, port=port, lifespan="off", access_log=False, log_level="warning", http="auto",
                loop="auto", timeout_keep_alive=120)


# ---- setup ------------------------------------------------------------------------------------------


@dataclass
class Setup:
    env: dict[str, str]  # a tools process's environment (production settings)
    nats_url: str
    tenant_id: str
    providers: dict[int, str]  # webhook delay ms → provider id
    webhook: str  # base URL
    api_key: str
    signing_secret: str
    work: Path
    replicas: list[Service] = field(default_factory=list)  # the running `plexus run tools` processes
    metrics: list[str] = field(default_factory=list)  # their /metrics URLs


def webhook_definition(base: str, delay_ms: int) -> dict[str, Any]:
    return {"name": TOOL, "description": "Look up an order's status.", "url": f"{base}/hook/{delay_ms}",
            "method": "POST", "timeout": CALL_TIMEOUT,
            "parameters": {"type": "object", "required": ["order"],
                           "properties": {"order": {"type": "integer", "description": "the order number"},
                                          "note": {"type": "string"}}}}


def setup(work: Path, nats_url: str, webhook: str, delays: list[int]) -> Setup:
    """Migrate a fresh SQLite file and insert a tenant and one webhook provider per delay directly."""
    from sqlmodel import Session, create_engine

    from shared.crypto import encrypt_json
    from shared.models import Tenant, ToolProvider
    from shared.tool_schema import parse_provider_schema

    db_path = work / "tools.db"
    secret_key = secrets.token_urlsafe(48)
    env = python_env(
        PLEXUS_DATABASE_URL=f"sqlite+aiosqlite:///{db_path}", PLEXUS_NATS_URL=nats_url,
        PLEXUS_SECRET_KEY=secret_key, PLEXUS_INTERNAL_SECRET=secrets.token_urlsafe(48),
        PLEXUS_DATA_DIR=str(work / "data"), PLEXUS_TOOLS__EGRESS_ALLOWLIST='["127.0.0.1/32"]',
        PLEXUS_LOG_LEVEL="WARNING",
    )
    mig = subprocess.run([sys.executable, "-m", "services.cli", "migrate"], check=False, env=env, cwd=work,
                         capture_output=True, text=True, timeout=120)
    if mig.returncode != 0:
        raise RuntimeError(f"plexus migrate failed:\n{mig.stdout}\n{mig.stderr}")
    api_key, signing_secret = secrets.token_urlsafe(24), secrets.token_urlsafe(32)
    auth = {"auth_type": "api_key_header", "api_key_header": "X-Api-Key", "api_key_value": api_key}
    engine = create_engine(f"sqlite:///{db_path}")
    providers: dict[int, str] = {}
    with Session(engine) as s:
        tenant = Tenant(name="bench")
        s.add(tenant)
        s.commit()
        tenant_id = tenant.id
        for delay in delays:
            definition = webhook_definition(webhook, delay)
            specs = parse_provider_schema("webhook", definition)
            row = ToolProvider(tenant_id=tenant_id, name=f"hook-{delay}ms", schema_type="webhook",
                               schema_text=orjson.dumps(definition).decode(),
                               tools=[spec.model_dump(mode="json") for spec in specs],
                               encrypted_credentials=encrypt_json(secret_key, {"auth": auth,
                                                                               "signing_secret": signing_secret}))
            s.add(row)
            s.commit()
            providers[delay] = row.id
    engine.dispose()
    return Setup(env, nats_url, tenant_id, providers, webhook, api_key, signing_secret, work)


def start_tools(st: Setup) -> Service:
    """One more `plexus run tools` process (same settings, same queue group)."""
    port = free_port()
    n = len(st.replicas) + 1
    env = {**st.env, "PLEXUS_DATA_DIR": str(st.work / f"tools-{n}")}
    svc = Service(f"tools-{n}", plexus_argv("tools", port), env=env, cwd=st.work, log_dir=st.work,
                  nofile=NOFILE, ready_url=f"http://{HOST}:{port}/readyz").start()
    st.replicas.append(svc)
    st.metrics.append(f"http://{HOST}:{port}/metrics")
    return svc


def stop_last_tools(st: Setup) -> None:
    st.metrics.pop()
    st.replicas.pop().stop()


# ---- the three ways to make a call ------------------------------------------------------------------


class Caller:
    """The runtime's side (call_tool over a Bus) and a plain aiohttp client for the direct path."""

    def __init__(self, st: Setup) -> None:
        self.st = st
        self.bus: Any = None
        self.http: Any = None
        self.seq = 0

    async def __aenter__(self) -> Self:
        import aiohttp

        from shared.bus import Bus

        self.bus = await Bus.connect(self.st.nats_url, name="bench-runtime")
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                          headers={"User-Agent": "Plexus-Tools/1.0"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()
        await self.bus.close()

    def _args(self) -> tuple[int, dict[str, Any]]:
        self.seq += 1
        return self.seq, {"order": self.seq, "note": "bench"}

    async def direct(self, delay: int) -> float:
        """The request the tools service would send (same body, headers, signature), straight from here."""
        order, args = self._args()
        body = orjson.dumps(args)
        stamp = str(int(time.time()))
        headers = {"X-Api-Key": self.st.api_key, "Content-Type": "application/json",
                   "X-Plexus-Timestamp": stamp, "X-Plexus-Signature": sign(self.st.signing_secret, stamp, body)}
        url = f"{self.st.webhook}/hook/{delay}"
        t0 = time.perf_counter()
        async with self.http.post(url, data=body, headers=headers) as resp:
            text = await resp.read()
        took = time.perf_counter() - t0
        if resp.status != 200 or text.decode() != expected_output(order):
            raise RuntimeError(f"direct call to the webhook: HTTP {resp.status} {text[:300]!r}")
        return took

    async def tool(self, delay: int) -> tuple[float, float]:
        """call_tool of the webhook tool: (seconds here, the tools service's own `elapsed`)."""
        from shared.tool_catalog import call_tool

        order, args = self._args()
        payload = {"tenant_id": self.st.tenant_id, "provider_type": "api", "provider_id": self.st.providers[delay],
                   "tool": TOOL, "arguments": args}
        t0 = time.perf_counter()
        r = await call_tool(self.bus, self.st.providers[delay], payload, CALL_TIMEOUT)
        took = time.perf_counter() - t0
        if not r.get("ok") or r.get("output") != expected_output(order):
            raise RuntimeError(f"call_tool {TOOL} (webhook {delay} ms) failed: {r}")
        return took, float(r["elapsed"])

    async def builtin(self) -> tuple[float, float]:
        from shared.tool_catalog import call_tool

        order, _ = self._args()
        payload = {"tenant_id": self.st.tenant_id, "provider_type": "builtin", "provider_id": "calculator",
                   "tool": "calculator", "arguments": {"expression": f"{order} + 1"}}
        t0 = time.perf_counter()
        r = await call_tool(self.bus, "calculator", payload, CALL_TIMEOUT)
        took = time.perf_counter() - t0
        if not r.get("ok") or r.get("output") != str(order + 1):
            raise RuntimeError(f"call_tool calculator failed: {r}")
        return took, float(r["elapsed"])


# ---- 1. round trip ----------------------------------------------------------------------------------


def _stats_ms(values: list[float]) -> list[float]:
    v = sorted(values)
    return [percentile(v, 50) * 1e3, percentile(v, 90) * 1e3, percentile(v, 99) * 1e3,
            statistics.fmean(v) * 1e3 if v else float("nan")]


async def roundtrip(args: argparse.Namespace, st: Setup) -> dict[str, list[float]]:
    s: dict[str, list[float]] = {k: [] for k in ("direct", "tool", "tool_elapsed", "tool_outside", "builtin",
                                                 "builtin_elapsed")}
    async with Caller(st) as c:

        async def one(path: str, record: bool) -> None:
            if path == "direct":
                took = await c.direct(0)
                if record:
                    s["direct"].append(took)
                return
            took, elapsed = await (c.tool(0) if path == "tool" else c.builtin())
            if record:
                s[path].append(took)
                s[f"{path}_elapsed"].append(elapsed)
                if path == "tool":
                    s["tool_outside"].append(took - elapsed)

        paths = ["direct", "tool", "builtin"]
        for _ in range(args.warmup):
            for p in paths:
                await one(p, False)
        blocks = max(1, -(-args.requests // args.block))
        for b in range(blocks):
            order = paths[b % 3:] + paths[:b % 3]  # rotate: every path goes first, second, third alike
            n = min(args.block, args.requests - b * args.block)
            for p in order:
                for _ in range(n):
                    await one(p, True)
    return s


def report_roundtrip(args: argparse.Namespace, s: dict[str, list[float]]) -> None:
    n = len(s["direct"])
    rows = [
        ["(a) aiohttp → webhook directly (the webhook's own time)", n, *_stats_ms(s["direct"])],
        ["(b) call_tool → NATS → tools → webhook → back", n, *_stats_ms(s["tool"])],
        ["… inside the tools service (its `elapsed`)", n, *_stats_ms(s["tool_elapsed"])],
        ["… outside it: NATS hops, (de)serialisation, two event loops ((b) − elapsed, per call)", n,
         *_stats_ms(s["tool_outside"])],
        ["(c) call_tool of the built-in calculator (no HTTP)", n, *_stats_ms(s["builtin"])],
        ["… inside the tools service (its `elapsed`)", n, *_stats_ms(s["builtin_elapsed"])],
    ]
    print(table(["path (sequential, one call at a time)", "calls", "p50 ms", "p90 ms", "p99 ms", "mean ms"], rows))
    print()
    a, b, el = _stats_ms(s["direct"]), _stats_ms(s["tool"]), _stats_ms(s["tool_elapsed"])
    out = _stats_ms(s["tool_outside"])
    print(table(["added over the webhook's own time", "p50 ms", "p99 ms", "mean ms"], [
        ["(b) − (a): the whole tools path", b[0] - a[0], b[2] - a[2], b[3] - a[3]],
        ["elapsed − (a): inside the tools service (load, validate, sign, aiohttp via the egress guard)",
         el[0] - a[0], el[2] - a[2], el[3] - a[3]],
        ["(b) − elapsed: NATS request/reply and both ends' event loops", out[0], out[2], out[3]],
    ]))
    print()
    print(f"- {n} calls per path after {args.warmup} warm-up calls each, in blocks of {args.block} whose order "
          f"rotates. Differences of p50s and of p99s (not percentiles of differences), except the (b) − elapsed "
          f"row, which is computed per call. The webhook checks the API key and the HMAC of every request on "
          f"both paths; (a) sends the same body and headers the service sends.")
    print(verdict(b[0] - a[0] <= TARGET_ADDED_MS,
                  f"the tools path adds {b[0] - a[0]:+.2f} ms p50 and {b[2] - a[2]:+.2f} ms p99 over the "
                  f"webhook's own time ({b[0]:.2f} vs {a[0]:.2f} ms p50; target ≤ {TARGET_ADDED_MS:g} ms)"))
    print()


# ---- 2. replicas ------------------------------------------------------------------------------------


@dataclass
class LoadRun:
    label: str  # "1", "2" (replicas) or "direct"
    delay: int
    calls: int
    seconds: float
    lat: list[float]
    elapsed: list[float]
    cpu: dict[str, float]  # process → % of one core
    share: list[int]  # calls served per replica (its metrics)

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def ms(self, q: float, values: list[float] | None = None) -> float:
        return percentile(sorted(self.lat if values is None else values), q) * 1e3


_OK_CALLS = re.compile(
    r'^plexus_tool_calls_total\{(?=[^}]*outcome="ok")(?=[^}]*provider_type="api")[^}]*\}\s+(\S+)$', re.MULTILINE)


async def served(st: Setup) -> list[int]:
    """Custom-tool calls each running replica has answered ok so far (its /metrics)."""
    import httpx

    out = []
    async with httpx.AsyncClient(timeout=5) as h:
        for url in st.metrics:
            m = _OK_CALLS.search((await h.get(url)).text)
            out.append(int(float(m.group(1))) if m else 0)
    return out


async def load(c: Caller, st: Setup, label: str, delay: int, concurrency: int, duration: float,
               webhook: Service, nats_pid: int, warmup: float) -> LoadRun:
    """`concurrency` callers, each sending its next call when the last one is back, for `duration` s."""
    lat: list[float] = []
    elapsed: list[float] = []
    direct = label == "direct"

    async def worker(deadline: float, record: bool) -> None:
        while time.perf_counter() < deadline:
            if direct:
                took = await c.direct(delay)
            else:
                took, el = await c.tool(delay)
                if record:
                    elapsed.append(el)
            if record:
                lat.append(took)

    await asyncio.gather(*(worker(time.perf_counter() + warmup, False) for _ in range(concurrency)))
    pids: dict[str, int | None] = {f"tools {i + 1}": svc.pid for i, svc in enumerate(st.replicas)} \
        if not direct else {}
    pids |= {"webhook": webhook.pid, "nats": nats_pid, "bench": None}  # None: this process
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    share0 = await served(st) if not direct else []
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(t0 + duration, True) for _ in range(concurrency)))
    secs = time.perf_counter() - t0
    cpu = {k: 100 * (cpu_seconds(p) - cpu0[k]) / secs for k, p in pids.items()}
    share = [b - a for a, b in zip(share0, await served(st), strict=True)] if not direct else []
    return LoadRun(label, delay, len(lat), secs, lat, elapsed, cpu, share)


async def replica_phase(args: argparse.Namespace, st: Setup, webhook: Service, nats_pid: int,
                        with_direct: bool) -> list[LoadRun]:
    runs = []
    async with Caller(st) as c:
        for delay in args.delay_list:
            if with_direct:
                runs.append(await load(c, st, "direct", delay, args.concurrency, args.duration, webhook, nats_pid,
                                       args.load_warmup))
            runs.append(await load(c, st, str(len(st.replicas)), delay, args.concurrency, args.duration, webhook,
                                   nats_pid, args.load_warmup))
    return runs


def report_replicas(args: argparse.Namespace, runs: list[LoadRun]) -> None:
    cores = os.cpu_count() or 1
    keys = ["tools 1", "tools 2", "webhook", "nats", "bench"]
    rows = []
    summary: dict[tuple[str, int], float] = {}
    for delay in args.delay_list:
        for label in ("direct", "1", "2"):
            rs = [r for r in runs if r.label == label and r.delay == delay]
            if not rs:
                continue
            summary[(label, delay)] = rate = median(r.rate for r in rs)
            cpu = {k: median(r.cpu[k] for r in rs) for k in keys if k in rs[0].cpu}  # only what ran
            cpu_text = " / ".join(f"{cpu[k]:.0f}" if k in cpu else "–" for k in keys)
            cpu_text += f" (Σ {sum(cpu.values()):.0f})"
            share = "–"
            if label == "2":
                share = " / ".join(f"{100 * statistics.fmean(r.share[i] / max(1, sum(r.share)) for r in rs):.0f}"
                                   for i in range(len(rs[0].share)))
            name = "webhook alone (aiohttp direct)" if label == "direct" else \
                f"{label} tools process{'es' if label == '2' else ''}"
            el = median(r.ms(50, r.elapsed) for r in rs) if label != "direct" else float("nan")
            rows.append([f"{delay} ms", name, sum(r.calls for r in rs), rate,
                         " / ".join(f"{r.rate:,.0f}" for r in rs), median(r.ms(50) for r in rs),
                         median(r.ms(99) for r in rs), el, cpu_text, share])
    print(table(["webhook delay", "served by", "calls", "calls/s", "calls/s of each run", "p50 ms", "p99 ms",
                 "tools `elapsed` p50 ms", "CPU % tools 1 / tools 2 / webhook / nats / bench (Σ)",
                 "% of calls per replica"], rows))
    print()
    ratios = []
    for delay in args.delay_list:
        one, two = summary.get(("1", delay)), summary.get(("2", delay))
        if one and two:
            ratios.append([f"{delay} ms", one, two, f"{two / one:.2f}×", cores])
    if ratios:
        print(table(["webhook delay", "1 replica calls/s", "2 replicas calls/s", "2 / 1", "CPU cores"], ratios))
        print()
    print(f"- {args.concurrency} concurrent callers in this process (call_tool over one NATS connection), "
          f"{args.duration:g} s per run after {args.load_warmup:g} s of warm-up; replica counts in the order "
          f"{args.replica_order}, figures are medians over the runs of a count. Latency is call_tool's, "
          f"`elapsed` is the tools service's own. CPU % = process CPU time / wall time (100 = one core, "
          f"{100 * cores} = the whole machine); % of calls per replica from each replica's /metrics. The "
          f"webhook alone row uses an aiohttp client in this process instead of the tools path.")
    print(f"- Everything shares {cores} CPU core(s): the bench's callers, nats-server, the webhook and the tools "
          f"process(es). A second replica can only use what the others leave free.")
    print()


# ---- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {','.join(SECTIONS)} (default all)")
    p.add_argument("--requests", type=int, default=2000, help="roundtrip: calls per path (default 2000)")
    p.add_argument("--block", type=int, default=100, help="roundtrip: calls per block before switching path")
    p.add_argument("--warmup", type=int, default=200, help="roundtrip: warm-up calls per path (default 200)")
    p.add_argument("--concurrency", type=int, default=32, help="replicas: concurrent callers (default 32)")
    p.add_argument("--duration", type=float, default=10, help="replicas: seconds per run (default 10)")
    p.add_argument("--load-warmup", type=float, default=1, help="replicas: warm-up seconds before each run")
    p.add_argument("--delays", default="0,5", help="replicas: webhook delays in ms (default 0,5)")
    p.add_argument("--replica-order", default="1,2,2,1", help="replicas: tools process counts, in order")
    p.add_argument("--quick", action="store_true", help="a smoke run of a few seconds per section")
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with the service logs")
    p.add_argument("--serve-webhook", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_webhook:
        serve_webhook(args.serve_webhook)
        return 0
    if args.quick:
        args.requests, args.block, args.warmup = 200, 50, 20
        args.duration, args.load_warmup, args.replica_order = 1.5, 0.3, "1,2"
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    if unknown := sections - set(SECTIONS):
        p.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    try:
        args.delay_list = [int(x) for x in args.delays.split(",") if x.strip()]
        order = [int(x) for x in args.replica_order.split(",") if x.strip()]
    except ValueError:
        p.error("--delays and --replica-order take comma lists of integers")
    if not set(order) <= {1, 2} or not order:
        p.error("--replica-order: a comma list of 1 and 2")

    from shared.natsd import EmbeddedNats

    print("## tools: round trip through the tools service, and 2 replicas vs 1\n")
    print_machine()
    print(flush=True)
    with workdir("tools", args.keep_logs) as work:
        nats = EmbeddedNats(work / "nats")
        nats.start()
        try:
            port = free_port()
            st = setup(work, nats.url, f"http://{HOST}:{port}", sorted({0, *args.delay_list}))
            hook_env = python_env(**{WEBHOOK_KEY_ENV: st.api_key, WEBHOOK_SECRET_ENV: st.signing_secret})
            webhook = Service("webhook", [sys.executable, "-m", "bench.tools", "--serve-webhook", str(port)],
                              env=hook_env, cwd=work, log_dir=work, nofile=NOFILE,
                              ready_url=f"http://{HOST}:{port}/readyz").start()
            start_tools(st)
            if "roundtrip" in sections:
                print("### 1. Round trip, sequential: webhook directly vs through one tools process "
                      "(webhook delay 0 ms)\n", flush=True)
                report_roundtrip(args, run_async(roundtrip(args, st)))
            if "replicas" in sections:
                print(f"### 2. 2 tools replicas vs 1: {args.concurrency} concurrent callers, "
                      f"{args.duration:g} s per run\n", flush=True)
                runs: list[LoadRun] = []
                for i, n in enumerate(order):
                    while len(st.replicas) < n:
                        start_tools(st)
                    while len(st.replicas) > n:
                        stop_last_tools(st)
                    runs += run_async(replica_phase(args, st, webhook, nats.proc.pid, with_direct=i == 0))
                report_replicas(args, runs)
        finally:
            nats.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

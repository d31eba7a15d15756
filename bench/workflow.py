"""Empty workflow runs (start → end) streamed through the gateway in `all` mode, in the format of Dify's
published benchmark: runs/s at a few concurrency levels and the time to the first event (the
`workflow_started` SSE event) at p50/p95. Every run is a real one: a run row and its node executions are
written, and every event goes to the run's JetStream log.

    python -m bench.workflow [--duration 15] [--concurrency 8,32,64] [--ttfe-requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from bench.common import (
    HttpConn,
    console_admin,
    cpu_seconds,
    host_port,
    ok,
    percentile,
    print_machine,
    run_async,
    start_all_mode,
    table,
    verdict,
    workdir,
)

TARGET_RPS = 300
TARGET_TTFE_MS = 10.0
GRAPH = {
    "nodes": [
        {"id": "start", "type": "custom", "data": {"type": "start", "title": "Start", "variables": [
            {"variable": "q", "label": "q", "type": "text-input", "required": False}]}},
        {"id": "end", "type": "custom", "data": {"type": "end", "title": "End", "outputs": [
            {"variable": "echo", "value_selector": ["start", "q"]}]}},
    ],
    "edges": [{"id": "start-source-end-target", "source": "start", "sourceHandle": "source", "target": "end",
               "targetHandle": "target"}],
}


def setup(base: str) -> str:
    """Admin, a workflow app without limits with GRAPH published, and its key."""
    with httpx.Client(base_url=base, timeout=60) as c:
        h = console_admin(c)
        app_id = ok(c.post("/console/api/apps", headers=h, json={"name": "Empty workflow", "mode": "workflow"}))["id"]
        ok(c.put(f"/console/api/apps/{app_id}", headers=h, json={"api_rpm": 0, "api_rph": 0,
                                                                  "max_active_requests": None}))
        ok(c.post(f"/console/api/apps/{app_id}/workflows/draft", headers=h, json={"graph": GRAPH}))
        ok(c.post(f"/console/api/apps/{app_id}/workflows/publish", headers=h, json={}))
        return ok(c.post(f"/console/api/apps/{app_id}/api-keys", headers=h))["token"]


@dataclass
class Result:
    ok: bool = False
    error: str = ""
    t_first: float | None = None
    t_total: float = 0.0


async def one_run(conn: HttpConn, raw: bytes) -> Result:
    res = Result()
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(60):
            status, _ = await conn.send(raw)
            if status != 200:
                res.error = f"HTTP {status}: {(await conn.read_all())[:200]!r}"
                conn.close()
                return res
            buf = b""
            async for piece in conn.body():
                buf += piece
                while b"\n\n" in buf:
                    block, buf = buf.split(b"\n\n", 1)
                    for line in block.split(b"\n"):
                        if not line.startswith(b"data:"):
                            continue
                        if res.t_first is None:
                            res.t_first = time.perf_counter() - t0
                        ev = orjson.loads(line[5:])
                        if ev.get("event") == "workflow_finished":
                            status_ = ev["data"]["status"]
                            res.ok = status_ == "succeeded"
                            if not res.ok:
                                res.error = f"run {status_}: {ev['data'].get('error')}"
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as e:
        res.error = f"{type(e).__name__}: {e}"
        conn.close()
    res.t_total = time.perf_counter() - t0
    if not res.ok and not res.error:
        res.error = "stream ended without workflow_finished"
    return res


def request(base: str, key: str, user: str) -> bytes:
    host = base.split("://", 1)[1]
    body = orjson.dumps({"inputs": {"q": "hi"}, "user": user, "response_mode": "streaming"})
    return HttpConn.build("POST", "/v1/workflows/run", host, {
        "Authorization": f"Bearer {key}", "Content-Type": "application/json", "Accept": "text/event-stream"}, body)


async def load(base: str, key: str, concurrency: int, duration: float) -> dict[str, Any]:
    host, port = host_port(base)
    totals: list[float] = []
    firsts: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    deadline = time.perf_counter() + duration

    async def worker(i: int) -> None:
        conn = HttpConn(host, port)
        raw = request(base, key, f"bench-{i}")
        while time.perf_counter() < deadline:
            res = await one_run(conn, raw)
            if res.ok:
                totals.append(res.t_total)
                if res.t_first is not None:
                    firsts.append(res.t_first)
            else:
                errors[res.error[:100]] += 1
                conn = HttpConn(host, port)
        conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - start
    totals.sort()
    firsts.sort()
    return {"runs": len(totals), "errors": errors, "seconds": elapsed, "p50": percentile(totals, 50) * 1e3,
            "p95": percentile(totals, 95) * 1e3, "ttfe_p50": percentile(firsts, 50) * 1e3,
            "ttfe_p95": percentile(firsts, 95) * 1e3}


async def ttfe(base: str, key: str, n: int) -> dict[str, float]:
    """Sequential runs: time to the first event and to the end, without load."""
    host, port = host_port(base)
    conn = HttpConn(host, port)
    raw = request(base, key, "bench-ttfe")
    for _ in range(20):
        await one_run(conn, raw)
    firsts, totals = [], []
    for _ in range(n):
        res = await one_run(conn, raw)
        if not res.ok:
            raise RuntimeError(res.error)
        firsts.append(res.t_first or 0.0)
        totals.append(res.t_total)
    conn.close()
    firsts.sort()
    totals.sort()
    return {"p50": percentile(firsts, 50) * 1e3, "p95": percentile(firsts, 95) * 1e3,
            "total_p50": percentile(totals, 50) * 1e3}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=15.0, help="seconds per concurrency level")
    p.add_argument("--concurrency", default="8,32,64", help="comma list of concurrent clients")
    p.add_argument("--ttfe-requests", type=int, default=300, help="sequential runs for the first-event figures")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    print("## Workflow runs: empty workflow (start → end), streaming, `all` mode\n")
    print_machine()
    with workdir("bench-workflow") as work:
        plexus = start_all_mode(work)
        key = setup(plexus.base)
        seq = run_async(ttfe(plexus.base, key, args.ttfe_requests))
        rows = []
        best = 0.0
        for c in levels:
            cpu0 = cpu_seconds(plexus.plexus.pid)
            r = run_async(load(plexus.base, key, c, args.duration))
            cpu = cpu_seconds(plexus.plexus.pid) - cpu0
            rps = r["runs"] / r["seconds"]
            best = max(best, rps)
            errors = sum(r["errors"].values())
            rows.append([c, r["runs"], f"{rps:,.0f}", f"{r['ttfe_p50']:.1f}", f"{r['ttfe_p95']:.1f}",
                         f"{r['p50']:.1f}", f"{r['p95']:.1f}", errors,
                         f"{cpu / max(r['runs'], 1) * 1e3:.2f}"])
            if errors:
                print(f"errors at concurrency {c}: {dict(r['errors'])}", file=sys.stderr)
        print(table(["concurrent clients", "runs", "runs/s", "first event p50 ms", "first event p95 ms",
                     "run p50 ms", "run p95 ms", "errors", "Plexus CPU ms per run"], rows))
        print()
        print(table(["sequential (one client)", "first event p50 ms", "first event p95 ms", "whole run p50 ms"],
                    [[args.ttfe_requests, f"{seq['p50']:.2f}", f"{seq['p95']:.2f}", f"{seq['total_p50']:.2f}"]]))
        print()
        print(verdict(best >= TARGET_RPS, f"best throughput {best:,.0f} runs/s (target ≥ {TARGET_RPS})"))
        print(verdict(seq["p50"] <= TARGET_TTFE_MS,
                      f"first event p50 {seq['p50']:.2f} ms without load (target ≤ {TARGET_TTFE_MS:g} ms)"))
        print("\nDify's published figure for comparison: ~40 runs/s plateau on several pods, "
              "first event p50 0.3–1.4 s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

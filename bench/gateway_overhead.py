"""What the gateway costs: `GET /v1/parameters` with an app key through the gateway, at the runtime
directly (with the identity headers the gateway would add), and a bare uvicorn hello-world (raw ASGI),
measured interleaved in one run — split mode (one process per service) and all mode (`plexus run`).
All mode also measures one FastAPI route with Plexus's base middleware (bench.hello --framework
fastapi): the floor of any Plexus service, so framework cost can be told from gateway cost.

Two passes per target: one connection (unloaded latency: what the hop adds) and N connections
(throughput). Each figure is the median over rounds; the order of targets rotates every round.

    python -m bench.gateway_overhead [--duration 3] [--rounds 3] [--connections 32] [--loadgen auto]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import (
    LoadResult,
    loadgen_name,
    median,
    print_machine,
    run_load,
    runtime_identity,
    setup_chat_app,
    start_all_mode,
    start_hello,
    start_llm,
    start_split_mode,
    table,
    verdict,
    workdir,
)

PATH = "/v1/parameters"


@dataclass
class Target:
    mode: str
    name: str
    url: str
    headers: dict[str, str]


@dataclass
class Row:
    target: Target
    connections: int
    results: list[LoadResult]

    @property
    def rps(self) -> float:
        return median(r.rps for r in self.results)

    @property
    def p50(self) -> float:
        return median(r.p50_ms for r in self.results)

    @property
    def p99(self) -> float:
        return median(r.p99_ms for r in self.results)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.results)


def probe(t: Target) -> None:
    r = httpx.get(t.url, headers=t.headers, timeout=10)
    if r.status_code != 200:
        raise RuntimeError(f"{t.mode}/{t.name}: GET {t.url} -> {r.status_code} {r.text[:300]}")


def measure(targets: list[Target], args: argparse.Namespace, tool: str, work: Path) -> list[Row]:
    for t in targets:
        probe(t)
        run_load(tool, t.url, t.headers, args.connections, 1, work)  # warm caches, JIT-free but lazy imports
    rows: dict[tuple[int, int], list[LoadResult]] = defaultdict(list)
    for conns in (args.latency_connections, args.connections):
        for rnd in range(args.rounds):
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]  # rotate: no fixed favourite
            for t in order:
                rows[(targets.index(t), conns)].append(run_load(tool, t.url, t.headers, conns, args.duration, work))
    return [Row(targets[i], c, res) for (i, c), res in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0]))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=3, help="seconds per measurement (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per target and pass (default 3)")
    p.add_argument("--connections", type=int, default=32, help="connections in the throughput pass")
    p.add_argument("--latency-connections", type=int, default=1, help="connections in the latency pass")
    p.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--modes", default="split,all", help="comma list of split, all")
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with service logs")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    tool = loadgen_name(args.loadgen)

    print("## gateway_overhead: GET /v1/parameters\n")
    print_machine()
    print(f"load generator: {tool} ({'wrk -t1 --latency' if tool == 'wrk' else 'built-in asyncio keep-alive'}),"
          f" {args.duration:g}s × {args.rounds} rounds per figure, medians over rounds\n", flush=True)
    rows: list[Row] = []
    with workdir("gw", args.keep_logs) as work:
        _hello, hello_url = start_hello(work)
        _fastapi, fastapi_url = start_hello(work, "fastapi") if "all" in modes else (None, "")
        _llm, llm_base = start_llm(work)  # only so the provider saved at setup points somewhere real
        if "split" in modes:
            split = start_split_mode(work)
            try:
                app = setup_chat_app(split.base, llm_base, split.db_path)
                auth = {"Authorization": f"Bearer {app.key}"}
                rows += measure([
                    Target("split", "gateway", split.base + PATH, auth),
                    Target("split", "runtime direct", split.runtime + PATH,
                           runtime_identity(split.internal_secret, app)),
                    Target("split", "hello world", hello_url + PATH, auth),
                ], args, tool, work)
            finally:
                split.stop()  # free the CPU before all mode
        if "all" in modes:
            allm = start_all_mode(work)
            try:
                app = setup_chat_app(allm.base, llm_base, allm.db_path)
                auth = {"Authorization": f"Bearer {app.key}"}
                rows += measure([
                    Target("all", "gateway", allm.base + PATH, auth),
                    Target("all", "hello world", hello_url + PATH, auth),
                    Target("all", "FastAPI hello (1 route, base middleware)", fastapi_url + PATH, auth),
                ], args, tool, work)
            finally:
                allm.plexus.stop()

    def find(mode: str, name: str, conns: int) -> Row | None:
        return next((r for r in rows if (r.target.mode, r.target.name, r.connections) == (mode, name, conns)), None)

    out = []
    for r in rows:
        hello = find(r.target.mode, "hello world", r.connections)
        out.append([r.target.mode, r.target.name, r.connections, r.rps, r.p50, r.p99, r.errors,
                    f"{100 * r.rps / hello.rps:.0f} %" if hello and hello.rps else "–"])
    print(table(["mode", "target", "conns", "req/s", "p50 ms", "p99 ms", "errors", "req/s vs hello"], out))
    print()
    c1, cn = args.latency_connections, args.connections
    gw1, rt1 = find("split", "gateway", c1), find("split", "runtime direct", c1)
    if gw1 and rt1:
        added = gw1.p50 - rt1.p50
        gwn, rtn = find("split", "gateway", cn), find("split", "runtime direct", cn)
        extra = f"; at {cn} connections {gwn.p50 - rtn.p50:+.2f} ms" if gwn and rtn else ""
        print(verdict(added <= 1.0, f"split mode, gateway adds {added:+.2f} ms p50 over runtime direct at {c1} "
                                    f"connection (target ≤ 1 ms){extra}"))
    for mode in modes:
        gw, hello = find(mode, "gateway", cn), find(mode, "hello world", cn)
        if gw and hello:
            share = gw.rps / hello.rps if hello.rps else 0.0
            fa = find(mode, "FastAPI hello (1 route, base middleware)", cn)
            ctx = (f"; a FastAPI hello is {100 * fa.rps / hello.rps:.0f} % of it, the gateway "
                   f"{100 * gw.rps / fa.rps:.0f} % of the FastAPI hello" if fa and fa.rps and hello.rps else "")
            print(verdict(share >= 0.5, f"{mode} mode, gateway {gw.rps:,.0f} req/s = {100 * share:.0f} % of "
                                        f"hello world {hello.rps:,.0f} req/s at {cn} connections (target ≥ 50 %)"
                                        f"{ctx}"))
    errors = sum(r.errors for r in rows)
    if errors:
        print(f"- {errors} errors in total (non-2xx or socket errors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Scale-out: what a second runtime process and a second tools process buy in the split topology
(tests/topology.py: 3 gateways behind a round-robin balancer, runtimes behind another, console, indexer,
tools, NATS, Redis, Postgres — each its own process on loopback).

1. chats    C concurrent keep-alive clients stream chats (scripted model: --tokens tokens, --delay s each)
            through the gateways' balancer for --duration seconds, with the runtime balancer sending to 1 and
            then 2 runtime processes (both run all along; the balancer's backends are switched and its
            connections reset between phases). Streams ending with message_end per second.
2. tools    C concurrent callers run the built-in calculator over NATS (`call_tool`, the runtime's path)
            against 1 and then 2 tools processes in the queue group (the second is stopped for the
            1-process phases). Calls per second.

Phases alternate (1, 2, 2, 1 with --rounds 2) so drift hits both counts alike; figures are medians.
CPU seconds per process role show what saturates: on a 2-core machine the ratio is bounded by the cores.

    python -m bench.scale_out [--duration 10] [--concurrency 32] [--tool-concurrency 32] [--rounds 2]
                              [--tokens 10] [--delay 0.0] [--only chats,tools]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import defaultdict

import httpx

from bench.common import (
    HttpConn,
    StreamResult,
    chat_request,
    chat_stream,
    console_admin,
    cpu_seconds,
    host_port,
    median,
    ok,
    print_machine,
    run_async,
    table,
    verdict,
)
from tests.topology import Shape, Topology, missing_dependencies

TARGET = 1.8


def setup_app(base: str, llm_base: str) -> str:
    with httpx.Client(base_url=base, timeout=60) as c:
        h = console_admin(c)
        ok(c.post("/console/api/workspaces/current/model-providers/openai-compatible/credentials", headers=h,
                  json={"credentials": {"api_key": "sk-bench", "api_base": llm_base}}))
        app_id = ok(c.post("/console/api/apps", headers=h, json={"name": "Scale-out bot", "mode": "chat"}))["id"]
        ok(c.post(f"/console/api/apps/{app_id}/model-config", headers=h, json={
            "model": {"provider": "openai-compatible", "name": "scripted", "completion_params": {}},
            "pre_prompt": "You are a benchmark.", "user_input_form": []}))
        ok(c.put(f"/console/api/apps/{app_id}", headers=h,
                 json={"api_rpm": 0, "api_rph": 0, "max_active_requests": None}))
        return ok(c.post(f"/console/api/apps/{app_id}/api-keys", headers=h))["token"]


def role_cpu(topo: Topology) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for name, proc in topo.procs.items():
        if proc.alive:
            out[name.rsplit("-", 1)[0]] += cpu_seconds(proc.proc.pid)
    for role, p in (("balancers", topo.net), ("nats", topo.nats), ("llm", topo.llm), ("redis", topo.redis)):
        if p is not None and p.alive:
            out[role] += cpu_seconds(p.proc.pid)
    out["load generator"] = cpu_seconds()
    return out


async def stream_load(base: str, key: str, concurrency: int, duration: float, query: str = "hello"
                      ) -> tuple[int, int, list[str]]:
    host, port = host_port(base)
    deadline = time.perf_counter() + duration
    done = errors = 0
    samples: list[str] = []

    async def worker(i: int) -> None:
        nonlocal done, errors
        conn = HttpConn(host, port)
        raw = chat_request(base, key, f"bench-{i}", query)
        while time.perf_counter() < deadline:
            res: StreamResult = await chat_stream(conn, raw)
            if res.ok:
                done += 1
            else:
                errors += 1
                if len(samples) < 3:
                    samples.append(res.error)
        conn.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return done, errors, samples


async def tool_load(nats_url: str, concurrency: int, duration: float) -> tuple[int, int]:
    from shared.bus import Bus
    from shared.tool_catalog import call_tool

    bus = await Bus.connect(nats_url, name="bench-scale-out")
    deadline = time.perf_counter() + duration
    done = errors = 0

    async def worker(i: int) -> None:
        nonlocal done, errors
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            r = await call_tool(bus, "calculator", {
                "tenant_id": "bench", "provider_type": "builtin", "provider_id": "calculator", "tool": "calculator",
                "arguments": {"expression": f"{i} * {n}"}}, 10.0)
            if r.get("ok") and r.get("output") == str(i * n):
                done += 1
            else:
                errors += 1

    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        await bus.close()
    return done, errors


def measure(topo: Topology, fn, duration: float) -> tuple[float, int, dict[str, float], list[str]]:
    cpu0 = role_cpu(topo)
    t0 = time.perf_counter()
    res = run_async(fn())
    secs = time.perf_counter() - t0
    cpu1 = role_cpu(topo)
    done, errors = res[0], res[1]
    samples = res[2] if len(res) > 2 else []
    util = {k: (cpu1[k] - cpu0.get(k, 0.0)) / secs for k in cpu1}
    return done / duration, errors, util, samples


def cpu_line(util: dict[str, float]) -> str:
    top = sorted(util.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {v:.2f}" for k, v in top if v >= 0.05)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--tool-concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2, help="1,2 then 2,1 ... phases per section")
    p.add_argument("--tokens", type=int, default=10)
    p.add_argument("--delay", type=float, default=0.0, help="seconds before each scripted token")
    p.add_argument("--gateways", type=int, default=3)
    p.add_argument("--only", default="chats,tools")
    a = p.parse_args(argv)
    why = missing_dependencies()
    if why:
        print(f"scale_out: skipped, {why}")
        return 0
    sections = {s.strip() for s in a.only.split(",")}
    print("## Scale-out (split topology on one machine)\n")
    print_machine()
    order = [n for r in range(a.rounds) for n in ((1, 2) if r % 2 == 0 else (2, 1))]
    topo = Topology(Shape(gateways=a.gateways, runtimes=2, tools=2), llm_tokens=a.tokens, llm_delay=a.delay)
    try:
        topo.start()
        key = setup_app(topo.front, topo.llm_base)
        run_async(stream_load(topo.front, key, 8, 3.0, "warmup"))
        rt_ports = [topo.ports[n] for n in topo.names("runtime")]
        print(f"\n{a.gateways} gateways, runtimes behind a round-robin balancer, {a.concurrency} concurrent "
              f"streams, {a.tokens} tokens/answer at {a.delay}s/token, {a.duration:g} s per phase\n", flush=True)
        rows, notes = [], []
        if "chats" in sections:
            by: dict[int, list[float]] = defaultdict(list)
            for n in order:
                topo.control(f"backends runtime {','.join(map(str, rt_ports[:n]))}")
                topo.control("sever runtime 0")  # pooled gateway connections re-balance over the new backends
                conns0 = topo.lb_stats()["runtime"]  # the warm-up opens the gateways' pooled connections
                run_async(stream_load(topo.front, key, a.concurrency, 1.5, "warmup"))
                rate, errors, util, samples = measure(
                    topo, lambda: stream_load(topo.front, key, a.concurrency, a.duration), a.duration)
                conns = {p: c - conns0.get(p, 0) for p, c in topo.lb_stats()["runtime"].items()}
                by[n].append(rate)
                notes.append(f"- chats, {n} runtime(s): {rate:.1f}/s, {errors} errors{' ' + str(samples) if samples else ''}"
                             f"; CPU (cores): {cpu_line(util)}; load average {os.getloadavg()[0]:.1f}; runtime "
                             f"connections per backend {sorted(conns.values(), reverse=True)}")
                print(notes[-1], flush=True)
            one, two = median(by[1]), median(by[2])
            rows.append(("streamed chats/s", one, two, two / one if one else float("nan")))
        if "tools" in sections:
            by = defaultdict(list)
            for n in order:
                second = topo.procs["tools-2"]
                if n == 1 and second.alive:
                    second.stop()
                elif n == 2 and not second.alive:
                    topo.restart("tools-2")
                run_async(tool_load(topo.nats_url, a.tool_concurrency, 1.0))
                rate, errors, util, _ = measure(
                    topo, lambda: tool_load(topo.nats_url, a.tool_concurrency, a.duration), a.duration)
                by[n].append(rate)
                notes.append(f"- tools, {n} process(es): {rate:.0f} calls/s, {errors} errors; CPU (cores): "
                             f"{cpu_line(util)}; load average {os.getloadavg()[0]:.1f}")
                print(notes[-1], flush=True)
            one, two = median(by[1]), median(by[2])
            rows.append(("tool calls/s (built-in calculator over NATS)", one, two, two / one if one else float("nan")))
        print()
        print(table(("throughput", "1 process", "2 processes", "ratio"), rows))
        print()
        for name, _one, _two, ratio in rows:
            print(verdict(ratio >= TARGET, f"{name}: 2 processes ≥ {TARGET}× one (measured {ratio:.2f}×)"))
        print("\n(CPU is in cores busy per second of the phase; this machine has "
              f"{os.cpu_count()}, shared with whatever else runs — the load average shows how much of them we "
              "got; a second process cannot add throughput when no core is idle)")
    finally:
        topo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

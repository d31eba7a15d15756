"""Streamed chats end to end in `all` mode against the scripted LLM (its own process; 10 tokens, no
delay): complete streams per second at a few concurrency levels, and what Plexus adds to the time to
the first answer token compared with litellm.acompletion(stream=True) called directly (same server,
same model arguments), sequential requests, interleaved.

For scale, each concurrency level is also run as litellm.acompletion streams straight from the load
generator's process: no Plexus at all, the ceiling one Python process calling litellm can reach.
CPU ms per stream is the serving process's CPU time (Plexus, or the litellm caller) per complete stream.

    python -m bench.streaming [--duration 20] [--concurrency 16,64] [--ttfe-requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from typing import Any

from bench.common import (
    HttpConn,
    chat_request,
    chat_stream,
    child_pids,
    cpu_seconds,
    host_port,
    percentile,
    print_machine,
    run_async,
    setup_chat_app,
    start_all_mode,
    start_llm,
    table,
    verdict,
    workdir,
)
from shared.llm import call_kwargs, litellm

TOKENS = 10
SYSTEM = "You are a benchmark."  # the app's pre_prompt (bench.common.setup_chat_app)
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello"}]


class Direct:
    """litellm.acompletion exactly as services/runtime/llm.py stream_chat calls it."""

    def __init__(self, llm_base: str) -> None:
        self.lm = litellm()
        self.kwargs = call_kwargs("openai-compatible", "scripted", {"api_key": "sk-bench", "api_base": llm_base})

    async def stream(self) -> tuple[float | None, float]:
        """(seconds to the first content chunk, seconds to the end)."""
        t0 = time.perf_counter()
        first = None
        stream = await self.lm.acompletion(**self.kwargs, messages=MESSAGES, stream=True,
                                           stream_options={"include_usage": True}, timeout=120.0, num_retries=0,
                                           max_retries=0)
        try:
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - t0
        finally:
            await stream.aclose()
        return first, time.perf_counter() - t0


async def load(kind: str, base: str, key: str, direct: Direct, concurrency: int, duration: float) -> dict:
    """``concurrency`` workers looping for ``duration`` s; streams running at the deadline are finished."""
    host, port = host_port(base)
    totals: list[float] = []
    firsts: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    deadline = time.perf_counter() + duration

    async def plexus_worker(i: int) -> None:
        conn = HttpConn(host, port)
        raw = chat_request(base, key, user=f"bench-{i}")
        while time.perf_counter() < deadline:
            res = await chat_stream(conn, raw)
            if res.ok:
                totals.append(res.t_total)
                if res.t_first is not None:
                    firsts.append(res.t_first)
            else:
                errors[res.error[:100]] += 1
        conn.close()

    async def direct_worker(_i: int) -> None:
        while time.perf_counter() < deadline:
            try:
                first, total = await direct.stream()
            except Exception as e:  # noqa: BLE001 - count and go on, like an error event
                errors[f"{type(e).__name__}: {e}"[:100]] += 1
                continue
            totals.append(total)
            if first is not None:
                firsts.append(first)

    worker = plexus_worker if kind == "plexus" else direct_worker
    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - start
    totals.sort()
    firsts.sort()
    return {"complete": len(totals), "errors": errors, "seconds": elapsed,
            "p50": percentile(totals, 50) * 1e3, "p99": percentile(totals, 99) * 1e3,
            "first_p50": percentile(firsts, 50) * 1e3}


async def first_event(base: str, key: str, direct: Direct, n: int) -> dict:
    """Sequential, alternating which goes first: Plexus's first `message` event vs litellm's first
    content chunk. Both streams are read to the end so connections go back to their pools."""
    host, port = host_port(base)
    conn = HttpConn(host, port)
    raw = chat_request(base, key, user="bench-ttfe")
    plexus: list[float] = []
    heads: list[float] = []
    direct_t: list[float] = []
    errors = 0

    async def via_plexus() -> None:
        nonlocal errors
        res = await chat_stream(conn, raw)
        if res.ok and res.t_first is not None:
            plexus.append(res.t_first)
            heads.append(res.t_head)
        else:
            errors += 1

    async def via_litellm() -> None:
        first, _ = await direct.stream()
        if first is not None:
            direct_t.append(first)

    for _ in range(5):  # warm-up: lazy imports, pools, caches on both sides
        await via_plexus()
        await via_litellm()
    plexus.clear()
    heads.clear()
    direct_t.clear()
    errors = 0
    for i in range(n):
        for f in ((via_plexus, via_litellm) if i % 2 == 0 else (via_litellm, via_plexus)):
            await f()
    conn.close()
    return {"plexus": sorted(plexus), "heads": sorted(heads), "direct": sorted(direct_t), "errors": errors}


async def run(args: argparse.Namespace, levels: list[int], allm: Any, llm: Any, key: str, llm_base: str) -> tuple:
    direct = Direct(llm_base)
    ttfe = await first_event(allm.base, key, direct, args.ttfe_requests)
    rows = []
    nats_pid = (child_pids(allm.plexus.pid) or [0])[0]
    for c in levels:
        for kind in ("plexus", "direct"):
            pids = {"plexus": allm.plexus.pid, "nats": nats_pid, "llm": llm.pid, "bench": None}
            cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
            res = await load(kind, allm.base, key, direct, c, args.duration)
            cpu = {k: cpu_seconds(pids[k]) - v for k, v in cpu0.items()}
            server_cpu = cpu["plexus"] if kind == "plexus" else cpu["bench"]
            label = "Plexus (all mode)" if kind == "plexus" else "litellm direct, no Plexus"
            rows.append([label, c, res["complete"], sum(res["errors"].values()), res["complete"] / res["seconds"],
                         res["p50"], res["p99"], res["first_p50"],
                         1e3 * server_cpu / res["complete"] if res["complete"] else float("nan"),
                         " / ".join(f"{100 * cpu[k] / res['seconds']:.0f}" for k in ("plexus", "nats", "llm", "bench"))])
            for err, n in res["errors"].most_common(3):
                print(f"  {label}, c={c}: {n} × {err}")
    return ttfe, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=20, help="seconds per concurrency level and path (default 20)")
    p.add_argument("--concurrency", default="16,64", help="comma list of concurrent streams (default 16,64)")
    p.add_argument("--ttfe-requests", type=int, default=200, help="sequential requests per path (default 200)")
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with service logs")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]

    print(f"## streaming: streamed chats in all mode (scripted LLM, {TOKENS} tokens, no delay)\n")
    print_machine()
    print(flush=True)
    with workdir("stream", args.keep_logs) as work:
        llm, llm_base = start_llm(work, tokens=TOKENS, delay=0.0)
        allm = start_all_mode(work)
        try:
            app = setup_chat_app(allm.base, llm_base, allm.db_path)
            litellm()  # import once here (seconds), not inside a timed section
            ttfe, rows = run_async(run(args, levels, allm, llm, app.key, llm_base))
        finally:
            allm.plexus.stop()
            llm.stop()

    print(table(["path", "concurrency", "complete streams", "errors", "streams/s", "stream p50 ms",
                 "stream p99 ms", "first event p50 ms", "CPU ms per stream", "CPU % plexus / nats / llm / loadgen"],
                rows))
    print()
    pl, hd, di = ttfe["plexus"], ttfe["heads"], ttfe["direct"]

    def ms(v: list[float], q: float) -> float:
        return percentile(v, q) * 1e3

    print(table(["sequential, time to", "requests", "p50 ms", "p90 ms", "p99 ms"], [
        ["first answer token through Plexus (first `message` event)", len(pl), ms(pl, 50), ms(pl, 90), ms(pl, 99)],
        ["… of which: response head from Plexus", len(hd), ms(hd, 50), ms(hd, 90), ms(hd, 99)],
        ["first content chunk from litellm.acompletion direct", len(di), ms(di, 50), ms(di, 90), ms(di, 99)],
    ]))
    if ttfe["errors"]:
        print(f"- {ttfe['errors']} Plexus streams failed during the first-event measurement")
    print()
    plexus_rows = [r for r in rows if r[0].startswith("Plexus")]
    direct_rows = [r for r in rows if not r[0].startswith("Plexus")]
    best = max(plexus_rows, key=lambda r: r[4])
    ceiling = max(direct_rows, key=lambda r: r[4]) if direct_rows else None
    extra = (f"; litellm alone reaches {ceiling[4]:.0f} streams/s at concurrency {ceiling[1]} "
             f"({ceiling[8]:.1f} CPU ms per stream)" if ceiling else "")
    print(verdict(best[4] >= 250, f"{best[4]:.0f} chats/s at concurrency {best[1]} in all mode, {best[3]} errors, "
                                  f"{best[8]:.1f} CPU ms per chat (target ≥ 250 chats/s){extra}"))
    added = ms(pl, 50) - ms(di, 50)
    print(verdict(added <= 3.0, f"Plexus adds {added:+.2f} ms p50 to the first event over litellm direct "
                                f"({ms(pl, 50):.2f} vs {ms(di, 50):.2f} ms; target ≤ 3 ms)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

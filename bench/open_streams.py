"""Many slow streams held open at once through the gateway in `all` mode: 2,000 concurrent chats
against the scripted LLM with a per-token delay (10 tokens × 2.5 s ≈ 25 s each). Reports the plexus
process's RSS (VmRSS) before / at peak / after, its open fds, streams completed, errors and how long
it took until every stream had its response head.

    python -m bench.open_streams [--streams 2000] [--delay 2.5] [--tokens 10]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import time

from bench.common import (
    HttpConn,
    StreamResult,
    chat_request,
    chat_stream,
    cpu_seconds,
    host_port,
    percentile,
    print_machine,
    raise_nofile,
    rss_mb,
    run_async,
    setup_chat_app,
    start_all_mode,
    start_llm,
    table,
    verdict,
    workdir,
)


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


async def warm_up(base: str, key: str, n: int = 32) -> int:
    """Fast chats (the scripted LLM skips its delay for "warmup"): imports, pools, caches, end users."""
    host, port = host_port(base)

    async def one(i: int) -> bool:
        conn = HttpConn(host, port)
        res = await chat_stream(conn, chat_request(base, key, user=f"warm-{i}", query="warmup"))
        conn.close()
        return res.ok

    return sum(await asyncio.gather(*(one(i) for i in range(n))))


async def hold(base: str, key: str, pid: int, streams: int, timeout: float) -> dict:
    host, port = host_port(base)
    heads = 0
    t_all_open: float | None = None
    peak_rss = 0.0
    peak_fds = 0
    peak_open = 0
    done = 0
    start = time.perf_counter()

    def on_head(_res: StreamResult) -> None:
        nonlocal heads, t_all_open
        heads += 1
        if heads == streams:
            t_all_open = time.perf_counter() - start

    async def one(i: int) -> StreamResult:
        nonlocal done
        conn = HttpConn(host, port)
        try:
            return await chat_stream(conn, chat_request(base, key, user=f"hold-{i}", query="hold on"),
                                     timeout=timeout, on_head=on_head)
        finally:
            conn.close()
            done += 1

    async def sample() -> None:
        nonlocal peak_rss, peak_fds, peak_open
        while True:
            peak_rss = max(peak_rss, rss_mb(pid) or 0.0)
            peak_fds = max(peak_fds, fd_count(pid))
            peak_open = max(peak_open, heads - done)
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    try:
        results = await asyncio.gather(*(one(i) for i in range(streams)))
    finally:
        sampler.cancel()
    return {"results": results, "t_all_open": t_all_open, "seconds": time.perf_counter() - start,
            "peak_rss": peak_rss, "peak_fds": peak_fds, "peak_open": peak_open, "heads": heads}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=2000, help="concurrent streams (default 2000)")
    p.add_argument("--tokens", type=int, default=10, help="tokens per reply (default 10)")
    p.add_argument("--delay", type=float, default=2.5, help="seconds before each token (default 2.5)")
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with service logs")
    args = p.parse_args(argv)
    limit = raise_nofile()
    if limit < args.streams + 256:
        raise SystemExit(f"open-file limit {limit} is too low for {args.streams} streams")
    expected = args.tokens * args.delay

    print(f"## open_streams: {args.streams} concurrent slow streams in all mode "
          f"({args.tokens} tokens × {args.delay:g} s ≈ {expected:g} s each)\n")
    print_machine()
    print(flush=True)
    with workdir("open", args.keep_logs) as work:
        llm, llm_base = start_llm(work, tokens=args.tokens, delay=args.delay)
        allm = start_all_mode(work)
        pid = allm.plexus.pid
        try:
            app = setup_chat_app(allm.base, llm_base, allm.db_path)
            warm = run_async(warm_up(allm.base, app.key))
            time.sleep(2)
            before, fds_before = rss_mb(pid), fd_count(pid)
            cpu0 = cpu_seconds(pid), cpu_seconds()
            res = run_async(hold(allm.base, app.key, pid, args.streams, timeout=expected + 120))
            cpu = [(cpu_seconds(pid) - cpu0[0]) / res["seconds"], (cpu_seconds() - cpu0[1]) / res["seconds"]]
            time.sleep(5)  # let the runs finish their bookkeeping
            after, fds_after = rss_mb(pid), fd_count(pid)
        finally:
            allm.plexus.stop()
            llm.stop()

    results: list[StreamResult] = res["results"]
    ok = [r for r in results if r.ok]
    errors = collections.Counter(r.error[:100] for r in results if not r.ok)
    totals = sorted(r.t_total for r in ok)
    firsts = sorted(r.t_first for r in ok if r.t_first is not None)
    print(f"warm-up: {warm}/32 fast chats complete\n")
    print(table(["streams", "completed", "errors", "peak open at once", "all heads after s",
                 "first token p50 / max s", "stream p50 / p99 s", "wall s", "CPU % plexus / loadgen"], [[
        args.streams, len(ok), sum(errors.values()), res["peak_open"],
        f"{res['t_all_open']:.2f}" if res["t_all_open"] is not None else f"never ({res['heads']} heads)",
        f"{percentile(firsts, 50):.2f} / {firsts[-1] if firsts else float('nan'):.2f}",
        f"{percentile(totals, 50):.2f} / {percentile(totals, 99):.2f}", f"{res['seconds']:.1f}",
        f"{100 * cpu[0]:.0f} / {100 * cpu[1]:.0f}",
    ]]))
    print()
    print(table(["plexus process", "before", "peak", "after"], [
        ["RSS MB (VmRSS)", before, res["peak_rss"], after],
        ["open fds", fds_before, res["peak_fds"], fds_after],
    ]))
    per_stream = (res["peak_rss"] - before) * 1024 / args.streams if before else float("nan")
    print(f"\n≈ {per_stream:.0f} KB RSS per open stream at peak")
    for err, n in errors.most_common(5):
        print(f"  {n} × {err}")
    print()
    print(verdict(not errors and len(ok) == args.streams,
                  f"{len(ok)}/{args.streams} streams completed, {sum(errors.values())} errors (target: 0 errors)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Answer-cache hits vs misses through the gateway in `all` mode (one `plexus run` process, SQLite, embedded
NATS; the scripted LLM in its own process, 10 tokens, no delay). Sequential requests on one keep-alive
connection, so the figures are latency, not throughput.

- hit: a blocking chat whose normalised query, inputs and config were answered before (no model call;
  the conversation and message rows are still written, one transaction);
- miss: a blocking chat with a new query each time (the model is called, the answer is stored and cached);
- for scale: a streamed hit, `GET /v1/parameters` (key auth, dispatch and a JSON answer: no database), and
  the cache lookup alone (key hash + in-memory get, in this process).

    python -m bench.answer_cache [--requests 1000] [--misses 300]
"""

from __future__ import annotations

import argparse
import sys
import time

import httpx
import orjson

from bench.common import (
    HttpConn,
    chat_stream,
    console_admin,
    host_port,
    ok,
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

TARGET_P50_MS = 2.0
USERS = 20


def enable_cache(base: str, app_id: str) -> None:
    with httpx.Client(base_url=base, timeout=60) as c:
        h = console_admin(c)
        ok(c.post(f"/console/api/apps/{app_id}/model-config", headers=h, json={
            "model": {"provider": "openai-compatible", "name": "scripted", "completion_params": {}},
            "pre_prompt": "You are a benchmark.", "user_input_form": [],
            "answer_cache": {"enabled": True, "ttl_seconds": 3600},
        }))


def request(base: str, key: str, method: str, path: str, body: dict | None = None) -> bytes:
    host = base.split("://", 1)[1]
    headers = {"Authorization": f"Bearer {key}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    return HttpConn.build(method, path, host, headers, orjson.dumps(body) if body is not None else None)


async def timed(conn: HttpConn, raw: bytes, check: str | None = None) -> float:
    t0 = time.perf_counter()
    status, _ = await conn.send(raw)
    data = await conn.read_all()
    dt = time.perf_counter() - t0
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {data[:300]!r}")
    if check is not None:
        meta = orjson.loads(data)["metadata"]
        hit = bool(meta.get("cache_hit"))
        if hit != (check == "hit"):
            raise RuntimeError(f"expected a {check}, got metadata {meta}")
    return dt


async def run(args: argparse.Namespace, base: str, key: str) -> dict[str, list[float]]:
    conn = HttpConn(*host_port(base))
    out: dict[str, list[float]] = {"hit": [], "miss": [], "stream": [], "stream_first": [], "params": []}

    def chat(query: str, i: int, streaming: bool = False) -> bytes:
        body = {"inputs": {}, "query": query, "user": f"bench-{i % USERS}", "auto_generate_name": False}
        if streaming:
            body["response_mode"] = "streaming"
        return request(base, key, "POST", "/v1/chat-messages", body)

    await timed(conn, chat("what is the answer?", 0), check="miss")  # fills the cache
    for i in range(2 * USERS):  # warm-up: end users created, code paths hot
        await timed(conn, chat("what is the answer?", i), check="hit")
        await timed(conn, chat(f"warm-up question {i}", i), check="miss")
        await timed(conn, request(base, key, "GET", "/v1/parameters?user=bench"))
    for i in range(args.requests):  # interleaved, so drift affects each path alike
        out["hit"].append(await timed(conn, chat("What is   the answer?", i), check="hit"))
        out["params"].append(await timed(conn, request(base, key, "GET", "/v1/parameters?user=bench")))
        res = await chat_stream(conn, chat("what is the answer?", i, streaming=True))
        if not res.ok:
            raise RuntimeError(f"streamed hit failed: {res.error}")
        out["stream"].append(res.t_total or 0.0)
        out["stream_first"].append(res.t_first or 0.0)
        if i < args.misses:
            out["miss"].append(await timed(conn, chat(f"question number {i}", i), check="miss"))
    conn.close()
    return out


async def lookup_alone(n: int) -> list[float]:
    """AnswerCache.lookup (normalise, hash, memory get) on an entry like the app's, without HTTP or database."""
    from types import SimpleNamespace

    from services.runtime.service.answer_cache import AnswerCache
    from services.runtime.service.cache import AppEntry
    from shared.app_config import parse_model_config

    ctx = SimpleNamespace(redis=None, mode="all", settings=SimpleNamespace(
        runtime=SimpleNamespace(answer_cache_max_entries=10_000)))
    cache = AnswerCache(ctx)  # type: ignore[arg-type]
    config = parse_model_config({"model": {"provider": "openai-compatible", "name": "scripted"},
                                 "pre_prompt": "You are a benchmark.", "answer_cache": {"enabled": True}})
    app = AppEntry(id="app", tenant_id="t", name="n", description="", mode="chat", author_name="", config=config,
                   binding=None, loaded_at=0.0, config_id="cfg")
    ask = {"endpoint": "chat", "new_conversation": True, "query": "What is   the answer?", "inputs": {},
           "system": "You are a benchmark."}
    await cache.put(await cache.lookup(app, **ask), "42", "m")
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        found = await cache.lookup(app, **ask)
        out.append(time.perf_counter() - t0)
        assert found is not None and found.answer == "42"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1000, help="cache hits measured (default 1000)")
    p.add_argument("--misses", type=int, default=300, help="cache misses measured (default 300)")
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with service logs")
    args = p.parse_args(argv)

    print("## answer_cache: cache hit vs miss latency through the gateway (all mode, sequential)\n")
    print_machine()
    print(flush=True)
    with workdir("answer-cache", args.keep_logs) as work:
        llm, llm_base = start_llm(work, tokens=10, delay=0.0)
        allm = start_all_mode(work)
        try:
            app = setup_chat_app(allm.base, llm_base, allm.db_path, name="Cache bench")
            enable_cache(allm.base, app.app_id)
            res = run_async(run(args, allm.base, app.key))
            res["lookup"] = run_async(lookup_alone(args.requests))
        finally:
            allm.plexus.stop()
            llm.stop()

    def row(name: str, v: list[float]) -> list:
        s = sorted(v)
        return [name, len(s), percentile(s, 50) * 1e3, percentile(s, 90) * 1e3, percentile(s, 99) * 1e3]

    print(table(["request", "n", "p50 ms", "p90 ms", "p99 ms"], [
        row("blocking chat, cache hit", res["hit"]),
        row("blocking chat, cache miss (scripted LLM, 10 tokens)", res["miss"]),
        row("streamed chat, cache hit: whole stream", res["stream"]),
        row("streamed chat, cache hit: first `message` event", res["stream_first"]),
        row("GET /v1/parameters (auth + dispatch, no database)", res["params"]),
        row("answer-cache lookup alone (in-process)", res["lookup"]),
    ]))
    print()
    hit_p50 = percentile(sorted(res["hit"]), 50) * 1e3
    print(verdict(hit_p50 <= TARGET_P50_MS, f"cache hit p50 ≤ {TARGET_P50_MS:g} ms (measured {hit_p50:.2f} ms)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The scripted OpenAI-compatible LLM (tests.llm_server.ScriptedLLM) in a process of its own, so its
event loop never competes with the load generator's. Every request gets the same scripted stream.

    python -m bench.llm_proc --port P [--tokens 10] [--delay 0.0]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal


async def serve(port: int, tokens: int, delay: float) -> None:
    from tests.llm_server import ScriptedLLM

    llm = ScriptedLLM()
    llm.port = port
    # bounded: the server records every request body, and a bench sends tens of thousands
    llm.requests = collections.deque(maxlen=100)  # type: ignore[assignment]
    words = [f"tok{i} " for i in range(tokens)]
    # a query containing "warmup" always streams without delay, so benches can warm up quickly
    llm.push(tokens=words, delay=0.0, match="warmup", times=10**12)
    llm.push(tokens=words, delay=delay, times=10**12)
    await llm.start()
    print(f"scripted llm on http://127.0.0.1:{port}/v1 ({tokens} tokens, {delay}s/token)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await llm.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tokens", type=int, default=10)
    p.add_argument("--delay", type=float, default=0.0, help="seconds before each token")
    a = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(a.port, a.tokens, a.delay))


if __name__ == "__main__":
    main()

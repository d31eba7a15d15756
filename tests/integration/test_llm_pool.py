"""`runtime.llm_max_connections` bounds the streams one process holds open to a model host.

litellm reads its aiohttp pool limits once, at import, so the calls run in a fresh process that starts
the way `plexus run` does (Stack.start configures litellm before anything imports it).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

SCRIPT = """
import asyncio, json, sys
from services.runtime.llm import Usage, bind_model, stream_chat
from shared.llm import configure
from shared.settings import Settings

async def main(base, n):
    configure(Settings().runtime.llm_max_connections)
    binding = bind_model("openai-compatible", "scripted", {"api_key": "sk-t", "api_base": base}, {})
    async def one():
        return "".join([d async for d in stream_chat(
            binding, [{"role": "user", "content": "pool-limit"}], 30.0, Usage())])
    print(json.dumps(await asyncio.gather(*[one() for _ in range(n)])))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def run_streams(llm, n: int, limit: int | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLEXUS_", "AIOHTTP_"))}
    if limit is not None:
        env["PLEXUS_RUNTIME__LLM_MAX_CONNECTIONS"] = str(limit)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRIPT, llm.base_url, str(n), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    return json.loads(out.decode().strip().splitlines()[-1])


async def test_max_connections_bounds_open_streams_and_queues_the_rest(llm):
    llm.reset()
    llm.push(tokens=["a ", "b ", "c"], delay=0.1, match="pool-limit", times=16)
    answers = await run_streams(llm, 8, limit=3)
    # all eight answered in full, never more than three at the model at once
    assert answers == ["a b c"] * 8
    assert llm.peak_streaming == 3


"""Tool calls over real NATS: the caller always gets a structured result (no tools service, a tools service
that never answers), replicas in the queue group share calls, and one replica answers many at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from shared.bus import Bus
from shared.subjects import TOOLS_INVOKE_WILDCARD, TOOLS_QUEUE
from shared.tool_catalog import REPLY_GRACE, call_tool

PAYLOAD = {"tenant_id": "t", "provider_type": "builtin", "provider_id": "time", "tool": "current_time",
           "arguments": {}}


async def test_no_tools_service_is_a_structured_error(nats_url: str) -> None:
    bus = await Bus.connect(nats_url)
    try:
        result = await call_tool(bus, "nobody-serves-this", PAYLOAD, timeout=1.0)
    finally:
        await bus.close()
    assert result["ok"] is False and result["error"]["code"] == "unavailable"


async def test_a_silent_tools_service_times_out_with_a_result(nats_url: str) -> None:
    server, client = await Bus.connect(nats_url), await Bus.connect(nats_url)
    never = asyncio.Event()

    async def silent(_subject: str, _req: dict[str, Any]) -> dict[str, Any]:
        await never.wait()
        return {"ok": True, "output": "too late"}

    try:
        await server.serve_json("plexus.tools.invoke.silent", silent, queue=TOOLS_QUEUE, concurrency=4)
        await server.sync()
        t0 = time.monotonic()
        result = await call_tool(client, "silent", PAYLOAD, timeout=0.2)
        waited = time.monotonic() - t0
    finally:
        never.set()
        await client.close()
        await server.close()
    assert result == {"ok": False, "error": {"code": "timeout", "message": result["error"]["message"]},
                      "elapsed": result["elapsed"]}
    assert waited >= 0.2 + REPLY_GRACE * 0.9  # the caller allowed the service its grace to answer


async def test_replicas_share_calls_and_each_answers_concurrently(nats_url: str) -> None:
    replicas = [await Bus.connect(nats_url) for _ in range(2)]
    client = await Bus.connect(nats_url)
    served: list[int] = [0, 0]
    in_flight = 0
    peak = 0
    crowd = asyncio.Event()
    calls = 40

    def handler(i: int):
        async def _h(_subject: str, req: dict[str, Any]) -> dict[str, Any]:
            nonlocal in_flight, peak
            served[i] += 1
            in_flight += 1
            peak = max(peak, in_flight)
            if in_flight >= 10:
                crowd.set()
            try:
                await asyncio.wait_for(crowd.wait(), 5)  # held until 10 calls are in flight at once
            finally:
                in_flight -= 1
            return {"ok": True, "output": str(req["n"])}
        return _h

    try:
        for i, bus in enumerate(replicas):
            await bus.serve_json(TOOLS_INVOKE_WILDCARD, handler(i), queue=TOOLS_QUEUE, concurrency=32)
            await bus.sync()
        results = await asyncio.gather(*(call_tool(client, "x", {**PAYLOAD, "n": n}, timeout=5) for n in range(calls)))
    finally:
        await client.close()
        for bus in replicas:
            await bus.close()
    assert [r["output"] for r in results] == [str(n) for n in range(calls)]  # each caller got its own answer
    assert sum(served) == calls and min(served) > 0  # the queue group spread the calls
    assert peak >= 10  # calls overlapped instead of being answered one after another

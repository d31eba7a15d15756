"""NATS side of the tools service: tool calls (request/reply in a queue group, so replicas share the load)
and config changes (drop cached providers at once)."""

from __future__ import annotations

from typing import Any

from services.tools.service import ToolsService
from shared.context import Context
from shared.subjects import CONFIG_WILDCARD, TOOLS_INVOKE_WILDCARD, TOOLS_QUEUE


async def start(ctx: Context, app: Any) -> None:
    svc: ToolsService = app.state.tools

    async def _config(subject: str, payload: dict[str, Any]) -> None:
        svc.on_config(subject, payload)

    await ctx.bus.subscribe_json(CONFIG_WILDCARD, _config)
    await ctx.bus.serve_json(TOOLS_INVOKE_WILDCARD, svc.invoke, queue=TOOLS_QUEUE,
                             concurrency=ctx.settings.tools.concurrency)
    await ctx.bus.sync()


async def stop(ctx: Context, app: Any) -> None:
    await app.state.tools.close()

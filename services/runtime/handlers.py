"""NATS subscriptions of the runtime: stop requests for runs (every replica hears every stop; the owner
acts) and config changes (drop cached apps at once)."""

from __future__ import annotations

from typing import Any

from services.runtime.service import Runtime
from shared.context import Context
from shared.subjects import CONFIG_WILDCARD, TASK_STOP_WILDCARD


async def start(ctx: Context, app: Any) -> None:
    runtime: Runtime = app.state.runtime

    async def _stop(subject: str, payload: dict[str, Any]) -> None:
        runtime.on_stop(subject, payload)

    async def _config(subject: str, payload: dict[str, Any]) -> None:
        runtime.on_config(subject, payload)

    # no queue group: a stop must reach the one replica that owns the run, a config change every cache
    await ctx.bus.subscribe_json(TASK_STOP_WILDCARD, _stop)
    await ctx.bus.subscribe_json(CONFIG_WILDCARD, _config)
    await ctx.bus.sync()  # subscriptions are live before the first request can name a task
    await runtime.start()


async def stop(ctx: Context, app: Any) -> None:
    runtime: Runtime = app.state.runtime
    await runtime.shutdown()

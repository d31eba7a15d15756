"""NATS side of the gateway: drop cached keys when the console changes them; start/stop."""

from __future__ import annotations

from typing import Any

import structlog

from services.gateway.api import Gateway
from shared.context import Context
from shared.subjects import CONFIG_WILDCARD, parse_config_subject

log = structlog.get_logger("plexus.gateway")


async def start(ctx: Context, app: Gateway) -> None:
    async def on_config(subject: str, payload: dict[str, Any]) -> None:
        kind, ident = parse_config_subject(subject)
        # apikey: payload["token_hash"]; app / tenant: every key of that app or workspace
        dropped = app.keys.invalidate(kind, ident, payload)
        if dropped:
            log.debug("key_cache_invalidated", kind=kind, id=ident, dropped=dropped)

    await ctx.bus.subscribe_json(CONFIG_WILDCARD, on_config)
    await ctx.bus.sync()  # the subscription is live on the server before we take traffic
    await app.startup()


async def stop(ctx: Context, app: Gateway | None) -> None:
    if app is not None:
        await app.shutdown()

"""NATS side of the console service: it only publishes (config changes, see service.common.publish_change)."""

from __future__ import annotations

from typing import Any

from shared.context import Context


async def start(ctx: Context, app: Any) -> None:
    """No subscriptions: the console owns the data it changes and tells others, it listens to no one."""


async def stop(ctx: Context, app: Any) -> None:
    await app.state.extensions.close()

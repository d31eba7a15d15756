"""NATS subscriptions of the indexer service."""

from __future__ import annotations

from typing import Any

from shared.context import Context


async def start(ctx: Context, app: Any) -> None:
    """No subscriptions yet: the indexer capability lands with its own issue."""


async def stop(ctx: Context, app: Any) -> None:
    pass

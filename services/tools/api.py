"""Tools service HTTP API. Tool execution arrives with the tools issue; health is live now."""

from __future__ import annotations

from fastapi import FastAPI

from shared.context import Context
from shared.http import create_base_app


def create_app(ctx: Context) -> FastAPI:
    return create_base_app("tools", checks={"database": ctx.db.ping, "nats": ctx.bus.ping})

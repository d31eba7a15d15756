"""Tools service HTTP API: health only. Tool calls arrive over NATS (shared.subjects.TOOLS_INVOKE_WILDCARD);
tool providers are managed through the console."""

from __future__ import annotations

from fastapi import FastAPI

from services.tools.service import ToolsService
from shared.context import Context
from shared.http import create_base_app


def create_app(ctx: Context) -> FastAPI:
    app = create_base_app("tools", checks={"database": ctx.db.ping, "nats": ctx.bus.ping})
    app.state.tools = ToolsService(ctx)
    return app

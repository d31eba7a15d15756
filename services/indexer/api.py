"""Knowledge API (/v1/datasets …). Routes arrive with the knowledge issue; health is live now."""

from __future__ import annotations

from fastapi import FastAPI

from shared.context import Context
from shared.http import create_base_app


def create_app(ctx: Context) -> FastAPI:
    return create_base_app("indexer", checks={"database": ctx.db.ping, "nats": ctx.bus.ping})

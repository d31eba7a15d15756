"""NATS side of the console service: it publishes config changes (service.common.publish_change) and answers
one request, who may call a /console/api route another service serves (CONSOLE_AUTHORIZE)."""

from __future__ import annotations

from typing import Any

import structlog

from services.console.api import authorize
from shared.context import Context
from shared.errors import ApiError
from shared.subjects import CONSOLE_AUTHORIZE, CONSOLE_QUEUE

log = structlog.get_logger("plexus.console.handlers")
# checks in flight per replica: each is a token check and one or two indexed reads
AUTHORIZE_CONCURRENCY = 64


async def start(ctx: Context, app: Any) -> None:
    auth = app.state.auth

    async def _authorize(_subject: str, req: dict[str, Any]) -> dict[str, Any]:
        try:
            p = await authorize(ctx, auth, req.get("authorization"), str(req.get("method") or ""),
                                "/console/api" + str(req.get("path") or ""),
                                cookie=req.get("cookie"), csrf=req.get("csrf_token"))
        except ApiError as e:
            return {"error": e.body()}
        return {"tenant_id": p.tenant_id, "account_id": p.account_id, "role": p.role, "key_id": p.key_id}

    app.state.authorize_sub = await ctx.bus.serve_json(CONSOLE_AUTHORIZE, _authorize, queue=CONSOLE_QUEUE,
                                                       concurrency=AUTHORIZE_CONCURRENCY)
    await ctx.bus.sync()


async def stop(ctx: Context, app: Any) -> None:
    sub = getattr(app.state, "authorize_sub", None)
    if sub is not None:
        try:
            await sub.unsubscribe()
        except Exception as e:  # noqa: BLE001 - the bus may be closing already
            log.debug("authorize_unsubscribe_failed", error=repr(e))
    await app.state.extensions.close()

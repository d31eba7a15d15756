"""The base every service's FastAPI app is built on: error envelope, request ids, metrics, health."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import ApiError, error_response, install_error_handlers
from shared.identity import H_REQUEST_ID
from shared.metrics import HTTP_LATENCY, HTTP_REQUESTS, metrics_response

Check = Callable[[], Awaitable[Any]]


class RequestContextMiddleware:
    """Binds request_id for logs and records route/status/latency (pure ASGI: no body buffering)."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = _header(scope, H_REQUEST_ID.encode()) or uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=rid)
        start = time.perf_counter()
        status = 500

        async def _send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
                route = getattr(scope.get("route"), "path", "unmatched")
                HTTP_LATENCY.labels(self.service, route).observe(time.perf_counter() - start)
                HTTP_REQUESTS.labels(self.service, route, scope["method"], str(status)).inc()
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


def create_base_app(service: str, lifespan: Any = None, checks: dict[str, Check] | None = None, **kw: Any) -> FastAPI:
    app = FastAPI(title=f"plexus-{service}", lifespan=lifespan, **kw)
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, service=service)
    add_health_routes(app, checks or {})
    return app


def add_health_routes(app: FastAPI, checks: dict[str, Check]) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz():
        results: dict[str, str] = {}
        for name, check in checks.items():
            try:
                await check()
                results[name] = "ok"
            except Exception as e:  # noqa: BLE001
                results[name] = f"error: {e}"
        if any(v != "ok" for v in results.values()):
            return error_response(ApiError(503, "service_unavailable", "not ready", checks=results))
        return {"status": "ok", "checks": results}

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        return metrics_response()

"""The one error type and the Dify envelope ``{"code","message","status"}`` for every service.

Services raise ``ApiError`` (or a helper below); ``install_error_handlers`` maps it, Starlette
HTTP errors, request-validation errors and unexpected exceptions to the envelope.
"""

from __future__ import annotations

import re
import uuid
from functools import lru_cache
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = structlog.get_logger("plexus.errors")

INVALID_JSON = "Invalid JSON payload received or JSON payload is empty."
UNSUPPORTED_MEDIA = ("Did not attempt to load JSON data because the request Content-Type was not "
                     "'application/json'.")
UNAVAILABLE = "A service this request needs is unavailable; try again shortly."
INTERNAL = "Internal Server Error, please contact support."
KEY_EXPIRED = "Access token has expired."  # an API key past its expiry (rotated out), gateway and console alike

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_entity_too_large",
    415: "unsupported_media_type",
    422: "invalid_param",
    429: "too_many_requests",
    500: "internal_server_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


class ApiError(Exception):
    """An error that reaches the client as the Dify envelope."""

    def __init__(
        self,
        status: int,
        code: str | None = None,
        message: str = "",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _STATUS_CODES.get(status, "unknown")
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "status": self.status, **self.extra}


def invalid_param(message: str, **extra: Any) -> ApiError:
    return ApiError(400, "invalid_param", message, **extra)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def forbidden(message: str, code: str = "forbidden") -> ApiError:
    return ApiError(403, code, message)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="api"'})


def canonical_uuid(value: Any) -> str | None:
    """``value`` as a canonical UUID string; None when it is not one (Dify declares its ids as UUIDs)."""
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def parse_uuid(value: Any, error: ApiError) -> str:
    """A canonical UUID, or ``error`` (an id that is no UUID is unknown: usually a 404)."""
    found = canonical_uuid(value)
    if found is None:
        raise error
    return found


def envelope_bytes(status: int, code: str, message: str, **extra: Any) -> bytes:
    return orjson.dumps({"code": code, "message": message, "status": status, **extra})


def error_response(err: ApiError) -> Response:
    return Response(
        orjson.dumps(err.body()), status_code=err.status, media_type="application/json", headers=err.headers
    )


def _loc(error: dict[str, Any]) -> str:
    parts = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header")]
    return ".".join(parts)


def validation_message(exc: RequestValidationError | ValidationError) -> tuple[str, str, str | None]:
    """(code, message, param) for a request (or any pydantic) validation error, in Dify's words where it has them."""
    errors = exc.errors()
    for e in errors:
        if e.get("type") == "json_invalid":
            return "bad_request", INVALID_JSON, None
    # a missing or non-object JSON body
    for e in errors:
        if tuple(e.get("loc", ())) == ("body",):
            return "bad_request", INVALID_JSON, None
    e = errors[0]
    field = _loc(e)
    msg = str(e.get("msg", "invalid value"))
    msg = re.sub(r"^Value error, ", "", msg)
    if e.get("type") == "missing":
        return "invalid_param", f"{field} is required", field or None
    return "invalid_param", f"{field}: {msg}" if field else msg, field or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        code, message, param = validation_message(exc)
        ctype = request.headers.get("content-type", "")
        if code == "bad_request" and ctype and "json" not in ctype:
            # Flask's answer when a JSON endpoint gets another media type (reference §0)
            return error_response(ApiError(415, "unsupported_media_type", UNSUPPORTED_MEDIA))
        extra = {"params": param} if param else {}
        return error_response(ApiError(400, code, message, **extra))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        status = exc.status_code
        default = {404: "The requested URL was not found on the server.", 405: "The method is not allowed."}
        message = exc.detail if isinstance(exc.detail, str) and exc.detail not in ("Not Found", "Method Not Allowed") else default.get(status, str(exc.detail))
        return error_response(ApiError(status, None, message, headers=dict(exc.headers or {})))

    @app.exception_handler(ValueError)
    async def _value(_: Request, exc: ValueError) -> Response:
        return error_response(invalid_param(str(exc)))

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> Response:
        if dependency_down(exc):
            # refused, not lost: nothing was accepted, and the client can retry once the server is back
            log.warning("dependency_unavailable", path=request.url.path, error=repr(exc))
            return error_response(ApiError(503, "service_unavailable", UNAVAILABLE, headers={"Retry-After": "1"}))
        log.exception("unhandled_error", path=request.url.path)
        return error_response(ApiError(500, "internal_server_error", INTERNAL))


@lru_cache(maxsize=1)
def _down_types() -> tuple[type[BaseException], ...]:
    import asyncpg.exceptions as pg
    import nats.errors
    import redis.exceptions
    from sqlalchemy import exc as sa

    return (ConnectionError, sa.TimeoutError,  # refused/reset sockets; no free pooled connection in time
            pg.PostgresConnectionError, pg.CannotConnectNowError, pg.AdminShutdownError, pg.TooManyConnectionsError,
            nats.errors.ConnectionClosedError, nats.errors.NoServersError,
            nats.errors.ConnectionReconnectingError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def _closed_connection(e: BaseException) -> bool:
    """asyncpg's "connection is closed" (a pooled connection whose server went away) is an InterfaceError,
    like client-side bugs such as a wrong argument type (its DataError): only the former is an outage."""
    import asyncpg.exceptions as pg

    return isinstance(e, pg.InterfaceError) and "connection is closed" in str(e)


def dependency_down(exc: BaseException) -> bool:
    """The database, NATS or Redis is down or restarting (as opposed to a bug): follows SQLAlchemy's wrapped
    driver error and the exception's causes."""
    from sqlalchemy import exc as sa

    down = _down_types()
    seen: list[BaseException | None] = [exc]
    for _ in range(6):
        if not seen:
            break
        e = seen.pop()
        if e is None:
            continue
        if isinstance(e, down) or (isinstance(e, sa.DBAPIError) and e.connection_invalidated):
            return True
        if _closed_connection(e):
            return True
        seen.extend((getattr(e, "orig", None), e.__cause__))
    return False

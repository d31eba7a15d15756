"""The built-in tools (their schemas are in shared.tool_catalog.BUILTIN_TOOLS)."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import nats.errors
import orjson
import segno

from services.tools.calculator import CalculatorError, evaluate, format_result
from shared.egress import EgressError
from shared.subjects import KNOWLEDGE_RETRIEVE

if TYPE_CHECKING:
    from services.tools.service import ToolsService


@dataclass(frozen=True, slots=True)
class ToolFile:
    filename: str
    mime_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ToolOutput:
    """A result with files besides its text (the text is what the model reads)."""

    text: str
    files: tuple[ToolFile, ...]


QR_SCALE = 8  # pixels per module


def qrcode_png(content: str, error: str, border: int) -> ToolOutput:
    """The QR code of ``content`` as a PNG; ValueError when it does not fit in a QR code."""
    try:
        qr = segno.make_qr(content, error=error, boost_error=False)
    except segno.DataOverflowError as e:
        raise ValueError(f"the content is too long for a QR code ({e})") from None
    buf = io.BytesIO()
    qr.save(buf, kind="png", scale=QR_SCALE, border=border)
    side = (qr.symbol_size(scale=QR_SCALE, border=border))[0]
    return ToolOutput(f"A QR code image ({side}x{side} PNG, version {qr.version}, error correction {error}) "
                      "was made and is shown to the user.", (ToolFile("qrcode.png", "image/png", buf.getvalue()),))


async def run(svc: ToolsService, tenant_id: str, name: str, args: dict[str, Any], timeout: float
              ) -> str | ToolOutput:
    from services.tools.service import ToolError

    if name == "qrcode_generator":
        try:
            return await asyncio.to_thread(qrcode_png, str(args["content"]), args.get("error_correction") or "M",
                                           2 if args.get("border") is None else int(args["border"]))
        except ValueError as e:
            raise ToolError("invalid_arguments", str(e)) from None

    if name == "current_time":
        tz_name = (args.get("timezone") or "UTC").strip()
        try:
            tz = UTC if tz_name.upper() == "UTC" else ZoneInfo(tz_name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ToolError("invalid_arguments", f"unknown timezone {tz_name!r}; use an IANA name") from None
        now = datetime.now(tz)
        fmt = args.get("format")
        return now.strftime(fmt) if fmt else now.isoformat(timespec="seconds")
    if name == "calculator":
        try:
            return format_result(evaluate(str(args["expression"])))
        except CalculatorError as e:
            raise ToolError("invalid_arguments", str(e)) from None
    if name == "http_request":
        method = (args.get("method") or "GET").upper()
        headers = {str(k): str(v) for k, v in (args.get("headers") or {}).items()}
        body = None
        if method == "POST" and args.get("body") is not None:
            body = orjson.dumps(args["body"])
            headers.setdefault("Content-Type", "application/json")
        try:
            resp = await svc.egress.request(method, str(args["url"]), headers=headers, content=body,
                                            timeout=timeout, max_bytes=svc.settings.max_response_bytes)
        except EgressError as e:
            raise ToolError(e.code, str(e)) from None
        return f"HTTP {resp.status}\n" + resp.body.decode("utf-8", errors="replace")
    if name == "knowledge_retrieval":
        payload: dict[str, Any] = {"tenant_id": tenant_id, "dataset_ids": [str(i) for i in args["dataset_ids"]],
                                   "query": str(args["query"])}
        if args.get("top_k"):
            payload["retrieval_model"] = {"top_k": int(args["top_k"])}
        try:
            msg = await svc.ctx.bus.nc.request(KNOWLEDGE_RETRIEVE, orjson.dumps(payload), timeout=timeout)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            raise ToolError("unavailable", "knowledge retrieval is unavailable right now") from None
        reply = orjson.loads(msg.data)
        if "error" in reply:
            raise ToolError(reply["error"].get("code") or "retrieval_failed", reply["error"].get("message", ""))
        records = reply.get("records") or []
        if not records:
            return "No relevant passages found."
        return "\n\n".join(
            f"[{i}] {(r['segment'].get('document') or {}).get('name', '')}\n{r['segment'].get('content', '')}"
            for i, r in enumerate(records, 1))
    raise ToolError("tool_not_found", f"there is no built-in tool {name}")

"""Tool execution: one call in, one structured result out (never an exception, never a missing reply).

A call names a built-in tool or a custom tool of a workspace's provider. Custom tools become one HTTP
request through the SSRF-guarded egress client, with the provider's credentials and, when the provider
has a signing secret, an HMAC-SHA256 signature (docs/tools.md tells receivers how to verify it). Every
call is bounded: the tool's timeout, the response size cap, and the tool's calls per minute (shared
across replicas through Redis when there is one).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

import jsonschema
import orjson
import structlog
from sqlmodel import select

from services.tools import builtin
from shared.context import Context
from shared.crypto import decrypt_json
from shared.egress import Egress, EgressError, EgressPolicy
from shared.limiter import AppLimits, LimiterUnavailable, build_limiter
from shared.metrics import TOOL_CALLS, TOOL_SECONDS
from shared.models import ToolProvider
from shared.subjects import parse_config_subject
from shared.tool_catalog import BUILTIN_TOOLS, TOOL_FILES_MAX_BYTES, ToolCredentials, effective_timeout
from shared.tool_schema import ToolSchemaError, ToolSpec, prepare_request

log = structlog.get_logger("plexus.tools")

SIGNATURE_HEADER = "X-Plexus-Signature"
TIMESTAMP_HEADER = "X-Plexus-Timestamp"
PROVIDER_CACHE_SECONDS = 60.0
ERROR_BODY_CHARS = 500


class ToolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class _Provider:
    id: str
    tenant_id: str
    name: str
    specs: dict[str, ToolSpec]
    credentials: ToolCredentials
    signing_secret: str | None
    loaded_at: float


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>``: the value of X-Plexus-Signature."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


@functools.lru_cache(maxsize=1024)
def _validator(schema_json: bytes) -> Any:
    schema = orjson.loads(schema_json)
    return jsonschema.validators.validator_for(schema)(schema)


def validate_arguments(schema: dict[str, Any], arguments: dict[str, Any]) -> None:
    """The model's arguments against the tool's JSON schema: a clear message it can correct itself with.
    Validators are cached by schema: building one was ~10 % of a call's CPU (bench/tools.py profile)."""
    validator = _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "arguments"
        raise ToolError("invalid_arguments", f"{where}: {error.message}")


def _wire_files(files: tuple[builtin.ToolFile, ...]) -> list[dict[str, str]]:
    if sum(len(f.data) for f in files) > TOOL_FILES_MAX_BYTES:
        raise ToolError("output_too_large", f"the tool's files exceed {TOOL_FILES_MAX_BYTES} bytes")
    return [{"filename": f.filename, "mime_type": f.mime_type, "data": base64.b64encode(f.data).decode()}
            for f in files]


class ToolsService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.settings = ctx.settings.tools
        self.egress = Egress(EgressPolicy.from_allowlist(self.settings.egress_allowlist))
        self.limiter = build_limiter(ctx, prefix="plexus:tool-limits")
        self._providers: dict[str, _Provider] = {}
        self._generation = 0  # bumped by every invalidation: a load that raced one is not cached

    async def close(self) -> None:
        await self.egress.close()

    def on_config(self, subject: str, payload: dict[str, Any]) -> None:
        kind, ident = parse_config_subject(subject)
        self._generation += 1
        if kind == "tool_provider":
            self._providers.pop(ident, None)
        elif kind == "tenant":
            for pid in [k for k, p in self._providers.items() if p.tenant_id == ident]:
                self._providers.pop(pid, None)

    # -- one call ---------------------------------------------------------------------------------
    async def invoke(self, _subject: str, req: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        tool = f"{req.get('provider_id')}/{req.get('tool')}"
        try:
            output = await self._invoke(req)
            result: dict[str, Any] = {"ok": True, "output": output}
            if isinstance(output, builtin.ToolOutput):
                result = {"ok": True, "output": output.text, "files": _wire_files(output.files)}
        except ToolError as e:
            result = {"ok": False, "error": {"code": e.code, "message": e.message}}
        except Exception as e:
            log.exception("tool_call_crashed", tool=tool)
            result = {"ok": False, "error": {"code": "internal_error", "message": f"{type(e).__name__}: {e}"}}
        elapsed = time.perf_counter() - t0
        result["elapsed"] = round(elapsed, 6)
        ptype = req.get("provider_type") if req.get("provider_type") in ("builtin", "api", "inline") else "other"
        TOOL_CALLS.labels(ptype, "ok" if result["ok"] else result["error"]["code"]).inc()
        TOOL_SECONDS.labels(ptype).observe(elapsed)
        if not result["ok"]:
            log.info("tool_call_failed", tool=tool, **result["error"])
        return result

    async def _invoke(self, req: dict[str, Any]) -> str | builtin.ToolOutput:
        tenant_id = str(req.get("tenant_id") or "")
        ptype, pid, name = req.get("provider_type"), str(req.get("provider_id") or ""), str(req.get("tool") or "")
        args = req.get("arguments")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ToolError("invalid_arguments", "arguments must be a JSON object")
        if ptype == "builtin":
            b = BUILTIN_TOOLS.get((pid, name))
            if b is None:
                raise ToolError("tool_not_found", f"there is no built-in tool {pid}/{name}")
            validate_arguments(b.parameters, args)
            timeout = effective_timeout(None, self.settings)
            await self._limit(f"builtin:{pid}:{name}:{tenant_id}", self.settings.rate_limit_per_minute, name)
            return await self._bounded(builtin.run(self, tenant_id, name, args, timeout), timeout, name)
        if ptype == "inline":  # the console's test call of a provider that is not saved yet
            spec = ToolSpec.model_validate(req["spec"])
            creds = ToolCredentials.model_validate(req.get("credentials") or {})
            return await self._call_http(spec, creds, req.get("signing_secret"), args)
        if ptype != "api":
            raise ToolError("tool_not_found", f"provider_type {ptype!r} is not supported")
        provider = await self._provider(pid)
        if provider is None or provider.tenant_id != tenant_id:
            raise ToolError("tool_not_found", f"tool provider {pid} does not exist")
        spec = provider.specs.get(name)
        if spec is None:
            raise ToolError("tool_not_found", f"tool provider {provider.name!r} has no tool named {name!r}")
        rpm = spec.rate_limit_per_minute if spec.rate_limit_per_minute is not None \
            else self.settings.rate_limit_per_minute
        await self._limit(f"{provider.id}:{name}", rpm, name)
        return await self._call_http(spec, provider.credentials, provider.signing_secret, args)

    async def _bounded(self, coro: Any, timeout: float, name: str) -> Any:
        try:
            async with asyncio.timeout(timeout):
                return await coro
        except TimeoutError:
            raise ToolError("timeout", f"tool {name} did not finish within {timeout:g} s") from None

    async def _limit(self, key: str, rpm: int, name: str) -> None:
        if rpm <= 0:
            return
        try:
            decision = await self.limiter.acquire(key, AppLimits(rpm=rpm), "")
        except LimiterUnavailable:
            raise ToolError("rate_limiter_unavailable", "the tool rate limiter is unavailable; try again") from None
        if not decision.admitted:
            raise ToolError("rate_limited", f"tool {name} allows {rpm} calls per minute; "
                                            f"try again in {decision.retry_after} s")

    async def _call_http(self, spec: ToolSpec, creds: ToolCredentials, secret: str | None,
                         args: dict[str, Any]) -> str:
        validate_arguments(spec.parameters, args)
        try:
            prepared = prepare_request(spec, args)
        except ToolSchemaError as e:
            raise ToolError("invalid_arguments", str(e)) from None
        headers = {**spec.headers, **prepared.headers}
        params = list(prepared.params)
        creds.apply(headers, params)
        if prepared.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in prepared.cookies.items())
        body = b"" if prepared.json_body is None else orjson.dumps(prepared.json_body)
        if prepared.json_body is not None:
            headers["Content-Type"] = "application/json"
        if secret:
            stamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = stamp
            headers[SIGNATURE_HEADER] = sign(secret, stamp, body)
        timeout = effective_timeout(spec.timeout, self.settings)
        try:
            resp = await self.egress.request(
                prepared.method, prepared.url, headers=headers, params=params or None,
                content=body if prepared.json_body is not None else None, timeout=timeout,
                max_bytes=self.settings.max_response_bytes,
                sensitive_headers=(creds.api_key_header, SIGNATURE_HEADER))
        except EgressError as e:
            raise ToolError(e.code, str(e)) from None
        text = resp.body.decode("utf-8", errors="replace")
        if resp.status >= 400:
            raise ToolError("http_error", f"HTTP {resp.status}: {text[:ERROR_BODY_CHARS]}")
        return text

    async def _provider(self, provider_id: str) -> _Provider | None:
        cached = self._providers.get(provider_id)
        if cached is not None and time.monotonic() - cached.loaded_at < PROVIDER_CACHE_SECONDS:
            return cached
        generation = self._generation
        async with self.ctx.db.session() as s:
            row = (await s.exec(select(ToolProvider).where(ToolProvider.id == provider_id))).first()
        if row is None:
            self._providers.pop(provider_id, None)
            return None
        try:
            secrets = decrypt_json(self.ctx.settings.secret_key or "", row.encrypted_credentials)
        except Exception:  # noqa: BLE001 - a rotated secret key: the provider cannot authenticate
            raise ToolError("credentials_unavailable",
                            f"the credentials of tool provider {row.name!r} cannot be decrypted") from None
        provider = _Provider(
            id=row.id, tenant_id=row.tenant_id, name=row.name,
            specs={t["name"]: ToolSpec.model_validate(t) for t in row.tools or []},
            credentials=ToolCredentials.model_validate(secrets.get("auth") or {}),
            signing_secret=secrets.get("signing_secret") or None, loaded_at=time.monotonic())
        if generation == self._generation:
            self._providers[provider_id] = provider
        return provider

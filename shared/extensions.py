"""Dify's API-based extensions: an HTTP endpoint of the workspace's own that apps call at fixed points.

Protocol (Dify's): ``POST <api_endpoint>`` with ``Authorization: Bearer <api_key>`` and the JSON body
``{"point": <point>, "params": {...}}``; the answer is a JSON object. Points used here:

- ``ping`` (no params) when the console saves an extension: the answer must be ``{"result": "pong"}``.
- ``app.external_data_tool.query`` (``app_id``, ``tool_variable``, ``inputs``, ``query``) before a chat,
  agent-chat or completion app writes its prompt: ``{"result": <text>}`` becomes the tool's variable.
- ``app.moderation.input`` (``app_id``, ``inputs``, ``query``) and ``app.moderation.output`` (``app_id``,
  ``text``) for the ``api`` moderation type: ``{"flagged", "action": "direct_output" | "overridden",
  "preset_response" | "inputs", "query" | "text"}`` (services/runtime/service/moderation.py).

Every call goes through the SSRF guard (shared.egress) with the tools' egress allowlist: an endpoint on a
private address must be listed there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from shared.crypto import try_decrypt_json
from shared.egress import Egress, EgressError
from shared.models import ApiBasedExtension

PING = "ping"
EXTERNAL_DATA_QUERY = "app.external_data_tool.query"
MODERATION_INPUT = "app.moderation.input"
MODERATION_OUTPUT = "app.moderation.output"
MAX_RESPONSE_BYTES = 1_000_000


class ExtensionError(Exception):
    """The extension could not be called or answered something else than the protocol says."""


async def load(s: AsyncSession, secret_key: str, tenant_id: str, ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """The workspace's extensions among ``ids``, as the runtime calls them: id → ``{"endpoint", "api_key"}``."""
    rows = (await s.exec(select(ApiBasedExtension).where(
        ApiBasedExtension.tenant_id == tenant_id, col(ApiBasedExtension.id).in_(set(ids))))).all()
    found = {}
    for e in rows:  # a key that cannot be read (an earlier secret key) leaves its extension out, as a missing one
        creds = try_decrypt_json(secret_key, e.encrypted_api_key)
        if creds is not None:
            found[e.id] = {"endpoint": e.api_endpoint, "api_key": creds["api_key"]}
    return found


async def call(egress: Egress, endpoint: str, api_key: str, point: str, params: dict[str, Any] | None,
               timeout: float) -> dict[str, Any]:
    """One call at ``point``: the JSON object the extension answered."""
    body: dict[str, Any] = {"point": point}
    if params is not None:
        body["params"] = params
    try:
        resp = await egress.request("POST", endpoint, timeout=timeout, max_bytes=MAX_RESPONSE_BYTES,
                                    content=orjson.dumps(body),
                                    headers={"Authorization": f"Bearer {api_key}",
                                             "Content-Type": "application/json"})
    except EgressError as e:
        raise ExtensionError(f"the API extension could not be reached: {e}") from None
    if resp.status != 200:
        raise ExtensionError(f"the API extension answered HTTP {resp.status}: {resp.text()[:200]}")
    try:
        data = resp.json()
    except ValueError:
        raise ExtensionError("the API extension did not answer JSON") from None
    if not isinstance(data, dict):
        raise ExtensionError("the API extension did not answer a JSON object")
    return data


async def ping(egress: Egress, endpoint: str, api_key: str, timeout: float) -> None:
    data = await call(egress, endpoint, api_key, PING, None, timeout)
    if data.get("result") != "pong":
        raise ExtensionError('the API extension did not answer the ping with {"result": "pong"}')


async def query_external_data(egress: Egress, endpoint: str, api_key: str, params: dict[str, Any],
                              timeout: float) -> str:
    data = await call(egress, endpoint, api_key, EXTERNAL_DATA_QUERY, params, timeout)
    result = data.get("result")
    if not isinstance(result, str):
        raise ExtensionError('the API extension did not answer {"result": <text>}')
    return result

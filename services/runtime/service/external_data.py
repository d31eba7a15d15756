"""External data tools (Dify's, docs/extensions.md): before a chat, agent-chat or completion app writes its
prompt, each enabled tool of its model config asks its API-based extension (shared.extensions) for a text,
which the prompt template then sees as the tool's ``variable``. The tools run at once; a tool that fails
fails the request (400 ``completion_request_error`` naming it), as in Dify."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from services.runtime.service.errors import completion_request_error
from shared import extensions

if TYPE_CHECKING:
    from services.runtime.service.cache import AppEntry
    from services.runtime.service.core import Runtime
    from shared.app_config import ExternalDataTool


class ExternalData:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def fill(self, app: AppEntry, tools: list[ExternalDataTool], inputs: dict[str, Any], query: str
                   ) -> dict[str, Any]:
        """``inputs`` with each enabled tool's variable set to its extension's answer (for the prompt only)."""
        enabled = [t for t in tools if t.enabled]
        if not enabled:
            return inputs
        async with self.rt.db.session() as s:
            found = await extensions.load(s, self.rt.ctx.settings.secret_key, app.tenant_id,
                                          [t.extension_id for t in enabled])
        timeout = self.rt.ctx.settings.tools.default_timeout

        async def one(tool: ExternalDataTool) -> tuple[str, str]:
            ext = found.get(tool.extension_id)
            if ext is None:
                raise completion_request_error(
                    f"External data tool '{tool.variable}': its API-based extension no longer exists.")
            params = {"app_id": app.id, "tool_variable": tool.variable, "inputs": inputs, "query": query}
            try:
                return tool.variable, await extensions.query_external_data(
                    self.rt.egress, ext["endpoint"], ext["api_key"], params, timeout)
            except extensions.ExtensionError as e:
                raise completion_request_error(f"External data tool '{tool.variable}': {e}") from None

        return {**inputs, **dict(await asyncio.gather(*(one(t) for t in enabled)))}

"""The model an app asks for the small generations it makes besides its answers (conversation titles,
suggested questions), the workspace default models behind it, and conversation titles.

Dify asks the workspace's default LLM (``/workspaces/current/default-model``, type ``llm``) for these. Where
none is set, Plexus asks the app's own model instead: its model config's, or for advanced-chat the
published workflow's first LLM node's.

A new conversation is named after the first line of its first query at once. With ``auto_generate_name``
(the default), the model then writes a title in the background once the first answer is stored
(reference §2.2), and it replaces that name unless someone renamed the conversation meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import update

from services.runtime import llm
from services.runtime.service.errors import provider_not_initialize
from services.runtime.service.prompt import clean_title, default_name, title_messages
from shared.credentials import default_model, provider_credentials
from shared.errors import ApiError
from shared.models import Conversation

if TYPE_CHECKING:
    from services.runtime.service.cache import AppEntry
    from services.runtime.service.core import Runtime

log = structlog.get_logger("plexus.runtime.helper_model")

# titles waiting for their run or their model call; past this, a new conversation keeps its first-line name
# rather than queue without bound behind a slow provider
MAX_PENDING_TITLES = 256


def first_llm_model(graph: Any) -> dict[str, Any] | None:
    """The ``model`` block of a workflow graph's first LLM node."""
    nodes = graph.get("nodes") if isinstance(graph, dict) else None
    for n in nodes or []:
        data = n.get("data") if isinstance(n, dict) else None
        if isinstance(data, dict) and data.get("type") == "llm" and isinstance(data.get("model"), dict):
            return data["model"]
    return None


class HelperModel:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._titles: set[asyncio.Task] = set()

    async def bind(self, tenant_id: str, provider: str, model: str, params: dict[str, Any] | None = None,
                   model_type: str = "llm") -> llm.ModelBinding | None:
        """``model`` of ``provider`` with the workspace's credentials (the model's own, else the provider's);
        None when it has none for it."""
        async with self.rt.db.session() as s:
            creds = await provider_credentials(s, self.rt.ctx.settings.secret_key, tenant_id, provider, model,
                                               model_type)
        return llm.bind_model(provider, model, creds, params or {}) if creds is not None else None

    async def default_binding(self, tenant_id: str, model_type: str) -> llm.ModelBinding | None:
        """The workspace's default ``model_type`` model, ready to call; None when none is set. 400
        ``provider_not_initialize`` when its provider's credentials were removed after it was set."""
        async with self.rt.db.session() as s:
            row = await default_model(s, tenant_id, model_type)
        if row is None:
            return None
        binding = await self.bind(tenant_id, row[0], row[1], model_type=model_type)
        if binding is None:
            raise provider_not_initialize()
        return binding

    async def binding(self, app: AppEntry) -> llm.ModelBinding | None:
        """The model for the app's titles and suggested questions; None when there is none to call."""
        try:
            binding = await self.default_binding(app.tenant_id, "llm")
        except ApiError:  # the default lost its credentials: the app's own model still works
            binding = None
        if binding is not None:
            return binding
        if app.config is not None:
            return app.binding
        if app.mode == "advanced-chat" and app.workflow_id:
            model = first_llm_model((await self.rt.workflows.version(app)).graph)  # cached per version
            if model is not None:
                return await self.bind(app.tenant_id, str(model.get("provider") or ""),
                                       str(model.get("name") or ""), model.get("completion_params"))
        return None

    # -- conversation titles ---------------------------------------------------------------------------
    async def title(self, app: AppEntry, first_query: str) -> str:
        """A short title for a conversation that starts with ``first_query``, written by the helper model;
        the query's first line when there is no model or the call fails (a title is cosmetic)."""
        binding = None
        try:
            binding = await self.binding(app)
            if binding is not None:
                text = await llm.complete_text(binding, title_messages(first_query),
                                               timeout=self.rt.settings.llm_timeout)
                title = clean_title(text)
                if title:
                    return title
        except Exception as e:  # noqa: BLE001 - never fail a chat or a rename on its title
            log.warning("title_generation_failed", app_id=app.id,
                        error=llm.error_message(e, binding.provider) if binding is not None else repr(e))
        return default_name(first_query)

    def title_after(self, app: AppEntry, conversation_id: str, query: str, finished: asyncio.Event,
                    answered: Callable[[], bool]) -> None:
        """Once ``finished`` is set, and if ``answered()`` then, name the new conversation with a generated
        title (in the background; the caller does not wait)."""
        if len(self._titles) >= MAX_PENDING_TITLES:
            log.info("title_skipped_backlog", app_id=app.id, pending=len(self._titles))
            return
        task = asyncio.get_running_loop().create_task(
            self._name(app, conversation_id, query, finished, answered), name=f"title-{conversation_id}")
        self._titles.add(task)
        task.add_done_callback(self._titles.discard)

    async def _name(self, app: AppEntry, conversation_id: str, query: str, finished: asyncio.Event,
                    answered: Callable[[], bool]) -> None:
        await finished.wait()
        if not answered():
            return
        first_line = default_name(query)
        title = await self.title(app, query)
        if title == first_line:
            return
        table = Conversation.__table__
        try:
            async with self.rt.db.session() as s:
                # only over the name it was given: a rename that came first is kept
                await s.exec(update(table).where(table.c.id == conversation_id, table.c.name == first_line)
                             .values(name=title))
                await s.commit()
        except Exception:  # the first-line name stays
            log.warning("title_store_failed", conversation_id=conversation_id, exc_info=True)

    @property
    def pending(self) -> int:
        """Titles waiting for their run or their model call."""
        return len(self._titles)

    async def close(self) -> None:
        """Drop the titles still pending (shutdown): their conversations keep their first-line names."""
        tasks = list(self._titles)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

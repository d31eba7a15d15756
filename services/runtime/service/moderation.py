"""Sensitive-word moderation of chat/completion runs (Dify's ``sensitive_word_avoidance``, docs/moderation.md).

- Input review, before anything else runs: the query and every input value. Flagged → the run answers
  ``inputs_config.preset_response`` without calling the model.
- Output review, while the answer streams: the accumulated answer, so a keyword split across chunks is
  caught. Flagged → the model call is dropped, a ``message_replace`` event carries the preset answer, and
  that is what the message stores.

``keywords``: case-insensitive substring match (NFKC + casefold on both sides, so full-width letters and
CJK text work; no word boundaries, as Dify), one compiled alternation for all keywords.
``openai_moderation``: the workspace's provider credentials and litellm's moderation API; the answer is
reviewed every ``MODEL_REVIEW_CHARS`` new characters and once at the end, like Dify's 300-character
buffer. A moderation model that fails blocks the input (400 ``completion_request_error``) but lets the
output through (logged), as Dify does.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from services.runtime import llm
from services.runtime.service.errors import completion_request_error, provider_not_initialize
from shared.credentials import provider_credentials

if TYPE_CHECKING:
    from services.runtime.service.cache import AppEntry
    from shared.app_config import ModerationSettings
    from shared.context import Context

log = structlog.get_logger("plexus.runtime.moderation")

MODEL_REVIEW_CHARS = 300
OUTPUT_REASON = "output_moderation"  # message_replace.reason, Dify's MessageReplaceReason


def fold(text: str) -> str:
    """The form both keywords and text are compared in."""
    return unicodedata.normalize("NFKC", text).casefold()


class KeywordMatcher:
    __slots__ = ("_re", "longest")

    def __init__(self, keywords: list[str]) -> None:
        folded = sorted({fold(k) for k in keywords if k}, key=len, reverse=True)
        self._re = re.compile("|".join(map(re.escape, folded)))
        self.longest = len(folded[0]) if folded else 0

    def search(self, folded_text: str, start: int = 0) -> bool:
        return self._re.search(folded_text, start) is not None


@dataclass(slots=True)
class Moderator:
    """One app's moderation, built once per app-cache entry."""

    kind: str  # keywords | openai_moderation
    input_preset: str | None  # None: inputs are not reviewed
    output_preset: str | None  # None: outputs are not reviewed
    matcher: KeywordMatcher | None = None
    model_kwargs: dict[str, Any] | None = None  # openai_moderation with usable credentials
    timeout: float = 10.0
    provider: str = ""

    async def flagged(self, text: str) -> bool:
        """One review of ``text`` (raises on a failing moderation model)."""
        if self.matcher is not None:
            return self.matcher.search(fold(text))
        if self.model_kwargs is None:
            raise provider_not_initialize()
        return await llm.moderate(self.model_kwargs, text, self.timeout)

    async def check_inputs(self, inputs: dict[str, Any], query: str) -> str | None:
        """The preset answer when the query or an input value is flagged, else None."""
        if self.input_preset is None:
            return None
        values = [str(v) for v in inputs.values() if v not in (None, "")]
        if query:
            values.append(query)
        if not values:
            return None
        if self.matcher is None and self.model_kwargs is None:
            raise provider_not_initialize()  # the moderation provider has no credentials
        try:
            hit = await self.flagged("\n".join(values))
        except Exception as e:  # noqa: BLE001 - any provider failure is the request's 400
            log.warning("input_moderation_failed", error=str(e))
            raise completion_request_error(llm.error_message(e, self.provider)) from None
        return self.input_preset if hit else None

    def output_review(self) -> OutputReview | None:
        return OutputReview(self, self.output_preset) if self.output_preset is not None else None


class OutputReview:
    """Reviews one streaming answer. ``feed`` each delta before forwarding it; once it returns True, stop
    forwarding and replace the answer with ``preset``."""

    __slots__ = ("_folded", "_reviewed", "_text", "flagged", "mod", "preset")

    def __init__(self, mod: Moderator, preset: str) -> None:
        self.mod = mod
        self.preset = preset
        self.flagged = False
        self._folded = ""  # keywords: the folded answer so far
        self._text: list[str] = []  # model: the answer so far
        self._reviewed = 0  # model: characters covered by the last review

    async def feed(self, delta: str) -> bool:
        m = self.mod.matcher
        if m is not None:
            # only the new text and the keyword-length tail before it can hold a new match
            start = max(0, len(self._folded) - m.longest + 1)
            self._folded += fold(delta)
            self.flagged = m.search(self._folded, start)
            return self.flagged
        self._text.append(delta)
        size = sum(map(len, self._text))
        if size - self._reviewed >= MODEL_REVIEW_CHARS:
            self._reviewed = size
            self.flagged = await self._model_review()
        return self.flagged

    async def finish(self) -> bool:
        """The last review, once the model is done (model-based only: keywords saw every delta)."""
        if not self.flagged and self.mod.matcher is None and sum(map(len, self._text)) > self._reviewed:
            self.flagged = await self._model_review()
        return self.flagged

    async def _model_review(self) -> bool:
        try:
            return await self.mod.flagged("".join(self._text))
        except Exception as e:  # noqa: BLE001 - a failing reviewer lets the answer through, as Dify does
            log.warning("output_moderation_failed", error=str(e))
            return False


class ModerationService:
    """Moderators per served config version, rebuilt whenever the app cache loads the app again (a config
    or provider change parses a new config object), so they are never staler than the app itself."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._by_version: dict[tuple[str, str | None], tuple[Any, Moderator | None]] = {}

    async def for_app(self, app: AppEntry) -> Moderator | None:
        if app.config is None or not app.config.sensitive_word_avoidance.enabled:
            return None
        key = (app.id, app.config_id)
        hit = self._by_version.get(key)
        if hit is not None and hit[0] is app.config:
            return hit[1]
        mod = await self._build(app)
        self._by_version[key] = (app.config, mod)
        return mod

    async def check_inputs(self, app: AppEntry, inputs: dict[str, Any], query: str) -> str | None:
        """The preset answer when the app reviews inputs and this request is flagged."""
        mod = await self.for_app(app)
        return None if mod is None else await mod.check_inputs(inputs, query)

    async def output_review(self, app: AppEntry) -> OutputReview | None:
        mod = await self.for_app(app)
        return None if mod is None else mod.output_review()

    async def _build(self, app: AppEntry) -> Moderator | None:
        swa = app.config.sensitive_word_avoidance if app.config is not None else None
        if swa is None or not swa.enabled:
            return None
        s: ModerationSettings = swa.settings()
        assert s.inputs_config is not None and s.outputs_config is not None
        mod = Moderator(
            kind=swa.type,
            input_preset=s.inputs_config.preset_response if s.inputs_config.enabled else None,
            output_preset=s.outputs_config.preset_response if s.outputs_config.enabled else None,
            timeout=self.ctx.settings.runtime.moderation_timeout,
            provider=s.provider,
        )
        if swa.type == "keywords":
            mod.matcher = KeywordMatcher(s.keyword_list())
        else:
            async with self.ctx.db.session() as session:
                creds = await provider_credentials(session, self.ctx.settings.secret_key, app.tenant_id, s.provider)
            if creds is not None:
                mod.model_kwargs = llm.moderation_kwargs(s.provider, s.model, creds)
        return mod

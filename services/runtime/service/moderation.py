"""Sensitive-word moderation (Dify's ``sensitive_word_avoidance``, docs/moderation.md) of chat, completion and
agent runs, and of graph apps (advanced-chat: inputs and the answer stream; workflow: inputs, the text stream
and the outputs), whose setting is a feature of the workflow version they run.

- Input review, before anything else runs: the query and every input value. Flagged → the run answers
  ``inputs_config.preset_response`` without calling the model.
- Output review, while the answer streams: the accumulated answer, so a keyword split across chunks is
  caught. Flagged → the model call is dropped, a ``message_replace`` event carries the preset answer, and
  that is what the message stores.

``keywords``: case-insensitive substring match (NFKC + casefold on both sides, so full-width letters and
CJK text work; no word boundaries, as Dify), one compiled alternation for all keywords, checked
synchronously on every delta against the new text and the keyword-length tail before it.
``openai_moderation``: the workspace's provider credentials and litellm's moderation API. While the answer
streams, a review runs in the background every ``MODEL_REVIEW_CHARS`` new characters (Dify's
300-character buffer), at most one at a time, on the text since the previous one plus an overlap; the
stream reads the last finished result and stops once one flags. At the end the whole answer is reviewed
(see ``OutputReview.finish``). A moderation model that fails blocks the input (400
``completion_request_error``) but lets the output through (logged), as Dify does.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from services.runtime import llm
from services.runtime.service.errors import completion_request_error, provider_not_initialize
from shared import extensions
from shared.app_config import load_moderation
from shared.credentials import provider_credentials
from shared.errors import ApiError
from shared.lru import Lru

if TYPE_CHECKING:
    from services.runtime.service.cache import AppEntry
    from shared.app_config import ModerationSettings, SensitiveWordAvoidance
    from shared.context import Context
    from shared.models import Workflow

log = structlog.get_logger("plexus.runtime.moderation")

MODEL_REVIEW_CHARS = 300  # a background review per this many new characters (Dify's output buffer)
# OpenAI's moderation guide: accuracy is best on pieces under 2,000 characters. Longer text goes as a list of
# such pieces in one request (the API's array input), each overlapping the previous by MODEL_OVERLAP_CHARS.
MODEL_PIECE_CHARS = 2000
# what a review repeats of the text before its new part: a sentence or two, so a statement cut at a review
# (or piece) boundary is still seen whole by one of them, at a cost of 2/3 of a review's new text
MODEL_OVERLAP_CHARS = 200
PENDING_CHARS = 32  # the longest run of trailing combining characters held for the next delta (stream-safe: 30)
MAX_MODERATORS = 1000  # app config versions whose moderators are kept (least recently used dropped)
OUTPUT_REASON = "output_moderation"  # message_replace.reason, Dify's MessageReplaceReason
BLOCKED = "Your request was blocked by the content moderation."  # an api verdict that names no preset

_closing: set[asyncio.Task] = set()  # client closes in flight (referenced until done)


def fold(text: str) -> str:
    """The form both keywords and text are compared in."""
    return unicodedata.normalize("NFKC", text).casefold()


def stable_cut(s: str) -> int:
    """Where ``s`` may be split so that its head folds the same whatever follows: before the last character
    that starts a new grapheme and does not compose with what precedes it. The rest (a base letter and its
    combining marks, a Hangul jamo run, a half-width kana and its voiced mark) waits for the next delta."""
    low = max(0, len(s) - PENDING_CHARS)
    for i in range(len(s) - 1, low - 1, -1):
        c = s[i]
        if c < "\x80":  # ASCII never composes with what precedes it
            return i
        if i and not unicodedata.combining(c):
            j = max(0, i - PENDING_CHARS)
            if fold(s[j:i]) + fold(s[i:]) == fold(s[j:]):
                return i
    return 0 if low == 0 else len(s)  # a pathological run of marks: no longer held back


def pieces(text: str) -> list[str]:
    """``text`` in pieces of at most MODEL_PIECE_CHARS, each repeating the last MODEL_OVERLAP_CHARS of the
    previous one."""
    if len(text) <= MODEL_PIECE_CHARS:
        return [text]
    step = MODEL_PIECE_CHARS - MODEL_OVERLAP_CHARS
    return [text[i:i + MODEL_PIECE_CHARS] for i in range(0, len(text) - MODEL_OVERLAP_CHARS, step)]


def text_leaves(value: Any) -> list[str]:
    """Every string inside a JSON-like value (a workflow's outputs), in order."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [t for v in value for t in text_leaves(v)]
    return []


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
    """One app config version's moderation, shared by its requests while the config is unchanged."""

    kind: str  # keywords | openai_moderation | api
    input_preset: str | None  # None: inputs are not reviewed
    output_preset: str | None  # None: outputs are not reviewed
    matcher: KeywordMatcher | None = None
    model_kwargs: dict[str, Any] | None = None  # openai_moderation with usable credentials (holds a client)
    timeout: float = 10.0
    provider: str = ""
    users: int = 0  # output reviews and input checks using it now
    retired: bool = False  # dropped from the cache: its client is closed once unused
    # api: the API-based extension (endpoint, api_key; None: it no longer exists), the client, the app
    extension: dict[str, str] | None = None
    egress: Any = None
    app_id: str = ""

    async def flagged(self, text: str | list[str]) -> bool:
        """One review of ``text`` (a list: pieces judged apart; raises on a failing moderation model)."""
        if self.matcher is not None:
            return self.matcher.search(fold(text if isinstance(text, str) else "\n".join(text)))
        if self.model_kwargs is None:
            raise provider_not_initialize()
        return await llm.moderate(self.model_kwargs, text, self.timeout)

    async def check_inputs(self, inputs: dict[str, Any], query: str) -> tuple[str | None, dict[str, Any], str]:
        """(the preset answer when the query or an input value is flagged, else None; the inputs and query to
        go on with, which only an ``api`` extension's ``overridden`` verdict changes)."""
        if self.input_preset is None:
            return None, inputs, query
        values = [str(v) for v in inputs.values() if v not in (None, "")]
        if query:
            values.append(query)
        if not values:
            return None, inputs, query
        if self.matcher is None and self.model_kwargs is None and self.extension is None:
            raise provider_not_initialize()  # the moderation provider (or extension) is gone
        self.users += 1
        try:
            if self.kind == "api":
                return await self._api_inputs(inputs, query)
            hit = await self.flagged("\n".join(values))
        except ApiError:
            raise
        except Exception as e:  # noqa: BLE001 - any provider failure is the request's 400
            log.warning("input_moderation_failed", error=str(e))
            raise completion_request_error(llm.error_message(e, self.provider)) from None
        finally:
            self.release()
        return (self.input_preset if hit else None), inputs, query

    async def _api_inputs(self, inputs: dict[str, Any], query: str) -> tuple[str | None, dict[str, Any], str]:
        verdict = await self._ask(extensions.MODERATION_INPUT, {"app_id": self.app_id, "inputs": inputs,
                                                                "query": query})
        if not verdict.get("flagged"):
            return None, inputs, query
        if verdict.get("action") == "overridden":  # go on with what the extension rewrote
            new_inputs = verdict.get("inputs")
            new_query = verdict.get("query")
            return (None, {**inputs, **new_inputs} if isinstance(new_inputs, dict) else inputs,
                    new_query if isinstance(new_query, str) else query)
        return str(verdict.get("preset_response") or self.input_preset or BLOCKED), inputs, query

    async def api_output(self, text: str) -> str | None:
        """An ``api`` extension's verdict on an answer: what replaces it when flagged, else None."""
        verdict = await self._ask(extensions.MODERATION_OUTPUT, {"app_id": self.app_id, "text": text})
        if not verdict.get("flagged"):
            return None
        if verdict.get("action") == "overridden" and isinstance(verdict.get("text"), str):
            return verdict["text"]
        return str(verdict.get("preset_response") or self.output_preset or BLOCKED)

    async def _ask(self, point: str, params: dict[str, Any]) -> dict[str, Any]:
        if self.extension is None:
            raise completion_request_error("The moderation's API-based extension no longer exists.")
        try:
            return await extensions.call(self.egress, self.extension["endpoint"], self.extension["api_key"], point,
                                         params, self.timeout)
        except extensions.ExtensionError as e:
            raise completion_request_error(f"Moderation: {e}") from None

    def output_review(self) -> OutputReview | None:
        """A review of one answer; it holds the moderator (and its client) until ``close``."""
        if self.output_preset is None:
            return None
        self.users += 1
        return OutputReview(self, self.output_preset)

    def release(self) -> None:
        self.users -= 1
        if self.retired and self.users <= 0:
            self._close()

    def retire(self) -> None:
        self.retired = True
        if self.users <= 0:
            self._close()

    def _close(self) -> None:
        client = (self.model_kwargs or {}).get("client")
        if client is None or not hasattr(client, "close"):
            return
        try:
            task = asyncio.get_running_loop().create_task(client.close())
        except RuntimeError:  # no loop (shutdown): its sockets go with the process
            return
        _closing.add(task)
        task.add_done_callback(_closing.discard)


class OutputReview:
    """Reviews one streaming answer. ``feed`` each delta before forwarding it; once it returns True, stop
    forwarding and replace the answer with ``preset``. ``finish`` when the model is done, ``close`` always."""

    __slots__ = ("_closed", "_joined", "_overlap", "_parts", "_pending", "_sent", "_size", "_tail", "_task",
                 "flagged", "mod", "preset")

    def __init__(self, mod: Moderator, preset: str) -> None:
        self.mod = mod
        self.preset = preset
        self.flagged = False
        self._closed = False
        # keywords: the folded text a match completed by the next delta may start in, and the raw text whose
        # folding the next delta may still change
        self._tail = ""
        self._pending = ""
        # model: the answer so far, its running length, and what the reviews have been sent of it
        self._parts: list[str] = []
        self._size = 0
        self._joined = 0  # parts sent to a review
        self._sent = 0  # characters sent to a review
        self._overlap = ""  # the end of the text last sent, repeated at the start of the next review
        self._task: asyncio.Task[bool] | None = None  # the review running in the background

    def feed(self, delta: str) -> bool:
        if self.flagged:
            return True
        if self.mod.matcher is not None:
            self.flagged = self._keywords(self.mod.matcher, delta)
            return self.flagged
        self._parts.append(delta)
        self._size += len(delta)
        task = self._task
        if task is not None and task.done():
            self._task = None
            if task.result():
                self.flagged = True
                return True
        if self._task is None and self._size - self._sent >= MODEL_REVIEW_CHARS:
            self._task = asyncio.get_running_loop().create_task(self._model_review(self._unsent()))
        return False

    def _keywords(self, m: KeywordMatcher, delta: str) -> bool:
        text = self._pending + delta
        cut = stable_cut(text)
        folded = fold(text)
        # a new match ends in the new text and starts at most ``longest - 1`` characters before it; the held
        # text is searched as it folds now, so a delta completing a keyword is caught before it is forwarded
        hit = m.search(self._tail + folded)
        keep = m.longest - 1
        if keep > 0:
            done = folded if cut == len(text) else fold(text[:cut])
            self._tail = (self._tail + done[-keep:])[-keep:]
        self._pending = text[cut:]
        return hit

    def _unsent(self) -> str:
        """The text since the last review, after the end of what that one was sent."""
        new = "".join(self._parts[self._joined:])
        self._joined, self._sent = len(self._parts), self._size
        text = self._overlap + new
        self._overlap = text[-MODEL_OVERLAP_CHARS:]
        return text

    async def finish(self) -> bool:
        """The last review, once the model is done (model-based only: keywords saw every delta). It waits for
        the running review, then reviews the whole answer when it fits in one piece (so the model judges it
        in full context), else what no review was sent yet (plus the overlap), in pieces."""
        if self.flagged or self.mod.matcher is not None:
            return self.flagged
        task, self._task = self._task, None
        if task is not None and await task:
            self.flagged = True
            return True
        if self._size > self._sent:
            whole = self._size <= MODEL_PIECE_CHARS
            text = "".join(self._parts) if whole else self._unsent()
            self._sent = self._size
            self.flagged = await self._model_review(text)
        return self.flagged

    async def also(self, texts: list[str]) -> bool:
        """Review texts the stream did not carry (a workflow's outputs after ``finish``, a ReAct round's thought);
        flagged when one is. A model review skips a text the stream carried whole (the model judged it already)."""
        if self.flagged:
            return True
        if self.mod.matcher is not None:
            self.flagged = any(self.mod.matcher.search(fold(t)) for t in texts)
            return self.flagged
        streamed = "".join(self._parts)
        rest = [t for t in texts if t and t not in streamed]
        if rest:
            self.flagged = await self._model_review("\n".join(rest))
        return self.flagged

    def close(self) -> None:
        """The run is over: stop a review still running and let go of the moderator."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.mod.release()

    async def _model_review(self, text: str) -> bool:
        try:
            if self.mod.kind == "api":  # the extension also says what replaces the answer
                replacement = await self.mod.api_output(text)
                if replacement is not None:
                    self.preset = replacement
                return replacement is not None
            parts = pieces(text)
            return await self.mod.flagged(parts[0] if len(parts) == 1 else parts)
        except Exception as e:  # noqa: BLE001 - a failing reviewer lets the answer through, as Dify does
            log.warning("output_moderation_failed", error=str(e))
            return False


def _digest(swa: SensitiveWordAvoidance) -> str:
    return hashlib.sha256(orjson.dumps(swa.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(slots=True)
class _Cached:
    config: Any  # the parsed config object (graph apps: the features dict) it was last checked against
    digest: str  # of the moderation setting
    credentials: str | None  # digest of the credentials the moderator's client was built with
    mod: Moderator | None  # None: a graph app's stored setting is unusable, so moderation is off


def _retire(c: _Cached) -> None:
    if c.mod is not None:
        c.mod.retire()


class ModerationService:
    """Moderators per app config version (app id, config id; graph apps: app id, workflow version id), least
    recently used first out beyond ``MAX_MODERATORS``. When the app cache loads the app again (every
    ``app_cache_seconds``, or at once after a config or provider change) the entry is checked, not rebuilt:
    the same moderation setting and, for the moderation model, the same credentials (one indexed query) keep
    the moderator and its client. A moderator dropped (changed, evicted, its app deleted) is retired: its
    client is closed once no review uses it."""

    def __init__(self, ctx: Context, egress: Any = None) -> None:
        self.ctx = ctx
        self.egress = egress  # the runtime's guarded client: ``api`` moderation calls an extension with it
        self._entries: Lru[tuple[str, str | None], _Cached] = Lru(MAX_MODERATORS, _retire)

    async def for_app(self, app: AppEntry, workflow: Workflow | None = None) -> Moderator | None:
        """The moderator of the app's model config, or of a graph app's ``workflow`` (the version it runs:
        Dify keeps a graph app's moderation in the workflow's ``features``); None when moderation is off."""
        cfg: Any = app.config
        if cfg is not None:
            if not cfg.sensitive_word_avoidance.enabled:
                return None
            key = (app.id, app.config_id)
            hit = self._entries.get(key)
            if hit is not None and hit.config is cfg:
                return hit.mod
            swa = cfg.sensitive_word_avoidance
        elif workflow is not None:
            cfg = workflow.features or {}
            raw = cfg.get("sensitive_word_avoidance")
            if not isinstance(raw, dict) or not raw.get("enabled"):
                return None  # off: no lookup, no validation
            key = (app.id, workflow.id)
            hit = self._entries.get(key)
            if hit is not None and hit.config is cfg:  # a published version never changes
                return hit.mod
            swa, ignored = load_moderation(raw)
            for why in ignored:  # served without moderation rather than refused, as a model config is
                log.warning("app_config_setting_ignored", app_id=app.id, workflow_id=workflow.id, error=why)
            if not swa.enabled:
                if hit is not None:
                    _retire(hit)
                self._entries.put(key, _Cached(cfg, "", None, None))
                return None
        else:
            return None
        s: ModerationSettings = swa.settings()
        creds = fingerprint = None
        if swa.type == "api":  # the extension's endpoint and key, read like credentials
            async with self.ctx.db.session() as session:
                found = await extensions.load(session, self.ctx.settings.secret_key, app.tenant_id,
                                              [s.api_based_extension_id])
            creds = found.get(s.api_based_extension_id)
        elif swa.type != "keywords":
            async with self.ctx.db.session() as session:
                creds = await provider_credentials(session, self.ctx.settings.secret_key, app.tenant_id,
                                                   s.provider, s.model, "moderation")
        if creds is not None:
            fingerprint = hashlib.sha256(orjson.dumps(creds, option=orjson.OPT_SORT_KEYS)).hexdigest()
        digest = _digest(swa)
        hit = self._entries.get(key)  # again: another request may have checked it meanwhile
        if hit is not None and hit.mod is not None and hit.digest == digest and hit.credentials == fingerprint:
            hit.config = cfg
            return hit.mod
        mod = self._build(s, swa.type, creds, app.id)
        if hit is not None:
            _retire(hit)
        self._entries.put(key, _Cached(cfg, digest, fingerprint, mod))
        return mod

    def forget_app(self, app_id: str) -> None:
        """The app was deleted: drop its moderators."""
        for entry in self._entries.pop_where(lambda k: k[0] == app_id):
            _retire(entry)

    def _build(self, s: ModerationSettings, kind: str, creds: dict[str, Any] | None, app_id: str = "") -> Moderator:
        assert s.inputs_config is not None and s.outputs_config is not None
        mod = Moderator(
            kind=kind,
            input_preset=s.inputs_config.preset_response if s.inputs_config.enabled else None,
            output_preset=s.outputs_config.preset_response if s.outputs_config.enabled else None,
            timeout=self.ctx.settings.runtime.moderation_timeout,
            provider=s.provider,
            app_id=app_id,
        )
        if kind == "keywords":
            mod.matcher = KeywordMatcher(s.keyword_list())
        elif kind == "api":
            mod.extension, mod.egress = creds, self.egress
        elif creds is not None:
            mod.model_kwargs = llm.moderation_kwargs(s.provider, s.model, creds)
        return mod

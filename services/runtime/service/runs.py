"""Runs (ARCHITECTURE §5): one asyncio task per message, owned by this replica, independent of the HTTP
request that started it.

Each event is serialised once: the JSON goes to the run's NATS subject (captured by the JetStream event
log; plain core publish, no ack wait per token) and, framed as SSE, into the in-memory channel that the
SSE response reads. Blocking requests read no channel: they wait for the run and read its result.
Stop, the run timeout and shutdown all cancel only the LLM phase; the run then records the partial
answer and ends the stream with ``message_end`` like a normal finish.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
import structlog
from sqlalchemy import bindparam, update

from services.runtime import llm
from services.runtime.service.agent import AgentIncomplete, AgentLoop, AgentPlan, OutputFlagged
from services.runtime.service.prompt import estimate_usage
from shared.metrics import LLM_CALLS, LLM_TOKENS, RUNS_ACTIVE
from shared.models import Message, utcnow
from shared.subjects import task_events

log = structlog.get_logger("plexus.runtime.runs")

PING = b"event: ping\n\n"


def frame(seq: int, data: bytes) -> bytes:
    """One SSE event. ``id`` is the event's position in the run's event log (1-based), which is also its
    position in the run's JetStream subject: a client resumes with Last-Event-ID from any replica."""
    return b"id: " + str(seq).encode() + b"\ndata: " + data + b"\n\n"
# SET clause from the execution params: compiled once instead of per run
FINALIZE_MESSAGE = update(Message.__table__).where(Message.__table__.c.id == bindparam("b_id"))
FINALIZE_ATTEMPTS = 8  # ~30 s of backoff in all
STOP_REASONS = {"user": None, "timeout": "run timed out", "shutdown": "interrupted"}


class Channel:
    """Single-reader, unbounded byte-frame queue; the reader drains whatever accumulated in one go."""

    __slots__ = ("_items", "_waiter", "closed")

    def __init__(self) -> None:
        self._items: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    def put(self, frame: bytes) -> None:
        self._items.append(frame)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def get_batch(self, timeout: float) -> list[bytes] | None:
        """Frames so far; ``[]`` after ``timeout`` idle seconds; None once closed and drained."""
        if not self._items:
            if self.closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            except TimeoutError:
                pass
            finally:
                self._waiter = None
            if not self._items:
                return None if self.closed else []
        items, self._items = self._items, []
        return items


@dataclass(eq=False)
class Run:
    task_id: str
    message_id: str
    conversation_id: str
    app_id: str
    end_user_id: str
    session_id: str
    mode: str  # the app's mode: chat | completion | agent-chat
    created_at: int
    binding: llm.ModelBinding
    messages: list[dict[str, Any]]
    channel: Channel | None  # None for blocking requests
    retriever_resources: list[dict[str, Any]] = field(default_factory=list)
    tenant_id: str = ""
    agent: AgentPlan | None = None  # agent-chat: the tools and strategy
    tool_files: Any = None  # agent-chat: FileService.tool_files, which keeps the files its tools make
    trace: dict[str, Any] = field(default_factory=dict)  # as stored at the start (retrieval)
    # moderation and the answer cache (docs/moderation.md)
    review: Any = None  # moderation.OutputReview: checks the answer while it streams
    cache: Any = None  # answer_cache.Lookup: where a normal answer is stored for the next asker
    speech: Any = None  # autoplay.AutoPlay: reads a streamed answer aloud (text_to_speech autoPlay)
    extra_metadata: dict[str, Any] = field(default_factory=dict)  # merged into metadata (cache_hit …)
    thoughts: list[dict[str, Any]] = field(default_factory=list)  # agent_thoughts, stored shape
    tool_trace: list[dict[str, Any]] = field(default_factory=list)  # every tool call: input, output, latency
    answer_parts: list[str] = field(default_factory=list)
    status: str = "running"  # then normal | stopped | error
    error: str | None = None
    usage: dict[str, Any] | None = None
    stop_reason: str | None = None
    task: asyncio.Task | None = None
    seq: int = 0  # events emitted so far
    streaming: bool = False  # inside the LLM phase: the only phase a stop may cancel
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    _prefix: bytes = b""  # the JSON envelope shared by every event of this run, without the closing brace

    def __post_init__(self) -> None:
        env: dict[str, Any] = {"event": "message"}
        if self.mode != "completion":
            env["conversation_id"] = self.conversation_id
        env["message_id"] = self.message_id
        env["created_at"] = self.created_at
        env["task_id"] = self.task_id
        env["id"] = self.message_id
        self._prefix = orjson.dumps(env)[:-1] + b',"answer":'

    @property
    def answer(self) -> str:
        return "".join(self.answer_parts)

    def envelope(self, event: str) -> dict[str, Any]:
        env: dict[str, Any] = {"event": event}
        if self.mode != "completion":
            env["conversation_id"] = self.conversation_id
        env["message_id"] = self.message_id
        env["created_at"] = self.created_at
        return env

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is not None or self.finished.is_set():
            return
        self.stop_reason = reason
        if self.speech is not None:  # the audio stops too, also while it follows the answer
            self.speech.abort()
        if self.streaming and self.task is not None:
            self.task.cancel()

    def metadata(self) -> dict[str, Any]:
        return {"usage": self.usage, "retriever_resources": self.retriever_resources, **self.extra_metadata}

    def blocking_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event": "message",
            "task_id": self.task_id,
            "id": self.message_id,
            "message_id": self.message_id,
        }
        if self.mode != "completion":
            body["conversation_id"] = self.conversation_id
        body.update(
            mode=self.mode,
            answer=self.answer,
            metadata=self.metadata(),
            created_at=self.created_at,
        )
        return body


class RunRegistry:
    """The runs this replica owns, by task id."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.runs: dict[str, Run] = {}

    def start(self, run: Run) -> None:
        self.runs[run.task_id] = run
        run.task = asyncio.create_task(self._execute(run), name=f"run-{run.task_id}")

    def stop(self, task_id: str, user: str, app_id: str | None = None, reason: str = "user") -> bool:
        """Stop a local run if ``user`` (end-user id or session id) owns it; False when it is not ours."""
        run = self.runs.get(task_id)
        if run is None or user not in (run.end_user_id, run.session_id):
            return False
        if app_id is not None and app_id != run.app_id:
            return False
        run.request_stop(reason)
        return True

    async def shutdown(self, timeout: float = 10.0) -> None:
        runs = list(self.runs.values())
        for run in runs:
            run.request_stop("shutdown")
        tasks = [r.task for r in runs if r.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                t.cancel()

    # -- the run itself --------------------------------------------------------------------------
    async def _execute(self, run: Run) -> None:
        rt = self.ctx.settings.runtime
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        timer = loop.call_later(rt.run_timeout, run.request_stop, "timeout")
        RUNS_ACTIVE.inc()
        # the task has its own copy of the request's context: every log line of the run carries both ids
        structlog.contextvars.bind_contextvars(task_id=run.task_id)
        subject = task_events(run.task_id)
        nc = self.ctx.bus.nc
        channel = run.channel
        prefix = run._prefix
        usage = llm.Usage()
        lost_events = 0
        try:
            run.streaming = True

            async def emit(data: bytes) -> None:
                """One event: into the SSE channel and onto the run's subject (the JetStream event log)."""
                nonlocal lost_events
                run.seq += 1
                if channel is not None:
                    channel.put(frame(run.seq, data))
                try:
                    await nc.publish(subject, data)
                except Exception:  # noqa: BLE001 - the event log is best effort, the answer is not
                    lost_events += 1

            speech = run.speech
            if speech is not None:
                speech.start(emit)
            try:
                if run.stop_reason is None and run.agent is not None:
                    try:
                        await AgentLoop(self.ctx, run, run.agent, run.tenant_id, emit, usage).execute()
                    except OutputFlagged:
                        await self._replace_answer(run, run.review.preset, emit)
                elif run.stop_reason is None:
                    deltas = llm.stream_chat(run.binding, run.messages, rt.llm_timeout, usage)
                    review = run.review
                    async with aclosing(deltas):
                        async for delta in deltas:
                            run.answer_parts.append(delta)
                            if review is not None and review.feed(delta):
                                break  # flagged: nothing more of the model's text goes out
                            await emit(prefix + orjson.dumps(delta) + b"}")
                            if speech is not None:
                                speech.feed(delta)
                    if review is not None and await review.finish():
                        await self._replace_answer(run, review.preset, emit)
                run.status = "normal" if run.stop_reason is None else "stopped"
            except asyncio.CancelledError:
                if run.stop_reason is None:  # not ours (event loop teardown): record it, then obey
                    run.status, run.error = "error", "interrupted"
                    await asyncio.shield(self._finalize(run, usage, started))
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                run.status = "stopped"
            except AgentIncomplete as e:
                run.status, run.error = "error", str(e)
            except Exception as e:  # noqa: BLE001 - any provider failure ends the run as an error event
                run.status, run.error = "error", llm.error_message(e, run.binding.provider)
                log.info("run_llm_failed", error=run.error)
            finally:
                run.streaming = False
            if run.status == "stopped":
                run.error = STOP_REASONS.get(run.stop_reason or "user")
                if run.stop_reason == "timeout":
                    run.error = f"run timed out after {rt.run_timeout:g} s"
            if lost_events:
                log.warning("run_events_not_published", count=lost_events)
            await self._finalize(run, usage, started)
            if speech is not None:  # after message_end, as Dify: the rest of the audio, then tts_message_end
                if run.status == "normal":
                    await speech.finish()
                else:
                    await speech.cancel(end=run.status == "stopped")
        finally:
            if run.speech is not None:
                run.speech.abort()  # a run torn down midway leaves no reader behind
            timer.cancel()
            RUNS_ACTIVE.dec()
            if run.review is not None:
                run.review.close()  # a review still running (stopped, failed run) ends with the run
            if channel is not None:
                channel.close()
            self.runs.pop(run.task_id, None)
            run.finished.set()

    @staticmethod
    async def _replace_answer(run: Run, answer: str, emit: Any) -> None:
        """Output moderation flagged the answer: it becomes ``answer`` (event ``message_replace``) and is
        neither stored as the model wrote it nor cached. An agent's thoughts carry the model's text (with
        function calling, the answer's pieces): they are stored without it, only their tool calls."""
        run.answer_parts = [answer]
        run.cache = None
        if run.speech is not None:
            run.speech.replace(answer)
        for thought in run.thoughts:
            thought["thought"] = ""
        await emit(orjson.dumps({**run.envelope("message_replace"), "task_id": run.task_id, "id": run.message_id,
                                 "answer": answer, "reason": "output_moderation"}))

    async def answer_directly(self, run: Run, answer: str) -> None:
        """A run answered without the model (input moderation, an answer-cache hit): its message row was
        stored final already; the client gets the usual ``message`` and ``message_end`` events."""
        run.answer_parts = [answer]
        run.status = "normal"
        end = orjson.dumps({**run.envelope("message_end"), "task_id": run.task_id, "id": run.message_id,
                            "metadata": run.metadata()})
        for data in (run._prefix + orjson.dumps(answer) + b"}", end):
            await self._publish(run, data)
        if run.speech is not None:  # auto play: read after message_end, as a model's answer's rest is; the run
            # stays registered meanwhile, so a stop or a shutdown reaches it
            run.speech.start(partial(self._publish, run))
            run.speech.feed(answer)
            self.runs[run.task_id] = run
            run.task = asyncio.get_running_loop().create_task(self._read_then_close(run))
            return
        if run.channel is not None:
            run.channel.close()
        run.finished.set()

    async def _read_then_close(self, run: Run) -> None:
        try:
            await run.speech.finish()
        finally:
            run.speech.abort()
            if run.channel is not None:
                run.channel.close()
            self.runs.pop(run.task_id, None)
            run.finished.set()

    async def _publish(self, run: Run, data: bytes) -> None:
        """One event outside the model's stream: into the SSE channel and onto the run's subject (the event log
        is best effort; the answer is in the database)."""
        run.seq += 1
        if run.channel is not None:
            run.channel.put(frame(run.seq, data))
        try:
            await self.ctx.bus.nc.publish(task_events(run.task_id), data)
        except Exception:  # noqa: BLE001
            log.warning("run_event_publish_failed")

    async def _store_final(self, run: Run, params: dict[str, Any]) -> None:
        """Write the finished message, retrying a busy or briefly unreachable database: an answer the
        model produced is not dropped for a transient error (the sweeper is the last resort)."""
        delay = 0.25
        for attempt in range(1, FINALIZE_ATTEMPTS + 1):
            try:
                await self.ctx.db.write((FINALIZE_MESSAGE, {**params, "updated_at": utcnow()}))
                return
            except Exception:
                if attempt == FINALIZE_ATTEMPTS:
                    log.exception("run_finalize_failed", attempts=attempt)
                    return
                log.warning("run_finalize_retry", attempt=attempt, exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 8.0)

    async def _finalize(self, run: Run, usage: llm.Usage, started: float) -> None:
        latency = time.perf_counter() - started
        answer = run.answer
        estimate_usage(usage, run.messages, answer)
        b = run.binding
        run.usage = llm.dify_usage(b, usage.prompt_tokens, usage.completion_tokens, latency)
        LLM_CALLS.labels(b.provider, b.model, run.status).inc()
        LLM_TOKENS.labels(b.provider, b.model, "prompt").inc(usage.prompt_tokens)
        LLM_TOKENS.labels(b.provider, b.model, "completion").inc(usage.completion_tokens)
        params = {
            "b_id": run.message_id,
            "status": run.status,
            "answer": answer,
            "error": run.error,
            "message_tokens": usage.prompt_tokens,
            "answer_tokens": usage.completion_tokens,
            "usage": run.usage,
            "latency": latency,
        }
        if run.agent is not None:
            params["agent_thoughts"] = run.thoughts
            params["trace"] = {**run.trace, "tools": run.tool_trace}
        await self._store_final(run, params)
        if run.status == "error":
            payload = {
                **run.envelope("error"),
                "code": "completion_request_error",
                "message": run.error,
                "status": 400,
            }
        else:
            payload = {
                **run.envelope("message_end"),
                "task_id": run.task_id,
                "id": run.message_id,
                "metadata": run.metadata(),
            }
        await self._publish(run, orjson.dumps(payload))
        if run.cache is not None and run.status == "normal" and answer:
            await run.cache.store(answer, run.message_id)

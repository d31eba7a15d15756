"""The NATS connection every service shares: core pub/sub, request/reply and JetStream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
import orjson
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from nats.js.object_store import ObjectStore

from shared import subjects

log = structlog.get_logger("plexus.bus")

TASK_EVENTS_MAX_AGE = 3600.0  # seconds a run's event log is kept for resumption
INDEX_JOBS_DEDUPE = 600.0  # seconds in which a re-published job (same message id) is dropped


class Bus:
    def __init__(self, nc: Client, js: JetStreamContext) -> None:
        self.nc = nc
        self.js = js
        self._subs: list[Any] = []
        self._files: ObjectStore | None = None

    @classmethod
    async def connect(cls, url: str, name: str = "plexus", deadline: float = 15.0) -> Bus:
        """Connect, or fail within ``deadline`` seconds with one clear error (nats-py alone would retry
        the first connection forever); once connected, reconnects are unlimited."""

        async def _error(e: Exception) -> None:
            log.warning("nats_error", url=url, error=repr(e))

        try:
            nc = await asyncio.wait_for(
                nats.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                             connect_timeout=min(5.0, deadline), error_cb=_error),
                deadline,
            )
        except (TimeoutError, OSError, nats.errors.NoServersError) as e:
            raise RuntimeError(f"cannot reach NATS at {url} within {deadline:g} s") from e
        bus = cls(nc, nc.jetstream())
        await bus._ensure_streams()
        return bus

    async def _ensure_streams(self) -> None:
        streams = [
            StreamConfig(
                name=subjects.TASK_EVENTS_STREAM,
                subjects=[subjects.TASK_EVENTS_WILDCARD],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=TASK_EVENTS_MAX_AGE,
            ),
            # one message per accepted document, kept on disk until a worker acks it
            StreamConfig(
                name=subjects.INDEX_JOBS_STREAM,
                subjects=[subjects.INDEX_JOBS],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                duplicate_window=INDEX_JOBS_DEDUPE,
            ),
        ]
        for cfg in streams:
            for attempt in range(50):  # JetStream may still be starting right after the server
                try:
                    try:
                        await self.js.add_stream(cfg)
                    except BadRequestError:
                        await self.js.update_stream(cfg)
                    break
                except Exception:
                    if attempt == 49:
                        raise
                    await asyncio.sleep(0.1)

    async def files(self) -> ObjectStore:
        """The object store for uploaded files (created on first use)."""
        if self._files is None:
            try:
                self._files = await self.js.object_store(subjects.FILES_BUCKET)
            except nats.js.errors.BucketNotFoundError:
                try:
                    self._files = await self.js.create_object_store(
                        subjects.FILES_BUCKET, storage=StorageType.FILE)
                except BadRequestError:  # another process created it first
                    self._files = await self.js.object_store(subjects.FILES_BUCKET)
        return self._files

    async def publish_json(self, subject: str, payload: dict[str, Any], headers: dict | None = None) -> None:
        await self.nc.publish(subject, orjson.dumps(payload), headers=headers)

    async def subscribe_json(
        self, subject: str, handler: Callable[[str, dict[str, Any]], Awaitable[None]], queue: str = ""
    ) -> None:
        async def _cb(msg: Msg) -> None:
            try:
                await handler(msg.subject, orjson.loads(msg.data) if msg.data else {})
            except Exception:
                log.exception("bus_handler_failed", subject=msg.subject)

        self._subs.append(await self.nc.subscribe(subject, queue=queue, cb=_cb))

    async def serve_json(
        self, subject: str, handler: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]], *, queue: str,
        concurrency: int,
    ) -> Any:
        """Answer requests on ``subject`` in a queue group, up to ``concurrency`` at once. nats-py runs one
        subscription's callbacks one after another, so each request gets its own task; past the limit the
        callback waits, and further requests queue in the subscription (its pending limits apply)."""
        gate = asyncio.Semaphore(concurrency)
        tasks: set[asyncio.Task] = set()

        async def _answer(msg: Msg) -> None:
            try:
                try:
                    reply = await handler(msg.subject, orjson.loads(msg.data) if msg.data else {})
                except Exception as e:
                    log.exception("bus_request_failed", subject=msg.subject)
                    reply = {"ok": False, "error": {"code": "internal_error", "message": f"{type(e).__name__}: {e}"}}
                if msg.reply:
                    await msg.respond(orjson.dumps(reply))
            finally:
                gate.release()

        async def _cb(msg: Msg) -> None:
            await gate.acquire()
            task = asyncio.create_task(_answer(msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        sub = await self.nc.subscribe(subject, queue=queue, cb=_cb)
        self._subs.append(sub)
        return sub  # unsubscribe it to stop answering before the bus closes

    async def sync(self, timeout: float = 2.0) -> None:
        """Return once the server has processed everything this connection sent before the call (and so
        has delivered what we published to our own subscriptions ahead of its reply). nats-py writes a
        flush's PING straight to the socket while earlier publishes and subscribes may still wait in its
        write buffer, so one PING/PONG does not order them (measured: 2 in 150 config changes under load
        reached the gateway after the console had answered). The first flush kicks the buffer out; the
        second PING leaves after it."""
        await self.nc.flush(timeout=timeout)
        await self.nc.flush(timeout=timeout)

    async def ping(self) -> None:
        if not self.nc.is_connected:
            raise RuntimeError("NATS not connected")
        await self.nc.flush(timeout=2)

    async def close(self) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001, S110 - closing anyway; drain() below reports real trouble
                pass
        if not self.nc.is_closed:
            await self.nc.drain()

"""NATS side of the indexer: the index-job workers (JetStream pull consumer), retrieval requests from the
runtime (request/reply in a queue group) and config changes (drop cached embedders)."""

from __future__ import annotations

from typing import Any

import structlog

from services.indexer.service import Knowledge
from services.indexer.service.annotations import AnnotationVectors
from services.indexer.service.indexing import IndexWorkers
from services.indexer.service.retrieval import RetrievalService
from shared.context import Context
from shared.errors import ApiError
from shared.subjects import (
    ANNOTATION_DELETE,
    ANNOTATION_SEARCH,
    ANNOTATION_UPSERT,
    CONFIG_WILDCARD,
    KNOWLEDGE_QUEUE,
    KNOWLEDGE_RETRIEVE,
)

log = structlog.get_logger("plexus.indexer.handlers")


async def start(ctx: Context, app: Any) -> None:
    kn: Knowledge = app.state.knowledge
    search = RetrievalService(kn)

    async def _retrieve(_subject: str, req: dict[str, Any]) -> dict[str, Any]:
        try:
            records = await search.for_app(str(req["tenant_id"]), [str(i) for i in req.get("dataset_ids") or []],
                                           str(req.get("query") or ""), req.get("retrieval_model") or None)
            return {"records": records}
        except ApiError as e:
            return {"error": e.body()}
        except Exception as e:
            log.exception("retrieve_failed")
            return {"error": {"code": "internal_server_error", "message": f"retrieval failed: {e}", "status": 500}}

    async def _config(subject: str, payload: dict[str, Any]) -> None:
        kn.on_config(subject, payload)

    # concurrent requests overlap: embedding and vector search run off the loop, the database is async
    app.state.retrieve_sub = await ctx.bus.serve_json(KNOWLEDGE_RETRIEVE, _retrieve, queue=KNOWLEDGE_QUEUE,
                                                      concurrency=ctx.settings.knowledge.retrieve_concurrency)
    # annotation reply vectors (service/annotations.py), answered like retrieval
    vectors = AnnotationVectors(kn)
    app.state.annotation_subs = [
        await ctx.bus.serve_json(subject, _guarded(op), queue=KNOWLEDGE_QUEUE,
                                 concurrency=ctx.settings.knowledge.retrieve_concurrency)
        for subject, op in ((ANNOTATION_UPSERT, vectors.upsert), (ANNOTATION_DELETE, vectors.delete),
                            (ANNOTATION_SEARCH, vectors.search))]
    await ctx.bus.subscribe_json(CONFIG_WILDCARD, _config)
    workers = IndexWorkers(kn)
    app.state.workers = workers
    await workers.start()
    await ctx.bus.sync()


def _guarded(op: Any) -> Any:
    """``op``'s errors as the reply's ``error`` envelope, never a missing reply."""

    async def handle(subject: str, req: dict[str, Any]) -> dict[str, Any]:
        try:
            return await op(req)
        except ApiError as e:
            return {"error": e.body()}
        except Exception as e:
            log.exception("annotation_vectors_failed", subject=subject)
            return {"error": {"code": "internal_server_error", "message": f"{type(e).__name__}: {e}",
                              "status": 500}}

    return handle


async def stop(ctx: Context, app: Any) -> None:
    workers: IndexWorkers | None = getattr(app.state, "workers", None)
    if workers is not None:
        await workers.stop()
    for sub in [getattr(app.state, "retrieve_sub", None), *getattr(app.state, "annotation_subs", ())]:
        if sub is None:
            continue
        try:
            await sub.unsubscribe()
        except Exception:  # noqa: BLE001, S110 - closing anyway
            pass
    await app.state.knowledge.vectors.close()

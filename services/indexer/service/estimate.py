"""The console's chunk preview before documents are made (Dify's ``POST /datasets/indexing-estimate``) and the
default process rule it starts from (``GET /datasets/process-rule``).

The preview parses and splits the uploaded files exactly as indexing will (same parse processes, same
rule), so what the console shows is what the documents get: the segment count, the first chunks (with
their child chunks for a parent-child rule), and for Q&A documents the pairs the default LLM writes from the
first chunk (one model call, not one per chunk)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from sqlmodel import select

from services.indexer.pipeline.qa import QA_NEEDS_MODEL, qa_language
from services.indexer.pipeline.split import MAX_MAX_TOKENS, ProcessRule, validate_process_rule
from services.indexer.service.common import document_not_found, get_dataset, invalid, parse_id
from services.indexer.service.core import Knowledge
from services.indexer.service.datasets import TECHNIQUES
from services.indexer.service.documents import (
    DocumentService,
    check_doc_form,
    doc_language,
    upload_file_ids,
)
from services.indexer.service.indexing import QAWriter, Transient, automatic_tokens_for
from shared.errors import ApiError
from shared.models import Document
from shared.parse import ParseError

if TYPE_CHECKING:
    from services.indexer.service.indexing import IndexWorkers

log = structlog.get_logger("plexus.indexer.estimate")

PREVIEW_CHUNKS = 10  # chunks shown, across all the files


def default_process_rule() -> dict[str, Any]:
    """What a new document starts from in Dify's console: the automatic rule's settings, editable."""
    rule = ProcessRule.automatic().model_dump(mode="json", exclude_none=True)
    rule["rules"]["segmentation"].pop("split_by_title", None)
    return {"mode": "custom", "rules": rule["rules"],
            "limits": {"indexing_max_segmentation_tokens_length": MAX_MAX_TOKENS}}


class EstimateService:
    def __init__(self, kn: Knowledge) -> None:
        self.kn = kn

    async def process_rule(self, tenant_id: str, document_id: str | None) -> dict[str, Any]:
        """The default rule, or the rule of the dataset a document belongs to (Dify's console asks this when a
        document's settings are edited)."""
        if not document_id:
            return default_process_rule()
        out = default_process_rule()
        async with self.kn.db.session() as s:
            doc = (await s.exec(select(Document).where(
                Document.tenant_id == tenant_id,
                Document.id == parse_id(document_id, document_not_found())))).first()
            if doc is None:
                raise document_not_found()
            ds = await get_dataset(s, tenant_id, doc.dataset_id)  # a console member's dataset permissions
        rule = doc.process_rule or ds.process_rule
        if rule:
            out.update(mode=rule.get("mode", "custom"), rules=rule.get("rules") or out["rules"])
        return out

    async def estimate(self, workers: IndexWorkers, tenant_id: str, body: dict[str, Any]) -> dict[str, Any]:
        info = body.get("info_list")
        if not isinstance(info, dict):
            raise invalid("info_list is required.")
        ids = upload_file_ids({"data_source": {"type": info.get("data_source_type"), "info_list": info}})
        rule = validate_process_rule(body.get("process_rule"), required=True)
        form = check_doc_form(body.get("doc_form"), rule, None)
        language = qa_language(doc_language(body))
        technique = body.get("indexing_technique")
        if technique is not None and technique not in TECHNIQUES:
            raise invalid("indexing_technique is invalid: choose high_quality or economy")
        provider = body.get("embedding_model_provider") if isinstance(body.get("embedding_model_provider"), str) \
            else None
        writer = None
        if form == "qa_model":
            writer = await QAWriter.of_workspace(self.kn, tenant_id)
            if writer is None:
                raise ApiError(400, "provider_not_initialize", QA_NEEDS_MODEL)
        async with self.kn.db.session() as s:
            files = await DocumentService(self.kn).uploaded_files(s, tenant_id, ids, unused=False)
        total, tokens, preview = 0, 0, []
        for fid in ids:
            try:
                chunks = await workers.chunk(await workers.extract(files[fid]), rule.model_dump(mode="json"),
                                             automatic_tokens_for(technique, provider))
            except (ParseError, FileNotFoundError) as e:
                raise invalid(f"{files[fid].name}: {e}") from None
            except Transient as e:  # its detail is logged, not answered
                log.warning("estimate_file_store_unavailable", error=str(e))
                raise ApiError(503, "service_unavailable", "The file store is unavailable; try again.") from None
            total += len(chunks)
            tokens += sum(c.tokens for c in chunks)
            for c in chunks[: max(0, PREVIEW_CHUNKS - len(preview))]:
                preview.append({"content": c.content,
                                "child_chunks": [k.content for k in c.children] if c.children else []})
        qa_preview: list[dict[str, str]] = []
        if writer is not None and preview:
            try:
                (pairs,) = await writer.write([preview[0]["content"]], language)
            except Exception as e:
                raise ApiError(400, "invalid_param", f"Q&A generation with {writer.label} failed: {e}") from e
            qa_preview = [{"question": q, "answer": a} for q, a in pairs]
        return {"total_segments": total, "preview": preview, "qa_preview": qa_preview, "tokens": tokens,
                "total_price": "0", "currency": "USD"}

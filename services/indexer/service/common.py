"""What the knowledge services share: Dify's knowledge errors, tenant-scoped lookups, wire shapes."""

from __future__ import annotations

import hashlib
import re
import uuid
from contextvars import ContextVar
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from shared.errors import ApiError, forbidden, invalid_param, not_found, parse_uuid, unauthorized
from shared.identity import AUTH_INVALID, Caller
from shared.knowledge.access import Member, may_see
from shared.knowledge.models import LOCAL_EMBEDDING_PROVIDER
from shared.models import Dataset, Document

# document states in which a worker may still be busy with it (and which a pause stops)
INDEXING_STATES = ("waiting", "parsing", "cleaning", "splitting", "indexing")
SEGMENT_NS = uuid.UUID("0f1d6a52-3b0b-4cf4-9a53-7c1b8e2f4a10")


def dataset_not_found() -> ApiError:
    return not_found("Dataset not found.")


def document_not_found() -> ApiError:
    return not_found("Document Not Exists.")


def segment_not_found() -> ApiError:
    return not_found("Segment not found.")


def name_duplicate() -> ApiError:
    return ApiError(409, "dataset_name_duplicate", "The dataset name already exists. Please modify your dataset name.")


def dataset_in_use() -> ApiError:
    return ApiError(409, "dataset_in_use", "The dataset is being used by some apps. Please remove the dataset "
                                           "from the apps before deleting it.")


def archived_immutable() -> ApiError:
    return ApiError(403, "archived_document_immutable", "The archived document is not editable.")


def document_indexing(message: str = "Cannot delete document during indexing.") -> ApiError:
    """Dify's DocumentIndexingError: the document's indexing state does not allow the change."""
    return ApiError(400, "document_indexing", message)


def not_initialized() -> ApiError:
    return ApiError(400, "dataset_not_initialized",
                    "The dataset is still being initialized or indexing. Please wait a moment.")


def provider_not_initialize(detail: str = "") -> ApiError:
    msg = ("No valid embedding model provider credentials found. Please go to Settings -> Model Provider to "
           "complete your provider credentials.")
    return ApiError(400, "provider_not_initialize", f"{msg} {detail}".strip())


def tenant_of(caller: Caller) -> str:
    if caller.key_type != "dataset":
        raise unauthorized(AUTH_INVALID)
    return caller.tenant_id


def parse_id(value: str, error: ApiError) -> str:
    """Dify declares these path params as UUIDs: anything else is a 404."""
    return parse_uuid(value, error)




# Set by the console routes' dependency (api.py) for the request it serves; None on /v1 (a dataset key).
# A context variable, so the dataset checks below apply on every path without each service passing it on.
CONSOLE_MEMBER: ContextVar[Member | None] = ContextVar("console_member", default=None)


def no_permission() -> ApiError:
    return forbidden("You do not have permission to access this dataset.")


def created_by() -> str | None:
    """The account a change is recorded for: the console member, none for a dataset key."""
    member = CONSOLE_MEMBER.get()
    return member.account_id if member is not None else None


def created_from() -> str:
    """Dify's ``created_from`` of a document: ``web`` from the console, ``api`` from the knowledge API."""
    return "web" if CONSOLE_MEMBER.get() is not None else "api"


async def get_dataset(s: AsyncSession, tenant_id: str, dataset_id: str, *, api: bool = True) -> Dataset:
    ds = (await s.exec(select(Dataset).where(Dataset.id == parse_id(dataset_id, dataset_not_found()),
                                             Dataset.tenant_id == tenant_id))).first()
    if ds is None:
        raise dataset_not_found()
    member = CONSOLE_MEMBER.get()
    if member is not None:  # the console: the member's permission, whatever the dataset's API switch says
        if not await may_see(s, ds, member):
            raise no_permission()
    elif api and not ds.enable_api:
        raise forbidden("Dataset api access is not enabled.")
    return ds


async def get_document(s: AsyncSession, ds: Dataset, document_id: str) -> Document:
    doc = (await s.exec(select(Document).where(Document.id == parse_id(document_id, document_not_found()),
                                               Document.dataset_id == ds.id))).first()
    if doc is None:
        raise document_not_found()
    return doc


def segment_id(document_id: str, version: int, position: int) -> str:
    """Deterministic: a redelivered job writes the same segment rows and vector points again."""
    return str(uuid.uuid5(SEGMENT_NS, f"{document_id}:{version}:{position}"))


def child_chunk_id(segment_id: str, position: int) -> str:
    """Derived from its segment like segment_id from its document: a re-split writes the same child rows and
    points again (a parent-child document's child chunks are its vector points)."""
    return str(uuid.uuid5(SEGMENT_NS, f"{segment_id}:child:{position}"))


def child_chunk_not_found() -> ApiError:
    return not_found("Child chunk not found.")


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


_SPACE_RE = re.compile(r"[^a-z0-9]+")
KEYWORD_SPACE = "kb_keyword"


def space_for(technique: str | None, provider: str | None, model: str | None) -> str:
    """The collection a dataset's points live in: one per embedding model; economy is sparse-only."""
    if technique != "high_quality":
        return KEYWORD_SPACE
    provider = provider or LOCAL_EMBEDDING_PROVIDER
    base = _SPACE_RE.sub("_", f"{provider}_{model or ''}".lower()).strip("_")[:40]
    digest = hashlib.sha1(f"{provider}\0{model}".encode()).hexdigest()[:8]
    return f"kb_{base}_{digest}"


def dataset_space(ds: Dataset) -> str:
    """The collection a dataset's points live in now."""
    return space_for(ds.indexing_technique, ds.embedding_model_provider, ds.embedding_model)


def word_count(text: str) -> int:
    """Dify counts characters for word_count; so do we (it is what the UI shows for CJK text too)."""
    return len(text)


def invalid(message: str, **extra: Any) -> ApiError:
    return invalid_param(message, **extra)

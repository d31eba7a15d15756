"""Every NATS subject and stream name Plexus uses: declared here and nowhere else.

Payloads are JSON; a subject's payload shape changes only together with a new version suffix.
"""

from __future__ import annotations

PREFIX = "plexus"

# JetStream stream holding every run's event log (limits by age); SSE ids are its sequence numbers.
TASK_EVENTS_STREAM = "PLEXUS_TASK_EVENTS"
TASK_EVENTS_WILDCARD = f"{PREFIX}.tasks.*.events"
TASK_STOP_WILDCARD = f"{PREFIX}.tasks.*.stop"

# Index jobs: a JetStream work queue (one delivery per job across indexer replicas, redelivered until
# acked). Payload: {"document_id", "version"}; the message id "<document_id>:<version>" de-duplicates.
INDEX_JOBS_STREAM = "PLEXUS_INDEX_JOBS"
INDEX_JOBS = f"{PREFIX}.index.jobs"
INDEX_WORKERS = "plexus-indexer"  # the durable pull consumer every indexer replica shares

# Uploaded files (NATS Object Store bucket); documents keep the object name, never the bytes.
FILES_BUCKET = "plexus-files"

# Retrieval, served by the indexer (the vector store's only client) in a queue group.
# Payload: {"tenant_id", "dataset_ids", "query", "retrieval_model"?, "top_k"?, "score_threshold"?}
# Reply: {"records": [...]} or {"error": {"code", "message", "status"}}.
KNOWLEDGE_RETRIEVE = f"{PREFIX}.knowledge.retrieve"
KNOWLEDGE_QUEUE = "plexus-indexer"

# Annotation reply vectors (docs/annotations.md), served by the indexer in KNOWLEDGE_QUEUE. Every payload names
# {"tenant_id", "app_id", "provider", "model"} (provider/model null: the built-in embedding model).
# upsert: + {"items": [{"id", "question"}]} → {"ok": true, "count"}; delete: + {"ids"?} (none: every
# annotation of the app) → {"ok": true}; search: + {"query", "score_threshold", "top_k"} → {"hits": [{"id",
# "score"}]}. Any of them may answer {"error": {"code", "message", "status"}}.
ANNOTATION_UPSERT = f"{PREFIX}.annotations.upsert"
ANNOTATION_DELETE = f"{PREFIX}.annotations.delete"
ANNOTATION_SEARCH = f"{PREFIX}.annotations.search"

# Tool calls, served by the tools service in a queue group; <provider> is "builtin" or a provider id.
# Payload: {"tenant_id", "provider_type": "builtin"|"api", "provider_id", "tool", "arguments": {...}, "app_id"?}
# Reply: {"ok": true, "output": str, "elapsed": s} or {"ok": false, "error": {"code", "message"}, "elapsed": s}:
# a failing tool is a result the agent can react to, never a missing reply.
TOOLS_INVOKE_WILDCARD = f"{PREFIX}.tools.invoke.*"
TOOLS_QUEUE = "plexus-tools"


def tools_invoke(provider_id: str) -> str:
    return f"{PREFIX}.tools.invoke.{provider_id}"


# Console access for the /console/api routes another service serves (the knowledge routes are the indexer's):
# the console, which owns accounts, memberships and admin keys, says who the caller is and whether its role and
# key scopes allow the route. Served by every console replica in a queue group.
# Payload: {"authorization": the request's Authorization header or null, "method", "path": the route template
# after /console/api, "cookie": its Cookie header or null (newer consoles sign in with the access_token cookie),
# "csrf_token": its X-CSRF-Token header or null (with the cookie, needed by methods but GET/HEAD/OPTIONS)}.
# Reply: {"tenant_id", "account_id", "role", "key_id"} or {"error": {"code", "message", "status"}} (401/403
# exactly as the console's own routes answer: the same rules, one function, console.api.authorize).
CONSOLE_AUTHORIZE = f"{PREFIX}.console.authorize"
CONSOLE_QUEUE = "plexus-console"

# Config change notifications (core pub/sub): kinds are app, apikey, provider, tenant, tool_provider.
CONFIG_WILDCARD = f"{PREFIX}.config.>"


def task_events(task_id: str) -> str:
    return f"{PREFIX}.tasks.{task_id}.events"


def task_stop(task_id: str) -> str:
    """Payload: {"user": <end-user session id>, "app_id"}: only the run's own user of that app may stop it.
    The replica that owns the run acts; a stop for a local run is applied directly, without a publish."""
    return f"{PREFIX}.tasks.{task_id}.stop"


def task_of(subject: str) -> str:
    """The task id in a ``plexus.tasks.<task_id>.*`` subject."""
    return subject.split(".", 3)[2]


def config_changed(kind: str, ident: str) -> str:
    """Payload: {"kind", "id", ...}; receivers drop caches for that object at once."""
    return f"{PREFIX}.config.{kind}.{ident}"


def parse_config_subject(subject: str) -> tuple[str, str]:
    _, _, kind, ident = subject.split(".", 3)
    return kind, ident

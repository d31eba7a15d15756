"""Tables, one owner each (see ARCHITECTURE §3). Timestamps are aware UTC; the wire uses Unix seconds.

console owns: setups, tenants, accounts, tenant_members, apps, app_model_configs, api_tokens, provider_credentials,
app_dataset_joins, tool_providers (the tools service and the runtime read them), workflows (drafts and published
versions; the runtime reads them), tenant_default_models, api_based_extensions (the runtime reads them),
app_imports, provider_model_credentials (the runtime and the indexer read them, as provider_credentials).
runtime owns: end_users, conversations, messages, message_feedbacks, message_files, workflow_runs,
workflow_node_executions, conversation_variables, message_annotations, app_annotation_settings.
indexer owns (its /v1/datasets knowledge API writes them): datasets, dataset_permissions, upload_files, documents,
document_segments, tags, tag_bindings.
upload_files also holds the runtime's app uploads (/v1/files/upload, created_by = the end user); each service
writes and deletes only its own rows.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    # aware: sqlmodel maps datetime fields to UTCDateTime, which refuses naive values
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def ts(dt: datetime | None) -> int | None:
    """UTC datetime (aware, or naive meaning UTC) → Unix seconds (the wire format)."""
    if dt is None:
        return None
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp())


def _json(default: Any = None) -> Any:
    return Field(default_factory=(lambda: default() if callable(default) else default), sa_column=Column(JSON))


class Setup(SQLModel, table=True):
    """One row once the first account exists. Its fixed primary key makes a racing second setup fail."""

    __tablename__ = "setups"
    id: int = Field(default=1, primary_key=True, sa_column_kwargs={"autoincrement": False})
    setup_at: datetime = Field(default_factory=utcnow)


class Tenant(SQLModel, table=True):
    __tablename__ = "tenants"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    name: str = Field(max_length=255)
    status: str = Field(default="normal", max_length=16)  # normal | archived
    # shared/plans.py: sandbox | professional | team | enterprise. The console stamps PLEXUS_DEFAULT_PLAN on
    # new workspaces; enterprise (the model default) has no limits unless custom_limits sets some
    plan: str = Field(default="enterprise", max_length=32)
    custom_limits: dict | None = _json(None)  # enterprise: {"rpm", "rph", "rpd"} per app, 0 = unlimited
    created_at: datetime = Field(default_factory=utcnow)


class Account(SQLModel, table=True):
    __tablename__ = "accounts"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    email: str = Field(max_length=255, unique=True, index=True)
    name: str = Field(max_length=255)
    password_hash: str = Field(max_length=255)
    status: str = Field(default="active", max_length=16)  # active | banned
    created_at: datetime = Field(default_factory=utcnow)
    last_login_at: datetime | None = None


class TenantMember(SQLModel, table=True):
    __tablename__ = "tenant_members"
    __table_args__ = (UniqueConstraint("tenant_id", "account_id"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=36, ondelete="CASCADE")
    account_id: str = Field(foreign_key="accounts.id", index=True, max_length=36, ondelete="CASCADE")
    role: str = Field(default="owner", max_length=16)  # owner | admin | editor | normal
    current: bool = True
    # pending: invited, the account has not been activated yet (invite_token_hash finds it; sha256 hex)
    status: str = Field(default="active", max_length=16)  # active | pending
    invited_by: str | None = Field(default=None, max_length=36)
    invite_token_hash: str | None = Field(default=None, max_length=64, unique=True, index=True)
    invite_expires_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class App(SQLModel, table=True):
    __tablename__ = "apps"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_apps_tenant_name"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=36, ondelete="CASCADE")
    name: str = Field(max_length=255)
    description: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    mode: str = Field(max_length=32)
    icon_type: str | None = Field(default="emoji", max_length=16)
    icon: str | None = Field(default=None, max_length=255)
    icon_background: str | None = Field(default=None, max_length=255)
    enable_site: bool = True
    enable_api: bool = True
    # per-app overrides of the workspace plan (shared/plans.py): None = the plan's value, 0 = unlimited
    api_rpm: int | None = None
    api_rph: int | None = None
    api_rpd: int | None = None
    max_active_requests: int | None = None
    status: str = Field(default="normal", max_length=16)
    app_model_config_id: str | None = Field(default=None, max_length=36)
    workflow_id: str | None = Field(default=None, max_length=36)  # graph modes: the published version served
    # basic modes (docs/versions.md): a model-config save makes a draft until published; a canary serves
    # ``rollout_config_id`` to ``rollout_percentage`` % of new conversations beside app_model_config_id
    publish_requires_confirmation: bool = False
    rollout_config_id: str | None = Field(default=None, max_length=36)
    rollout_percentage: float = 0.0
    rollout_started_at: datetime | None = None
    rollout_started_by: str | None = Field(default=None, max_length=36)
    # GET /v1/site (reference §2.12): the web app's settings as saved in the console; None = derived from the app
    site: dict | None = Field(default=None, sa_column=Column(JSON))
    created_by: str | None = Field(default=None, max_length=36)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class ApiBasedExtension(SQLModel, table=True):
    """A workspace's API-based extension (Dify's): an HTTP endpoint and its key that apps call for external
    data tools (shared.extensions). Written by the console; the runtime reads it per request."""

    __tablename__ = "api_based_extensions"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_api_extension_name"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=36, ondelete="CASCADE")
    name: str = Field(max_length=255)
    api_endpoint: str = Field(max_length=255)
    encrypted_api_key: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class AppImport(SQLModel, table=True):
    """A DSL import waiting to be confirmed (Dify's pending import: a document of a newer or an older major DSL
    version): the parsed document and the request's overrides, until ``POST /apps/imports/{id}/confirm`` or
    ``expires_at``. In the database so that any console replica confirms it; expired rows are deleted by the
    next import or confirmation (services/console/service/dsl.py)."""

    __tablename__ = "app_imports"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=36, ondelete="CASCADE")
    app_id: str | None = Field(default=None, max_length=36)  # the app whose draft it replaces; None: a new app
    document: dict = _json(dict)
    overrides: dict = _json(dict)  # the request's name, description, icon_type, icon, icon_background
    imported_dsl_version: str = Field(default="", max_length=64)
    created_by: str | None = Field(default=None, max_length=36)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(default_factory=utcnow, index=True)


class TenantDefaultModel(SQLModel, table=True):
    """A workspace's default model of a type (Dify's default-model setting): speech2text and tts serve the
    audio endpoints, whose requests name no model."""

    __tablename__ = "tenant_default_models"
    __table_args__ = (UniqueConstraint("tenant_id", "model_type", name="uq_default_model_tenant_type"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=36, ondelete="CASCADE")
    model_type: str = Field(max_length=32)  # llm | text-embedding | rerank | speech2text | tts | moderation
    provider: str = Field(max_length=255)
    model: str = Field(max_length=255)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class AppModelConfig(SQLModel, table=True):
    """One version of a basic app's model config: every save adds one, numbered per app from 1."""

    __tablename__ = "app_model_configs"
    __table_args__ = (UniqueConstraint("app_id", "version", name="uq_app_model_config_version"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    app_id: str = Field(foreign_key="apps.id", index=True, max_length=36, ondelete="CASCADE")
    config: dict = _json(dict)  # the AppModelConfig dict (reference §5), validated by the console
    version: int = 1
    status: str = Field(default="published", max_length=16)  # draft (never served yet) | published
    note: str | None = Field(default=None, max_length=255)
    created_by: str | None = Field(default=None, max_length=36)  # account id or admin key id
    created_at: datetime = Field(default_factory=utcnow)
    published_by: str | None = Field(default=None, max_length=36)
    published_at: datetime | None = None


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_tokens"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=36, ondelete="CASCADE")
    app_id: str | None = Field(default=None, foreign_key="apps.id", index=True, max_length=36, ondelete="CASCADE")
    dataset_id: str | None = Field(default=None, max_length=36)
    type: str = Field(max_length=16)  # app | dataset | admin (workspace key for /console/api, app_id null)
    token_hash: str = Field(max_length=64, unique=True, index=True)  # sha256 hex; the token is shown once
    token_hint: str = Field(max_length=32)  # e.g. "app-AbCd…wXyZ", safe to list
    name: str | None = Field(default=None, max_length=255)
    permissions: list | None = Field(default=None, sa_column=Column(JSON))  # None: every permission of its type
    expires_at: datetime | None = None  # set when rotated: the key is refused from then on
    created_by: str | None = Field(default=None, max_length=36)
    last_used_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class ProviderCredential(SQLModel, table=True):
    __tablename__ = "provider_credentials"
    __table_args__ = (UniqueConstraint("tenant_id", "provider", name="uq_provider_tenant"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=36, ondelete="CASCADE")
    provider: str = Field(max_length=64)
    encrypted_credentials: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class ProviderModelCredential(SQLModel, table=True):
    """One model's own credentials (Dify's "Add model" on a provider), encrypted like the provider's: a call
    to that model uses them instead of the provider's (shared/credentials.py)."""

    __tablename__ = "provider_model_credentials"
    __table_args__ = (UniqueConstraint("tenant_id", "provider", "model", "model_type",
                                       name="uq_provider_model_tenant"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=36, ondelete="CASCADE")
    provider: str = Field(max_length=64)
    model: str = Field(max_length=255)
    model_type: str = Field(max_length=32)  # llm | text-embedding | rerank | speech2text | tts | moderation
    encrypted_credentials: str = Field(sa_column=Column(Text, nullable=False))
    created_by: str | None = Field(default=None, max_length=36)  # the account (or admin key) that saved them
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class ToolProvider(SQLModel, table=True):
    """A workspace's custom tools: an OpenAPI 3 document (one tool per operation) or one webhook definition.
    ``tools`` is derived from ``schema_text`` on every save (shared.tool_schema.ToolSpec dicts), so readers never
    parse documents; credentials (auth and the optional signing secret) are encrypted like provider credentials."""

    __tablename__ = "tool_providers"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_tool_provider_name"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=36, ondelete="CASCADE")
    name: str = Field(max_length=64)
    schema_type: str = Field(max_length=16)  # openapi | webhook
    schema_text: str = Field(sa_column=Column(Text, nullable=False))
    tools: list = _json(list)
    description: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    icon: dict = _json(dict)
    encrypted_credentials: str = Field(sa_column=Column(Text, nullable=False))
    created_by: str | None = Field(default=None, max_length=36)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Workflow(SQLModel, table=True):
    """A graph app's workflow: one ``draft`` per app, edited in place, and immutable published versions."""

    __tablename__ = "workflows"
    __table_args__ = (UniqueConstraint("app_id", "version", name="uq_workflow_app_version"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=36, ondelete="CASCADE")
    app_id: str = Field(foreign_key="apps.id", max_length=36, ondelete="CASCADE", index=True)
    type: str = Field(max_length=16)  # workflow | chat (advanced-chat)
    version: str = Field(max_length=64)  # "draft" or the publish time, e.g. "2026-12-01 00:20:31.123456"
    graph: dict = _json(dict)
    features: dict = _json(dict)
    environment_variables: list = _json(list)
    conversation_variables: list = _json(list)
    hash: str = Field(default="", max_length=64)  # of the draft's content: a stale editor's save gets 409
    marked_name: str = Field(default="", max_length=255)
    marked_comment: str = Field(default="", max_length=255)
    created_by: str | None = Field(default=None, max_length=36)
    created_at: datetime = Field(default_factory=utcnow)
    updated_by: str | None = Field(default=None, max_length=36)
    updated_at: datetime = Field(default_factory=utcnow)


class WorkflowRun(SQLModel, table=True):
    __tablename__ = "workflow_runs"
    __table_args__ = (Index("ix_workflow_runs_app_created", "app_id", "created_at"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(max_length=36)
    app_id: str = Field(foreign_key="apps.id", max_length=36, ondelete="CASCADE")
    workflow_id: str = Field(max_length=36)
    type: str = Field(max_length=16)  # workflow | chat
    triggered_from: str = Field(default="app-run", max_length=32)
    version: str = Field(max_length=64)
    task_id: str = Field(max_length=36, index=True)
    conversation_id: str | None = Field(default=None, max_length=36)
    message_id: str | None = Field(default=None, max_length=36)
    inputs: dict = _json(dict)
    status: str = Field(default="running", max_length=32, index=True)  # running|succeeded|failed|stopped|partial-succeeded
    outputs: dict = _json(dict)
    error: str | None = Field(default=None, sa_column=Column(Text))
    elapsed_time: float = 0.0
    total_tokens: int = 0
    total_steps: int = 0
    exceptions_count: int = 0
    created_by_role: str = Field(default="end_user", max_length=16)
    created_by: str = Field(max_length=36)  # end user id
    created_from: str = Field(default="service-api", max_length=32)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)  # the owning replica touches running runs
    finished_at: datetime | None = None


class WorkflowNodeExecution(SQLModel, table=True):
    __tablename__ = "workflow_node_executions"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(max_length=36)
    app_id: str = Field(max_length=36)
    workflow_id: str = Field(max_length=36)
    workflow_run_id: str = Field(foreign_key="workflow_runs.id", max_length=36, ondelete="CASCADE", index=True)
    index: int = 1
    predecessor_node_id: str | None = Field(default=None, max_length=255)
    node_id: str = Field(max_length=255)
    node_type: str = Field(max_length=64)
    title: str = Field(default="", max_length=255)
    inputs: dict = _json(dict)
    process_data: dict = _json(dict)
    outputs: dict = _json(dict)
    status: str = Field(default="running", max_length=16)  # running|succeeded|failed|exception|stopped
    error: str | None = Field(default=None, sa_column=Column(Text))
    elapsed_time: float = 0.0
    execution_metadata: dict = _json(dict)
    iteration_id: str | None = Field(default=None, max_length=255)  # the enclosing iteration or loop node
    iteration_index: int | None = None
    retry_index: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class ConversationVariable(SQLModel, table=True):
    """An advanced-chat conversation's variable (declared in the workflow, valued per conversation)."""

    __tablename__ = "conversation_variables"
    id: str = Field(primary_key=True, max_length=36)  # the variable's id in the workflow declaration
    conversation_id: str = Field(foreign_key="conversations.id", primary_key=True, max_length=36,
                                 ondelete="CASCADE")
    app_id: str = Field(max_length=36, index=True)
    name: str = Field(max_length=255)
    value_type: str = Field(max_length=32)
    value: Any = _json(None)
    description: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class EndUser(SQLModel, table=True):
    __tablename__ = "end_users"
    __table_args__ = (UniqueConstraint("app_id", "session_id", name="uq_end_user_session"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(max_length=36, index=True)
    app_id: str = Field(foreign_key="apps.id", max_length=36, ondelete="CASCADE")
    type: str = Field(default="service_api", max_length=32)
    session_id: str = Field(max_length=255)
    is_anonymous: bool = False
    created_at: datetime = Field(default_factory=utcnow)


class Conversation(SQLModel, table=True):
    __tablename__ = "conversations"
    # one end user's conversations (the service API); one app's by updated_at or created_at (the console's logs)
    __table_args__ = (Index("ix_conv_app_user_updated", "app_id", "end_user_id", "updated_at"),
                      Index("ix_conv_app_updated", "app_id", "updated_at"),
                      Index("ix_conv_app_created", "app_id", "created_at"))
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    app_id: str = Field(foreign_key="apps.id", max_length=36, ondelete="CASCADE")
    end_user_id: str = Field(max_length=36)
    mode: str = Field(max_length=32)
    name: str = Field(default="", max_length=255)
    inputs: dict = _json(dict)
    introduction: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    status: str = Field(default="normal", max_length=16)
    from_source: str = Field(default="api", max_length=16)
    is_deleted: bool = False
    model_config_id: str | None = Field(default=None, max_length=36)  # the version it was assigned (sticky)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Message(SQLModel, table=True):
    __tablename__ = "messages"
    __table_args__ = (Index("ix_msg_conv_created", "conversation_id", "created_at"),
                      Index("ix_msg_model_config_created", "model_config_id", "created_at"))
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    app_id: str = Field(foreign_key="apps.id", max_length=36, ondelete="CASCADE", index=True)
    conversation_id: str = Field(foreign_key="conversations.id", max_length=36, ondelete="CASCADE")
    end_user_id: str = Field(max_length=36)
    parent_message_id: str | None = Field(default=None, max_length=36)
    task_id: str = Field(max_length=36, index=True)
    inputs: dict = _json(dict)
    query: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    answer: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    # running while the run is live; then normal | stopped | error (the wire shows stopped as normal)
    status: str = Field(default="running", max_length=16, index=True)
    error: str | None = Field(default=None, sa_column=Column(Text))
    model_provider: str | None = Field(default=None, max_length=64)
    model_id: str | None = Field(default=None, max_length=255)
    message_tokens: int = 0
    answer_tokens: int = 0
    usage: dict = _json(dict)
    retriever_resources: list = _json(list)
    agent_thoughts: list = _json(list)
    trace: dict = _json(dict)  # what the run did besides the LLM call (retrieval: query, hits, timings)
    workflow_run_id: str | None = Field(default=None, max_length=36)  # advanced-chat
    model_config_id: str | None = Field(default=None, max_length=36)  # the model-config version that answered
    latency: float = 0.0
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class MessageFeedback(SQLModel, table=True):
    __tablename__ = "message_feedbacks"
    # the console's feedback counts per conversation of an app: app_id second so that SQLite, without ANALYZE
    # statistics, prefers this index to the app_id one (the whole app's feedback)
    __table_args__ = (UniqueConstraint("message_id", "from_end_user_id", name="uq_feedback_msg_user"),
                      Index("ix_feedback_conv_app", "conversation_id", "app_id"))
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    app_id: str = Field(foreign_key="apps.id", max_length=36, ondelete="CASCADE", index=True)
    conversation_id: str = Field(max_length=36)
    message_id: str = Field(foreign_key="messages.id", max_length=36, ondelete="CASCADE")
    rating: str = Field(max_length=16)  # like | dislike
    content: str | None = Field(default=None, sa_column=Column(Text))
    from_source: str = Field(default="api", max_length=16)
    from_end_user_id: str | None = Field(default=None, max_length=36)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class MessageFile(SQLModel, table=True):
    """A file sent with a message (reference §2.5 ``message_files``): a reference, never the bytes. A
    ``local_file`` points at its upload_files row, a ``remote_url`` keeps the URL it was fetched from."""

    __tablename__ = "message_files"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    message_id: str = Field(foreign_key="messages.id", max_length=36, ondelete="CASCADE", index=True)
    type: str = Field(max_length=16)  # image | document | audio | video
    transfer_method: str = Field(max_length=16)  # local_file | remote_url
    url: str | None = Field(default=None, sa_column=Column(Text))  # remote_url only
    upload_file_id: str | None = Field(default=None, max_length=36, index=True)  # local_file only; preview checks
    filename: str = Field(default="", max_length=255)
    mime_type: str = Field(default="", max_length=128)
    size: int = 0
    belongs_to: str = Field(default="user", max_length=16)  # user | assistant
    created_by: str | None = Field(default=None, max_length=36)  # the end user
    created_at: datetime = Field(default_factory=utcnow)


class MessageAnnotation(SQLModel, table=True):
    """A curated question and answer of an app (reference §2.16); with annotation reply on, a query close enough
    to its question is answered with its answer, without the model."""

    __tablename__ = "message_annotations"
    __table_args__ = (Index("ix_annotations_app_created", "app_id", "created_at"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    app_id: str = Field(foreign_key="apps.id", max_length=36, ondelete="CASCADE")
    question: str = Field(sa_column=Column(Text, nullable=False))
    answer: str = Field(sa_column=Column(Text, nullable=False))
    hit_count: int = 0
    message_id: str | None = Field(default=None, max_length=36)  # the message it was made from, if any
    conversation_id: str | None = Field(default=None, max_length=36)
    account_id: str | None = Field(default=None, max_length=36)  # who wrote it (console); None from an app key
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class AppAnnotationSetting(SQLModel, table=True):
    """An app's annotation reply: on or off, its threshold and embedding model, and the last enable/disable job."""

    __tablename__ = "app_annotation_settings"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    app_id: str = Field(foreign_key="apps.id", max_length=36, ondelete="CASCADE", unique=True, index=True)
    enabled: bool = False
    score_threshold: float = 0.0
    embedding_provider: str | None = Field(default=None, max_length=255)
    embedding_model: str | None = Field(default=None, max_length=255)
    job_id: str | None = Field(default=None, max_length=36, index=True)
    job_action: str | None = Field(default=None, max_length=16)  # enable | disable
    job_status: str | None = Field(default=None, max_length=16)  # waiting | processing | completed | error
    job_error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class AppDatasetJoin(SQLModel, table=True):
    """Which datasets an app's current model config links (kept by the console on every config save):
    a linked dataset cannot be deleted (409 dataset_in_use)."""

    __tablename__ = "app_dataset_joins"
    __table_args__ = (UniqueConstraint("app_id", "dataset_id", name="uq_app_dataset"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    app_id: str = Field(foreign_key="apps.id", max_length=36, ondelete="CASCADE", index=True)
    dataset_id: str = Field(max_length=36, index=True)
    created_at: datetime = Field(default_factory=utcnow)


class Dataset(SQLModel, table=True):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_datasets_tenant_name"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=36, ondelete="CASCADE")
    name: str = Field(max_length=255)
    description: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    provider: str = Field(default="vendor", max_length=16)
    permission: str = Field(default="only_me", max_length=32)
    data_source_type: str | None = Field(default=None, max_length=32)
    indexing_technique: str | None = Field(default=None, max_length=32)  # high_quality | economy
    embedding_model: str | None = Field(default=None, max_length=255)
    embedding_model_provider: str | None = Field(default=None, max_length=255)
    retrieval_model: dict = _json(dict)
    process_rule: dict = _json(dict)  # the dataset's rule once a document set one
    doc_form: str = Field(default="text_model", max_length=32)
    enable_api: bool = True
    built_in_field_enabled: bool = False  # documents also carry document_name, upload_date … as metadata
    created_by: str | None = Field(default=None, max_length=36)
    updated_by: str | None = Field(default=None, max_length=36)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Tag(SQLModel, table=True):
    """A workspace's tag: ``knowledge`` (on datasets, reference §4.1 Tags) or ``app`` (on apps), names unique
    per workspace and type (shared/tags.py)."""

    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("tenant_id", "type", "name", name="uq_tags_tenant_type_name"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=36, ondelete="CASCADE")
    type: str = Field(default="knowledge", max_length=16)
    name: str = Field(max_length=255)
    created_by: str | None = Field(default=None, max_length=36)
    created_at: datetime = Field(default_factory=utcnow)


class TagBinding(SQLModel, table=True):
    __tablename__ = "tag_bindings"
    __table_args__ = (UniqueConstraint("tag_id", "target_id", name="uq_tag_binding"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=36, ondelete="CASCADE")
    tag_id: str = Field(foreign_key="tags.id", max_length=36, ondelete="CASCADE")
    target_id: str = Field(max_length=36, index=True)  # a dataset id (knowledge tags) or an app id (app tags)
    created_by: str | None = Field(default=None, max_length=36)
    created_at: datetime = Field(default_factory=utcnow)


class DatasetPermission(SQLModel, table=True):
    """A member of a ``partial_members`` dataset's list (Dify's dataset_permissions): who besides its creator,
    the workspace's owners and admins may see and use it on the console."""

    __tablename__ = "dataset_permissions"
    __table_args__ = (UniqueConstraint("dataset_id", "account_id", name="uq_dataset_permission_account"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(max_length=36)
    dataset_id: str = Field(foreign_key="datasets.id", max_length=36, ondelete="CASCADE", index=True)
    account_id: str = Field(foreign_key="accounts.id", max_length=36, ondelete="CASCADE", index=True)
    has_permission: bool = True
    created_at: datetime = Field(default_factory=utcnow)


class DatasetMetadataField(SQLModel, table=True):
    """A metadata field a dataset's documents may carry (reference §4.6); values live in doc_metadata."""

    __tablename__ = "dataset_metadata_fields"
    __table_args__ = (UniqueConstraint("dataset_id", "name", name="uq_dataset_metadata_name"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(max_length=36)
    dataset_id: str = Field(foreign_key="datasets.id", max_length=36, ondelete="CASCADE", index=True)
    name: str = Field(max_length=255)
    type: str = Field(max_length=16)  # string | number | time
    created_at: datetime = Field(default_factory=utcnow)


class UploadFile(SQLModel, table=True):
    """An uploaded file: its bytes live in the object store under ``object_name``."""

    __tablename__ = "upload_files"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=36, ondelete="CASCADE")
    name: str = Field(max_length=255)
    size: int = 0
    extension: str = Field(max_length=16)
    mime_type: str = Field(max_length=128)
    object_name: str = Field(max_length=255)
    created_by: str | None = Field(default=None, max_length=36)
    created_at: datetime = Field(default_factory=utcnow)


class Document(SQLModel, table=True):
    __tablename__ = "documents"
    # a file is one document's (deleting the document deletes it): the console's documents-from-files rely on it
    __table_args__ = (Index("ix_documents_dataset_position", "dataset_id", "position"),
                      Index("uq_documents_upload_file", "upload_file_id", unique=True))
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(max_length=36, index=True)
    dataset_id: str = Field(foreign_key="datasets.id", max_length=36, ondelete="CASCADE")
    position: int = 1
    batch: str = Field(max_length=32, index=True)
    name: str = Field(max_length=255)
    data_source_type: str = Field(default="upload_file", max_length=32)
    upload_file_id: str | None = Field(default=None, max_length=36)
    process_rule: dict = _json(dict)
    doc_form: str = Field(default="text_model", max_length=32)
    doc_language: str | None = Field(default=None, max_length=64)
    doc_metadata: dict = _json(dict)
    created_from: str = Field(default="api", max_length=16)
    created_by: str | None = Field(default=None, max_length=36)
    # waiting | parsing | cleaning | splitting | indexing | completed | error | paused
    indexing_status: str = Field(default="waiting", max_length=16, index=True)
    # bumped by every (re-)index request: a job for an older version is stale and skipped
    index_version: int = 1
    error: str | None = Field(default=None, sa_column=Column(Text))
    enabled: bool = True
    disabled_at: datetime | None = None
    disabled_by: str | None = Field(default=None, max_length=36)
    archived: bool = False
    archived_at: datetime | None = None
    word_count: int = 0
    tokens: int = 0
    total_segments: int = 0
    hit_count: int = 0
    processing_started_at: datetime | None = None
    parsing_completed_at: datetime | None = None
    cleaning_completed_at: datetime | None = None
    splitting_completed_at: datetime | None = None
    completed_at: datetime | None = None
    paused_at: datetime | None = None
    stopped_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class DocumentSegment(SQLModel, table=True):
    """One chunk. Its id is also its vector point id."""

    __tablename__ = "document_segments"
    __table_args__ = (Index("ix_segments_document_position", "document_id", "position"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(max_length=36)
    dataset_id: str = Field(max_length=36, index=True)
    document_id: str = Field(foreign_key="documents.id", max_length=36, ondelete="CASCADE")
    position: int
    content: str = Field(sa_column=Column(Text, nullable=False))
    answer: str | None = Field(default=None, sa_column=Column(Text))
    word_count: int = 0
    tokens: int = 0
    keywords: list = _json(list)
    index_node_hash: str = Field(default="", max_length=64)
    page: int | None = None
    hit_count: int = 0
    enabled: bool = True
    disabled_at: datetime | None = None
    disabled_by: str | None = Field(default=None, max_length=36)
    status: str = Field(default="completed", max_length=16)  # waiting | indexing | completed | error
    error: str | None = Field(default=None, sa_column=Column(Text))
    created_by: str | None = Field(default=None, max_length=36)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    indexing_at: datetime | None = None
    completed_at: datetime | None = None


class SegmentImportJob(SQLModel, table=True):
    """A CSV of segments being added to a document (the console's batch import): queued on the index job
    queue, so any indexer replica runs it and a crash only delays it."""

    __tablename__ = "segment_import_jobs"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(max_length=36, index=True)
    dataset_id: str = Field(max_length=36)
    document_id: str = Field(foreign_key="documents.id", max_length=36, ondelete="CASCADE", index=True)
    upload_file_id: str = Field(max_length=36)
    status: str = Field(default="waiting", max_length=16)  # waiting | processing | completed | error
    error: str | None = Field(default=None, sa_column=Column(Text))
    total: int = 0  # rows of the CSV
    created_by: str | None = Field(default=None, max_length=36)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class ChildChunk(SQLModel, table=True):
    """A child chunk of a parent-child (``hierarchical_model``) document's segment: the child is what is
    embedded and searched (its id is its vector point id); retrieval answers with its parent segment."""

    __tablename__ = "child_chunks"
    __table_args__ = (Index("ix_child_chunks_segment_position", "segment_id", "position"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant_id: str = Field(max_length=36)
    dataset_id: str = Field(max_length=36, index=True)
    document_id: str = Field(max_length=36, index=True)
    segment_id: str = Field(foreign_key="document_segments.id", max_length=36, ondelete="CASCADE")
    position: int
    content: str = Field(sa_column=Column(Text, nullable=False))
    word_count: int = 0
    tokens: int = 0
    index_node_hash: str = Field(default="", max_length=64)
    type: str = Field(default="automatic", max_length=16)  # automatic (split) | customized (added or edited)
    status: str = Field(default="completed", max_length=16)  # indexing | completed
    created_by: str | None = Field(default=None, max_length=36)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    indexing_at: datetime | None = None
    completed_at: datetime | None = None

"""One pydantic-settings tree for every service (PLEXUS_ prefix, nested with ``__``).

Each service reads its own slice (``settings.gateway``, ``settings.runtime`` …). Top-level URLs are
flat (``PLEXUS_DATABASE_URL``) because every service shares them.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.plans import PLAN_NAMES  # no cycle: shared.plans imports only shared.limiter (stdlib, structlog)

# uvicorn's default is 5 s, below the 30 s the gateway keeps upstream connections and the 60 s of common load
# balancers: a request sent on a connection the server was just closing failed (a reset, a 502)
KEEP_ALIVE_SECONDS = 75.0

class AuthSettings(BaseModel):
    access_token_minutes: int = Field(60, description="console JWT access-token lifetime")
    refresh_token_days: int = Field(30, description="console refresh-token lifetime")
    login_max_attempts: int = Field(5, description="wrong passwords per email before login is refused")
    login_lockout_seconds: int = Field(300, description="window in which wrong passwords are counted")
    invitation_expiry_hours: int = Field(72, description="how long a member invitation's activation token is valid")
    key_rotation_grace_seconds: int = Field(
        86400, description="default time a rotated API key keeps working next to its successor"
    )
    key_rotation_max_grace_seconds: int = Field(
        30 * 86400, description="the longest grace period a key rotation may ask for"
    )
    cookie_secure: bool = Field(
        False, description="console sign-in cookies (access_token, refresh_token, csrf_token) only over HTTPS: "
        "set true behind HTTPS"
    )
    cookie_samesite: Literal["lax", "strict", "none"] = Field(
        "lax", description="SameSite of the console sign-in cookies (none needs cookie_secure)"
    )
    cookie_domain: str | None = Field(
        None, description="Domain of the console sign-in cookies (default: the API host only), e.g. "
        "`example.com` when the console web app is on another subdomain"
    )

    init_password: str | None = Field(
        None, description="Dify's INIT_PASSWORD: when set, the first account can be created (POST /console/api/setup) "
        "only after POST /console/api/init with this password, so nobody who reaches a fresh deployment first "
        "claims it"
    )

    @model_validator(mode="after")
    def _samesite_none_needs_secure(self) -> AuthSettings:
        if self.cookie_samesite == "none" and not self.cookie_secure:
            raise ValueError("PLEXUS_AUTH__COOKIE_SAMESITE=none needs PLEXUS_AUTH__COOKIE_SECURE=true "
                             "(browsers drop SameSite=None cookies without Secure)")
        return self


class GatewaySettings(BaseModel):
    limiter: Literal["auto", "memory", "redis"] = Field(
        "auto", description="auto = redis when PLEXUS_REDIS_URL is set, else in-memory"
    )
    redis_failure_policy: Literal["closed", "open"] = Field(
        "closed", description="when Redis is unreachable: closed = 503, open = admit without limiting"
    )
    max_body_bytes: int = Field(20 * 1024 * 1024, description="larger request bodies get 413")
    key_cache_seconds: float = Field(60.0, description="API-key cache TTL (NATS invalidation is immediate)")
    console_url: str | None = Field(None, description="split mode: upstream base URL of the console")
    runtime_url: str | None = Field(None, description="split mode: upstream base URL of the runtime")
    indexer_url: str | None = Field(None, description="split mode: upstream base URL of the indexer")
    tools_url: str | None = Field(None, description="split mode: upstream base URL of the tools service")
    upstream_timeout: float = Field(300.0, description="split mode: seconds to wait for an upstream")


class RuntimeSettings(BaseModel):
    memory_turns: int = Field(10, description="previous turns sent to the model as conversation memory")
    ping_interval: float = Field(10.0, description="seconds of silence before an SSE `event: ping`")
    llm_timeout: float = Field(120.0, description="seconds to wait for a model response")
    llm_max_connections: int = Field(
        10_000, ge=1, description="connections one process keeps open to model providers, in all and to one host "
        "(litellm's own default, 500 per host, would queue the 501st concurrent stream without a word)")
    run_timeout: float = Field(600.0, description="a run still going after this is stopped and recorded")
    run_lease: float = Field(
        30.0, description="a replica refreshes its live runs every third of this; a run not refreshed for this "
        "long belongs to a dead replica and is recorded as interrupted by a surviving one")
    default_context_tokens: int = Field(8192, description="context window assumed for models litellm does not know")
    app_cache_seconds: float = Field(60.0, description="app/config cache TTL (NATS invalidation is immediate)")
    moderation_timeout: float = Field(
        10.0, description="seconds to wait for a moderation model (sensitive_word_avoidance type openai_moderation)"
    )
    answer_cache_max_entries: int = Field(
        10_000, description="answers kept by the in-memory answer cache (`all` mode; split mode uses Redis)"
    )
    agent_max_iterations: int = Field(
        99, description="upper bound for an agent app's `max_iteration` and an agent node's `maximum_iterations` (tool rounds)"
    )


class WorkflowSettings(BaseModel):
    max_steps: int = Field(500, description="node executions one workflow run may make")
    max_execution_time: float = Field(1200.0, description="seconds a workflow run may take before it is stopped")
    node_timeout: float = Field(600.0, description="seconds one node may take (LLM, tool and HTTP nodes also have their own)")
    max_parallelism: int = Field(10, description="upper bound for an iteration's parallel_nums")
    max_loop_count: int = Field(100, description="upper bound for a loop node's loop_count (Dify's default)")
    code_cpu_seconds: float = Field(5.0, description="code node: CPU seconds per run")
    code_wall_seconds: float = Field(10.0, description="code node: wall-clock seconds per run")
    code_memory_mb: int = Field(256, description="code node: address-space limit (MiB)")
    http_timeout: float = Field(30.0, description="http-request node: seconds unless the node sets its own")
    http_max_response_bytes: int = Field(10 * 1024 * 1024, description="http-request node: larger bodies fail the node")
    document_extractor_chars: int = Field(
        100_000, ge=1, description="document-extractor node: characters of text it keeps per file (the rest is cut)")


class ToolsSettings(BaseModel):
    default_timeout: float = Field(10.0, description="seconds a tool call may take unless its tool says otherwise")
    max_timeout: float = Field(60.0, description="upper bound for a tool's own timeout")
    max_response_bytes: int = Field(256 * 1024, description="larger tool responses end the call with an error")
    rate_limit_per_minute: int = Field(0, description="calls per tool per minute unless the tool says (0 = unlimited)")
    concurrency: int = Field(64, description="tool calls one tools process runs at once (the rest queue)")
    egress_allowlist: list[str] = Field(
        default_factory=list,
        description="CIDRs or host names exempt from the SSRF guard, as a JSON list (e.g. `[\"10.1.0.0/16\"]`)",
    )


class KnowledgeSettings(BaseModel):
    vector_store: Literal["auto", "qdrant", "edge"] = Field(
        "auto", description="auto = qdrant when PLEXUS_KNOWLEDGE__QDRANT_URL is set, else the embedded engine"
    )
    qdrant_url: str | None = Field(None, description="Qdrant server URL (production; shared by indexer replicas)")
    qdrant_api_key: str | None = Field(None, description="Qdrant API key, if the server needs one")
    workers: int = Field(2, description="index jobs one indexer process runs at once")
    parse_processes: int = Field(1, description="processes that parse and split files (off the event loop)")
    max_attempts: int = Field(3, description="tries per document before it ends in `error`")
    ack_wait: float = Field(60.0, description="seconds without progress before a job is redelivered")
    requeue_after: float = Field(120.0, description="a document still `waiting` this long is queued again")
    max_file_bytes: int = Field(100 * 1024 * 1024, description="larger uploads get 413 file_too_large")
    embedding_batch: int = Field(32, description="texts per embedding call")
    qa_concurrency: int = Field(4, description="model calls one Q&A document (doc_form qa_model) makes at once")
    optimize_after: int = Field(
        5000, description="embedded engine: new points in a space after which its search index is rebuilt"
    )
    retrieve_timeout: float = Field(30.0, description="seconds the runtime waits for the indexer's retrieval")
    retrieve_concurrency: int = Field(16, description="retrieval requests one indexer process answers at once")


class FilesSettings(BaseModel):
    """App file uploads (`/v1/files/upload`) and files sent with chat/completion messages; the size limits
    are MB, as `/parameters` shows them in `system_parameters`."""

    file_size_limit: int = Field(15, description="MB: largest document (pdf, docx, txt, md, csv …) an app accepts")
    image_file_size_limit: int = Field(10, description="MB: largest image an app accepts")
    audio_file_size_limit: int = Field(50, description="MB: largest audio file an app accepts")
    video_file_size_limit: int = Field(100, description="MB: largest video file an app accepts")
    workflow_file_upload_limit: int = Field(10, description="files one workflow run accepts (shown in /parameters)")
    remote_url_timeout: float = Field(15.0, description="seconds to fetch a `remote_url` file sent with a message")
    signed_url_seconds: int = Field(
        300, ge=1, description="seconds a signed URL of a tool's file works (Dify's FILES_ACCESS_TIMEOUT)"
    )
    remote_url_allowlist: list[str] = Field(
        default_factory=list,
        description="CIDRs or host names a `remote_url` file may also be fetched from, as a JSON list "
        "(default: public addresses only; the tools' egress allowlist does not apply)",
    )
    document_prompt_chars: int = Field(
        30_000, description="characters of attached documents' text one message puts into the prompt (the rest is cut)"
    )

    def limit_bytes(self, file_type: str) -> int:
        mb = {"image": self.image_file_size_limit, "audio": self.audio_file_size_limit,
              "video": self.video_file_size_limit}.get(file_type, self.file_size_limit)
        return mb * 1024 * 1024

    @property
    def max_bytes(self) -> int:
        return max(self.file_size_limit, self.image_file_size_limit, self.audio_file_size_limit,
                   self.video_file_size_limit) * 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PLEXUS_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    data_dir: Path = Field(Path(".plexus"), description="embedded SQLite, NATS store and generated secrets")
    host: str = Field("127.0.0.1", description="listen address (0.0.0.0 in containers)")
    port: int = Field(8080, description="listen port")
    keep_alive_seconds: float = Field(
        KEEP_ALIVE_SECONDS, gt=0,
        description="idle HTTP connections are closed after this (uvicorn's timeout_keep_alive); keep it above "
                    "the idle timeout of what sends requests (load balancer, the gateway's pool: 30 s) so the "
                    "sender closes first and never reuses a connection the server is closing")
    database_url: str | None = Field(None, description="default: sqlite+aiosqlite under data_dir")
    nats_url: str | None = Field(None, description="default in `all` mode: embedded nats-server")
    redis_url: str | None = Field(None, description="gateway limiter across replicas (split mode)")
    database_pool_size: int = Field(10, description="connections kept open per process")
    database_max_overflow: int = Field(30, description="extra connections allowed under bursts")
    database_pool_timeout: float = Field(
        120.0, description="seconds a request waits for a free connection before failing"
    )
    secret_key: str | None = Field(
        None, description="signs JWTs and encrypts credentials; generated under data_dir in `all` mode"
    )
    internal_secret: str | None = Field(
        None, description="gateway→service identity; generated in `all` mode, required in split mode"
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    log_json: bool = Field(True, description="JSON logs (structlog); false for console-friendly lines")
    public_api_base: str = Field("", description="advertised base URL, e.g. https://api.example.com")
    default_plan: Literal[PLAN_NAMES] = Field(  # the names are shared.plans'; Literal[tuple] = Literal[*tuple]
        "enterprise", description="plan of new workspaces (per-app RPM/RPH/RPD defaults, docs/limits.md); "
        "enterprise = no limits unless set, like self-hosted Dify")

    auth: AuthSettings = AuthSettings()
    gateway: GatewaySettings = GatewaySettings()
    runtime: RuntimeSettings = RuntimeSettings()
    knowledge: KnowledgeSettings = KnowledgeSettings()
    tools: ToolsSettings = ToolsSettings()
    workflow: WorkflowSettings = WorkflowSettings()
    files: FilesSettings = FilesSettings()

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'plexus.db').resolve()}"

    def ensure_secrets(self) -> None:
        """Embedded mode: create (once) and reuse secrets stored under data_dir."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attr in ("secret_key", "internal_secret"):
            if getattr(self, attr):
                continue
            path = self.data_dir / attr
            if not path.exists():
                path.write_text(secrets.token_urlsafe(48))
                path.chmod(0o600)
            setattr(self, attr, path.read_text().strip())

    def require(self, *names: str) -> None:
        missing = [n for n in names if not getattr(self, n)]
        if missing:
            env = ", ".join(f"PLEXUS_{n.upper()}" for n in missing)
            raise SystemExit(f"this target needs production settings: set {env}")


@lru_cache
def get_settings() -> Settings:
    return Settings()


def settings_table() -> str:
    """The README's configuration table, generated from the tree so it cannot drift."""
    rows = ["| variable | default | description |", "|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name.upper()}__")
                continue
            default = f.get_default(call_default_factory=True)
            default = "" if default is None else default
            if isinstance(default, Path):
                default = str(default)
            rows.append(f"| `{prefix}{name.upper()}` | `{default}` | {f.description or ''} |")

    walk(Settings, "PLEXUS_")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())

"""Prometheus metrics, one registry per process (all services in `all` mode share it)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.responses import Response

HTTP_REQUESTS = Counter(
    "plexus_http_requests_total", "HTTP requests", ["service", "route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "plexus_http_request_seconds",
    "Time to response headers",
    ["service", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ACTIVE_STREAMS = Gauge("plexus_active_streams", "SSE responses currently open", ["service"])
RATE_LIMITED = Counter("plexus_rate_limited_total", "Requests refused by a limit", ["limit"])
LLM_TOKENS = Counter("plexus_llm_tokens_total", "LLM tokens", ["provider", "model", "kind"])
LLM_CALLS = Counter("plexus_llm_calls_total", "LLM calls", ["provider", "model", "outcome"])
TOOL_CALLS = Counter("plexus_tool_calls_total", "Tool calls executed", ["provider_type", "outcome"])
TOOL_SECONDS = Histogram(
    "plexus_tool_call_seconds",
    "Tool call time inside the tools service",
    ["provider_type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RUNS_ACTIVE = Gauge("plexus_runs_active", "Runs in progress on this process")


def metrics_response() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

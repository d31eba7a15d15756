"""The one way Plexus reaches a model: litellm, with a workspace's provider credentials.

litellm is imported lazily, once per process (import costs ~4 s and ~170 MB), with the offline
environment the notes require. Provider names are litellm's; ``openai-compatible`` means the OpenAI
wire protocol at a custom ``api_base``.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import wave
from typing import Any

# litellm and the Hugging Face hub read these at import: offline and quiet (see the offline stack notes)
OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "HF_HUB_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
}
# litellm's aiohttp pool limits, also read once at import (configure())
_POOL_ENV = ("AIOHTTP_CONNECTOR_LIMIT", "AIOHTTP_CONNECTOR_LIMIT_PER_HOST")
_max_connections: int | None = None
_litellm: Any = None

# Provider names accepted by the console and how they map onto litellm's model prefixes.
PROVIDER_ALIASES = {
    "openai-compatible": "openai",
    "openai_compatible": "openai",
    "openai_api_compatible": "openai",
    "langgenius/openai/openai": "openai",
    "langgenius/anthropic/anthropic": "anthropic",
    "langgenius/ollama/ollama": "ollama",
    "langgenius/azure_openai/azure_openai": "azure",
    "azure_openai": "azure",
}
KNOWN_PROVIDERS = (
    "openai", "openai-compatible", "anthropic", "azure", "ollama", "gemini", "vertex_ai", "bedrock", "mistral",
    "groq", "deepseek", "together_ai", "openrouter", "cohere", "fireworks_ai", "xai", "huggingface",
)
# Credential keys passed through to litellm as keyword arguments.
CREDENTIAL_KEYS = ("api_key", "api_base", "api_version", "organization", "aws_access_key_id",
                   "aws_secret_access_key", "aws_region_name", "vertex_project", "vertex_location")
# Model used to validate credentials when the caller names none.
VALIDATION_MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest", "azure": "gpt-4o-mini",
                     "ollama": "llama3.2", "gemini": "gemini-2.0-flash", "mistral": "mistral-small-latest",
                     "groq": "llama-3.1-8b-instant", "deepseek": "deepseek-chat"}


def offline_env() -> None:
    """Put OFFLINE_ENV into this process's environment (a value already set wins)."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


def configure(max_connections: int) -> None:
    """Process-wide litellm options from the settings (``runtime.llm_max_connections``). They take effect
    only before the first litellm() call of the process; the service stack calls this at start-up."""
    global _max_connections
    _max_connections = max_connections


def litellm() -> Any:
    global _litellm
    if _litellm is None:
        offline_env()
        limit = _max_connections
        if limit is None:  # not configured: the setting's default, never litellm's 500 per host
            from shared.settings import RuntimeSettings

            limit = RuntimeSettings.model_fields["llm_max_connections"].default
        for k in _POOL_ENV:
            os.environ.setdefault(k, str(limit))
        import litellm as _mod

        _mod.suppress_debug_info = True
        _mod.drop_params = True  # a completion_param a provider lacks is dropped, not an error
        _litellm = _mod
    return _litellm


# Dify 1.x names a provider by its plugin: "<org>/<plugin>/<provider>" (langgenius/gemini/gemini)
_PLUGIN_PROVIDER = re.compile(r"[\w.-]+/([\w.-]+)/([\w.-]+)")


def canonical_provider(provider: str) -> str:
    """The litellm provider behind a name: an alias, a Dify plugin id of a known provider, or the name itself."""
    found = PROVIDER_ALIASES.get(provider)
    if found is not None:
        return found
    m = _PLUGIN_PROVIDER.fullmatch(provider)
    if m is not None and (m.group(2) in KNOWN_PROVIDERS or m.group(2) in PROVIDER_ALIASES):
        return PROVIDER_ALIASES.get(m.group(2), m.group(2))
    return provider


def is_known_provider(provider: str) -> bool:
    return provider in KNOWN_PROVIDERS or canonical_provider(provider) in KNOWN_PROVIDERS


def provider_of_plugin(identifier: str) -> str | None:
    """The provider a Dify model-provider plugin brings (``langgenius/openai:0.0.9@<hash>`` → openai), when Plexus
    has it built in; None for any other plugin."""
    org, _, name = identifier.split("@", 1)[0].split(":", 1)[0].partition("/")
    if not org or not name or "/" in name:
        return None
    provider = canonical_provider(name)
    return provider if provider in KNOWN_PROVIDERS else None


def call_kwargs(provider: str, model: str, credentials: dict[str, Any]) -> dict[str, Any]:
    """litellm keyword arguments for ``model`` of ``provider`` with these credentials."""
    kwargs: dict[str, Any] = {"model": f"{canonical_provider(provider)}/{model}"}
    for key in CREDENTIAL_KEYS:
        if credentials.get(key):
            kwargs[key] = credentials[key]
    if "api_base" not in kwargs and credentials.get("base_url"):
        kwargs["api_base"] = credentials["base_url"]
    return kwargs


def _silence_wav() -> bytes:
    """A tenth of a second of silence: what a speech2text model transcribes to check its credentials."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * 800)
    return out.getvalue()


async def validate_credentials(provider: str, credentials: dict[str, Any], model: str | None = None,
                               timeout: float = 20.0, model_type: str = "llm") -> None:
    """Make one real, tiny call of the model's kind (``model_type``: a chat completion for "llm", else an
    embedding, rerank, moderation, speech or transcription); raises the provider's error when the credentials
    do not work."""
    name = model or credentials.get("validate_model") or VALIDATION_MODELS.get(canonical_provider(provider))
    if not name or (model_type != "llm" and not model):
        raise ValueError("name a model to validate these credentials with (field 'model')")
    kwargs = call_kwargs(provider, name, credentials)
    lm = litellm()
    if model_type == "llm":
        await lm.acompletion(**kwargs, messages=[{"role": "user", "content": "ping"}], max_tokens=1,
                             timeout=timeout, num_retries=0)
        return
    async with asyncio.timeout(timeout):
        if model_type == "text-embedding":
            await lm.aembedding(**kwargs, input=["ping"], num_retries=0)
        elif model_type == "rerank":
            await lm.arerank(**kwargs, query="ping", documents=["ping"], top_n=1)
        elif model_type == "moderation":
            await lm.amoderation(input="ping", **kwargs)
        elif model_type == "tts":
            await lm.aspeech(**kwargs, input="ping", voice="alloy", max_retries=0)
        elif model_type == "speech2text":
            await lm.atranscription(**kwargs, file=("ping.wav", _silence_wav()), max_retries=0)
        else:
            raise ValueError(f"unknown model type '{model_type}'")

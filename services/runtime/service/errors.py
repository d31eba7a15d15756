"""The runtime's errors, in Dify's words (reference §1.2; service_api/app/error.py of Dify 1.x)."""

from __future__ import annotations

from shared.errors import (
    ApiError,
    invalid_param,
    not_found,
    parse_uuid,  # noqa: F401 - re-exported: the runtime's modules import it from here
)

USER_REQUIRED = "Arg user must be provided."
DEFAULT_USER = "DEFAULT-USER"  # session id when an optional `user` is missing (reference §0)
CHAT_MODES = frozenset({"chat", "agent-chat", "advanced-chat"})


def app_unavailable() -> ApiError:
    return ApiError(400, "app_unavailable", "App unavailable, please check your app configurations.")


def not_chat_app() -> ApiError:
    return ApiError(400, "not_chat_app", "Please check if your app mode matches the right API route.")


def provider_not_initialize() -> ApiError:
    return ApiError(
        400,
        "provider_not_initialize",
        "No valid model provider credentials found. "
        "Please go to Settings -> Model Provider to complete your provider credentials.",
    )


def completion_request_error(message: str) -> ApiError:
    return ApiError(400, "completion_request_error", message)


def conversation_not_exists() -> ApiError:
    return not_found("Conversation Not Exists.")


def message_not_exists() -> ApiError:
    return not_found("Message Not Exists.")


def require_user(user: str | None) -> str:
    if user is None or not str(user).strip():
        raise invalid_param(USER_REQUIRED)
    return str(user)



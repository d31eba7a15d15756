"""The runtime's logic, free of HTTP types: runs, chat/completion, conversations and messages, caches."""

from services.runtime.service.core import Runtime

__all__ = ["Runtime"]

"""indexer service: module entry points used by services.stack."""

from services.indexer.api import create_app
from services.indexer.handlers import start, stop

__all__ = ["create_app", "start", "stop"]

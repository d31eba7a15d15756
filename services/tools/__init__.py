"""tools service: module entry points used by services.stack."""

from services.tools.api import create_app
from services.tools.handlers import start, stop

__all__ = ["create_app", "start", "stop"]

"""runtime service: module entry points used by services.stack."""

from services.runtime.api import create_app
from services.runtime.handlers import start, stop

__all__ = ["create_app", "start", "stop"]

"""gateway service: module entry points used by services.stack."""

from services.gateway.api import create_app
from services.gateway.handlers import start, stop

__all__ = ["create_app", "start", "stop"]

"""console service: module entry points used by services.stack."""

from services.console.api import create_app
from services.console.handlers import start, stop

__all__ = ["create_app", "start", "stop"]

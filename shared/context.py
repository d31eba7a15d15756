"""What a service is given at start: settings and the live connections it shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.bus import Bus
from shared.db import Database
from shared.settings import Settings


@dataclass
class Context:
    settings: Settings
    db: Database
    bus: Bus
    redis: Any | None = None  # redis.asyncio.Redis when PLEXUS_REDIS_URL is set
    mode: str = "all"  # all | split
    # in `all` mode the gateway dispatches to these ASGI apps in-process, keyed by service name
    local_apps: dict[str, Any] = field(default_factory=dict)

    @property
    def internal_secret(self) -> str:
        assert self.settings.internal_secret, "internal secret not configured"
        return self.settings.internal_secret

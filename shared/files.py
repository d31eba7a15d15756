"""Uploaded files in the object store (ARCHITECTURE §3): NATS JetStream Object Store by default, so no
extra server is needed. Rows keep the object name; bytes never travel in messages."""

from __future__ import annotations

import io
from pathlib import Path

import nats.js.errors

from shared.bus import Bus


class FileStore:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def put(self, name: str, data: bytes | io.BufferedIOBase) -> int:
        store = await self.bus.files()
        info = await store.put(name, data)
        return int(info.size or 0)

    async def get_to(self, name: str, path: Path) -> None:
        """Stream the object into ``path`` (writeinto: a plain get of tens of MB is 2x slower)."""
        store = await self.bus.files()
        with path.open("wb") as f:
            await store.get(name, writeinto=f)

    async def delete(self, name: str) -> None:
        store = await self.bus.files()
        try:
            await store.delete(name)
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.NotFoundError):
            pass

"""Test plumbing shared by every suite: serve an ASGI app with uvicorn inside the test's event loop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import uvicorn

from shared.natsd import free_port


@dataclass
class Served:
    server: uvicorn.Server
    task: asyncio.Task
    url: str
    port: int

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


async def serve(app: Any, port: int | None = None, log_level: str = "warning") -> Served:
    """Start uvicorn on 127.0.0.1 (a free port unless given) and return once it accepts connections."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level=log_level,
                            access_log=False)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the test runner owns signals
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("uvicorn did not start")
        await asyncio.sleep(0.01)
    return Served(server, task, f"http://127.0.0.1:{port}", port)


async def console_admin(c: Any, email: str = "a@example.com", password: str = "passw0rd-x") -> dict[str, str]:
    """Authorization headers of the workspace owner (set up on first use) of a stack behind ``c``."""
    if (await c.get("/console/api/setup")).json()["step"] == "not_started":
        r = await c.post("/console/api/setup", json={"email": email, "name": "Admin", "password": password})
        assert r.status_code == 201, r.text
    r = await c.post("/console/api/login", json={"email": email, "password": password})
    return {"Authorization": f"Bearer {r.json()['data']['access_token']}"}

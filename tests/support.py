"""Test plumbing shared by every suite: serve an ASGI app with uvicorn inside the test's event loop, the
console service in-process, and the console steps that give a test a scripted app and its key."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn

from services.indexer.service.common import dataset_space
from shared.bus import Bus
from shared.context import Context
from shared.db import Database
from shared.knowledge.vectors import VectorFilter
from shared.models import Dataset
from shared.natsd import free_port
from shared.settings import KEEP_ALIVE_SECONDS, Settings

if TYPE_CHECKING:
    from tests.llm_server import ScriptedLLM


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
                            access_log=False, timeout_keep_alive=KEEP_ALIVE_SECONDS)  # as `plexus run`
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


async def invite_member(c: Any, owner: dict[str, str], role: str, password: str = "member-pass-1"
                        ) -> tuple[httpx.Response, str]:
    """A new member of the owner's workspace with ``role``, invited and activated: the ``/activate`` response
    (its tokens, and its cookies) and the member's email."""
    email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
    r = await c.post("/console/api/workspaces/current/members/invite-email", headers=owner,
                     json={"emails": [email], "role": role, "language": "en-US"})
    assert r.status_code == 201, r.text
    (res,) = r.json()["invitation_results"]
    r = await c.post("/console/api/activate", json={"token": res["token"], "email": email, "name": role.title(),
                                                    "password": password})
    assert r.status_code == 200, r.text
    return r, email


async def wait_indexed(c: Any, prefix: str, h: dict[str, str], ds: str, batch: str, timeout: float = 60.0
                       ) -> list[dict[str, Any]]:
    """The batch's indexing status once every document is completed or in error (``prefix``: /v1 for a dataset
    key, /console/api for a member)."""
    deadline = time.monotonic() + timeout
    while True:
        # Dify's console names batches under /batch/ (its /documents/{id}/indexing-status is one document's)
        where = "batch" if prefix.startswith("/console") else "documents"
        r = await c.get(f"{prefix}/datasets/{ds}/{where}/{batch}/indexing-status", headers=h)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        if all(d["indexing_status"] in ("completed", "error") for d in data):
            return data
        assert time.monotonic() < deadline, data
        await asyncio.sleep(0.1)


async def points_of_document(stack: Any, dataset_id: str, document_id: str) -> int:
    """A document's points in the vector store of a live stack's indexer, disabled ones too (orphans show here,
    not in searches, which only return what the database still has)."""
    kn = stack.ctx.local_apps["indexer"].state.knowledge
    async with kn.db.session() as s:
        ds = await s.get(Dataset, dataset_id)
    return await kn.vectors.count(dataset_space(ds), VectorFilter(ds.tenant_id, (ds.id,), document_ids=(document_id,)),
                                  include_disabled=True)


def envelope(r: httpx.Response, status: int, code: str) -> str:
    """An error answer's message, once its status and code (and the envelope's status field) are as expected."""
    assert r.status_code == status, r.text
    body = r.json()
    assert (body["code"], body["status"]) == (code, status), body
    return body["message"]


@asynccontextmanager
async def in_other_workspace(c: Any, admin: dict[str, str], db: Database) -> AsyncIterator[str]:
    """Inside the block the admin's current workspace is a new second one (its id is yielded); then back home."""
    from shared.models import Tenant, TenantMember

    me = (await c.get("/console/api/account/profile", headers=admin)).json()["id"]
    async with db.session() as s:
        ws = Tenant(name=f"other {time.monotonic_ns()}")
        s.add(ws)
        await s.flush()
        s.add(TenantMember(tenant_id=ws.id, account_id=me, role="owner", current=False))
        await s.commit()
        ws_id = ws.id
    home = (await c.get("/console/api/workspaces/current", headers=admin)).json()["id"]
    switch = "/console/api/workspaces/switch"
    assert (await c.post(switch, headers=admin, json={"tenant_id": ws_id})).status_code == 200
    try:
        yield ws_id
    finally:
        assert (await c.post(switch, headers=admin, json={"tenant_id": home})).status_code == 200


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def scripted_owner(c: Any, llm: ScriptedLLM) -> dict[str, str]:
    """``console_admin``'s headers, with the workspace's openai-compatible provider pointing at the scripted LLM."""
    h = await console_admin(c)
    r = await c.post("/console/api/workspaces/current/model-providers/openai-compatible/credentials",
                     headers=h, json={"credentials": {"api_key": "sk-x", "api_base": llm.base_url}})
    assert r.status_code == 200, r.text
    return h


async def set_default_model(c: Any, h: dict[str, str], model_type: str, model: str | None,
                            provider: str = "openai-compatible") -> None:
    """Make ``model`` the workspace's default ``model_type`` model; None removes the default."""
    entry: dict[str, Any] = {"model_type": model_type}
    if model is not None:
        entry.update(provider=provider, model=model)
    r = await c.post("/console/api/workspaces/current/default-model", headers=h, json={"model_settings": [entry]})
    assert r.status_code == 200, r.text


async def configure_app(c: Any, h: dict[str, str], app_id: str, config: dict[str, Any]) -> None:
    r = await c.post(f"/console/api/apps/{app_id}/model-config", headers=h, json=config)
    assert r.status_code == 200, r.text


async def new_app(c: Any, h: dict[str, str], mode: str, config: dict[str, Any] | None = None,
                  prefix: str = "app") -> str:
    """The id of a new app (named ``prefix``-<unique>), with ``config`` saved as its model config when given."""
    r = await c.post("/console/api/apps", headers=h, json={"name": f"{prefix}-{time.monotonic_ns()}", "mode": mode})
    assert r.status_code == 201, r.text
    app_id = r.json()["id"]
    if config is not None:
        await configure_app(c, h, app_id, config)
    return app_id


async def chat_ok(c: Any, k: dict[str, str], query: str, user: str = "u1", **kw: Any) -> dict[str, Any]:
    """The body of a blocking chat message (empty inputs) that must succeed."""
    r = await c.post("/v1/chat-messages", headers=k, json={"inputs": {}, "query": query, "user": user, **kw})
    assert r.status_code == 200, r.text
    return r.json()


async def new_app_key(c: Any, h: dict[str, str], app_id: str) -> str:
    """A new unrestricted app key of ``app_id``."""
    r = await c.post(f"/console/api/apps/{app_id}/api-keys", headers=h)
    assert r.status_code == 201, r.text
    return r.json()["token"]


class Apps:
    """Apps made by one console user, each with its model config and an app key."""

    def __init__(self, client: Any, h: dict[str, str], prefix: str = "app") -> None:
        self.client, self.h, self.prefix = client, h, prefix

    async def create(self, mode: str, config: dict[str, Any]) -> tuple[str, dict[str, str]]:
        """The new app's id and the Authorization headers of its key."""
        app_id = await new_app(self.client, self.h, mode, config, prefix=f"{self.prefix}-{mode}")
        return app_id, bearer(await new_app_key(self.client, self.h, app_id))

    async def configure(self, app_id: str, config: dict[str, Any]) -> None:
        await configure_app(self.client, self.h, app_id, config)


@asynccontextmanager
async def console_in_process(settings: Settings, name: str) -> AsyncIterator[tuple[Context, Any, httpx.AsyncClient]]:
    """The console service alone on ``settings``' database and NATS (connection ``name``): its context, app
    and a client reaching it through httpx.ASGITransport, based at /console/api."""
    from services.console import create_app, start, stop

    ctx = Context(settings=settings, db=Database(settings.database_url),
                  bus=await Bus.connect(settings.nats_url, name=name))
    app = create_app(ctx)
    await start(ctx, app)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://console.test/console/api", timeout=60) as http:
            yield ctx, app, http
    finally:
        await stop(ctx, app)
        await ctx.bus.close()
        await ctx.db.close()

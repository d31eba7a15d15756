"""Split mode on one machine (tests/topology.py): 3 gateways behind a round-robin balancer, 2 runtimes,
console, indexer, 2 tools, NATS, Redis, Postgres — each its own `plexus run <target>` process. What must
hold across replicas: exact rate limits, key and prompt changes everywhere at once, stop and crash
handling across runtimes, and every service reconnecting by itself when NATS, Redis or Postgres restart.

One topology for the module (start-up dominates the run time); the tests run in file order and each
leaves it whole (a killed runtime is started again). The model is the scripted server of this session.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.support import bearer as support_bearer
from tests.support import console_admin, wait_indexed
from tests.topology import Shape, Topology, _pg_dsn, missing_dependencies, pg_admin_url

_WHY = missing_dependencies()
pytestmark = [
    pytest.mark.skipif(_WHY is not None, reason=f"the split topology needs Postgres and Redis: {_WHY}"),
    pytest.mark.heavy,
]

LEASE = 3.0  # PLEXUS_RUNTIME__RUN_LEASE: a dead replica's runs are marked within ~LEASE + LEASE/3 s
PROPAGATION = 1.0  # key deletion and prompt changes: every replica within this many seconds (the issue)
RECOVERY = 5.0  # every service is ready again within this many seconds after a dependency returns
USER = "topo-user"


@pytest.fixture(scope="module")
def topo(llm) -> Topology:
    t = Topology(Shape(gateways=3, runtimes=2, consoles=1, indexers=1, tools=2), llm_base=llm.base_url, env={
        "PLEXUS_RUNTIME__RUN_LEASE": str(LEASE),
        "PLEXUS_RUNTIME__PING_INTERVAL": "1",
        # long cache TTLs: only the NATS invalidation can make changes visible within PROPAGATION
        "PLEXUS_GATEWAY__KEY_CACHE_SECONDS": "60",
        "PLEXUS_RUNTIME__APP_CACHE_SECONDS": "60",
    })
    t.start()
    yield t
    t.stop()


class World:
    def __init__(self, topo: Topology, admin: dict[str, str]) -> None:
        self.topo = topo
        self.admin = admin
        self.client = httpx.AsyncClient(base_url=topo.front, timeout=60,
                                        limits=httpx.Limits(max_connections=1200, max_keepalive_connections=200))

    async def app(self, name: str, prompt: str = "Prompt A", **limits: Any) -> dict[str, str]:
        c, h = self.client, self.admin
        r = await c.post("/console/api/apps", headers=h, json={"name": name, "mode": "chat"})
        assert r.status_code == 201, r.text
        app_id = r.json()["id"]
        await self.prompt(app_id, prompt)
        r = await c.put(f"/console/api/apps/{app_id}", headers=h,
                        json={"api_rpm": 0, "api_rph": 0, "max_active_requests": None, **limits})
        assert r.status_code == 200, r.text
        r = await c.post(f"/console/api/apps/{app_id}/api-keys", headers=h)
        assert r.status_code == 201, r.text
        key = r.json()
        conn = await asyncpg.connect(_pg_dsn(pg_admin_url()).rsplit("/", 1)[0] + f"/{self.topo.db_name}")
        try:
            tenant = await conn.fetchval("SELECT tenant_id FROM apps WHERE id = $1", app_id)
        finally:
            await conn.close()
        return {"id": app_id, "key": key["token"], "key_id": key["id"], "tenant": tenant}

    async def prompt(self, app_id: str, prompt: str) -> None:
        r = await self.client.post(f"/console/api/apps/{app_id}/model-config", headers=self.admin, json={
            "model": {"provider": "openai-compatible", "name": "scripted", "completion_params": {}},
            "pre_prompt": prompt})
        assert r.status_code == 200, r.text

    def identity(self, app: dict[str, str]) -> dict[str, str]:
        """What a gateway adds when it forwards: lets a test address one runtime replica directly."""
        from shared.identity import Caller, identity_headers

        caller = Caller(tenant_id=app["tenant"], app_id=app["id"], key_id=app["key_id"], key_type="app")
        return {k.decode(): v.decode() for k, v in identity_headers(self.topo.internal_secret, caller)}


@pytest.fixture(scope="module")
async def world(topo: Topology, llm) -> World:
    w = World(topo, {})
    w.admin = await console_admin(w.client)
    r = await w.client.post("/console/api/workspaces/current/model-providers/openai-compatible/credentials",
                            headers=w.admin, json={"credentials": {"api_key": "sk-topo", "api_base": llm.base_url}})
    assert r.status_code == 200, r.text
    yield w
    await w.client.aclose()


def bearer(app: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {app['key']}"}


def chat_body(query: str, streaming: bool = True, **extra: Any) -> dict[str, Any]:
    return {"inputs": {}, "query": query, "user": USER, "response_mode": "streaming" if streaming else "blocking",
            **extra}


async def sse(resp: httpx.Response):
    """(id, event) pairs of an SSE response; ``id`` is None for events without one."""
    ident = None
    async for line in resp.aiter_lines():
        if line.startswith("id: "):
            ident = int(line[4:])
        elif line.startswith("data: "):
            yield ident, orjson.loads(line[6:])
            ident = None


async def runs_active(url: str) -> float:
    async with httpx.AsyncClient(timeout=10) as c:
        text = (await c.get(f"{url}/metrics")).text
    m = re.search(r"^plexus_runs_active (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


async def owner_of_live_run(topo: Topology) -> str:
    """The runtime replica whose metrics show the one run in progress."""
    for _ in range(50):
        active = {n: await runs_active(topo.url(n)) for n in topo.names("runtime")}
        owners = [n for n, v in active.items() if v >= 1]
        if len(owners) == 1:
            return owners[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no single owner of the live run: {active}")


async def message_row(topo: Topology, message_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(_pg_dsn(pg_admin_url()).rsplit("/", 1)[0] + f"/{topo.db_name}")
    try:
        return await conn.fetchrow("SELECT status, error, answer FROM messages WHERE id = $1", message_id)
    finally:
        await conn.close()


async def wait_ready(topo: Topology, names: list[str], deadline: float) -> float:
    """Poll every process's /readyz (its DB, NATS and Redis checks) at once; seconds until all said ok."""
    t0 = time.monotonic()

    async def one(c: httpx.AsyncClient, name: str) -> None:
        while True:
            try:
                if (await c.get(f"{topo.url(name)}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{name} not ready again"
            await asyncio.sleep(0.05)

    async with httpx.AsyncClient(timeout=2) as c:
        await asyncio.gather(*(one(c, n) for n in names))
    return time.monotonic() - t0


# ---- limits, keys and config across replicas ------------------------------------------------------


async def test_rate_limit_is_exact_across_three_gateways(world: World) -> None:
    app = await world.app("Limited", api_rpm=100)
    before = world.topo.lb_stats()["front"]

    async def one(_: int) -> int:
        return (await world.client.get("/v1/parameters", headers=bearer(app))).status_code

    statuses = await asyncio.gather(*(one(i) for i in range(1000)))
    counts = {s: statuses.count(s) for s in set(statuses)}
    assert counts == {200: 100, 429: 900}, counts
    after = world.topo.lb_stats()["front"]
    spread = {port: after[port] - before.get(port, 0) for port in after}
    assert len(spread) == 3 and all(n > 0 for n in spread.values()), spread  # every gateway decided some


async def test_deleted_key_is_rejected_by_every_gateway_at_once(world: World) -> None:
    app = await world.app("Key churn")
    async with httpx.AsyncClient(timeout=10) as c:
        for g in world.topo.gateway_urls:  # every gateway has the key cached (TTL 60 s)
            assert (await c.get(f"{g}/v1/parameters", headers=bearer(app))).status_code == 200
        r = await world.client.delete(f"/console/api/apps/{app['id']}/api-keys/{app['key_id']}", headers=world.admin)
        assert r.status_code in (200, 204), r.text
        t0 = time.monotonic()

        async def rejected_after(g: str) -> float:
            while True:
                status = (await c.get(f"{g}/v1/parameters", headers=bearer(app))).status_code
                if status == 401:
                    return time.monotonic() - t0
                assert status == 200, status
                assert time.monotonic() - t0 < PROPAGATION, f"{g} still accepts the deleted key"
                await asyncio.sleep(0.02)

        took = await asyncio.gather(*(rejected_after(g) for g in world.topo.gateway_urls))
    assert max(took) < PROPAGATION, took


async def test_prompt_change_is_used_by_both_runtimes_at_once(world: World, llm) -> None:
    app = await world.app("Prompted", prompt="Prompt A")
    ident = world.identity(app)

    async def system_prompt(runtime: str) -> str:
        q = f"which prompt {uuid.uuid4().hex[:8]}"
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.post(f"{runtime}/v1/chat-messages", headers=ident, json=chat_body(q, streaming=False))
        assert r.status_code == 200, r.text
        return llm.requests_matching(q)[-1].messages[0]["content"]

    for rt in world.topo.runtime_urls:  # both replicas have the app cached with prompt A (TTL 60 s)
        assert await system_prompt(rt) == "Prompt A"
    await world.prompt(app["id"], "Prompt B")
    t0 = time.monotonic()
    for rt in world.topo.runtime_urls:
        while (seen := await system_prompt(rt)) != "Prompt B":
            assert seen == "Prompt A"
            assert time.monotonic() - t0 < PROPAGATION, f"{rt} still uses the old prompt"


# ---- runs across runtime replicas -----------------------------------------------------------------


async def test_console_knowledge_goes_through_the_indexer(world: World) -> None:
    """Split mode: the gateways send /console/api/datasets… to the indexer, which asks the console process over
    NATS who the caller is; the workspace's dataset keys stay the console's."""
    c, h = world.client, world.admin
    r = await c.post("/console/api/files/upload", headers=h, files={"file": ("topo.md", b"# Topo\n\nsplit mode\n")})
    assert r.status_code == 201, r.text
    body = {"data_source": {"type": "upload_file", "info_list": {"file_info_list": {"file_ids": [r.json()["id"]]}}},
            "indexing_technique": "economy", "process_rule": {"mode": "automatic"}}
    r = await c.post("/console/api/datasets/init", headers=h, json=body)
    assert r.status_code == 200, r.text
    ds, batch = r.json()["dataset"]["id"], r.json()["batch"]
    (status,) = await wait_indexed(c, "/console/api", h, ds, batch)
    assert status["indexing_status"] == "completed", status
    r = await c.post("/console/api/datasets/api-keys", headers=h)  # the console's route, not a dataset id
    assert r.status_code == 201, r.text
    key = support_bearer(r.json()["token"])
    r = await c.post(f"/v1/datasets/{ds}/retrieve", headers=key, json={"query": "split mode"})
    assert r.status_code == 200 and r.json()["records"], r.text
    r = await c.get("/console/api/datasets", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["code"] == "unauthorized", r.text


async def test_stop_reaches_the_runtime_that_owns_the_run(world: World, llm) -> None:
    app = await world.app("Stoppable")
    llm.push(match="stop me", tokens=[f"w{i} " for i in range(60)], delay=0.1)
    topo = world.topo
    events: list[dict[str, Any]] = []
    async with world.client.stream("POST", "/v1/chat-messages", headers=bearer(app),
                                   json=chat_body("stop me")) as r:
        assert r.status_code == 200
        async for _, ev in sse(r):
            events.append(ev)
            if len(events) == 2:
                owner = await owner_of_live_run(topo)
                other = next(n for n in topo.names("runtime") if n != owner)
                # the stop goes to the replica that does NOT run it: it must travel over NATS
                async with httpx.AsyncClient(timeout=10) as c:
                    s = await c.post(f"{topo.url(other)}/v1/chat-messages/{ev['task_id']}/stop",
                                     headers=world.identity(app), json={"user": USER})
                assert s.status_code == 200 and s.json() == {"result": "success"}, s.text
    names = [e["event"] for e in events]
    assert names[-1] == "message_end" and names.count("message") < 60, names
    row = await message_row(topo, events[0]["message_id"])
    assert row["status"] == "stopped"


async def test_killed_runtime_leaves_an_error_found_by_the_survivor(world: World, llm) -> None:
    app = await world.app("Crashing")
    llm.push(match="kill me", tokens=[f"k{i} " for i in range(100)], delay=0.1)
    topo = world.topo
    seen: list[tuple[int | None, dict[str, Any]]] = []
    victim = None
    async with world.client.stream("POST", "/v1/chat-messages", headers=bearer(app),
                                   json=chat_body("kill me")) as r:
        assert r.status_code == 200
        try:
            async for ident, ev in sse(r):
                seen.append((ident, ev))
                if len(seen) == 3:
                    victim = await owner_of_live_run(topo)
                    topo.kill(victim)  # SIGKILL: no shutdown hook records anything
        except httpx.HTTPError:
            pass  # the connection was cut; the error event below is what the gateway sends instead
    assert victim is not None
    # the client's stream ends with an error event (the gateway saw the upstream die between two events)
    assert seen[-1][1]["event"] == "error" and seen[-1][1]["status"] == 502, seen[-3:]
    task_id, message_id = seen[0][1]["task_id"], seen[0][1]["message_id"]
    last_id = max(i for i, _ in seen if i is not None)
    try:
        # resume on the survivor (the runtime balancer skips the dead backend): the rest of the log, which
        # the survivor's sweep ends with an error event once the dead replica's lease ran out
        resumed: list[tuple[int | None, dict[str, Any]]] = []
        async with world.client.stream("GET", f"/v1/chat-messages/{task_id}/events", headers={
                **bearer(app), "Last-Event-ID": str(last_id)}, params={"user": USER}) as r:
            assert r.status_code == 200, await r.aread()
            async for ident, ev in sse(r):
                resumed.append((ident, ev))
        assert resumed, "nothing resumed"
        assert resumed[-1][1]["event"] == "error" and "interrupted" in resumed[-1][1]["message"], resumed[-2:]
        assert all(i > last_id for i, _ in resumed if i is not None)
        row = await message_row(topo, message_id)
        assert (row["status"], row["error"]) == ("error", "interrupted")
    finally:
        topo.restart(victim, wait=False)  # spawned here on the main thread; readiness awaited below
        await wait_ready(topo, [victim], time.monotonic() + 120)


# ---- dependency restarts under load ---------------------------------------------------------------


class Load:
    """Streaming chats through the front balancer from ``workers`` loops; remembers every accepted one."""

    def __init__(self, world: World, app: dict[str, str], workers: int = 6) -> None:
        self.world, self.app, self.workers = world, app, workers
        self.accepted: dict[str, bool] = {}  # message id -> stream ended with message_end
        self.refused: dict[int | str, int] = {}
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._worker(i)) for i in range(self.workers)]

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)

    async def _worker(self, i: int) -> None:
        n = 0
        async with httpx.AsyncClient(base_url=self.world.topo.front, timeout=60) as c:
            while not self.stop.is_set():
                n += 1
                try:
                    async with c.stream("POST", "/v1/chat-messages", headers=bearer(self.app),
                                        json=chat_body(f"load {i}-{n}")) as r:
                        if r.status_code != 200:
                            self.refused[r.status_code] = self.refused.get(r.status_code, 0) + 1
                            await asyncio.sleep(0.05)
                            continue
                        mid, ended = None, False
                        async for _, ev in sse(r):
                            mid = mid or ev.get("message_id")
                            ended = ended or ev["event"] == "message_end"
                        if mid:
                            self.accepted[mid] = ended
                except httpx.HTTPError as e:
                    key = type(e).__name__
                    self.refused[key] = self.refused.get(key, 0) + 1
                    await asyncio.sleep(0.05)


@pytest.mark.parametrize("dependency", ["nats", "redis", "postgres"])
async def test_every_service_reconnects_by_itself_and_nothing_accepted_is_lost(world: World,
                                                                                dependency: str) -> None:
    topo = world.topo
    # limits on, so every request also goes through Redis
    app = await world.app(f"Load {dependency}", api_rpm=1_000_000)
    load = Load(world, app)
    load.start()
    await asyncio.sleep(2)
    before = len(load.accepted)
    assert before > 0, load.refused
    if dependency == "nats":
        topo.restart_nats()
    elif dependency == "redis":
        topo.restart_redis()
    else:
        await asyncio.to_thread(topo.sever_postgres, 2.0)  # returns once Postgres is reachable again
    back = time.monotonic()
    ready = await wait_ready(topo, list(topo.procs), back + RECOVERY)  # reconnected by themselves
    async with httpx.AsyncClient(timeout=30) as c:  # and each gateway serves a chat end to end again
        for g in topo.gateway_urls:
            while True:
                r = await c.post(f"{g}/v1/chat-messages", headers=bearer(app), json=chat_body("after", False))
                if r.status_code == 200:
                    break
                assert time.monotonic() - back < 30, f"{g}: {r.status_code} {r.text[:200]}"
                await asyncio.sleep(0.1)
    served = time.monotonic() - back
    await asyncio.sleep(1)
    await load.finish()
    assert len(load.accepted) > before, "no chat accepted after the restart"
    # every accepted chat streamed to its end and is stored as answered
    unfinished = [m for m, ended in load.accepted.items() if not ended]
    assert not unfinished, f"{len(unfinished)} accepted streams without message_end"
    conn = await asyncpg.connect(_pg_dsn(pg_admin_url()).rsplit("/", 1)[0] + f"/{topo.db_name}")
    try:
        rows = await conn.fetch("SELECT id, status, answer FROM messages WHERE id = ANY($1::text[])",
                                list(load.accepted))
    finally:
        await conn.close()
    assert len(rows) == len(load.accepted)
    bad = [(r["id"], r["status"]) for r in rows if r["status"] != "normal" or not r["answer"].startswith("Echo: ")]
    assert not bad, bad[:5]
    print(f"\n{dependency}: all ready {ready:.2f} s and a chat through each gateway {served:.2f} s after it came "
          f"back; {len(load.accepted)} chats "
          f"accepted, refused meanwhile: {load.refused}")

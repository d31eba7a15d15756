"""Runtime service over real HTTP, real NATS, SQLite/Postgres and the real litellm path against the
scripted OpenAI-compatible server. Two runtime replicas share the database and NATS (stop must reach the
replica that owns the run)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, insert, select, update

from services import runtime
from shared.bus import Bus
from shared.context import Context
from shared.crypto import encrypt_json
from shared.db import Database
from shared.identity import Caller, identity_headers
from shared.models import (
    Account,
    App,
    AppModelConfig,
    Conversation,
    EndUser,
    Message,
    ProviderCredential,
    Tenant,
    new_id,
    utcnow,
)
from shared.settings import RuntimeSettings
from shared.subjects import config_changed, task_events
from tests.conftest import db_params, fresh_database, make_settings
from tests.llm_server import ScriptedLLM  # the `llm` fixture comes from tests/conftest.py's pytest_plugins
from tests.support import Served, serve

SECRET_KEY = "runtime-test-secret-key"
INTERNAL = "runtime-test-internal-secret"
USAGE_KEYS = {
    "prompt_tokens",
    "prompt_unit_price",
    "prompt_price_unit",
    "prompt_price",
    "completion_tokens",
    "completion_unit_price",
    "completion_price_unit",
    "completion_price",
    "total_tokens",
    "total_price",
    "currency",
    "latency",
}
MESSAGE_ITEM_KEYS = {
    "id",
    "conversation_id",
    "parent_message_id",
    "inputs",
    "query",
    "answer",
    "message_files",
    "feedback",
    "retriever_resources",
    "agent_thoughts",
    "created_at",
    "status",
    "error",
}
CONVERSATION_KEYS = {"id", "name", "inputs", "status", "introduction", "created_at", "updated_at"}
CONTEXT_TOKENS = 4096
TIMEOUT_B = 3.0

FORM = [
    {"text-input": {"label": "Persona", "variable": "persona", "required": True, "max_length": 20}},
    {"select": {"label": "Tone", "variable": "tone", "required": False, "options": ["calm", "loud"]}},
]


def model_config(name: str, provider: str = "openai", **extra: Any) -> dict[str, Any]:
    params = extra.pop("completion_params", {"temperature": 0.1})
    return {
        "model": {"provider": provider, "name": name, "mode": "chat", "completion_params": params},
        "pre_prompt": "You are {{persona}}.",
        "user_input_form": FORM,
        "opening_statement": "Ahoy",
        **extra,
    }


@dataclass
class Replica:
    ctx: Context
    app: Any
    served: Served
    client: httpx.AsyncClient

    async def close(self) -> None:
        await self.client.aclose()
        await self.served.stop()
        await runtime.stop(self.ctx, self.app)
        await self.ctx.bus.close()
        await self.ctx.db.close()


@dataclass
class World:
    a: Replica
    b: Replica
    db: Database
    llm: ScriptedLLM
    tenant: str
    apps: dict[str, str]  # name → app id
    other_tenant: str
    stale_message: str
    headers: dict[str, dict[str, str]] = field(default_factory=dict)

    def h(self, app: str) -> dict[str, str]:
        return self.headers[app]


async def start_replica(settings: Any, db_url: str, nats_url: str) -> Replica:
    db = Database(db_url)
    bus = await Bus.connect(nats_url, name="plexus-runtime-test")
    ctx = Context(settings=settings, db=db, bus=bus, mode="split")
    app = runtime.create_app(ctx)
    await runtime.start(ctx, app)
    served = await serve(app, settings.port)
    client = httpx.AsyncClient(base_url=served.url, timeout=30)
    return Replica(ctx, app, served, client)


async def seed(db: Database, llm_base: str) -> tuple[str, str, dict[str, str], str]:
    tenant, other = new_id(), new_id()
    author = new_id()
    apps: dict[str, str] = {}
    rows: list[tuple[str, str, str, dict | None]] = [
        # name, tenant, mode, config
        ("chat", tenant, "chat", model_config("scripted-chat")),
        ("priced", tenant, "chat", model_config("gpt-4o")),
        (
            "tight",
            tenant,
            "chat",
            model_config("scripted-tight", completion_params={"max_tokens": CONTEXT_TOKENS - 196}),
        ),
        (
            "completion",
            tenant,
            "completion",
            {
                "model": {"provider": "openai", "name": "scripted-completion", "mode": "completion"},
                "pre_prompt": "Write about {{topic}}.",
                "user_input_form": [{"paragraph": {"label": "Topic", "variable": "topic", "required": True}}],
            },
        ),
        ("agent", tenant, "agent-chat", model_config("scripted-chat")),
        ("advanced", tenant, "advanced-chat", None),
        ("workflow", tenant, "workflow", None),
        ("noconfig", tenant, "chat", None),
        ("nocreds", tenant, "chat", model_config("claude-x", provider="anthropic")),
        ("other", other, "chat", model_config("scripted-chat")),
    ]
    async with db.session() as s:
        await s.execute(insert(Tenant).values(id=tenant, name="T1"))
        await s.execute(insert(Tenant).values(id=other, name="T2"))
        await s.execute(
            insert(Account).values(id=author, email=f"{author}@example.com", name="Alice", password_hash="x")
        )
        for name, tid, mode, cfg in rows:
            app_id, cfg_id = new_id(), new_id()
            apps[name] = app_id
            await s.execute(
                insert(App).values(
                    id=app_id,
                    tenant_id=tid,
                    name=f"{name} app",
                    description=f"the {name} app",
                    mode=mode,
                    app_model_config_id=cfg_id if cfg else None,
                    created_by=author,
                )
            )
            if cfg:
                await s.execute(insert(AppModelConfig).values(id=cfg_id, app_id=app_id, config=cfg))
        for tid in (tenant, other):
            await s.execute(
                insert(ProviderCredential).values(
                    id=new_id(),
                    tenant_id=tid,
                    provider="openai",
                    encrypted_credentials=encrypt_json(
                        SECRET_KEY, {"api_key": "sk-test", "api_base": llm_base}
                    ),
                )
            )
        # a message a dead replica left running an hour ago: start() must record it as interrupted
        eu, conv, stale = new_id(), new_id(), new_id()
        old = utcnow() - timedelta(hours=1)
        await s.execute(
            insert(EndUser).values(id=eu, tenant_id=tenant, app_id=apps["chat"], session_id="ghost")
        )
        await s.execute(
            insert(Conversation).values(
                id=conv, app_id=apps["chat"], end_user_id=eu, mode="chat", name="ghost", inputs={}
            )
        )
        await s.execute(
            insert(Message).values(
                id=stale,
                app_id=apps["chat"],
                conversation_id=conv,
                end_user_id=eu,
                task_id=new_id(),
                query="q",
                status="running",
                created_at=old,
                updated_at=old,
            )
        )
        await s.commit()
    return tenant, other, apps, stale


@pytest.fixture(scope="module", params=db_params())
async def world(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    nats_url: str,
    llm: ScriptedLLM,
) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("runtime")
    url = await fresh_database(request.param, tmp)
    db = Database(url)
    tenant, other, apps, stale = await seed(db, llm.base_url)
    common = {"secret_key": SECRET_KEY, "internal_secret": INTERNAL}
    sa = make_settings(
        tmp / "a",
        url,
        nats_url,
        **common,
        runtime=RuntimeSettings(ping_interval=0.3, memory_turns=3, default_context_tokens=CONTEXT_TOKENS),
    )
    sb = make_settings(
        tmp / "b",
        url,
        nats_url,
        **common,
        runtime=RuntimeSettings(run_timeout=TIMEOUT_B, memory_turns=3, default_context_tokens=CONTEXT_TOKENS),
    )
    a = await start_replica(sa, url, nats_url)
    b = await start_replica(sb, url, nats_url)
    w = World(a, b, db, llm, tenant, apps, other, stale)
    for name, app_id in apps.items():
        tid = other if name == "other" else tenant
        pairs = identity_headers(INTERNAL, Caller(tenant_id=tid, app_id=app_id, key_id="key", key_type="app"))
        w.headers[name] = {k.decode(): v.decode() for k, v in pairs}
    try:
        yield w
    finally:
        await a.close()
        await b.close()
        await db.close()


@pytest.fixture(autouse=True)
def _fresh_script(llm: ScriptedLLM) -> None:
    llm.reset()


# -- helpers ------------------------------------------------------------------------------------------
def parse_frames(raw: bytes) -> list[Any]:
    out: list[Any] = []
    assert raw.endswith(b"\n\n"), raw[-80:]
    expected = 1  # every event carries its position in the run's event log as its SSE id
    for frame in raw.split(b"\n\n")[:-1]:
        if frame == b"event: ping":
            out.append("ping")
        else:
            head, _, data = frame.partition(b"\n")
            assert head == b"id: %d" % expected and data.startswith(b"data: "), frame
            expected += 1
            out.append(orjson.loads(data[6:]))
    return out


async def stream(
    client: httpx.AsyncClient, path: str, body: dict, headers: dict
) -> tuple[httpx.Response, list]:
    async with client.stream("POST", path, json=body, headers=headers) as r:
        raw = await r.aread()
    return r, parse_frames(raw) if r.status_code == 200 else orjson.loads(raw)


async def iter_events(resp: httpx.Response) -> AsyncIterator[Any]:
    buf = b""
    async for chunk in resp.aiter_bytes():
        buf += chunk
        while b"\n\n" in buf:
            frame, buf = buf.split(b"\n\n", 1)
            yield "ping" if frame == b"event: ping" else orjson.loads(frame.partition(b"data: ")[2])


def chat(query: str, user: str = "u1", **kw: Any) -> dict[str, Any]:
    return {"inputs": {"persona": "a pirate"}, "query": query, "user": user, **kw}


async def message_row(w: World, message_id: str) -> Message:
    async with w.db.session() as s:
        return (await s.execute(select(Message).where(Message.id == message_id))).scalars().one()


async def wait_finished(w: World, message_id: str, timeout: float = 10) -> Message:
    deadline = time.monotonic() + timeout
    while True:
        row = await message_row(w, message_id)
        if row.status != "running":
            return row
        assert time.monotonic() < deadline, "run did not finish"
        await asyncio.sleep(0.05)


def assert_usage(usage: dict[str, Any]) -> None:
    assert set(usage) == USAGE_KEYS
    for k in (
        "prompt_unit_price",
        "prompt_price_unit",
        "prompt_price",
        "completion_unit_price",
        "completion_price_unit",
        "completion_price",
        "total_price",
    ):
        assert isinstance(usage[k], str), k
        Decimal(usage[k])
    for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert isinstance(usage[k], int) and not isinstance(usage[k], bool), k
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert isinstance(usage["latency"], float)
    assert usage["currency"] == "USD"


# -- chat and completion ----------------------------------------------------------------------------
async def test_blocking_chat(world: World) -> None:
    w = world
    r = await w.a.client.post("/v1/chat-messages", json=chat("hello there"), headers=w.h("chat"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {
        "event",
        "task_id",
        "id",
        "message_id",
        "conversation_id",
        "mode",
        "answer",
        "metadata",
        "created_at",
    }
    assert body["event"] == "message" and body["mode"] == "chat"
    assert body["answer"] == "Echo: hello there"
    assert body["id"] == body["message_id"] and body["task_id"] != body["message_id"]
    assert isinstance(body["created_at"], int) and abs(body["created_at"] - time.time()) < 60
    assert body["metadata"]["retriever_resources"] == []
    usage = body["metadata"]["usage"]
    assert_usage(usage)
    assert usage["completion_tokens"] == 3  # the scripted server's own count: the provider's usage is used
    assert usage["prompt_price"] == "0.0000000" and usage["total_price"] == "0.0000000"  # unknown model
    sent = w.llm.requests[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "hello there"},
    ]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == "scripted-chat" and sent["temperature"] == 0.1
    row = await message_row(w, body["message_id"])
    assert (row.status, row.answer, row.query) == ("normal", "Echo: hello there", "hello there")
    assert row.answer_tokens == 3 and row.usage == usage and row.model_id == "scripted-chat"
    async with w.db.session() as s:
        conv = (
            (await s.execute(select(Conversation).where(Conversation.id == body["conversation_id"])))
            .scalars()
            .one()
        )
    assert conv.name == "hello there" and conv.inputs == {"persona": "a pirate", "tone": ""}


async def test_streaming_chat(world: World) -> None:
    w = world
    w.llm.push(tokens=["Hel", "lo", ", ", "wörld", "!"])
    r, events = await stream(
        w.a.client, "/v1/chat-messages", chat("hi", response_mode="streaming"), w.h("chat")
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
    events = [e for e in events if e != "ping"]
    assert [e["event"] for e in events] == ["message"] * 5 + ["message_end"]
    first = events[0]
    for e in events:
        assert e["conversation_id"] == first["conversation_id"] and e["message_id"] == first["message_id"]
        assert e["created_at"] == first["created_at"] and e["task_id"] == first["task_id"]
        assert e["id"] == first["message_id"]
    for e in events[:-1]:
        assert set(e) == {"event", "conversation_id", "message_id", "created_at", "task_id", "id", "answer"}
    assert "".join(e["answer"] for e in events[:-1]) == "Hello, wörld!"
    end = events[-1]
    assert set(end) == {"event", "conversation_id", "message_id", "created_at", "task_id", "id", "metadata"}
    assert end["metadata"]["retriever_resources"] == []
    assert_usage(end["metadata"]["usage"])
    assert end["metadata"]["usage"]["completion_tokens"] == 5
    row = await message_row(w, first["message_id"])
    assert (row.status, row.answer) == ("normal", "Hello, wörld!")


async def test_known_model_prices(world: World) -> None:
    w = world
    w.llm.push(reply="a b c", usage={"prompt_tokens": 1000, "completion_tokens": 3, "total_tokens": 1003})
    r = await w.a.client.post("/v1/chat-messages", json=chat("price me"), headers=w.h("priced"))
    usage = r.json()["metadata"]["usage"]
    assert_usage(usage)
    # gpt-4o in litellm's bundled cost map: $2.5 / $10 per million tokens
    assert usage["prompt_unit_price"] == "2.5" and usage["completion_unit_price"] == "10"
    assert usage["prompt_price_unit"] == "0.000001"
    assert usage["prompt_price"] == "0.0025000" and usage["completion_price"] == "0.0000300"
    assert usage["total_price"] == "0.0025300"


async def test_completion_blocking_and_streaming(world: World) -> None:
    w = world
    body = {"inputs": {"topic": "cats"}, "query": "briefly", "user": "u1"}
    r = await w.a.client.post("/v1/completion-messages", json=body, headers=w.h("completion"))
    assert r.status_code == 200, r.text
    data = r.json()
    assert set(data) == {"event", "task_id", "id", "message_id", "mode", "answer", "metadata", "created_at"}
    assert data["mode"] == "completion" and data["answer"] == "Echo: Write about cats.\nbriefly"
    assert_usage(data["metadata"]["usage"])
    assert w.llm.requests[-1].messages == [{"role": "user", "content": "Write about cats.\nbriefly"}]

    r, events = await stream(
        w.a.client,
        "/v1/completion-messages",
        {"inputs": {"topic": "dogs"}, "user": "u1", "response_mode": "streaming"},
        w.h("completion"),
    )
    events = [e for e in events if e != "ping"]
    assert [e["event"] for e in events][-1] == "message_end"
    for e in events:
        assert "conversation_id" not in e
        assert {"message_id", "created_at", "event"} <= set(e)
    assert set(events[0]) == {"event", "message_id", "created_at", "task_id", "id", "answer"}
    assert "".join(e["answer"] for e in events[:-1]) == "Echo: Write about dogs."
    assert w.llm.requests[-1].messages == [{"role": "user", "content": "Write about dogs."}]


async def test_conversation_reuse_and_memory(world: World) -> None:
    w = world
    h = w.h("chat")
    r = await w.a.client.post("/v1/chat-messages", json=chat("turn 1", user="mem"), headers=h)
    conv = r.json()["conversation_id"]
    answers = [r.json()["answer"]]
    for i in range(2, 6):
        body = {
            "inputs": {"persona": "ignored"},
            "query": f"turn {i}",
            "user": "mem",
            "conversation_id": conv,
        }
        r = await w.a.client.post("/v1/chat-messages", json=body, headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["conversation_id"] == conv
        answers.append(r.json()["answer"])
    sent = w.llm.requests[-1].messages
    # the stored inputs are reused (request inputs ignored); only memory_turns=3 previous turns, oldest first
    assert sent[0] == {"role": "system", "content": "You are a pirate."}
    assert sent[1:] == [
        {"role": "user", "content": "turn 2"},
        {"role": "assistant", "content": answers[1]},
        {"role": "user", "content": "turn 3"},
        {"role": "assistant", "content": answers[2]},
        {"role": "user", "content": "turn 4"},
        {"role": "assistant", "content": answers[3]},
        {"role": "user", "content": "turn 5"},
    ]
    msgs = (
        await w.a.client.get("/v1/messages", params={"conversation_id": conv, "user": "mem"}, headers=h)
    ).json()
    assert [m["query"] for m in msgs["data"]] == [f"turn {i}" for i in range(1, 6)]
    # each message's parent is the previous one
    assert msgs["data"][0]["parent_message_id"] is None
    assert [m["parent_message_id"] for m in msgs["data"][1:]] == [m["id"] for m in msgs["data"][:-1]]
    assert all(m["inputs"] == {"persona": "a pirate", "tone": ""} for m in msgs["data"])


async def test_reasoning_model_thinking_in_the_answer_not_in_memory(world: World) -> None:
    """A reasoning model's reasoning_content deltas reach the client inside <think> tags before the answer, as
    Dify's model runtime wraps them; the stored answer keeps them, the next turn's memory leaves them out."""
    w = world
    h = w.h("chat")
    w.llm.push(reasoning=["The user ", "greets me."], tokens=["Ahoy", "!"])
    r, events = await stream(w.a.client, "/v1/chat-messages", chat("hello", user="thinker", response_mode="streaming"), h)
    assert r.status_code == 200
    deltas = [e["answer"] for e in events if e != "ping" and e["event"] == "message"]
    answer = "<think>\nThe user greets me.\n</think>Ahoy!"
    assert "".join(deltas) == answer
    assert deltas[0] == "<think>\nThe user " and deltas[2] == "\n</think>Ahoy"  # as they came, not buffered
    end = events[-1]
    assert end["event"] == "message_end"
    assert (await message_row(w, end["message_id"])).answer == answer
    # a model that stops while still thinking: the block is closed
    w.llm.push(reasoning=["Still ", "thinking"], tokens=[])
    r = await w.a.client.post("/v1/chat-messages", json=chat("cut", user="thinker", conversation_id=end["conversation_id"]),
                              headers=h)
    assert r.json()["answer"] == "<think>\nStill thinking\n</think>"
    w.llm.push(reply="Fair winds.")
    r = await w.a.client.post("/v1/chat-messages", json=chat("bye", user="thinker",
                                                             conversation_id=end["conversation_id"]), headers=h)
    assert r.status_code == 200, r.text
    sent = w.llm.requests[-1].messages
    # the earlier answer without its thinking; the all-thinking turn leaves no empty assistant message
    assert sent[1:] == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "Ahoy!"},
                        {"role": "user", "content": "bye"}]
    msgs = (await w.a.client.get("/v1/messages", params={"conversation_id": end["conversation_id"], "user": "thinker"},
                                 headers=h)).json()["data"]
    assert [m["answer"] for m in msgs] == [answer, "<think>\nStill thinking\n</think>", "Fair winds."]


async def test_memory_trimmed_to_context(world: World) -> None:
    w = world
    h = w.h("tight")  # max_tokens leaves 196 input tokens of the 4096 default context
    queries = [f"{i}" * 100 for i in range(4)]
    r = await w.a.client.post("/v1/chat-messages", json=chat(queries[0], user="tight"), headers=h)
    conv = r.json()["conversation_id"]
    for q in queries[1:]:
        r = await w.a.client.post(
            "/v1/chat-messages", json=chat(q, user="tight", conversation_id=conv), headers=h
        )
        assert r.status_code == 200
    sent = w.llm.requests[-1].messages
    # each old turn costs ~60 tokens: only the two newest fit next to the system prompt and the query
    assert [m["content"] for m in sent if m["role"] == "user"] == [queries[1], queries[2], queries[3]]
    assert sent[0]["role"] == "system" and sent[-1] == {"role": "user", "content": queries[3]}
    assert w.llm.requests[-1].body["max_tokens"] == CONTEXT_TOKENS - 196


async def test_input_validation(world: World) -> None:
    w = world
    h = w.h("chat")
    c = w.a.client

    async def err(body: Any, status: int = 400, path: str = "/v1/chat-messages", **kw: Any) -> dict:
        kw.setdefault("headers", h)
        r = await c.post(path, json=body, **kw) if body is not None else await c.post(path, **kw)
        assert r.status_code == status, r.text
        data = r.json()
        assert set(data) >= {"code", "message", "status"} and data["status"] == status
        return data

    e = await err({"inputs": {"persona": "x"}, "query": "q"})
    assert (e["code"], e["message"]) == ("invalid_param", "Arg user must be provided.")
    e = await err({"query": "q", "user": "u"})
    assert (e["code"], e["message"]) == ("invalid_param", "inputs is required")
    e = await err({"inputs": {"persona": "x"}, "user": "u"})
    assert (e["code"], e["message"]) == ("invalid_param", "query is required")
    e = await err({"inputs": {}, "query": "q", "user": "u"})
    assert (e["code"], e["message"]) == ("invalid_param", "persona is required in input form")
    e = await err({"inputs": {"persona": "x" * 21}, "query": "q", "user": "u"})
    assert e["message"] == "persona in input form must be less than 20 characters"
    e = await err({"inputs": {"persona": "x", "tone": "angry"}, "query": "q", "user": "u"})
    assert e["message"] == "tone in input form must be one of the following: ['calm', 'loud']"
    e = await err(chat("q", conversation_id="not-a-uuid"))
    assert (e["code"], e["message"]) == ("invalid_param", "conversation_id must be a valid UUID")
    e = await err(chat("q", conversation_id=str(uuid.uuid4())), 404)
    assert (e["code"], e["message"]) == ("not_found", "Conversation Not Exists.")
    e = await err(None, content=b"{not json", headers={**h, "content-type": "application/json"})
    assert e["code"] == "bad_request"
    e = await err({"inputs": {"persona": "x"}, "user": "u", "response_mode": "sometimes", "query": "q"})
    assert e["code"] == "invalid_param"
    e = await err({"query": "q", "user": "u"}, path="/v1/completion-messages", headers=w.h("completion"))
    assert (e["code"], e["message"]) == ("invalid_param", "inputs is required")
    e = await err({"inputs": {}, "user": "u"}, path="/v1/completion-messages", headers=w.h("completion"))
    assert e["message"] == "topic is required in input form"

    # SDK quirks: files null, unknown fields, response_mode null, conversation_id "" → new conversation
    body = {
        **chat("quirks"),
        "files": None,
        "response_mode": None,
        "conversation_id": "",
        "retriever_from": "dev",
        "auto_generate_name": True,
        "something_new": {"x": 1},
    }
    r = await c.post("/v1/chat-messages", json=body, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["answer"] == "Echo: quirks" and r.json()["conversation_id"]

    r = await c.post("/v1/chat-messages", json=chat("q"))  # no identity headers
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"


async def test_mode_gates(world: World) -> None:
    w = world
    c = w.a.client

    async def code(
        app: str, path: str = "/v1/chat-messages", body: dict | None = None
    ) -> tuple[int, str, str]:
        r = await c.post(path, json=body or chat("q"), headers=w.h(app))
        return r.status_code, r.json()["code"], r.json()["message"]

    unavailable = (400, "app_unavailable", "App unavailable, please check your app configurations.")
    # chat() is blocking, which agent apps refuse before anything else (test_agent covers streaming)
    assert await code("agent") == (400, "invalid_param", "Agent Chat App does not support blocking mode")
    assert await code("advanced") == (400, "invalid_param", "Workflow not published")  # served, nothing published
    assert (await code("workflow"))[:2] == (400, "not_chat_app")
    assert (await code("completion"))[:2] == (400, "not_chat_app")
    assert await code("chat", "/v1/completion-messages") == unavailable
    assert await code("workflow", "/v1/completion-messages") == unavailable
    assert await code("noconfig") == unavailable
    assert (await code("nocreds"))[:2] == (400, "provider_not_initialize")
    assert w.llm.requests == []


# -- failures -----------------------------------------------------------------------------------------
async def test_stream_error_on_llm_500(world: World) -> None:
    w = world
    w.llm.push(status=500, body={"error": {"message": "upstream exploded", "type": "server_error"}})
    r, events = await stream(
        w.a.client, "/v1/chat-messages", chat("fail", response_mode="streaming"), w.h("chat")
    )
    assert r.status_code == 200
    events = [e for e in events if e != "ping"]
    assert len(events) == 1
    e = events[0]
    assert set(e) == {"event", "conversation_id", "message_id", "created_at", "code", "message", "status"}
    assert (e["event"], e["code"], e["status"]) == ("error", "completion_request_error", 400)
    assert "upstream exploded" in e["message"]
    assert len(w.llm.requests) == 1  # no silent retries
    row = await message_row(w, e["message_id"])
    assert row.status == "error" and "upstream exploded" in row.error
    msgs = (
        await w.a.client.get(
            "/v1/messages",
            params={"conversation_id": e["conversation_id"], "user": "u1"},
            headers=w.h("chat"),
        )
    ).json()
    assert msgs["data"][0]["status"] == "error" and "upstream exploded" in msgs["data"][0]["error"]


async def test_stream_error_on_malformed_chunk(world: World) -> None:
    w = world
    w.llm.push(reply="one two three four", malformed_after=2)
    _r, events = await stream(
        w.a.client, "/v1/chat-messages", chat("bad", response_mode="streaming"), w.h("chat")
    )
    events = [e for e in events if e != "ping"]
    assert [e["event"] for e in events] == ["message", "message", "error"]
    assert events[-1]["code"] == "completion_request_error" and "task_id" not in events[-1]
    row = await message_row(w, events[0]["message_id"])
    assert row.status == "error" and row.answer == "one two"


async def test_stream_error_on_llm_disconnect(world: World) -> None:
    w = world
    w.llm.push(reply="one two three four", disconnect_after=3)
    _r, events = await stream(
        w.a.client,
        "/v1/completion-messages",
        {"inputs": {"topic": "t"}, "user": "u1", "response_mode": "streaming"},
        w.h("completion"),
    )
    events = [e for e in events if e != "ping"]
    assert [e["event"] for e in events] == ["message"] * 3 + ["error"]
    assert "conversation_id" not in events[-1] and events[-1]["status"] == 400
    row = await message_row(w, events[0]["message_id"])
    assert row.status == "error" and row.answer == "one two three"


async def test_blocking_llm_failure(world: World) -> None:
    w = world
    w.llm.push(status=401, body={"error": {"message": "bad key", "type": "invalid_request_error"}})
    r = await w.a.client.post("/v1/chat-messages", json=chat("fail"), headers=w.h("chat"))
    assert r.status_code == 400
    assert r.json()["code"] == "completion_request_error" and "bad key" in r.json()["message"]
    async with w.db.session() as s:
        row = (
            (
                await s.execute(
                    select(Message)
                    .where(Message.query == "fail", Message.status == "error")
                    .order_by(Message.created_at.desc())
                )
            )
            .scalars()
            .first()
        )
    assert row is not None and "bad key" in row.error


# -- runs: stop, disconnect, timeout, ping, event log --------------------------------------------------
async def _stop_while_streaming(w: World, stopper: Replica, user: str = "stopper") -> tuple[list, dict]:
    w.llm.push(reply=" ".join(f"w{i}" for i in range(40)), delay=0.05, match="stop-me")
    h = w.h("chat")
    seen: list[Any] = []
    async with w.a.client.stream(
        "POST", "/v1/chat-messages", json=chat("stop-me", user=user, response_mode="streaming"), headers=h
    ) as r:
        async for ev in iter_events(r):
            if ev == "ping":
                continue
            seen.append(ev)
            if len(seen) == 3:
                stop = await stopper.client.post(
                    f"/v1/chat-messages/{ev['task_id']}/stop", json={"user": user}, headers=h
                )
                assert stop.status_code == 200 and stop.json() == {"result": "success"}
    return seen, seen[-1]


async def test_stop_same_replica(world: World) -> None:
    w = world
    seen, end = await _stop_while_streaming(w, w.a)
    assert end["event"] == "message_end"
    deltas = [e["answer"] for e in seen if e["event"] == "message"]
    partial = "".join(deltas)
    assert 3 <= len(deltas) < 40
    assert_usage(end["metadata"]["usage"])
    row = await message_row(w, end["message_id"])
    assert (row.status, row.answer) == ("stopped", partial)
    msgs = (
        await w.a.client.get(
            "/v1/messages",
            params={"conversation_id": end["conversation_id"], "user": "stopper"},
            headers=w.h("chat"),
        )
    ).json()
    assert msgs["data"][-1]["status"] == "normal" and msgs["data"][-1]["answer"] == partial


async def test_stop_from_other_replica(world: World) -> None:
    w = world
    seen, end = await _stop_while_streaming(w, w.b)
    assert end["event"] == "message_end"
    partial = "".join(e["answer"] for e in seen if e["event"] == "message")
    assert partial and len(seen) < 41
    row = await message_row(w, end["message_id"])
    assert (row.status, row.answer) == ("stopped", partial)


async def test_stop_by_other_user_is_ignored(world: World) -> None:
    w = world
    w.llm.push(reply="a b c d e f", delay=0.05, match="mine")
    h = w.h("chat")
    events: list[Any] = []
    async with w.a.client.stream(
        "POST", "/v1/chat-messages", json=chat("mine", user="owner", response_mode="streaming"), headers=h
    ) as r:
        async for ev in iter_events(r):
            if ev == "ping":
                continue
            events.append(ev)
            if len(events) == 1:
                for replica in (w.a, w.b):
                    s = await replica.client.post(
                        f"/v1/chat-messages/{ev['task_id']}/stop", json={"user": "intruder"}, headers=h
                    )
                    assert s.status_code == 200 and s.json() == {"result": "success"}
                s = await w.a.client.post(f"/v1/chat-messages/{ev['task_id']}/stop", json={}, headers=h)
                assert s.status_code == 400 and s.json()["message"] == "Arg user must be provided."
    assert "".join(e["answer"] for e in events[:-1]) == "a b c d e f"
    assert (await message_row(w, events[0]["message_id"])).status == "normal"
    # unknown task ids are fine too
    s = await w.b.client.post(
        "/v1/completion-messages/whatever/stop", json={"user": "x"}, headers=w.h("completion")
    )
    assert s.status_code == 200 and s.json() == {"result": "success"}


async def test_client_disconnect_run_completes(world: World) -> None:
    w = world
    w.llm.push(reply=" ".join(f"t{i}" for i in range(20)), delay=0.05, match="leave")
    message_id = None
    async with w.a.client.stream(
        "POST", "/v1/chat-messages", json=chat("leave", response_mode="streaming"), headers=w.h("chat")
    ) as r:
        async for ev in iter_events(r):
            if ev != "ping":
                message_id = ev["message_id"]
                break  # leaving the block closes the connection mid-stream
    assert message_id
    row = await wait_finished(w, message_id)
    assert (row.status, row.answer) == ("normal", " ".join(f"t{i}" for i in range(20)))
    assert row.answer_tokens == 20
    assert w.llm.completed == 1 and w.llm.aborted == 0


async def test_run_timeout(world: World) -> None:
    w = world  # replica b: run_timeout = 3 s
    w.llm.push(reply=" ".join(f"s{i}" for i in range(40)), delay=0.25, match="slowpoke")
    started = time.monotonic()
    _r, events = await stream(
        w.b.client, "/v1/chat-messages", chat("slowpoke", response_mode="streaming"), w.h("chat")
    )
    elapsed = time.monotonic() - started
    assert TIMEOUT_B - 0.5 < elapsed < TIMEOUT_B + 2
    events = [e for e in events if e != "ping"]
    assert events[-1]["event"] == "message_end"
    partial = "".join(e["answer"] for e in events[:-1])
    assert partial.startswith("s0 s1") and not partial.endswith("s39")
    row = await message_row(w, events[0]["message_id"])
    assert (row.status, row.answer) == ("stopped", partial)
    assert row.error == f"run timed out after {TIMEOUT_B:g} s"


async def test_ping_when_idle(world: World) -> None:
    w = world  # replica a: ping_interval = 0.3 s
    w.llm.push(reply="late answer", first_delay=1.0)
    r, events = await stream(
        w.a.client, "/v1/chat-messages", chat("wait", response_mode="streaming"), w.h("chat")
    )
    assert r.status_code == 200
    first_data = next(i for i, e in enumerate(events) if e != "ping")
    assert first_data >= 2 and all(e == "ping" for e in events[:first_data])
    assert [e["event"] for e in events if e != "ping"] == ["message", "message", "message_end"]
    # replica b keeps the 10 s default: no ping in a 1 s wait
    w.llm.push(reply="late answer", first_delay=1.0)
    _r, events = await stream(
        w.b.client, "/v1/chat-messages", chat("wait", response_mode="streaming"), w.h("chat")
    )
    assert "ping" not in events


async def test_events_reach_the_jetstream_log(world: World) -> None:
    w = world
    _r, events = await stream(
        w.a.client, "/v1/chat-messages", chat("logged words", response_mode="streaming"), w.h("chat")
    )
    events = [e for e in events if e != "ping"]
    task_id = events[0]["task_id"]
    sub = await w.a.ctx.bus.js.subscribe(task_events(task_id), ordered_consumer=True)
    logged = []
    try:
        while len(logged) < len(events):
            msg = await sub.next_msg(timeout=5)
            logged.append(orjson.loads(msg.data))
    finally:
        await sub.unsubscribe()
    assert logged == events


# -- messages, conversations, feedback ----------------------------------------------------------------
async def test_messages_paging_and_scoping(world: World) -> None:
    w = world
    h, c = w.h("chat"), w.a.client
    r = await c.post("/v1/chat-messages", json=chat("m0", user="pager"), headers=h)
    conv = r.json()["conversation_id"]
    for i in range(1, 5):
        await c.post("/v1/chat-messages", json=chat(f"m{i}", user="pager", conversation_id=conv), headers=h)

    async def page(**params: Any) -> httpx.Response:
        return await c.get(
            "/v1/messages", params={"conversation_id": conv, "user": "pager", **params}, headers=h
        )

    p1 = (await page(limit=2)).json()
    assert p1["limit"] == 2 and p1["has_more"] is True
    assert [m["query"] for m in p1["data"]] == ["m3", "m4"]
    assert all(set(m) == MESSAGE_ITEM_KEYS for m in p1["data"])
    m = p1["data"][1]
    assert (m["answer"], m["status"], m["error"], m["feedback"]) == ("Echo: m4", "normal", None, None)
    assert m["message_files"] == [] and m["agent_thoughts"] == [] and m["retriever_resources"] == []
    p2 = (await page(limit=2, first_id=p1["data"][0]["id"])).json()
    assert [m["query"] for m in p2["data"]] == ["m1", "m2"] and p2["has_more"] is True
    p3 = (await page(limit=2, first_id=p2["data"][0]["id"])).json()
    assert [m["query"] for m in p3["data"]] == ["m0"] and p3["has_more"] is False
    assert [m["query"] for m in (await page()).json()["data"]] == [f"m{i}" for i in range(5)]

    r = await page(first_id=str(uuid.uuid4()))
    assert r.status_code == 404 and r.json()["message"] == "First Message Not Exists."
    for bad in (0, 101):
        assert (await page(limit=bad)).status_code == 400
    r = await c.get("/v1/messages", params={"user": "pager"}, headers=h)
    assert r.status_code == 400 and r.json()["code"] == "invalid_param"
    # another user of the same app, the default user, and another app: the conversation does not exist
    for params, headers in (({"user": "someone-else"}, h), ({}, h), ({"user": "pager"}, w.h("other"))):
        r = await c.get("/v1/messages", params={"conversation_id": conv, **params}, headers=headers)
        assert r.status_code == 404 and r.json()["message"] == "Conversation Not Exists.", params
    r = await c.post(
        "/v1/chat-messages", json=chat("x", user="someone-else", conversation_id=conv), headers=h
    )
    assert r.status_code == 404
    r = await c.get(
        "/v1/messages", params={"conversation_id": conv, "user": "pager"}, headers=w.h("completion")
    )
    assert r.status_code == 400 and r.json()["code"] == "not_chat_app"


async def test_conversations_list_sort_and_paging(world: World) -> None:
    w = world
    h, c = w.h("chat"), w.a.client
    ids = []
    for i in range(3):
        r = await c.post("/v1/chat-messages", json=chat(f"conversation {i}", user="lister"), headers=h)
        ids.append(r.json()["conversation_id"])
    # a new message bumps the oldest conversation to the top of -updated_at
    await c.post("/v1/chat-messages", json=chat("again", user="lister", conversation_id=ids[0]), headers=h)

    async def listing(**params: Any) -> httpx.Response:
        return await c.get("/v1/conversations", params={"user": "lister", **params}, headers=h)

    data = (await listing()).json()
    assert data["has_more"] is False and data["limit"] == 20
    assert [x["id"] for x in data["data"]] == [ids[0], ids[2], ids[1]]
    item = data["data"][1]
    assert set(item) == CONVERSATION_KEYS
    assert item["name"] == "conversation 2" and item["status"] == "normal"
    assert item["inputs"] == {"persona": "a pirate", "tone": ""}
    assert isinstance(item["created_at"], int) and isinstance(item["updated_at"], int)
    by_created = (await listing(sort_by="created_at")).json()
    assert [x["id"] for x in by_created["data"]] == ids
    p1 = (await listing(sort_by="-created_at", limit=2)).json()
    assert [x["id"] for x in p1["data"]] == [ids[2], ids[1]] and p1["has_more"] is True
    p2 = (await listing(sort_by="-created_at", limit=2, last_id=ids[1])).json()
    assert [x["id"] for x in p2["data"]] == [ids[0]] and p2["has_more"] is False
    r = await listing(last_id=str(uuid.uuid4()))
    assert r.status_code == 404 and r.json()["message"] == "Last Conversation Not Exists."
    assert (await listing(sort_by="name")).status_code == 400
    assert (await listing(limit=0)).status_code == 400
    other = await c.get("/v1/conversations", params={"user": "nobody-here"}, headers=h)
    assert other.json() == {"limit": 20, "has_more": False, "data": []}
    assert (await c.get("/v1/conversations", params={"user": "lister"}, headers=w.h("other"))).json()[
        "data"
    ] == []
    r = await c.get("/v1/conversations", params={"user": "lister"}, headers=w.h("completion"))
    assert r.status_code == 400 and r.json()["code"] == "not_chat_app"


async def test_delete_conversation(world: World) -> None:
    w = world
    h, c = w.h("chat"), w.a.client
    conv = (await c.post("/v1/chat-messages", json=chat("to delete", user="deleter"), headers=h)).json()[
        "conversation_id"
    ]
    r = await c.request("DELETE", f"/v1/conversations/{conv}", json={"user": "someone-else"}, headers=h)
    assert r.status_code == 404
    r = await c.request("DELETE", f"/v1/conversations/{conv}", json={"user": "deleter"}, headers=h)
    assert r.status_code == 204 and r.content == b""
    r = await c.get("/v1/messages", params={"conversation_id": conv, "user": "deleter"}, headers=h)
    assert r.status_code == 404
    r = await c.request("DELETE", f"/v1/conversations/{conv}", json={"user": "deleter"}, headers=h)
    assert r.status_code == 404 and r.json()["message"] == "Conversation Not Exists."
    listed = (await c.get("/v1/conversations", params={"user": "deleter"}, headers=h)).json()
    assert conv not in [x["id"] for x in listed["data"]]
    r = await c.post(
        "/v1/chat-messages", json=chat("revive", user="deleter", conversation_id=conv), headers=h
    )
    assert r.status_code == 404
    r = await c.request("DELETE", f"/v1/conversations/{conv}", content=b"{oops", headers=h)
    assert r.status_code == 400 and r.json()["code"] == "bad_request"


async def test_rename_conversation(world: World) -> None:
    w = world
    h, c = w.h("chat"), w.a.client
    conv = (
        # no title in the background: the one asked for below must be the only title call
        await c.post("/v1/chat-messages", json=chat("Tell me about the sea", user="namer", auto_generate_name=False),
                     headers=h)
    ).json()["conversation_id"]
    r = await c.post(f"/v1/conversations/{conv}/name", json={"name": "Sea talk", "user": "namer"}, headers=h)
    assert r.status_code == 200, r.text
    assert set(r.json()) == CONVERSATION_KEYS and r.json()["name"] == "Sea talk" and r.json()["id"] == conv
    r = await c.post(f"/v1/conversations/{conv}/name", json={"name": "  ", "user": "namer"}, headers=h)
    assert r.status_code == 400 and r.json()["message"] == "name is required when auto_generate is false"
    w.llm.push(reply='"Sailing the Seas."', match="Tell me about the sea", endpoint="title")
    r = await c.post(
        f"/v1/conversations/{conv}/name", json={"auto_generate": True, "user": "namer"}, headers=h
    )
    assert r.status_code == 200 and r.json()["name"] == "Sailing the Seas"
    title_call = w.llm.title_requests[-1]
    assert title_call.body.get("stream") in (None, False) and title_call.last_user == "Tell me about the sea"
    listed = (await c.get("/v1/conversations", params={"user": "namer"}, headers=h)).json()
    assert listed["data"][0]["name"] == "Sailing the Seas"
    r = await c.post(f"/v1/conversations/{conv}/name", json={"name": "x", "user": "intruder"}, headers=h)
    assert r.status_code == 404


async def test_feedback(world: World) -> None:
    w = world
    h, c = w.h("chat"), w.a.client
    body = (await c.post("/v1/chat-messages", json=chat("rate me", user="rater"), headers=h)).json()
    mid, conv = body["message_id"], body["conversation_id"]

    async def rating() -> Any:
        msgs = (
            await c.get("/v1/messages", params={"conversation_id": conv, "user": "rater"}, headers=h)
        ).json()
        return msgs["data"][0]["feedback"]

    async def fb(payload: dict, message_id: str = mid) -> httpx.Response:
        return await c.post(f"/v1/messages/{message_id}/feedbacks", json=payload, headers=h)

    r = await fb({"rating": "like", "user": "rater", "content": "nice"})
    assert r.status_code == 200 and r.json() == {"result": "success"}
    assert await rating() == {"rating": "like"}
    assert (await fb({"rating": "dislike", "user": "rater"})).status_code == 200
    assert await rating() == {"rating": "dislike"}
    assert (await fb({"rating": None, "user": "rater"})).status_code == 200
    assert await rating() is None
    r = await fb({"rating": None, "user": "rater"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_param"
    r = await fb({"rating": "like", "user": "intruder"})
    assert r.status_code == 404 and r.json()["message"] == "Message Not Exists."
    r = await fb({"rating": "like", "user": "rater"}, str(uuid.uuid4()))
    assert r.status_code == 404 and r.json()["message"] == "Message Not Exists."
    assert (await fb({"rating": "love", "user": "rater"})).status_code == 400
    r = await fb({"rating": "like"})
    assert r.status_code == 400 and r.json()["message"] == "Arg user must be provided."


async def test_parameters_info_meta(world: World) -> None:
    w = world
    c = w.a.client
    p = (await c.get("/v1/parameters", params={"user": "u1"}, headers=w.h("chat"))).json()
    assert p["opening_statement"] == "Ahoy"
    assert p["user_input_form"][0]["text-input"]["variable"] == "persona"
    assert p["user_input_form"][1]["select"]["options"] == ["calm", "loud"]
    for k in (
        "suggested_questions_after_answer",
        "speech_to_text",
        "text_to_speech",
        "retriever_resource",
        "annotation_reply",
        "more_like_this",
        "sensitive_word_avoidance",
        "file_upload",
        "system_parameters",
    ):
        assert k in p
    r = await c.get("/v1/parameters", headers=w.h("noconfig"))
    assert r.status_code == 400 and r.json()["code"] == "app_unavailable"
    info = (await c.get("/v1/info", headers=w.h("completion"))).json()
    assert info == {
        "name": "completion app",
        "description": "the completion app",
        "tags": [],
        "mode": "completion",
        "author_name": "Alice",
    }
    assert (await c.get("/v1/meta", headers=w.h("chat"))).json() == {"tool_icons": {}}


async def test_config_cache_and_invalidation(world: World) -> None:
    w = world
    h, c = w.h("chat"), w.b.client
    await c.post("/v1/chat-messages", json=chat("warm"), headers=h)
    new_cfg = model_config("scripted-chat", pre_prompt="You speak as {{persona}}, always.")
    async with w.db.session() as s:
        cfg_id = (
            await s.execute(select(App.app_model_config_id).where(App.id == w.apps["chat"]))
        ).scalar_one()
        await s.execute(update(AppModelConfig).where(AppModelConfig.id == cfg_id).values(config=new_cfg))
        await s.commit()
    try:
        await c.post("/v1/chat-messages", json=chat("cached"), headers=h)
        assert w.llm.requests[-1].messages[0]["content"] == "You are a pirate."  # still the cached config
        await w.a.ctx.bus.publish_json(
            config_changed("app", w.apps["chat"]), {"kind": "app", "id": w.apps["chat"]}
        )
        await w.a.ctx.bus.nc.flush()
        await asyncio.sleep(0.2)
        await c.post("/v1/chat-messages", json=chat("fresh"), headers=h)
        assert w.llm.requests[-1].messages[0]["content"] == "You speak as a pirate, always."
    finally:
        async with w.db.session() as s:
            await s.execute(
                update(AppModelConfig)
                .where(AppModelConfig.id == cfg_id)
                .values(config=model_config("scripted-chat"))
            )
            await s.commit()
        # a provider change drops every app of the tenant
        await w.a.ctx.bus.publish_json(
            config_changed("provider", w.tenant), {"kind": "provider", "id": w.tenant}
        )
        await w.a.ctx.bus.nc.flush()
        await asyncio.sleep(0.2)
    await c.post("/v1/chat-messages", json=chat("restored"), headers=h)
    assert w.llm.requests[-1].messages[0]["content"] == "You are a pirate."


async def test_start_sweeps_interrupted_runs(world: World) -> None:
    w = world
    row = await message_row(w, w.stale_message)
    assert (row.status, row.error) == ("error", "interrupted")


async def test_no_message_left_running(world: World) -> None:
    w = world
    deadline = time.monotonic() + 10
    while w.a.app.state.runtime.runs.runs or w.b.app.state.runtime.runs.runs:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    async with w.db.session() as s:
        running = (
            await s.execute(select(func.count()).select_from(Message).where(Message.status == "running"))
        ).scalar_one()
        total = (await s.execute(select(func.count()).select_from(Message))).scalar_one()
    assert running == 0 and total > 30


async def test_resume_on_the_other_replica_with_last_event_id(world: World) -> None:
    """Disconnect mid-stream from replica a, resume from replica b: every remaining event exactly once."""
    w = world
    tokens = [f"t{i} " for i in range(12)]
    w.llm.push(match="resume me", tokens=tokens, delay=0.05)
    seen: list[tuple[int, dict]] = []
    async with w.a.client.stream("POST", "/v1/chat-messages", headers=w.h("chat"),
                                 json=chat("resume me", response_mode="streaming")) as r:
        buf = b""
        async for chunk in r.aiter_bytes():
            buf += chunk
            while b"\n\n" in buf and len(seen) < 4:
                frame, buf = buf.split(b"\n\n", 1)
                if frame.startswith(b"id: "):
                    head, _, data = frame.partition(b"\n")
                    seen.append((int(head[4:]), orjson.loads(data[6:])))
            if len(seen) >= 4:
                break  # the client goes away after 4 events
    task_id = seen[0][1]["task_id"]
    assert [i for i, _ in seen] == [1, 2, 3, 4]
    async with w.b.client.stream("GET", f"/v1/chat-messages/{task_id}/events", headers={
            **w.h("chat"), "Last-Event-ID": "4"}, params={"user": "u1"}) as r:
        assert r.status_code == 200
        rest = parse_resumed(await r.aread())
    assert [i for i, _ in rest] == list(range(5, 5 + len(rest)))
    events = [e for _, e in seen] + [e for _, e in rest]
    assert events[-1]["event"] == "message_end"
    assert "".join(e["answer"] for e in events if e["event"] == "message") == "".join(tokens)
    # from the start, by query parameter, after the run has finished
    async with w.b.client.stream("GET", f"/v1/chat-messages/{task_id}/events", headers=w.h("chat"),
                                 params={"user": "u1", "last_event_id": "0"}) as r:
        again = parse_resumed(await r.aread())
    assert [e for _, e in again] == events
    r = await w.b.client.get(f"/v1/chat-messages/{task_id}/events", headers=w.h("chat"), params={"user": "u2"})
    assert r.status_code == 404  # another user's run
    r = await w.b.client.get(f"/v1/chat-messages/{task_id}/events", headers={**w.h("chat"), "Last-Event-ID": "x"},
                             params={"user": "u1"})
    assert r.status_code == 400


def parse_resumed(raw: bytes) -> list[tuple[int, dict]]:
    out = []
    for frame in raw.split(b"\n\n")[:-1]:
        if frame == b"event: ping":
            continue
        head, _, data = frame.partition(b"\n")
        out.append((int(head[4:]), orjson.loads(data[6:])))
    return out

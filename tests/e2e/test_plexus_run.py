"""Boot `plexus run` (embedded defaults: SQLite, embedded NATS, in-memory limiter) as a subprocess and
drive it over HTTP like an operator and a client app would, then with both Dify SDKs, unmodified."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared.natsd import free_port

ROOT = Path(__file__).resolve().parents[2]
PLEXUS = Path(sys.executable).parent / "plexus"
SDKS = {
    "dify-client": ROOT / ".venv-sdk/dify-client/bin/python",
    "dify-client-python": ROOT / ".venv-sdk/dify-client-python/bin/python",
}


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def plexus(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("plexus-data")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLEXUS_")}
    env["PLEXUS_RUNTIME__PING_INTERVAL"] = "10"
    proc = subprocess.Popen(
        [str(PLEXUS), "run", "--port", str(port), "--data-dir", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=data, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"plexus run exited early:\n{proc.stdout.read()}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("plexus run did not become ready in 60 s")
    yield proc, base, data
    if proc.poll() is None:
        proc.kill()
        proc.wait()


async def test_an_idle_connection_outlives_uvicorns_default_keep_alive(plexus) -> None:
    """`plexus run` keeps an idle keep-alive connection open past uvicorn's 5 s default (PLEXUS_KEEP_ALIVE_SECONDS,
    75 s): a gateway pool or load balancer that reuses it after 5–30 s idle must not meet a closing socket."""
    from shared.settings import KEEP_ALIVE_SECONDS

    _, base, _ = plexus
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))

    async def healthz() -> bytes:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: plexus\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        return head.split(b"\r\n", 1)[0] + b" " + await reader.readexactly(length)

    try:
        assert (await healthz()).startswith(b"HTTP/1.1 200")
        assert KEEP_ALIVE_SECONDS > 6.5
        await asyncio.sleep(6.5)  # longer than uvicorn's default (5 s): the server would have closed it
        assert (await healthz()).startswith(b"HTTP/1.1 200")  # the same connection answers
    finally:
        writer.close()


async def test_operator_and_client_flow_then_clean_shutdown(plexus, llm) -> None:
    proc, base, data = plexus
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        assert (await c.get("/console/api/setup")).json()["step"] == "not_started"
        r = await c.post("/console/api/setup", json={"email": "ops@example.com", "name": "Ops",
                                                     "password": "s3cret-pass"})
        assert r.status_code == 201, r.text
        r = await c.post("/console/api/login", json={"email": "ops@example.com", "password": "s3cret-pass"})
        token = r.json()["data"]["access_token"]
        h = {"Authorization": f"Bearer {token}"}
        r = await c.post("/console/api/workspaces/current/model-providers/openai-compatible/credentials",
                         headers=h, json={"credentials": {"api_key": "sk-test", "api_base": llm.base_url}})
        assert r.status_code == 200, r.text
        r = await c.post("/console/api/apps", headers=h, json={"name": "E2E bot", "mode": "chat"})
        assert r.status_code == 201, r.text
        app_id = r.json()["id"]
        r = await c.post(f"/console/api/apps/{app_id}/model-config", headers=h, json={
            "model": {"provider": "openai-compatible", "name": "scripted", "completion_params": {}},
            "pre_prompt": "You help with {{topic}}.",
            "user_input_form": [{"text-input": {"label": "Topic", "variable": "topic", "required": False}}],
            "opening_statement": "Hi!",
        })
        assert r.status_code == 200, r.text
        r = await c.post(f"/console/api/apps/{app_id}/api-keys", headers=h)
        assert r.status_code == 201, r.text
        key = r.json()["token"]
        k = {"Authorization": f"Bearer {key}"}

        # blocking chat through the gateway
        r = await c.post("/v1/chat-messages", headers=k, json={"inputs": {"topic": "tea"}, "query": "hello",
                                                               "user": "e2e"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["answer"] == "Echo: hello" and body["mode"] == "chat"
        assert llm.requests_matching("hello")[-1].messages[0]["content"] == "You help with tea."

        # streaming chat in the same conversation
        events = []
        async with c.stream("POST", "/v1/chat-messages", headers=k, json={
            "inputs": {}, "query": "again", "user": "e2e", "response_mode": "streaming",
            "conversation_id": body["conversation_id"]}) as s:
            assert s.status_code == 200
            assert s.headers["content-type"].startswith("text/event-stream")
            async for line in s.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        assert [e["event"] for e in events][-1] == "message_end"
        assert "".join(e["answer"] for e in events if e["event"] == "message") == "Echo: again"
        # memory: the second call carried the first turn
        sent = llm.requests_matching("again")[-1].messages
        assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]

        # a wrong key and an unknown route answer in the envelope
        r = await c.get("/v1/parameters", headers={"Authorization": "Bearer app-nope"})
        assert r.status_code == 401 and r.json()["message"] == "Access token is invalid"
        r = await c.get("/nowhere")
        assert r.status_code == 404 and r.json()["code"] == "not_found"
        r = await c.get("/metrics")
        assert "plexus_http_requests_total" in r.text

        # knowledge: a dataset key, a document indexed by the embedded pipeline, linked to the app
        r = await c.post("/console/api/datasets/api-keys", headers=h)
        assert r.status_code == 201, r.text
        dk = {"Authorization": f"Bearer {r.json()['token']}"}
        ds = (await c.post("/v1/datasets", headers=dk, json={"name": "Handbook"})).json()
        r = await c.post(f"/v1/datasets/{ds['id']}/document/create_by_text", headers=dk, json={
            "name": "tea", "text": "Green tea is steeped at 80 degrees for two minutes.\n\n"
                                   "Black tea is steeped at 95 degrees for four minutes.",
            "indexing_technique": "high_quality", "process_rule": {"mode": "automatic"}})
        assert r.status_code == 200, r.text
        batch = r.json()["batch"]
        deadline = time.monotonic() + 60
        while True:
            st = (await c.get(f"/v1/datasets/{ds['id']}/documents/{batch}/indexing-status", headers=dk)).json()
            if st["data"][0]["indexing_status"] in ("completed", "error") or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert st["data"][0]["indexing_status"] == "completed", st
        r = await c.post(f"/console/api/apps/{app_id}/model-config", headers=h, json={
            "model": {"provider": "openai-compatible", "name": "scripted", "completion_params": {}},
            "pre_prompt": "You help with {{topic}}.",
            "user_input_form": [{"text-input": {"label": "Topic", "variable": "topic", "required": False}}],
            "opening_statement": "Hi!",
            "suggested_questions_after_answer": {"enabled": True},
            "dataset_configs": {"retrieval_model": "multiple", "top_k": 2,
                                "datasets": {"datasets": [{"dataset": {"enabled": True, "id": ds["id"]}}]}},
        })
        assert r.status_code == 200, r.text

        # an agent-chat app with the built-in calculator (the tools service answers over NATS)
        r = await c.post("/console/api/apps", headers=h, json={"name": "E2E agent", "mode": "agent-chat"})
        agent_id = r.json()["id"]
        r = await c.post(f"/console/api/apps/{agent_id}/model-config", headers=h, json={
            "model": {"provider": "openai-compatible", "name": "scripted", "completion_params": {}},
            "agent_mode": {"enabled": True, "strategy": "function_call", "tools": [
                {"provider_type": "builtin", "provider_id": "calculator", "tool_name": "calculator"}]}})
        assert r.status_code == 200, r.text
        agent_key = (await c.post(f"/console/api/apps/{agent_id}/api-keys", headers=h)).json()["token"]
        llm.push(match="6 * 7", with_tools=True, tool_calls=[{"name": "calculator",
                                                              "arguments": {"expression": "6 * 7"}}])
        llm.push(match_last="42", reply="It is 42.")
        # the suggested-questions call (reference §2.7) of the SDK run below
        llm.push(match="three most likely questions", reply='Sure: ["Is green tea healthy?", "How hot?", "How long?"]')

    # both Dify SDKs, each in its own virtualenv, against the running server
    for sdk, python in SDKS.items():
        if not python.exists():
            pytest.fail(f"{sdk} virtualenv missing: run `make install`")
        script = ROOT / "tests/sdk" / f"drive_{sdk.replace('-', '_')}.py"
        # off the event loop: the scripted LLM serving the SDK's chats runs on this loop
        args = [str(python), str(script), base, key] + ([agent_key] if sdk == "dify-client-python" else [])
        run = await asyncio.to_thread(subprocess.run, args,
                                      capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"{sdk} failed:\n{run.stdout}\n{run.stderr}"
        out = json.loads(run.stdout)
        assert out["stream_events"][-1] == "message_end", sdk
        assert out["stream_answer"].startswith("Echo: "), sdk
        assert out["feedback"] == {"result": "success"}, sdk
        if sdk == "dify-client":
            assert out["messages"]["data"][-1]["answer"] == "Echo: And streaming?"
            assert out["renamed"]["name"] == "Renamed by SDK"
            assert out["parameters"]["opening_statement"] == "Hi!"
        else:
            assert out["blocking"]["answer"] == "Echo: Hello from dify-client-python"
            assert out["suggested"] == {"result": "success",
                                        "data": ["Is green tea healthy?", "How hot?", "How long?"]}
            # the SDK's pydantic models accepted the retriever resources of the linked dataset
            resources = out["blocking"]["metadata"]["retriever_resources"]
            assert resources and resources[0]["dataset_name"] == "Handbook"
            assert isinstance(out["stream_usage"]["total_price"], str)
            # the SDK's pydantic models accepted the agent's events
            assert out["agent_events"][-1] == "message_end" and out["agent_answer"] == "It is 42."
            assert out["agent_thoughts"][1]["observation"] == '{"calculator": "42"}'
            assert out["agent_thoughts"][1]["tool"] == "calculator" and out["agent_thoughts"][0]["position"] == 1

    # Ctrl-C: the server exits 0 and leaves no nats-server behind
    nats_children = _children(proc.pid)
    assert nats_children, "embedded nats-server child not found"
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"plexus run did not exit within 30 s of Ctrl-C:\n{proc.stdout.read()[-5000:]}")
    assert code == 0
    assert '"stack_stopped"' in proc.stdout.read()  # the services stopped in order before the exit
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in nats_children) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not any(_alive(p) for p in nats_children), "nats-server orphaned after Ctrl-C"
    assert (data / "plexus.db").exists()

"""A model's own credentials (Dify's "Add model" on a provider, reference §7 "Per-model credentials") on the whole
stack, SQLite and, in CI, Postgres: saved with a real test call to the model, listed and shown masked, merged when
re-posted masked, deleted; a call to that model (an app's, the workspace default's, a dataset's embedding model)
goes to its own endpoint, a second scripted OpenAI-compatible server, while the provider's other models keep the
provider's endpoint; deleting them falls back to the provider's at once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlmodel import select

from shared.crypto import decrypt_json
from shared.models import ProviderModelCredential
from tests.conftest import LiveServer, live_fixture
from tests.llm_server import ScriptedLLM
from tests.support import Apps, bearer, chat_ok, envelope, invite_member, scripted_owner, wait_indexed

C = "/console/api"
P = f"{C}/workspaces/current/model-providers"
OPENAI = f"{P}/openai-compatible"
KEY = "sk-own-model-0123456789"

mstack = live_fixture("model_credentials", "mstack")


@pytest.fixture(scope="module")
async def second() -> AsyncIterator[ScriptedLLM]:
    """A second OpenAI-compatible endpoint (say a vLLM server beside the provider's Ollama)."""
    server = ScriptedLLM()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def c(mstack: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=mstack.base_url, timeout=60) as client:
        yield client


@pytest.fixture
async def owner(c: httpx.AsyncClient, llm: ScriptedLLM, second: ScriptedLLM) -> dict[str, str]:
    """The owner, with the openai-compatible provider pointing at the session's scripted server."""
    second.reset()
    return await scripted_owner(c, llm)


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def body(model: str, server: ScriptedLLM, model_type: str = "llm", **creds: Any) -> dict[str, Any]:
    return {"model": model, "model_type": model_type,
            "credentials": {"api_key": KEY, "api_base": server.base_url, **creds}}


def config(model: str, provider: str = "openai-compatible") -> dict[str, Any]:
    return {"model": {"provider": provider, "name": model, "mode": "chat", "completion_params": {}},
            "pre_prompt": "You are helpful."}


async def stored(live: LiveServer, model: str) -> list[dict[str, Any]]:
    async with live.ctx.db.session() as s:
        rows = (await s.exec(select(ProviderModelCredential).where(ProviderModelCredential.model == model))).all()
    return [decrypt_json(live.ctx.settings.secret_key, r.encrypted_credentials) for r in rows]


async def listed_models(c: httpx.AsyncClient, h: dict[str, str]) -> list[str]:
    r = await c.get(f"{OPENAI}/models", headers=h)
    assert r.status_code == 200, r.text
    return [m["model"] for m in r.json()["data"]]


def models_asked(server: ScriptedLLM, query: str) -> list[str]:
    return [r.body["model"] for r in server.requests_matching(query)]


async def test_a_model_with_its_own_credentials_is_served_by_its_own_endpoint(
        mstack: LiveServer, c: httpx.AsyncClient, owner: dict[str, str], llm: ScriptedLLM,
        second: ScriptedLLM) -> None:
    own, other = uniq("vllm"), uniq("ollama")
    n = len(second.requests)
    r = await c.post(f"{OPENAI}/models", headers=owner, json=body(own, second))
    assert r.status_code == 200 and r.json() == {"result": "success"}, r.text
    # the save made one real call to the model, at its own endpoint
    assert [(q.body["model"], q.last_user) for q in second.requests[n:]] == [(own, "ping")]

    apps = Apps(c, owner, prefix="own-creds")
    _, k_own = await apps.create("chat", config(own))
    _, k_other = await apps.create("chat", config(other))
    q1, q2 = uniq("to-own"), uniq("to-provider")
    assert (await chat_ok(c, k_own, q1))["answer"] == f"Echo: {q1}"
    assert (await chat_ok(c, k_other, q2))["answer"] == f"Echo: {q2}"
    assert models_asked(second, q1) == [own] and models_asked(llm, q1) == []
    assert models_asked(llm, q2) == [other] and models_asked(second, q2) == []

    # listed (Dify's customizable model), shown masked, offered by the model-types route
    r = await c.get(f"{OPENAI}/models", headers=owner)
    assert r.status_code == 200, r.text
    assert [m for m in r.json()["data"] if m["model"] == own] == [{
        "model": own, "label": {"en_US": own}, "model_type": "llm", "fetch_from": "customizable-model",
        "status": "active", "model_properties": {}, "deprecated": False, "load_balancing_enabled": False,
        "features": []}]
    r = await c.get(f"{OPENAI}/models/credentials", headers=owner, params={"model": own, "model_type": "llm"})
    assert r.status_code == 200, r.text
    assert r.json() == {"credentials": {"api_key": "sk-***89", "api_base": second.base_url}}
    assert KEY not in r.text
    r = await c.get(f"{C}/workspaces/current/models/model-types/llm", headers=owner)
    listed = [(p["provider"], m["model"], m["fetch_from"]) for p in r.json()["data"] for m in p["models"]]
    assert ("openai-compatible", own, "customizable-model") in listed

    # re-posted as read back (masked key) with a change: the stored key is kept, one row
    masked = (await c.get(f"{OPENAI}/models/credentials", headers=owner,
                          params={"model": own, "model_type": "llm"})).json()["credentials"]
    r = await c.post(f"{OPENAI}/models", headers=owner,
                     json={"model": own, "model_type": "llm", "credentials": {**masked, "organization": "org-2"}})
    assert r.status_code == 200, r.text
    assert await stored(mstack, own) == [{"api_key": KEY, "api_base": second.base_url, "organization": "org-2"}]
    q_mid = uniq("after-merge")
    await chat_ok(c, k_own, q_mid)  # the runtime holds the model's binding again
    assert models_asked(second, q_mid) == [own]
    # Dify's placeholder for an untouched secret means the same
    r = await c.post(f"{OPENAI}/models/credentials/validate", headers=owner,
                     json={"model": own, "model_type": "llm",
                           "credentials": {"api_key": "[__HIDDEN__]", "api_base": second.base_url}})
    assert r.json() == {"result": "success"}, r.text

    # deleted: the next call of that app goes to the provider's endpoint at once (the runtime dropped its binding)
    r = await c.request("DELETE", f"{OPENAI}/models", headers=owner, json={"model": own, "model_type": "llm"})
    assert r.status_code == 204, r.text
    q3 = uniq("after-delete")
    await chat_ok(c, k_own, q3)
    assert models_asked(llm, q3) == [own] and models_asked(second, q3) == []
    assert await stored(mstack, own) == []
    assert own not in await listed_models(c, owner)
    envelope(await c.get(f"{OPENAI}/models/credentials", headers=owner, params={"model": own, "model_type": "llm"}),
             404, "not_found")
    envelope(await c.request("DELETE", f"{OPENAI}/models", headers=owner, json={"model": own, "model_type": "llm"}),
             404, "not_found")


async def test_own_credentials_need_no_provider_credentials(c: httpx.AsyncClient, owner: dict[str, str],
                                                            llm: ScriptedLLM, second: ScriptedLLM) -> None:
    """A model of a provider the workspace has no credentials for is usable with its own: by an app, as the
    workspace default; another model of that provider is not."""
    own = uniq("gpt-own")
    providers = (await c.get(P, headers=owner)).json()["data"]
    assert "openai" not in [p["provider"] for p in providers]
    r = await c.post(f"{P}/openai/models", headers=owner, json=body(own, second))
    assert r.status_code == 200, r.text
    try:
        # the provider is listed now: without credentials of its own, with the model that has them
        listed = {p["provider"]: p for p in (await c.get(P, headers=owner)).json()["data"]}
        assert listed["openai"]["has_credentials"] is False and listed["openai"]["credentials"] == {}
        assert {"model": own, "model_type": "llm"} in listed["openai"]["models"]
        apps = Apps(c, owner, prefix="own-only")
        _, k = await apps.create("chat", config(own, "openai"))
        q = uniq("own-only")
        await chat_ok(c, k, q)
        assert models_asked(second, q) == [own]
        _, k_none = await apps.create("chat", config(uniq("gpt-none"), "openai"))
        r = await c.post("/v1/chat-messages", headers=k_none, json={"inputs": {}, "query": "hi", "user": "u"})
        envelope(r, 400, "provider_not_initialize")

        default = f"{C}/workspaces/current/default-model"
        r = await c.post(default, headers=owner, json={"model_settings": [
            {"model_type": "llm", "provider": "openai", "model": own}]})
        assert r.status_code == 200, r.text
        r = await c.post(default, headers=owner, json={"model_settings": [
            {"model_type": "text-embedding", "provider": "openai", "model": own}]})  # its credentials are an llm's
        envelope(r, 400, "invalid_param")
        r = await c.get(f"{C}/workspaces/current/models/model-types/llm", headers=owner)
        listed = [(p["provider"], m["model"], m["fetch_from"]) for p in r.json()["data"] for m in p["models"]]
        assert listed[0] == ("openai", own, "predefined-model")  # the default first, listed once
        assert [x for x in listed if x[1] == own] == [listed[0]]
    finally:
        await c.post(f"{C}/workspaces/current/default-model", headers=owner,
                     json={"model_settings": [{"model_type": "llm"}]})
        await c.request("DELETE", f"{P}/openai/models", headers=owner, json={"model": own, "model_type": "llm"})


async def test_credentials_that_fail_their_test_call_are_not_saved(
        mstack: LiveServer, c: httpx.AsyncClient, owner: dict[str, str], second: ScriptedLLM) -> None:
    own = uniq("failing")
    second.push(match="ping", status=401, body={"error": {"message": "Incorrect API key provided",
                                                          "type": "invalid_request_error", "code": None}})
    message = envelope(await c.post(f"{OPENAI}/models", headers=owner, json=body(own, second)), 400,
                       "invalid_param")
    assert "Incorrect API key provided" in message
    assert await stored(mstack, own) == []
    assert own not in await listed_models(c, owner)
    # an endpoint nobody listens on
    dead = {"model": own, "model_type": "llm", "credentials": {"api_key": KEY, "api_base": "http://127.0.0.1:9/v1"}}
    envelope(await c.post(f"{OPENAI}/models", headers=owner, json=dead), 400, "invalid_param")
    assert await stored(mstack, own) == []

    # the validate route answers like the provider's: HTTP 200, result error or success
    second.push(match="ping", status=401, body={"error": {"message": "Incorrect API key provided",
                                                          "type": "invalid_request_error", "code": None}})
    r = await c.post(f"{OPENAI}/models/credentials/validate", headers=owner, json=body(own, second))
    assert r.status_code == 200 and r.json()["result"] == "error", r.text
    assert "Incorrect API key provided" in r.json()["error"]
    r = await c.post(f"{OPENAI}/models/credentials/validate", headers=owner, json=body(own, second))
    assert r.status_code == 200 and r.json() == {"result": "success"}, r.text
    assert await stored(mstack, own) == []  # validating stores nothing


async def test_bad_parameters(c: httpx.AsyncClient, owner: dict[str, str], second: ScriptedLLM) -> None:
    n = len(second.requests)
    for url, payload in [
        (f"{OPENAI}/models", body("m", second, model_type="image")),
        (f"{OPENAI}/models", {"model_type": "llm", "credentials": {}}),
        (f"{OPENAI}/models", {"model": " ", "model_type": "llm", "credentials": {}}),
        (f"{OPENAI}/models", {"model": "m", "model_type": "llm", "credentials": "key"}),
        (f"{P}/no-such-provider/models", body("m", second)),
        (f"{OPENAI}/models/credentials/validate", body("m", second, model_type="chat")),
        (f"{P}/no-such-provider/models/credentials/validate", body("m", second)),
    ]:
        envelope(await c.post(url, headers=owner, json=payload), 400, "invalid_param")
    assert len(second.requests) == n  # nothing was called
    envelope(await c.request("DELETE", f"{OPENAI}/models", headers=owner, json={"model": "m", "model_type": "x"}),
             400, "invalid_param")
    envelope(await c.get(f"{OPENAI}/models/credentials", headers=owner, params={"model": "m", "model_type": "x"}),
             400, "invalid_param")
    envelope(await c.get(f"{OPENAI}/models/credentials", headers=owner, params={"model": "m"}), 400,
             "invalid_param")
    envelope(await c.get(f"{P}/no-such-provider/models", headers=owner), 400, "invalid_param")


async def test_roles_and_admin_key_scopes(mstack: LiveServer, c: httpx.AsyncClient, owner: dict[str, str],
                                          second: ScriptedLLM) -> None:
    own = uniq("roles")
    heads = {}
    for role in ("normal", "editor", "admin"):
        r, _ = await invite_member(c, owner, role)
        heads[role] = bearer(r.json()["data"]["access_token"])
    for role in ("normal", "editor"):
        msg = envelope(await c.post(f"{OPENAI}/models", headers=heads[role], json=body(own, second)), 403,
                       "forbidden")
        assert "requires the admin role" in msg
        envelope(await c.request("DELETE", f"{OPENAI}/models", headers=heads[role],
                                 json={"model": own, "model_type": "llm"}), 403, "forbidden")
        # reading is everyone's
        assert (await c.get(f"{OPENAI}/models", headers=heads[role])).status_code == 200
    assert await stored(mstack, own) == []
    r = await c.post(f"{OPENAI}/models", headers=heads["admin"], json=body(own, second))
    assert r.status_code == 200, r.text
    r = await c.get(f"{OPENAI}/models/credentials", headers=heads["normal"],
                    params={"model": own, "model_type": "llm"})
    assert r.status_code == 200 and KEY not in r.text, r.text

    made = []
    try:
        keys = {}
        for scopes in (["providers:read"], ["providers:write"]):
            r = await c.post(f"{C}/api-keys", headers=owner, json={"name": uniq("k"), "permissions": scopes})
            assert r.status_code == 201, r.text
            made.append(r.json()["id"])
            keys[scopes[0]] = bearer(r.json()["token"])
        msg = envelope(await c.request("DELETE", f"{OPENAI}/models", headers=keys["providers:read"],
                                       json={"model": own, "model_type": "llm"}), 403, "forbidden")
        assert "'providers:write'" in msg
        assert own in await listed_models(c, keys["providers:read"])
        r = await c.request("DELETE", f"{OPENAI}/models", headers=keys["providers:write"],
                            json={"model": own, "model_type": "llm"})
        assert r.status_code == 204, r.text
        assert await stored(mstack, own) == []
    finally:
        for key_id in made:
            await c.delete(f"{C}/api-keys/{key_id}", headers=owner)


async def test_a_datasets_embedding_model_with_its_own_credentials(
        c: httpx.AsyncClient, owner: dict[str, str], llm: ScriptedLLM, second: ScriptedLLM) -> None:
    emb = uniq("emb-own")
    n = len(second.embedding_requests)
    r = await c.post(f"{OPENAI}/models", headers=owner, json=body(emb, second, model_type="text-embedding"))
    assert r.status_code == 200, r.text
    # checked with an embedding call, not a chat completion
    assert [q.body["model"] for q in second.embedding_requests[n:]] == [emb]
    assert not [q for q in second.requests if q.body.get("model") == emb]
    r = await c.get(f"{C}/workspaces/current/models/model-types/text-embedding", headers=owner)
    listed = [(p["provider"], m["model"]) for p in r.json()["data"] for m in p["models"]]
    assert ("openai-compatible", emb) in listed

    r = await c.post(f"{C}/datasets/api-keys", headers=owner)
    assert r.status_code == 201, r.text
    key_id, h = r.json()["id"], bearer(r.json()["token"])
    try:
        r = await c.post("/v1/datasets", headers=h, json={
            "name": uniq("kb"), "indexing_technique": "high_quality",
            "embedding_model_provider": "openai-compatible", "embedding_model": emb})
        assert r.status_code == 200, r.text
        ds = r.json()["id"]
        before_own, before_provider = len(second.embedding_requests), len(llm.embedding_requests)
        r = await c.post(f"/v1/datasets/{ds}/document/create-by-text", headers=h, json={
            "name": "tides", "text": "Kelp forests in the tidal gardens grow fast in summer.",
            "indexing_technique": "high_quality", "process_rule": {"mode": "automatic"}})
        assert r.status_code == 200, r.text
        (st,) = await wait_indexed(c, "/v1", h, ds, r.json()["batch"])
        assert st["indexing_status"] == "completed", st
        assert {q.body["model"] for q in second.embedding_requests[before_own:]} == {emb}
        assert [q for q in llm.embedding_requests[before_provider:] if q.body["model"] == emb] == []
    finally:
        await c.delete(f"{C}/datasets/api-keys/{key_id}", headers=owner)
        await c.request("DELETE", f"{OPENAI}/models", headers=owner,
                        json={"model": emb, "model_type": "text-embedding"})


async def test_each_model_type_is_checked_with_a_call_of_its_kind(c: httpx.AsyncClient, owner: dict[str, str],
                                                                  second: ScriptedLLM) -> None:
    logs = {"llm": second.requests, "text-embedding": second.embedding_requests,
            "moderation": second.moderation_requests, "tts": second.speech_requests,
            "speech2text": second.transcription_requests}
    for model_type in logs:
        before = {t: len(q) for t, q in logs.items()}
        r = await c.post(f"{OPENAI}/models/credentials/validate", headers=owner,
                         json=body(uniq(model_type), second, model_type=model_type))
        assert r.json() == {"result": "success"}, (model_type, r.text)
        assert {t: len(q) - before[t] for t, q in logs.items()} == {t: int(t == model_type) for t in logs}

"""GET /v1/messages/{id}/suggested, GET /v1/app/feedbacks and GET /v1/site (reference §2.6, §2.7, §2.12), and the
console's POST /console/api/apps/{id}/site, through the gateway of the `all` stack with the real litellm path
against the scripted model."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.runtime.service.app_extras import parse_questions
from tests import workflow_graphs as g
from tests.llm_server import ScriptedLLM
from tests.support import Apps, bearer, envelope, scripted_owner
from tests.support import chat_ok as chat

MODEL = {"provider": "openai-compatible", "name": "scripted"}


def config(suggest: bool = True, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "pre_prompt": "You are helpful.",
            "suggested_questions_after_answer": {"enabled": suggest}, **extra}


@pytest.fixture
async def apps(client: httpx.AsyncClient, llm: ScriptedLLM) -> Apps:
    llm.reset()
    return Apps(client, await scripted_owner(client, llm), prefix="extras")


# ---- parsing the model's reply ----------------------------------------------------------------------------


def test_parse_questions() -> None:
    assert parse_questions('["A?", " B? ", "", "C?", "D?"]') == ["A?", "B?", "C?"]
    assert parse_questions('Sure! Here they are:\n```json\n["Why?", "How?"]\n```') == ["Why?", "How?"]
    # a bracket that is not JSON before the array
    assert parse_questions('[note] ["One?", "Two?", "Three?"]') == ["One?", "Two?", "Three?"]
    assert parse_questions("1. First one?\n\n- Second one?\n* \"Third one?\"\n4) Fourth?") == [
        "First one?", "Second one?", "Third one?"]
    assert parse_questions("") == []
    assert parse_questions("[]\n") == []


# ---- suggested questions --------------------------------------------------------------------------------


async def test_suggested_from_the_model(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM) -> None:
    _, k = await apps.create("chat", config())
    llm.push(match="Quelle est la capitale", reply="Paris est la capitale.")
    first = await chat(client, k, "Quelle est la capitale de la France ?")
    llm.push(match="Et sa population", reply="Environ deux millions.")
    second = await chat(client, k, "Et sa population ?", conversation_id=first["conversation_id"])
    llm.push(match="Et sa population", reply='Voici : ["Quel est son maire ?", "Quel climat ?", '
                                             '"Quels musées visiter ?", "Une quatrième ?"]')
    before = len(llm.requests)
    r = await client.get(f"/v1/messages/{second['message_id']}/suggested", headers=k, params={"user": "u1"})
    assert r.status_code == 200, r.text
    assert r.json() == {"result": "success",
                        "data": ["Quel est son maire ?", "Quel climat ?", "Quels musées visiter ?"]}
    assert len(llm.requests) == before + 1
    prompt = llm.requests[-1].last_user
    # the conversation up to and including this message, oldest first, and the language instruction
    assert prompt.index("Quelle est la capitale") < prompt.index("Paris est la capitale.") \
        < prompt.index("Et sa population") < prompt.index("Environ deux millions.")
    assert "SAME language" in prompt and "JSON array" in prompt

    # asked about the first message: the later turn is not shown
    llm.push(match="Quelle est la capitale", reply="- Pourquoi Paris ?\n- Depuis quand ?")
    r = await client.get(f"/v1/messages/{first['message_id']}/suggested", headers=k, params={"user": "u1"})
    assert r.json()["data"] == ["Pourquoi Paris ?", "Depuis quand ?"]
    assert "Environ deux millions." not in llm.requests[-1].last_user


async def test_suggested_errors(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM) -> None:
    app_id, k = await apps.create("chat", config())
    msg = await chat(client, k, "hello suggestions")
    path = f"/v1/messages/{msg['message_id']}/suggested"

    # user is required; another user's message, an unknown or malformed id are 404
    envelope(await client.get(path, headers=k), 400, "invalid_param")
    assert envelope(await client.get(path, headers=k, params={"user": "u2"}), 404, "not_found") == \
        "Message Not Exists."
    envelope(await client.get(f"/v1/messages/{uuid.uuid4()}/suggested", headers=k, params={"user": "u1"}),
             404, "not_found")
    envelope(await client.get("/v1/messages/nope/suggested", headers=k, params={"user": "u1"}), 404, "not_found")

    # a model failure is the blocking chat path's error
    llm.push(match="hello suggestions", status=500)
    envelope(await client.get(path, headers=k, params={"user": "u1"}), 400, "completion_request_error")

    # the feature turned off reaches the runtime at once (config_changed)
    await apps.configure(app_id, config(suggest=False))
    requests = len(llm.requests)
    msg_text = envelope(await client.get(path, headers=k, params={"user": "u1"}), 400, "bad_request")
    assert msg_text == "Suggested Questions Is Disabled." and len(llm.requests) == requests

    # /parameters and /suggested agree
    params = (await client.get("/v1/parameters", headers=k)).json()
    assert params["suggested_questions_after_answer"] == {"enabled": False}


async def test_suggested_disabled_by_default_and_not_for_completion(client: httpx.AsyncClient, apps: Apps,
                                                                     llm: ScriptedLLM) -> None:
    _, k = await apps.create("chat", {"model": MODEL, "pre_prompt": "x"})
    msg = await chat(client, k, "plain app")
    envelope(await client.get(f"/v1/messages/{msg['message_id']}/suggested", headers=k, params={"user": "u1"}),
             400, "bad_request")

    _, ck = await apps.create("completion", config())
    r = await client.post("/v1/completion-messages", headers=ck, json={"inputs": {}, "query": "q", "user": "u1"})
    assert r.status_code == 200, r.text
    envelope(await client.get(f"/v1/messages/{r.json()['message_id']}/suggested", headers=ck,
                              params={"user": "u1"}), 400, "not_chat_app")


async def test_suggested_advanced_chat(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM) -> None:
    """An advanced-chat app keeps the feature in its published workflow, and its LLM node's model is asked."""
    c, h = client, apps.h
    r = await c.post("/console/api/apps", headers=h, json={"name": f"extras-ac-{uuid.uuid4().hex[:8]}",
                                                           "mode": "advanced-chat"})
    app_id = r.json()["id"]

    async def publish(features: dict[str, Any]) -> None:
        r = await c.post(f"/console/api/apps/{app_id}/workflows/draft", headers=h, json={
            "graph": g.chatflow(), "features": features, "conversation_variables": g.CONVERSATION_VARIABLES})
        assert r.status_code == 200, r.text
        assert (await c.post(f"/console/api/apps/{app_id}/workflows/publish", headers=h, json={})).status_code == 200

    await publish({"suggested_questions_after_answer": {"enabled": True}})
    k = bearer((await c.post(f"/console/api/apps/{app_id}/api-keys", headers=h)).json()["token"])
    llm.push(match="flow question", reply="flow answer")
    msg = await chat(c, k, "flow question")
    llm.push(match="predict the three", reply='["Next one?"]')
    r = await c.get(f"/v1/messages/{msg['message_id']}/suggested", headers=k, params={"user": "u1"})
    assert r.status_code == 200, r.text
    assert r.json()["data"] == ["Next one?"]
    assert "flow answer" in llm.requests[-1].last_user

    await publish({})
    envelope(await c.get(f"/v1/messages/{msg['message_id']}/suggested", headers=k, params={"user": "u1"}),
             400, "bad_request")


# ---- end users (Dify's newest GET /end-users/{id}) ------------------------------------------------------


async def test_end_user_by_id(client: httpx.AsyncClient, apps: Apps) -> None:
    """The id an upload's ``created_by`` names: the end user of this app, with ISO timestamps."""
    _, k = await apps.create("chat", config())
    r = await client.post("/v1/files/upload", headers=k, files={"file": ("a.txt", b"hello", "text/plain")},
                          data={"user": "eu-alice"})
    assert r.status_code in (200, 201), r.text
    end_user_id = r.json()["created_by"]
    r = await client.get(f"/v1/end-users/{end_user_id}", headers=k)
    assert r.status_code == 200, r.text
    got = r.json()
    assert set(got) == {"id", "tenant_id", "app_id", "type", "external_user_id", "name", "is_anonymous",
                        "session_id", "created_at", "updated_at"}
    assert (got["id"], got["type"], got["external_user_id"], got["session_id"], got["name"], got["is_anonymous"]) \
        == (end_user_id, "service_api", "eu-alice", "eu-alice", None, False)
    created = datetime.strptime(got["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - created).total_seconds()) < 300
    # another app's key, an unknown id, a malformed one: 404
    _, other = await apps.create("chat", config())
    for key, ident in ((other, end_user_id), (k, str(uuid.uuid4())), (k, "not-a-uuid")):
        assert envelope(await client.get(f"/v1/end-users/{ident}", headers=key), 404, "not_found") \
            == "End user not found."


# ---- the app's feedback ---------------------------------------------------------------------------------


async def test_app_feedbacks(client: httpx.AsyncClient, apps: Apps, llm: ScriptedLLM) -> None:
    app_id, k = await apps.create("chat", config())
    _, other_k = await apps.create("chat", config())
    rated = []
    for i, (user, rating) in enumerate([("u1", "like"), ("u2", "dislike"), ("u3", "like")]):
        msg = await chat(client, k, f"feedback {i}", user=user)
        r = await client.post(f"/v1/messages/{msg['message_id']}/feedbacks", headers=k,
                              json={"rating": rating, "user": user, "content": f"note {i}"})
        assert r.status_code == 200, r.text
        rated.append(msg["message_id"])
    other = await chat(client, other_k, "another app's")
    await client.post(f"/v1/messages/{other['message_id']}/feedbacks", headers=other_k,
                      json={"rating": "like", "user": "u1"})

    r = await client.get("/v1/app/feedbacks", headers=k)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    # all users' feedback of this app, newest first
    assert [f["message_id"] for f in data] == rated[::-1]
    assert [f["rating"] for f in data] == ["like", "dislike", "like"]
    first = data[-1]
    assert set(first) == {"id", "app_id", "conversation_id", "message_id", "rating", "content", "from_source",
                          "from_end_user_id", "from_account_id", "created_at", "updated_at"}
    assert first["app_id"] == app_id and first["content"] == "note 0" and first["from_source"] == "api"
    assert first["from_end_user_id"] and first["from_account_id"] is None
    assert len({f["from_end_user_id"] for f in data}) == 3
    created = datetime.fromisoformat(first["created_at"]).replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=10)
    datetime.fromisoformat(first["updated_at"])

    # paging
    page1 = (await client.get("/v1/app/feedbacks", headers=k, params={"limit": 2})).json()["data"]
    page2 = (await client.get("/v1/app/feedbacks", headers=k, params={"limit": 2, "page": 2})).json()["data"]
    assert [f["id"] for f in page1 + page2] == [f["id"] for f in data]
    assert (await client.get("/v1/app/feedbacks", headers=k, params={"page": 9})).json() == {"data": []}
    assert (await client.get("/v1/app/feedbacks", headers=k, params={"limit": 101})).status_code == 200

    for params in ({"limit": 0}, {"limit": 102}, {"page": 0}, {"limit": "many"}):
        envelope(await client.get("/v1/app/feedbacks", headers=k, params=params), 400, "invalid_param")


async def test_feedbacks_need_history_permission(client: httpx.AsyncClient, apps: Apps) -> None:
    app_id, _ = await apps.create("chat", config())
    r = await client.post(f"/console/api/apps/{app_id}/api-keys", headers=apps.h, json={"permissions": ["chat"]})
    chat_only = bearer(r.json()["token"])
    assert "'history'" in envelope(await client.get("/v1/app/feedbacks", headers=chat_only), 403, "forbidden")
    r = await client.post(f"/console/api/apps/{app_id}/api-keys", headers=apps.h, json={"permissions": ["history"]})
    assert (await client.get("/v1/app/feedbacks", headers=bearer(r.json()["token"]))).status_code == 200
    # /site needs no permission; /suggested needs chat
    assert (await client.get("/v1/site", headers=chat_only)).status_code == 200
    r = await client.post(f"/console/api/apps/{app_id}/api-keys", headers=apps.h, json={"permissions": ["history"]})
    envelope(await client.get(f"/v1/messages/{uuid.uuid4()}/suggested", headers=bearer(r.json()["token"]),
                              params={"user": "u1"}), 403, "forbidden")


# ---- site -------------------------------------------------------------------------------------------------


SITE_KEYS = {"title", "chat_color_theme", "chat_color_theme_inverted", "icon_type", "icon", "icon_background",
             "icon_url", "description", "copyright", "privacy_policy", "custom_disclaimer", "default_language",
             "show_workflow_steps", "use_icon_as_answer_icon"}


async def test_site_derived_then_updated(client: httpx.AsyncClient, apps: Apps) -> None:
    app_id, k = await apps.create("chat", config())
    r = await client.put(f"/console/api/apps/{app_id}", headers=apps.h,
                         json={"description": "An app for sites", "icon": "🦊", "icon_background": "#E4FBCC"})
    assert r.status_code == 200, r.text
    name = r.json()["name"]

    r = await client.get("/v1/site", headers=k)
    assert r.status_code == 200, r.text
    site = r.json()
    assert set(site) == SITE_KEYS
    assert site == {"title": name, "chat_color_theme": None, "chat_color_theme_inverted": False,
                    "icon_type": "emoji", "icon": "🦊", "icon_background": "#E4FBCC", "icon_url": None,
                    "description": "An app for sites", "copyright": None, "privacy_policy": None,
                    "custom_disclaimer": None, "default_language": "en-US", "show_workflow_steps": True,
                    "use_icon_as_answer_icon": False}

    r = await client.post(f"/console/api/apps/{app_id}/site", headers=apps.h, json={
        "title": "Fox help", "chat_color_theme": "#FF8800", "default_language": "fr-FR", "copyright": "Fox Inc.",
        "custom_disclaimer": "Answers may be wrong.", "show_workflow_steps": False, "icon_type": "link",
        "icon": "https://example.com/fox.png", "customize_domain": "ignored"})
    assert r.status_code == 200, r.text
    updated = r.json()
    assert updated["title"] == "Fox help" and updated["icon_url"] == "https://example.com/fox.png"
    assert (await client.get("/v1/site", headers=k)).json() == updated  # reached the runtime's cache
    assert updated["description"] == "An app for sites" and updated["default_language"] == "fr-FR"
    assert updated["show_workflow_steps"] is False and updated["copyright"] == "Fox Inc."

    # a later partial update merges; null clears an optional field
    r = await client.post(f"/console/api/apps/{app_id}/site", headers=apps.h,
                          json={"description": "Site text", "copyright": None, "chat_color_theme_inverted": True})
    site = (await client.get("/v1/site", headers=k)).json()
    assert site == r.json()
    assert site["title"] == "Fox help" and site["description"] == "Site text" and site["copyright"] is None
    assert site["chat_color_theme_inverted"] is True and site["custom_disclaimer"] == "Answers may be wrong."
    detail = (await client.get(f"/console/api/apps/{app_id}", headers=apps.h)).json()
    assert detail["site"] == site


async def test_site_validation(client: httpx.AsyncClient, apps: Apps) -> None:
    app_id, _ = await apps.create("chat", config())
    url = f"/console/api/apps/{app_id}/site"
    for body, field in [({"title": ""}, "title"), ({"title": None}, "title"), ({"title": "x" * 256}, "title"),
                        ({"description": "d" * 1001}, "description"),
                        ({"custom_disclaimer": "c" * 513}, "custom_disclaimer"),
                        ({"icon_type": "gif"}, "icon_type"), ({"default_language": "not a language"},
                                                              "default_language"),
                        ({"show_workflow_steps": "sometimes"}, "show_workflow_steps")]:
        r = await client.post(url, headers=apps.h, json=body)
        assert field in envelope(r, 400, "invalid_param"), body
        assert r.json()["params"] == field
    envelope(await client.post(f"/console/api/apps/{uuid.uuid4()}/site", headers=apps.h, json={"title": "x"}),
             404, "not_found")


async def test_site_served_even_when_the_web_app_is_disabled(client: httpx.AsyncClient, apps: Apps) -> None:
    """Dify's GET /site refuses only an app without a site row or an archived workspace (reference §2.12); the
    web app's enable_site switch does not reach the service API."""
    app_id, k = await apps.create("chat", config())
    before = (await client.get("/v1/site", headers=k)).json()
    r = await client.put(f"/console/api/apps/{app_id}", headers=apps.h, json={"enable_site": False})
    assert r.status_code == 200, r.text
    r = await client.get("/v1/site", headers=k)
    assert r.status_code == 200, r.text
    assert r.json() == before

"""Run in the `dify-client-python` virtualenv: this SDK validates every response with pydantic, so a
missing or mistyped field fails here. Usage: python drive_dify_client_python.py BASE_URL APP_KEY [AGENT_APP_KEY]."""

import json
import sys

from dify_client import Client, models

base, key = sys.argv[1], sys.argv[2]
client = Client(api_key=key, api_base=base.rstrip("/") + "/v1")
user = "sdk-haoyuhu"
out = {}

events = list(client.chat_messages(models.ChatRequest(
    query="Stream please", inputs={}, user=user, response_mode=models.ResponseMode.STREAMING)))
out["stream_events"] = [str(e.event) for e in events]
out["stream_answer"] = "".join(getattr(e, "answer", "") or "" for e in events if str(e.event) == "message")
end = [e for e in events if str(e.event) == "message_end"]
out["stream_usage"] = end[0].metadata.usage.model_dump(mode="json") if end and end[0].metadata else None
conversation_id = next(e.conversation_id for e in events if str(e.event) == "message")
out["conversation_id"] = conversation_id

# blocking, in the same conversation (ChatResponse has no conversation_id field, hence stream first)
resp = client.chat_messages(models.ChatRequest(query="Hello from dify-client-python", inputs={}, user=user,
                                               response_mode=models.ResponseMode.BLOCKING,
                                               conversation_id=conversation_id))
out["blocking"] = resp.model_dump(mode="json")

# suggested questions after the answer (the app enables the feature): ChatSuggestResponse must parse
out["suggested"] = client.suggest_messages(resp.message_id, models.ChatSuggestRequest(user=user)).model_dump(
    mode="json")

fb = client.feedback_messages(resp.message_id, models.FeedbackRequest(rating=models.Rating.LIKE, user=user))
out["feedback"] = fb.model_dump(mode="json")
stop = client.stop_chat_messages("00000000-0000-0000-0000-000000000000", models.StopRequest(user=user))
out["stop"] = stop.model_dump(mode="json")

if len(sys.argv) > 3:  # an agent-chat app: agent_thought / agent_message must parse into the SDK's models
    agent = Client(api_key=sys.argv[3], api_base=base.rstrip("/") + "/v1")
    events = list(agent.chat_messages(models.ChatRequest(
        query="What is 6 * 7?", inputs={}, user=user, response_mode=models.ResponseMode.STREAMING)))
    out["agent_events"] = [str(e.event) for e in events]
    out["agent_thoughts"] = [e.model_dump(mode="json") for e in events if str(e.event) == "agent_thought"]
    out["agent_answer"] = "".join(e.answer for e in events if str(e.event) == "agent_message")
print(json.dumps(out))

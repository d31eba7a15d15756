"""Run in the `dify-client` (official SDK) virtualenv: chat through Plexus with the unmodified SDK.

Usage: python drive_dify_client.py BASE_URL APP_KEY. Prints a JSON summary; any failure exits non-zero.
"""

import json
import sys

from dify_client import ChatClient

base, key = sys.argv[1], sys.argv[2]
chat = ChatClient(key)
chat.base_url = base.rstrip("/") + "/v1"  # 0.1.10 hard-codes api.dify.ai; the SDK's docs say to patch it
user = "sdk-official"
out = {}

r = chat.create_chat_message(inputs={}, query="Hello from dify-client", user=user, response_mode="blocking")
r.raise_for_status()
blocking = r.json()
out["blocking"] = blocking

r = chat.create_chat_message(inputs={}, query="And streaming?", user=user, response_mode="streaming",
                             conversation_id=blocking["conversation_id"])
r.raise_for_status()
events = []
for line in r.iter_lines(decode_unicode=True):
    if line and line.startswith("data: "):
        events.append(json.loads(line[6:]))
out["stream_events"] = [e["event"] for e in events]
out["stream_answer"] = "".join(e.get("answer", "") for e in events if e["event"] == "message")
out["stream_conversation_ids"] = sorted({e.get("conversation_id") for e in events})

r = chat.get_conversation_messages(user, conversation_id=blocking["conversation_id"])
r.raise_for_status()
out["messages"] = r.json()
r = chat.get_conversations(user)
r.raise_for_status()
out["conversations"] = r.json()
r = chat.rename_conversation(blocking["conversation_id"], "Renamed by SDK", user)
r.raise_for_status()
out["renamed"] = r.json()
r = chat.message_feedback(blocking["message_id"], "like", user)
r.raise_for_status()
out["feedback"] = r.json()
r = chat.get_application_parameters(user)
r.raise_for_status()
out["parameters"] = r.json()
print(json.dumps(out))

"""Remote compaction through gunicorn: ``compaction_trigger`` and ``compaction`` items go
upstream as sent, the compaction item comes back as the upstream sent it (SSE, JSON, WebSocket),
and a conversation sends the history from its latest compaction item on."""

import json

import pytest
import requests

from tests.e2e.helpers import ACCOUNT, events_of, post, stream
from tests.e2e.test_conversations import all_items, new_conversation, texts, turn
from tests.fake_upstream import ISSUED, Script, sse

MODEL = "gpt-5.2"
TRIGGER = {"type": "compaction_trigger"}


def user(text):
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def history(gateway, upstream):
    """A question, the model's reasoning (bound to the account) and its answer."""
    upstream.push({"events": Script(MODEL).start().reasoning(encrypted_content=ISSUED).message(["Sure."])
                   .completed().events()}, account=ACCOUNT)
    reply = post(gateway, {"model": MODEL, "input": [user("question")], "include": ["reasoning.encrypted_content"]})
    assert reply.status_code == 200, reply.text
    return [user("question"), *reply.json()["output"]]


@pytest.mark.parametrize("streaming", [True, False], ids=["sse", "json"])
def test_a_compaction_reaches_the_upstream_unchanged_and_its_item_comes_back_as_sent(e2e, upstream, streaming):
    earlier = history(e2e, upstream)
    body = {"model": MODEL, "input": [*earlier, TRIGGER], "prompt_cache_key": "thread-compaction"}
    if streaming:
        _, frames = stream(e2e, body)
        events = events_of(frames)
        [done] = [frame for frame in events if frame.name == "response.output_item.done"]
        compaction = done.data["item"]
        # Relayed byte for byte, as the upstream wrote it.
        assert done.raw.decode() == sse([("response.output_item.done", done.data)])[0]
        assert events[-1].name == "response.completed"
        served = upstream.response_requests()[-1]
    else:
        reply = post(e2e, body)
        assert reply.status_code == 200, reply.text
        [compaction] = reply.json()["output"]
        served = upstream.response_requests()[-1]
    assert served["body"]["input"] == [*earlier, TRIGGER]
    assert compaction["type"] == "compaction" and compaction["id"].startswith("cmp_")
    assert upstream.issuer_of(compaction["encrypted_content"]) == ACCOUNT

    # The next request carries the compaction item in place of what it summarizes: unchanged.
    after = [user("question"), compaction, user("go on")]
    reply = post(e2e, {"model": MODEL, "input": after, "prompt_cache_key": "thread-compaction"})
    assert reply.status_code == 200, reply.text
    assert upstream.response_requests()[-1]["body"]["input"] == after


def test_a_compaction_over_a_websocket(connect, e2e, upstream):
    earlier = history(e2e, upstream)
    ws = connect(e2e)
    answer = ws.request({"model": MODEL, "input": [*earlier, TRIGGER]})
    assert [message["type"] for message in answer] == [
        "response.created", "response.in_progress", "response.output_item.done", "response.completed"]
    compaction = answer[2]["item"]
    assert compaction["type"] == "compaction"
    assert upstream.response_requests()[-1]["body"]["input"] == [*earlier, TRIGGER]

    # As Codex goes on after a compaction: the whole input again, no previous_response_id.
    after = [user("question"), compaction, user("go on")]
    completed = ws.request({"model": MODEL, "input": after})[-1]
    assert completed["type"] == "response.completed", completed
    assert upstream.response_requests()[-1]["body"]["input"] == after


def test_a_conversation_sends_its_history_from_the_latest_compaction_on(e2e, upstream):
    conversation = new_conversation(e2e, items=[user("added first")])
    upstream.push({"events": Script(MODEL).start().reasoning(encrypted_content=ISSUED).message(["one"])
                   .completed().events()}, account=ACCOUNT)
    turn(e2e, conversation, "first")
    turn(e2e, conversation, "second")

    reply, body = turn(e2e, conversation, [TRIGGER])
    assert reply.status_code == 200, body
    [compaction] = body["output"]
    assert compaction["type"] == "compaction"
    sent = upstream.response_requests()[-1]["body"]["input"]
    assert sent[-1] == TRIGGER and texts(sent[:1]) == ["added first"] and len(sent) == 7

    reply, body = turn(e2e, conversation, "third")
    assert reply.status_code == 200 and reply.headers["X-Conversation-Items-Dropped"] == "0"
    sent = upstream.response_requests()[-1]["body"]["input"]
    assert sent == [compaction, user("third")]

    reply, _ = turn(e2e, conversation, "fourth")
    sent = upstream.response_requests()[-1]["body"]["input"]
    assert sent[0] == compaction and texts(sent) == ["third", "Hello from the fake upstream.", "fourth"]

    # Nothing before the compaction is gone from the conversation; the trigger was never stored.
    listed = all_items(e2e, conversation)
    assert [item["type"] for item in listed] == [
        "message", "message", "reasoning", "message", "message", "message", "compaction",
        "message", "message", "message", "message"]
    assert texts(listed) == ["added first", "first", "one", "second", "Hello from the fake upstream.",
                             "third", "Hello from the fake upstream.", "fourth",
                             "Hello from the fake upstream."]
    assert listed[6]["id"] == compaction["id"]


def test_a_compaction_turn_that_fails_stores_nothing(e2e, upstream):
    conversation = new_conversation(e2e)
    turn(e2e, conversation, "first")
    upstream.push({"status": 500, "body": {"error": {"message": "compaction failed"}}}, account=ACCOUNT)
    reply, _ = turn(e2e, conversation, [TRIGGER])
    assert reply.status_code == 502
    turn(e2e, conversation, "second")
    assert texts(upstream.response_requests()[-1]["body"]["input"]) == [
        "first", "Hello from the fake upstream.", "second"]
    assert json.dumps(all_items(e2e, conversation)).count("compaction") == 0


def test_compaction_items_are_accepted_by_the_conversations_api(e2e, upstream):
    """An item a client kept from a compaction can seed a conversation: it starts the history."""
    compaction = {"type": "compaction", "id": "cmp_seed", "encrypted_content": "gAAAAB-opaque"}
    conversation = new_conversation(e2e, items=[user("before"), compaction])
    reply = requests.post(f"{e2e.url}/v1/conversations/{conversation}/items",
                          headers={"Authorization": f"Bearer {e2e.key}"}, json={"items": [user("after")]}, timeout=10)
    assert reply.status_code == 200, reply.text
    turn(e2e, conversation, "now")
    assert upstream.response_requests()[-1]["body"]["input"] == [compaction, user("after"), user("now")]


@pytest.mark.parametrize("path", ["/v1/conversations", "/v1/conversations/{id}/items"])
def test_a_compaction_trigger_is_not_an_item_a_conversation_stores(e2e, upstream, path):
    conversation = new_conversation(e2e)
    reply = requests.post(e2e.url + path.format(id=conversation), headers={"Authorization": f"Bearer {e2e.key}"},
                          json={"items": [user("hi"), TRIGGER]}, timeout=10)
    assert reply.status_code == 400
    assert reply.json()["error"] == {
        "message": "Invalid value for 'items[1].type': a compaction_trigger asks a response for a compaction item; "
                   "a conversation does not store it.",
        "type": "invalid_request_error", "code": "invalid_request_error", "param": "items[1].type"}
    assert all_items(e2e, conversation) == []

"""Conversations through gunicorn: turns, tool round trips, failures, isolation, the API."""

import concurrent.futures
import json
import subprocess
import sys
import time

import pytest
import requests

from tests.fake_upstream import Script
from tests.helpers import ROOT


def post(gateway, path, key=None, **kwargs):
    return requests.post(gateway.url + path, headers={"Authorization": f"Bearer {key or gateway.key}"},
                         timeout=30, **kwargs)


def get(gateway, path, key=None, **kwargs):
    return requests.get(gateway.url + path, headers={"Authorization": f"Bearer {key or gateway.key}"},
                        timeout=30, **kwargs)


def delete(gateway, path, key=None):
    return requests.delete(gateway.url + path, headers={"Authorization": f"Bearer {key or gateway.key}"},
                           timeout=30)


def turn(gateway, conversation, text, stream=False, key=None, **extra):
    reply = post(gateway, "/v1/responses", key=key, stream=stream,
                 json={"model": "gpt-5.2", "input": text, "conversation": conversation, "stream": stream, **extra})
    return reply, (reply.content.decode() if stream else reply.json())


def new_conversation(gateway, key=None, **body):
    reply = post(gateway, "/v1/conversations", key=key, json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()["id"]


def texts(items):
    out = []
    for item in items:
        for part in item.get("content") or ():
            out.append(part.get("text"))
    return out


def all_items(gateway, conversation, key=None):
    reply = get(gateway, f"/v1/conversations/{conversation}/items", key=key, params={"order": "asc", "limit": 100})
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_each_turn_sends_the_history_and_only_the_new_input_is_needed(e2e, upstream, stream):
    conversation = new_conversation(e2e)
    for number in range(3):
        upstream.push({"events": Script().start().message([f"answer {number}"]).completed().events()})
        reply, _ = turn(e2e, conversation, f"question {number}", stream=stream)
        assert reply.status_code == 200
        assert reply.headers["X-Conversation-Items-Dropped"] == "0"
    sent = [request["body"]["input"] for request in upstream.response_requests()]
    assert texts(sent[0]) == ["question 0"]
    assert texts(sent[1]) == ["question 0", "answer 0", "question 1"]
    assert texts(sent[2]) == ["question 0", "answer 0", "question 1", "answer 1", "question 2"]
    assert all("conversation" not in request["body"] for request in upstream.response_requests())
    assert texts(all_items(e2e, conversation)) == [
        "question 0", "answer 0", "question 1", "answer 1", "question 2", "answer 2"]


def test_an_unknown_id_starts_a_conversation_and_the_object_form_works(e2e, upstream):
    conversation = f"conv_client-chosen_{time.time_ns()}"
    reply, body = turn(e2e, conversation, "first")
    assert reply.status_code == 200 and body["status"] == "completed"
    reply, _ = turn(e2e, {"id": conversation}, "second")
    assert reply.status_code == 200
    assert texts(upstream.response_requests()[-1]["body"]["input"])[0] == "first"
    assert get(e2e, f"/v1/conversations/{conversation}").json()["id"] == conversation


def test_a_tool_round_trip_spans_two_turns(e2e, upstream):
    conversation = new_conversation(e2e)
    tools = [{"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}]
    upstream.push({"events": Script().start().function_call("get_time", ['{"tz":', '"Asia/Tokyo"}'],
                                                            call_id="call_tokyo").completed().events()})
    reply, body = turn(e2e, conversation, "What time is it in Tokyo?", tools=tools)
    assert body["output"][0]["type"] == "function_call" and body["output"][0]["call_id"] == "call_tokyo"

    reply = post(e2e, "/v1/responses", json={
        "model": "gpt-5.2", "conversation": conversation, "tools": tools,
        "input": [{"type": "function_call_output", "call_id": "call_tokyo", "output": "09:41"}]})
    assert reply.status_code == 200
    sent = upstream.response_requests()[-1]["body"]["input"]
    assert [item.get("type") for item in sent] == ["message", "function_call", "function_call_output"]
    assert sent[1]["call_id"] == sent[2]["call_id"] == "call_tokyo"
    assert sent[1]["arguments"] == '{"tz":"Asia/Tokyo"}'


def test_reasoning_is_kept_for_the_next_turn_but_only_shown_when_asked(e2e, upstream):
    conversation = new_conversation(e2e)
    upstream.push({"events": Script().start().reasoning("hmm").message(["done"]).completed().events()})
    reply, text = turn(e2e, conversation, "think", stream=True)
    assert reply.status_code == 200 and "encrypted_content" not in text
    assert upstream.response_requests()[-1]["body"]["include"] == ["reasoning.encrypted_content"]

    upstream.push({"events": Script().start().reasoning("again").message(["ok"]).completed().events()})
    reply, body = turn(e2e, conversation, "more", include=["reasoning.encrypted_content"])
    assert body["output"][0]["encrypted_content"] == "gAAAAB-opaque"
    replayed = upstream.response_requests()[-1]["body"]["input"]
    reasoning = [item for item in replayed if item.get("type") == "reasoning"]
    assert reasoning and reasoning[0]["encrypted_content"] == "gAAAAB-opaque"
    assert upstream.response_requests()[-1]["body"]["include"] == ["reasoning.encrypted_content"]


@pytest.mark.parametrize("failure", [
    {"events": Script().start().message(["par"]).failed().events()},
    {"cut_after": 4},
    {"status": 500, "body": {"detail": "boom"}},
], ids=["response-failed", "cut-mid-stream", "upstream-500"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_failed_turn_leaves_the_conversation_unchanged(e2e, upstream, failure, stream):
    conversation = new_conversation(e2e)
    turn(e2e, conversation, "kept")
    before = all_items(e2e, conversation)
    upstream.push(failure)
    turn(e2e, conversation, "lost", stream=stream)
    assert all_items(e2e, conversation) == before
    # ...and the client can simply retry the turn.
    reply, _ = turn(e2e, conversation, "retried")
    assert reply.status_code == 200
    assert texts(all_items(e2e, conversation))[-2] == "retried"


def test_a_client_that_goes_away_mid_turn_adds_nothing(e2e, upstream):
    conversation = new_conversation(e2e)
    upstream.push({"stall_at": 3, "stall": 10})
    reply, _ = post(e2e, "/v1/responses", stream=True, json={
        "model": "gpt-5.2", "input": "abandoned", "conversation": conversation, "stream": True}), None
    next(reply.iter_content(chunk_size=None))
    reply.close()
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and not upstream.closed_early:
        time.sleep(0.1)
    assert upstream.closed_early
    time.sleep(0.3)
    assert all_items(e2e, conversation) == []
    assert turn(e2e, conversation, "next")[0].status_code == 200  # the turn lease was released


def test_a_second_concurrent_turn_gets_409(e2e, upstream):
    conversation = new_conversation(e2e)
    upstream.push({"delay": 0.3})
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(turn, e2e, conversation, "slow")
        time.sleep(0.5)
        busy, body = turn(e2e, conversation, "overlapping")
        assert slow.result()[0].status_code == 200
    assert busy.status_code == 409
    assert body["error"]["code"] == "conversation_busy" and body["error"]["param"] == "conversation"
    assert texts(all_items(e2e, conversation)).count("overlapping") == 0
    assert texts(all_items(e2e, conversation)).count("slow") == 1


def test_another_key_never_sees_a_conversation(e2e, upstream):
    other = e2e.create_key()
    conversation = new_conversation(e2e, metadata={"owner": "first"})
    turn(e2e, conversation, "secret")
    item_id = all_items(e2e, conversation)[0]["id"]
    attempts = [
        get(e2e, f"/v1/conversations/{conversation}", key=other),
        post(e2e, f"/v1/conversations/{conversation}", key=other, json={"metadata": {"x": "y"}}),
        get(e2e, f"/v1/conversations/{conversation}/items", key=other),
        post(e2e, f"/v1/conversations/{conversation}/items", key=other,
             json={"items": [{"role": "user", "content": "intrusion"}]}),
        get(e2e, f"/v1/conversations/{conversation}/items/{item_id}", key=other),
        requests.delete(e2e.url + f"/v1/conversations/{conversation}/items/{item_id}",
                        headers={"Authorization": f"Bearer {other}"}, timeout=10),
        requests.delete(e2e.url + f"/v1/conversations/{conversation}",
                        headers={"Authorization": f"Bearer {other}"}, timeout=10),
        turn(e2e, conversation, "let me in", key=other)[0],
    ]
    for reply in attempts:
        assert reply.status_code == 404, reply.text
        assert reply.json()["error"]["message"] == "conversation not found"
        assert "secret" not in reply.text
    assert texts(all_items(e2e, conversation))[0] == "secret"
    assert get(e2e, f"/v1/conversations/{conversation}").json()["metadata"] == {"owner": "first"}


def test_the_conversations_api(e2e, upstream):
    created = post(e2e, "/v1/conversations", json={
        "metadata": {"topic": "demo"}, "items": [{"role": "user", "content": "hello"}]})
    assert created.status_code == 200
    conversation = created.json()
    assert conversation["object"] == "conversation" and conversation["id"].startswith("conv_")
    assert len(conversation["id"]) > 40 and conversation["metadata"] == {"topic": "demo"}
    assert isinstance(conversation["created_at"], int)
    cid = conversation["id"]

    assert get(e2e, f"/v1/conversations/{cid}").json() == conversation
    updated = post(e2e, f"/v1/conversations/{cid}", json={"metadata": {"topic": "changed"}})
    assert updated.json()["metadata"] == {"topic": "changed"}

    added = post(e2e, f"/v1/conversations/{cid}/items", json={"items": [
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi there"}]},
        {"role": "user", "content": "and you?"}]}).json()
    assert added["object"] == "list" and len(added["data"]) == 2
    assert added["first_id"] == added["data"][0]["id"] and added["last_id"] == added["data"][1]["id"]

    items = all_items(e2e, cid)
    assert texts(items) == ["hello", "hi there", "and you?"]
    one = get(e2e, f"/v1/conversations/{cid}/items/{items[1]['id']}").json()
    assert one == items[1]

    after_delete = delete(e2e, f"/v1/conversations/{cid}/items/{items[1]['id']}")
    assert after_delete.status_code == 200 and after_delete.json()["id"] == cid
    assert texts(all_items(e2e, cid)) == ["hello", "and you?"]
    assert get(e2e, f"/v1/conversations/{cid}/items/{items[1]['id']}").status_code == 404

    # The next turn builds on the items added through the API.
    turn(e2e, cid, "last question")
    assert texts(upstream.response_requests()[-1]["body"]["input"]) == ["hello", "and you?", "last question"]

    deleted = delete(e2e, f"/v1/conversations/{cid}")
    assert deleted.json() == {"id": cid, "object": "conversation.deleted", "deleted": True}
    assert get(e2e, f"/v1/conversations/{cid}").status_code == 404
    assert get(e2e, f"/v1/conversations/{cid}/items").status_code == 404


def test_items_are_paginated(e2e, upstream):
    cid = new_conversation(e2e, items=[{"role": "user", "content": f"item {n}"} for n in range(7)])
    page = get(e2e, f"/v1/conversations/{cid}/items", params={"limit": 3, "order": "asc"}).json()
    assert texts(page["data"]) == ["item 0", "item 1", "item 2"] and page["has_more"] is True
    page = get(e2e, f"/v1/conversations/{cid}/items",
               params={"limit": 3, "order": "asc", "after": page["last_id"]}).json()
    assert texts(page["data"]) == ["item 3", "item 4", "item 5"] and page["has_more"] is True
    page = get(e2e, f"/v1/conversations/{cid}/items",
               params={"limit": 3, "order": "asc", "after": page["last_id"]}).json()
    assert texts(page["data"]) == ["item 6"] and page["has_more"] is False

    newest = get(e2e, f"/v1/conversations/{cid}/items", params={"limit": 2}).json()  # default: newest first
    assert texts(newest["data"]) == ["item 6", "item 5"]
    older = get(e2e, f"/v1/conversations/{cid}/items", params={"limit": 10, "after": newest["last_id"]}).json()
    assert texts(older["data"]) == [f"item {n}" for n in range(4, -1, -1)]

    for bad in ({"limit": 0}, {"limit": 101}, {"limit": "x"}, {"order": "sideways"}):
        reply = get(e2e, f"/v1/conversations/{cid}/items", params=bad)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == next(iter(bad)), reply.text


@pytest.mark.parametrize("bad, param", [
    ({"conversation": "abc123"}, "conversation"),
    ({"conversation": "conv_with space"}, "conversation"),
    ({"conversation": "conv_"}, "conversation"),
    ({"conversation": {"id": 5}}, "conversation.id"),
    ({"conversation": "conv_ok", "previous_response_id": "resp_1"}, "previous_response_id"),
])
def test_malformed_conversation_references_are_400(e2e, upstream, bad, param):
    reply = post(e2e, "/v1/responses", json={"model": "gpt-5.2", "input": "x", **bad})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param
    assert upstream.response_requests() == []


def test_the_item_budget_drops_whole_old_turns_and_says_how_many(fake_upstream, tmp_path_factory):
    from tests.helpers import Gateway

    fake_upstream.reset()
    gateway = Gateway(tmp_path_factory.mktemp("budget"), fake_upstream.base_url,
                      env={"RESPONSES_PROXY_CONVERSATION_MAX_ITEMS": "5"})
    gateway.start()
    try:
        gateway.import_account(last_refresh="2099-01-01T00:00:00Z")
        gateway.key = gateway.create_key()
        cid = new_conversation(gateway)
        # turn 0: a tool call; turn 1: its output and an answer; turns 2, 3: plain questions.
        fake_upstream.push({"events": Script().start().function_call("lookup", ["{}"], call_id="call_a")
                            .completed().events()})
        turn(gateway, cid, "q0")
        post(gateway, "/v1/responses", json={"model": "gpt-5.2", "conversation": cid, "input": [
            {"type": "function_call_output", "call_id": "call_a", "output": "42"}]})
        turn(gateway, cid, "q2")
        reply, _ = turn(gateway, cid, "q3")
        sent = fake_upstream.response_requests()[-1]["body"]["input"]
        # 6 stored items + 1 new > 5: turn 0 goes, and with it turn 1 (its output would be an
        # orphan without the call), leaving turn 2 and the new input.
        assert texts(sent) == ["q2", "Hello from the fake upstream.", "q3"]
        assert not any(item.get("type") == "function_call_output" for item in sent)
        assert reply.headers["X-Conversation-Items-Dropped"] == "4"
        assert len(all_items(gateway, cid)) == 8  # nothing is deleted, only left out upstream
    finally:
        gateway.stop()


def test_purge_and_prune_commands(e2e, upstream):
    row = e2e.create_key_row()
    kept = new_conversation(e2e)
    gone = [new_conversation(e2e, key=row["key"]) for _ in range(2)]

    def flask(*args):
        result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args, "--json"], cwd=ROOT,
                                env=e2e.env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    assert flask("conversations", "purge", "--key", row["id"])["deleted"] == 2
    assert all(get(e2e, f"/v1/conversations/{cid}", key=row["key"]).status_code == 404 for cid in gone)
    assert get(e2e, f"/v1/conversations/{kept}").status_code == 200

    assert flask("conversations", "prune", "--days", "0")["deleted"] >= 1
    assert get(e2e, f"/v1/conversations/{kept}").status_code == 404

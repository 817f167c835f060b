"""However a conversation turn ends, everything it held is released: the account's in-flight
slot, the conversation's turn lease, and a usage row says how it ended. Before, an exception
outside the expected ones leaked the slot for good, wrote no row and left the conversation at
409; a stream whose turn could not be stored still told the client it completed."""

import json
import socket
import time

import pytest
import requests
from sqlalchemy import select

from responses_proxy.store.tables import worker_load
from tests.e2e.helpers import ACCOUNT, events_of, query, request_id, split_frames, usage_row, wait_for
from tests.fake_upstream import Script, sse
from tests.helpers import Gateway, unique


@pytest.fixture(scope="module")
def gateway(fake_upstream, tmp_path_factory):
    server = Gateway(tmp_path_factory.mktemp("release"), fake_upstream.base_url, workers=1,
                     env={"RESPONSES_PROXY_KEEPALIVE_SECONDS": "1"})
    with server.serving(last_refresh="2099-01-01T00:00:00Z"):
        yield server


@pytest.fixture
def e2e(gateway, upstream):
    return gateway


def turn(gateway, conversation, text, stream=False, rid=None, timeout=30):
    headers = {"Authorization": f"Bearer {gateway.key}", **({"X-Request-Id": rid} if rid else {})}
    return requests.post(gateway.url + "/v1/responses", headers=headers, timeout=timeout,
                         json={"model": "gpt-5.2", "input": text, "conversation": conversation, "stream": stream})


def texts(gateway, conversation):
    reply = requests.get(f"{gateway.url}/v1/conversations/{conversation}/items?order=asc", timeout=10,
                         headers={"Authorization": f"Bearer {gateway.key}"})
    return [part["text"] for item in reply.json()["data"] for part in item["content"]]


def busy_accounts(gateway):
    """Accounts with a request in flight, as the worker reports them (at once when it changes)."""
    return [row for row in query(gateway, select(worker_load)) if row["in_flight"] > 0]


def raw_frames(events):
    return "".join(sse(events)).encode()


def malformed_output(script):
    """The answer with its final event's ``output`` a string: nothing the gateway can read."""
    events = script.events()
    name, payload = events[-1]
    return [*events[:-1], (name, {**payload, "response": {**payload["response"], "output": "oops"}})]


FAILURES = {
    # kind: (the upstream's behaviour, what the client sees when not streaming)
    "malformed final event": (lambda: {"raw": raw_frames(malformed_output(
        Script().start().message(["Hi"]).completed()))}, 502),
    "unknown content encoding": (lambda: {"raw": raw_frames(Script().start().message(["Hi"]).completed().events()),
                                          "headers": {"Content-Encoding": "br"}}, 502),
    "stream cut": (lambda: {"cut_after": 4}, 502),
    "upstream 500": (lambda: {"status": 500, "body": {"detail": "boom"}}, 502),
}


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", list(FAILURES))
def test_every_failure_releases_the_slot_and_the_turn_and_leaves_a_row(e2e, upstream, kind, streaming):
    behaviour, status = FAILURES[kind]
    conversation = "conv_release_" + unique()
    assert turn(e2e, conversation, "first").status_code == 200
    for _ in range(3):  # every attempt, should the gateway try again
        upstream.push(behaviour(), account=ACCOUNT)
    rid = request_id()
    reply = turn(e2e, conversation, "doomed", stream=streaming, rid=rid)
    if streaming and reply.status_code == 200:
        [last] = events_of(split_frames([(0, reply.content)]))[-1:]
        assert last.name == "response.failed", reply.text[-500:]
    else:
        assert reply.status_code == status, reply.text[:500]
        assert set(reply.json()) == {"error"}
    upstream.reset()

    row = usage_row(e2e, rid)
    assert row is not None, "the failed turn left no usage row"
    assert row["status"] >= 400 or row["error_code"], row
    assert wait_for(lambda: not busy_accounts(e2e), timeout=5), busy_accounts(e2e)
    # The conversation is free at once (not after a lease), and the failed turn added nothing.
    after = turn(e2e, conversation, "after")
    assert after.status_code == 200, after.text
    assert texts(e2e, conversation) == ["first", "Hello from the fake upstream.",
                                        "after", "Hello from the fake upstream."]


def test_a_stream_whose_turn_cannot_be_stored_ends_failed_not_completed(e2e, upstream):
    """The conversation is deleted while its turn streams: the turn cannot be stored, so the
    client is told so (``response.failed``), never ``response.completed`` for what was lost."""
    conversation = "conv_deleted_" + unique()
    assert turn(e2e, conversation, "first").status_code == 200
    upstream.push({"stall_at": 3, "stall": 1.5}, account=ACCOUNT)
    rid = request_id()
    reply = requests.post(e2e.url + "/v1/responses", stream=True, timeout=30,
                          headers={"Authorization": f"Bearer {e2e.key}", "X-Request-Id": rid},
                          json={"model": "gpt-5.2", "input": "second", "conversation": conversation, "stream": True})
    assert wait_for(lambda: len(upstream.response_requests()) == 2, timeout=5)
    deleted = requests.delete(f"{e2e.url}/v1/conversations/{conversation}", timeout=10,
                              headers={"Authorization": f"Bearer {e2e.key}"})
    assert deleted.status_code == 200, deleted.text
    frames = events_of(split_frames([(0, reply.content)]))
    names = [frame.name for frame in frames]
    assert names[-1] == "response.failed" and "response.completed" not in names, names
    assert "could not be stored" in frames[-1].data["response"]["error"]["message"]
    assert usage_row(e2e, rid)["error_code"] == "server_error"
    assert wait_for(lambda: not busy_accounts(e2e), timeout=5)


def test_a_json_turn_whose_client_left_adds_nothing_and_frees_the_conversation(e2e, upstream):
    conversation = "conv_left_" + unique()
    assert turn(e2e, conversation, "first").status_code == 200
    upstream.push({"stall_at": 2, "stall": 10}, account=ACCOUNT)
    rid = request_id()
    body = json.dumps({"model": "gpt-5.2", "input": "left", "conversation": conversation}).encode()
    sock = socket.create_connection(("127.0.0.1", e2e.port), timeout=10)
    sock.sendall((f"POST /v1/responses HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {e2e.key}\r\n"
                  f"X-Request-Id: {rid}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
                 .encode() + body)
    assert wait_for(lambda: len(upstream.response_requests()) == 2, timeout=5)
    sock.close()
    # The gateway notices at once, not when the upstream finally answers.
    assert wait_for(lambda: upstream.closed_early, timeout=5), "the upstream request was not closed"
    row = usage_row(e2e, rid)
    assert (row["status"], row["error_code"]) == (499, "client_closed")
    started = time.monotonic()
    assert turn(e2e, conversation, "after").status_code == 200
    assert time.monotonic() - started < 5
    assert texts(e2e, conversation) == ["first", "Hello from the fake upstream.",
                                        "after", "Hello from the fake upstream."]


def test_a_stream_completed_with_an_empty_output_gets_it_rebuilt(e2e, upstream):
    """The backend may send ``response.completed`` with an empty ``output``; openai-node then
    replaces its snapshot with it and loses the answer. The gateway fills it from the
    ``output_item.done`` items, as it does for a JSON answer."""
    script = Script().start().message(["Hel", "lo"]).function_call("get_weather", ['{"city":"Oslo"}'])
    upstream.push({"events": script.completed(empty_output=True).events()}, account=ACCOUNT)
    reply = requests.post(e2e.url + "/v1/responses", headers={"Authorization": f"Bearer {e2e.key}"}, timeout=30,
                          json={"model": "gpt-5.2", "input": "hi", "stream": True})
    [completed] = [frame for frame in events_of(split_frames([(0, reply.content)]))
                   if frame.name == "response.completed"]
    assert completed.data["response"]["output"] == script.items

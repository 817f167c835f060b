"""One usage row per request, as the operator reads it from the database."""

import time

import requests

from tests.e2e.helpers import (
    ACCOUNT,
    RawStream,
    account_ids,
    auth,
    key_id,
    request_id,
    split_frames,
    usage_row,
    wait_for,
)
from tests.fake_upstream import USAGE, Script

HEADER_DELAY = 0.3


def send(gateway, body, rid, key=None):
    headers = {**auth(key or gateway.key), "X-Request-Id": rid}
    reply = requests.post(gateway.url + "/v1/responses", headers=headers, json=body, timeout=20)
    assert reply.headers.get("X-Request-Id") == rid
    return reply


def check_tokens(row):
    assert row["input_tokens"] == USAGE["input_tokens"]
    assert row["output_tokens"] == USAGE["output_tokens"]
    assert row["total_tokens"] == USAGE["total_tokens"]
    assert row["cached_tokens"] == USAGE["input_tokens_details"]["cached_tokens"]
    assert row["reasoning_tokens"] == USAGE["output_tokens_details"]["reasoning_tokens"]


def test_a_non_streaming_request_leaves_a_usage_row(e2e, upstream):
    upstream.push({"events": Script("gpt-4.1").start().message(["ok"]).completed().events(),
                   "header_delay": HEADER_DELAY}, account=ACCOUNT)
    rid = request_id()
    reply = send(e2e, {"model": "gpt-4.1", "input": "hi"}, rid)
    assert reply.status_code == 200, reply.text
    row = usage_row(e2e, rid)
    assert row, "no usage row for the request"
    assert row["key_id"] == key_id(e2e, e2e.key)
    assert row["account_id"] in account_ids(e2e) and row["account_id"]
    assert row["model"] == "gpt-4.1"
    assert row["stream"] is False
    assert row["status"] == 200
    assert row["error_code"] is None
    check_tokens(row)
    # The upstream sent nothing for 0.3 s: the first byte cannot have come sooner.
    assert row["ttfb_ms"] >= HEADER_DELAY * 1000 * 0.9
    assert row["duration_ms"] >= row["ttfb_ms"]


def test_a_streaming_request_leaves_a_usage_row(e2e, upstream):
    events = Script("gpt-5.2").start().message(["a", "b", "c"]).completed().events()
    upstream.push({"events": events, "header_delay": HEADER_DELAY, "delay": 0.1}, account=ACCOUNT)
    rid = request_id()
    reply = send(e2e, {"model": "gpt-5.2", "input": "hi", "stream": True}, rid)
    assert reply.status_code == 200
    assert split_frames([(0, reply.content)])[-1].name == "response.completed"
    row = usage_row(e2e, rid)
    assert row, "no usage row for the request"
    assert row["key_id"] == key_id(e2e, e2e.key)
    assert row["account_id"] in account_ids(e2e) and row["account_id"]
    assert row["model"] == "gpt-5.2"
    assert row["stream"] is True
    assert row["status"] == 200
    check_tokens(row)
    assert row["ttfb_ms"] >= HEADER_DELAY * 1000 * 0.9
    # The events took ~1 s to arrive after the first one.
    assert row["duration_ms"] >= row["ttfb_ms"] + 500


def test_a_refused_request_leaves_a_usage_row(e2e, upstream):
    key = e2e.create_key()
    rid = request_id()
    reply = send(e2e, {"model": "gpt-5.2", "input": "hi", "store": True}, rid, key=key)
    assert reply.status_code == 400
    row = usage_row(e2e, rid)
    assert row, "no usage row for the request"
    assert row["key_id"] == key_id(e2e, key)
    assert row["status"] == 400
    assert row["error_code"]
    assert row["input_tokens"] is None and row["total_tokens"] is None


def test_an_upstream_refusal_leaves_a_usage_row(e2e, upstream):
    # A 400 is about the request, not the account: the module's one account stays healthy.
    upstream.push({"status": 400, "body": {"detail": "Unsupported parameter: x"}}, account=ACCOUNT)
    rid = request_id()
    reply = send(e2e, {"model": "gpt-5.2", "input": "hi", "stream": True, "x": 1}, rid)
    assert reply.status_code == 400
    row = usage_row(e2e, rid)
    assert row, "no usage row for the request"
    assert row["key_id"] == key_id(e2e, e2e.key)
    assert row["status"] == 400
    assert row["stream"] is True
    assert row["model"] == "gpt-5.2"
    assert row["error_code"]


def test_a_stream_the_client_abandoned_leaves_a_usage_row(e2e, upstream):
    events = Script("gpt-5.2").start().message(["never", " finished"]).completed().events()
    upstream.push({"events": events, "stall_at": 4, "stall": 30}, account=ACCOUNT)
    rid = request_id()
    client = RawStream(e2e, {"model": "gpt-5.2", "input": "hi"}, headers={"X-Request-Id": rid})
    try:
        client.read_until(b"event: response.output_item.added")
    finally:
        client.close()
    # Written when the gateway notices the client is gone, not when the 30 s stall ends.
    row = usage_row(e2e, rid, timeout=8)
    assert row, "no usage row for the abandoned stream"
    assert row["key_id"] == key_id(e2e, e2e.key)
    assert row["account_id"] in account_ids(e2e)
    assert row["stream"] is True
    assert row["model"] == "gpt-5.2"
    assert (row["status"], row["error_code"]) == (499, "client_closed")
    assert row["ttfb_ms"] is not None
    assert wait_for(lambda: upstream.closed_early, timeout=5)


def test_a_client_that_hangs_up_before_the_first_byte_closes_the_upstream_too(e2e, upstream):
    # The upstream says nothing for 30 s; the client gives up after sending its request.
    upstream.push({"stall_at": 0, "stall": 30}, account=ACCOUNT)
    rid = request_id()
    client = RawStream(e2e, {"model": "gpt-5.2", "input": "hi"}, headers={"X-Request-Id": rid})
    wait_for(lambda: upstream.response_requests(), timeout=5)
    client.close()
    hung_up = time.time()
    closed = wait_for(lambda: list(upstream.closed_early), timeout=8)
    assert closed and closed[0]["time"] - hung_up < 8
    row = usage_row(e2e, rid, timeout=8)
    assert (row["status"], row["error_code"]) == (499, "client_closed")

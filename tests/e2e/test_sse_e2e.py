"""The event stream on the wire, read with raw HTTP: framing, headers, timing, keepalives,
disconnects and broken upstream streams."""

import threading
import time

import pytest
import requests

from tests.e2e.helpers import (
    ACCOUNT,
    KEEPALIVE,
    RawStream,
    auth,
    events_of,
    post,
    split_frames,
    stream,
    upstream_payloads,
    wait_for,
)
from tests.fake_upstream import Script

BODY = {"model": "gpt-5.2", "input": "Tell me something"}


def long_script():
    """Text, a function call and the completion: every kind of event the SDKs parse."""
    return (Script("gpt-5.2").start().reasoning().message(["A ", "multi-line\n", "answer: \"quoted\"", " done."])
            .function_call("lookup", ['{"q":', ' "x"}'], call_id="call_sse").completed())


def test_headers_and_exact_framing(e2e, upstream):
    events = long_script().events()
    upstream.push({"events": events}, account=ACCOUNT)
    reply, frames = stream(e2e, BODY)
    assert reply.headers["Content-Type"].split(";")[0].strip() == "text/event-stream"
    assert reply.headers["Cache-Control"] == "no-cache"
    assert reply.headers["X-Accel-Buffering"] == "no"
    assert "Content-Length" not in reply.headers
    received = events_of(frames)
    # Every event, in order, with its name on the event line and its payload intact.
    assert [frame.name for frame in received] == [name for name, _ in events]
    assert [frame.data for frame in received] == upstream_payloads(events)


def test_events_are_not_buffered(e2e, upstream):
    """0.4 s between upstream events: the first ones reach the client long before the last."""
    events = Script("gpt-5.2").start().message(["a", "b", "c"]).completed().events()
    upstream.push({"events": events, "delay": 0.4}, account=ACCOUNT)
    reply, frames = stream(e2e, BODY)
    received = events_of(frames)
    assert [frame.name for frame in received] == [name for name, _ in events]
    created, last = received[0], received[-1]
    # The upstream takes ~4 s in all; a buffering relay would deliver everything at the end.
    assert last.arrived - created.arrived > 2.0
    arrival_times = sorted({round(frame.arrived, 2) for frame in received})
    assert len(arrival_times) >= len(received) // 2
    # And the first event is not held back until the second one shows up.
    assert received[1].arrived - created.arrived > 0.2


def test_keepalive_comments_while_the_upstream_stalls(e2e, upstream):
    events = Script("gpt-5.2").start().message(["x", "y"]).completed().events()
    upstream.push({"events": events, "stall_at": 3, "stall": 3.5}, account=ACCOUNT)
    reply, frames = stream(e2e, BODY)
    names = [frame.name for frame in frames]
    keepalives = [index for index, frame in enumerate(frames) if frame.is_keepalive]
    # A 3.5 s silence with a 1 s keepalive interval: at least two comments, all inside it.
    assert len(keepalives) >= 2, names
    assert all(frame.raw == KEEPALIVE + b"\n\n" for frame in frames if frame.is_keepalive)
    before = [frame.name for frame in frames[:keepalives[0]]]
    after = [frame.name for frame in frames[keepalives[-1] + 1:] if not frame.is_keepalive]
    assert before == [name for name, _ in events[:3]]
    assert after == [name for name, _ in events[3:]]
    assert [frame.data for frame in events_of(frames)] == upstream_payloads(events)


def test_keepalive_before_the_first_event(e2e, upstream):
    """The upstream answers 200 but says nothing for 3 s: the client hears keepalives."""
    events = Script("gpt-5.2").start().message(["late"]).completed().events()
    upstream.push({"events": events, "stall_at": 0, "stall": 3}, account=ACCOUNT)
    reply, frames = stream(e2e, BODY)
    assert frames[0].is_keepalive, frames
    assert [frame.name for frame in events_of(frames)] == [name for name, _ in events]


@pytest.mark.parametrize("marker, stall_at", [
    (b"event: response.output_item.added", 4),
    (KEEPALIVE, 0),
], ids=["mid-stream", "before-first-event"])
def test_client_disconnect_closes_the_upstream_request(e2e, upstream, marker, stall_at):
    script = Script("gpt-5.2").start().message(["never", " sent"]).completed()
    upstream.push({"events": script.events(), "stall_at": stall_at, "stall": 30}, account=ACCOUNT)
    client = RawStream(e2e, BODY)
    try:
        head = client.read_until(marker)
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
    finally:
        client.close()
    hung_up = time.time()
    closed = wait_for(lambda: list(upstream.closed_early), timeout=8)
    assert closed, "the gateway kept the upstream request open after its client went away"
    assert closed[0]["response_id"] == script.response_id
    # Long before the 30 s stall would have ended the upstream request by itself.
    assert closed[0]["time"] - hung_up < 8


@pytest.mark.parametrize("cut_after", [3, 6])
def test_upstream_cut_mid_stream_ends_with_response_failed(e2e, upstream, cut_after):
    script = Script("gpt-5.2").start().message(["part", "ial", " answer"]).completed()
    events = script.events()
    upstream.push({"events": events, "cut_after": cut_after}, account=ACCOUNT)
    reply, frames = stream(e2e, BODY, read_timeout=10, deadline_seconds=15)
    received = events_of(frames)
    assert [frame.data for frame in received[:cut_after]] == upstream_payloads(events[:cut_after])
    assert len(received) == cut_after + 1, [frame.name for frame in received]
    failed = received[-1]
    assert failed.name == "response.failed"
    response = failed.data["response"]
    assert response["id"] == script.response_id
    assert response["status"] == "failed"
    assert isinstance(response["error"]["message"], str) and response["error"]["message"]
    assert response["error"]["code"]


@pytest.mark.parametrize("names, crlf", [(False, False), (True, True), (False, True)],
                         ids=["no-event-lines", "crlf", "no-event-lines-crlf"])
def test_unusual_upstream_framing_is_relayed(e2e, upstream, names, crlf):
    events = long_script().events()
    upstream.push({"events": events, "names": names, "crlf": crlf}, account=ACCOUNT)
    reply, frames = stream(e2e, BODY)
    received = events_of(frames)
    assert [frame.name for frame in received] == [name for name, _ in events]
    assert [frame.data for frame in received] == upstream_payloads(events)

    script = long_script()
    upstream.push({"events": script.events(), "names": names, "crlf": crlf}, account=ACCOUNT)
    reply = post(e2e, BODY)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["id"] == script.response_id
    assert body["output"] == script.items


def test_streaming_without_a_key_is_a_json_401(e2e, upstream):
    reply = requests.post(e2e.url + "/v1/responses", json={**BODY, "stream": True}, timeout=10)
    assert reply.status_code == 401
    assert reply.json()["error"]["code"] == "invalid_api_key"
    reply = requests.post(e2e.url + "/v1/responses", json={**BODY, "stream": True}, timeout=10,
                          headers=auth("sk-rp-not-a-key"))
    assert reply.status_code == 401
    assert upstream.response_requests() == []


def test_sse_bytes_split_into_frames_exactly(e2e, upstream):
    """The raw bytes, unparsed: nothing but frames, each ``event: <type>\\ndata: <json>\\n\\n``."""
    upstream.push({"events": Script("gpt-5.2").start().message(["one"]).completed().events()}, account=ACCOUNT)
    reply = requests.post(e2e.url + "/v1/responses", headers=auth(e2e.key), json={**BODY, "stream": True},
                          timeout=10)
    raw = reply.content
    assert raw.startswith(b"event: response.created\ndata: {")
    assert raw.endswith(b"}\n\n")
    assert b"\r" not in raw
    blocks = raw[:-2].split(b"\n\n")
    for block in blocks:
        event_line, data_line = block.split(b"\n")
        assert event_line.startswith(b"event: ") and data_line.startswith(b"data: ")
    assert len(split_frames([(0, raw)])) == len(blocks)


def test_a_large_event_arrives_intact(e2e, upstream):
    big = "".join(chr(0x41 + i % 26) for i in range(300_000)) + " é 世界 🌍"
    events = Script("gpt-5.2").start().message([big, "end"]).completed().events()
    upstream.push({"events": events}, account=ACCOUNT)
    reply, frames = stream(e2e, BODY)
    received = events_of(frames)
    assert [frame.data for frame in received] == upstream_payloads(events)


def test_concurrent_streams_do_not_wait_for_each_other(e2e, upstream):
    """Twelve slow streams (~1.5 s each) on two workers: together they take about as long as
    one. A worker that served one stream at a time would need six times as long."""
    count = 12
    for _ in range(count):
        events = Script("gpt-5.2").start().message(["a", "b", "c"]).completed().events()
        upstream.push({"events": events, "delay": 0.15}, account=ACCOUNT)
    results = []

    def one():
        try:
            _, frames = stream(e2e, BODY, deadline_seconds=30)
            results.append(events_of(frames)[-1].name)
        except Exception as exc:  # reported below, with the others
            results.append(repr(exc))

    started = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    elapsed = time.monotonic() - started
    assert results == ["response.completed"] * count
    assert elapsed < 6, f"{count} concurrent streams took {elapsed:.1f} s"

"""The relay's pieces without gunicorn: what the tracker makes of odd upstream events, which
final events the gateway can read, and the event source on a real upstream connection."""

import time

import orjson
import pytest
import requests

from responses_proxy.conversations.service import without_encrypted
from responses_proxy.relay import BATCH_BYTES, EventSource, Tracker, readable_terminal
from tests.fake_upstream import Script, sse

MIB = 1024 * 1024


def named(*events):
    return [(name.encode(), orjson.dumps(payload)) for name, payload in events]


ITEM = {"id": "msg_1", "type": "message", "role": "assistant", "content": []}


@pytest.mark.parametrize("events", [
    pytest.param([("response.created", [1])], id="created-is-a-list"),
    pytest.param([("response.created", {"response": "resp_1"})], id="created-response-is-a-string"),
    pytest.param([("response.created", None)], id="created-is-null"),
    pytest.param([("response.output_item.done", {"item": 5, "output_index": 0})], id="item-is-a-number"),
    pytest.param([("response.output_item.done", [ITEM])], id="done-is-a-list"),
    pytest.param([("response.output_item.added", "x")], id="added-is-a-string"),
])
def test_odd_events_are_relayed_unchanged_and_ignored(events):
    tracker = Tracker(redact=without_encrypted)
    batch = named(*events)
    assert tracker.observe(list(batch)) == batch
    assert tracker.created is None and tracker.items == []
    assert tracker.terminal_name is None


def test_undecodable_data_with_encrypted_content_is_relayed_as_it_came():
    tracker = Tracker(redact=without_encrypted)
    batch = [(b"response.output_item.done", b'{"item": {"encrypted_content": "x"')]
    assert tracker.observe(list(batch)) == batch


def test_redaction_takes_reasoning_content_only_never_a_compaction_item():
    tracker = Tracker(redact=without_encrypted)
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB-r"}
    compaction = {"type": "compaction", "id": "cmp_1", "encrypted_content": "gAAAAB-c"}
    out = tracker.observe(named(("response.output_item.done", {"item": reasoning, "output_index": 0}),
                                ("response.output_item.done", {"item": compaction, "output_index": 1}),
                                ("response.completed", {"response": {"id": "r", "output": [reasoning, compaction]}})))
    items = [orjson.loads(data)["item"] for _, data in out[:2]]
    assert items == [{"type": "reasoning", "id": "rs_1", "summary": []}, compaction]
    assert orjson.loads(out[2][1])["response"]["output"] == items


@pytest.mark.parametrize("headers, expected", [
    ({"x-codex-turn-state": "ts_1"}, ["ts_1"]),
    ({"X-Codex-Turn-State": "ts_2", "x-models-etag": "e"}, ["ts_2"]),
    ({"x-codex-turn-state": 5}, []),
    ({"x-models-etag": "e"}, []),
    ("not headers", []),
])
def test_turn_states_in_metadata_events_are_reported_and_relayed_unchanged(headers, expected):
    seen = []
    tracker = Tracker(on_turn_state=seen.append)
    batch = named(("response.metadata", {"type": "response.metadata", "headers": headers}),
                  ("response.output_text.delta", {"delta": "x-codex-turn-state"}))
    assert tracker.observe(list(batch)) == batch
    assert seen == expected


def test_done_items_with_odd_output_indexes_still_make_the_output():
    tracker = Tracker()
    first, second = {**ITEM, "id": "msg_a"}, {**ITEM, "id": "msg_b"}
    tracker.observe(named(("response.output_item.done", {"item": second, "output_index": 1}),
                          ("response.output_item.done", {"item": first, "output_index": "0"}),
                          ("response.completed", {"response": {"id": "resp_1", "output": []}})))
    # "0" is not an index: that item sorts as the first, before the one at index 1.
    assert tracker.output_items() == [first, second]


@pytest.mark.parametrize("name, payload, readable", [
    ("response.completed", {"response": {"id": "r", "output": [ITEM]}}, True),
    ("response.completed", {"response": {"id": "r"}}, True),
    ("response.completed", {"response": {"id": "r", "output": None}}, True),
    ("response.incomplete", {"response": {"id": "r", "output": []}}, True),
    ("response.failed", {"response": {"id": "r", "error": {"code": "x"}}}, True),
    ("error", {"error": {"code": "x", "message": "m"}}, True),
    ("error", {"message": "m"}, True),
    ("response.completed", [1], False),
    ("response.completed", {"response": [1]}, False),
    ("response.completed", {"response": "done"}, False),
    ("response.completed", {}, False),
    ("response.completed", {"response": {"output": "Hello"}}, False),
    ("response.completed", {"response": {"output": [ITEM, 7]}}, False),
    ("response.failed", {"response": None}, False),
    ("error", [1], False),
    ("error", "failure", False),
])
def test_which_final_events_the_gateway_can_read(name, payload, readable):
    assert readable_terminal(name.encode(), orjson.dumps(payload)) is readable
    assert readable_terminal(name.encode(), b"{not json") is False


def test_what_follows_the_final_event_is_drained_a_batch_at_most(upstream):
    """Data still pouring in after the final event is not read to its end: the connection
    is closed instead."""
    events = Script().start().message(["hi"]).completed().events()
    upstream.push({"events": events, "raw": b":\n" * 65536, "raw_seconds": 5})
    response = requests.post(upstream.base_url + "/codex/responses", json={"model": "gpt-5.2"}, stream=True,
                             headers={"Accept-Encoding": "identity"}, timeout=10)
    source = EventSource(response, read_timeout=10, max_event_bytes=16 * MIB)
    try:
        received = []
        while not received or received[-1][0] != b"response.completed":
            received += source.next(5)
        assert [name for name, _ in received] == [name.encode() for name, _ in events]
        time.sleep(0.5)  # megabytes of the flood wait in the socket buffers now
        before = source.body.processed
        source.drain()
        assert source.body.processed - before <= BATCH_BYTES + 256 * 1024
        assert not source.body.done
    finally:
        source.close()


def test_a_body_of_only_frames_is_named_by_its_data(upstream):
    """Events without ``event:`` lines come out named by their ``type``."""
    events = Script().start().message(["hi"]).completed().events()
    upstream.push({"events": events, "names": False})
    response = requests.post(upstream.base_url + "/codex/responses", json={"model": "gpt-5.2"}, stream=True,
                             headers={"Accept-Encoding": "identity"}, timeout=10)
    source = EventSource(response, read_timeout=10, max_event_bytes=16 * MIB)
    try:
        received = []
        while not received or received[-1][0] != b"response.completed":
            received += source.next(5)
    finally:
        source.close()
    assert received == [(name.encode(), frame.split("data: ", 1)[1].strip().encode())
                        for (name, _), frame in zip(events, sse(events, with_names=False), strict=True)]

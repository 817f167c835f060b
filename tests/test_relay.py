"""The relay's pieces without gunicorn: the event source on a real upstream connection."""

import time

import requests

from responses_proxy.relay import BATCH_BYTES, EventSource
from tests.fake_upstream import Script

MIB = 1024 * 1024


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

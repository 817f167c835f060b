"""An upstream that sends what no well-behaved backend sends: a line that never ends, a flood
at full speed, a compression the gateway cannot undo, events whose data is not what their
name promises. The request concerned fails cleanly (the JSON envelope before the first byte,
``response.failed`` after); the worker, alone here, keeps serving everyone else meanwhile,
is not restarted, and its memory stays bounded.
"""

import json
import threading
import time

import pytest
import requests

from bench.procfs import children_map
from tests.e2e.helpers import ACCOUNT, auth, error_of, events_of, post, stream, wait_for
from tests.fake_upstream import Script, sse
from tests.helpers import Gateway

BODY = {"model": "gpt-5.2", "input": "hi"}
MIB = 1024 * 1024
LIMIT = 16 * MIB  # RESPONSES_PROXY_MAX_EVENT_BYTES's default, which this gateway keeps
STREAMING = pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])


@pytest.fixture(scope="module")
def gateway(fake_upstream, tmp_path_factory):
    """One gevent worker: anything that blocks its event loop blocks every request."""
    server = Gateway(tmp_path_factory.mktemp("hostile-gateway"), fake_upstream.base_url, workers=1,
                     env={"RESPONSES_PROXY_KEEPALIVE_SECONDS": "1"})
    with server.serving():
        yield server


@pytest.fixture
def worker(gateway, upstream):
    """The worker's pid and its peak memory before the test; after it, the same worker must
    still be serving (not killed by gunicorn's liveness check and replaced)."""
    [pid] = children_map()[gateway.process.pid]
    before = peak_rss(pid)
    yield pid, before
    assert children_map()[gateway.process.pid] == [pid], gateway.log()
    assert "WORKER TIMEOUT" not in gateway.log(None)


def peak_rss(pid):
    """The most resident memory the process ever had (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


class HealthPoller:
    """Asks ``/healthz`` over and over from a thread: (sent, answered, status) of each."""

    def __init__(self, gateway):
        self.url = gateway.url + "/healthz"
        self.answers = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                status = requests.get(self.url, timeout=30).status_code
            except requests.RequestException as exc:
                status = repr(exc)
            self.answers.append((sent, time.monotonic(), status))
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        time.sleep(0.2)  # a few answers before the trouble starts
        return self

    def __exit__(self, *exc_info):
        time.sleep(0.2)
        self._stop.set()
        self._thread.join(60)

    def check(self, bound=2.0):
        """Every answer was a 200 and came within ``bound`` seconds (the worker's event loop
        never stalled longer than that)."""
        assert self.answers
        assert all(status == 200 for _, _, status in self.answers), self.answers
        slowest = max(answered - sent for sent, answered, _ in self.answers)
        assert slowest < bound, f"/healthz waited {slowest:.2f} s"


def raw_stream(gateway, body=BODY, timeout=60):
    """A streaming request read to its end, unparsed (a flood is too big to split in frames)."""
    reply = requests.post(gateway.url + "/v1/responses", headers=auth(gateway.key), json={**body, "stream": True},
                          stream=True, timeout=(5, timeout))
    with reply:
        assert reply.status_code == 200, reply.content[:1000]
        tail = b""
        for chunk in reply.iter_content(chunk_size=None):
            tail = (tail + chunk)[-100_000:]
    return tail


def last_event(tail):
    """(name, data) of the last frame of a stream."""
    frame = tail.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    name_line, data_line = frame.split(b"\n")
    assert name_line.startswith(b"event: ") and data_line.startswith(b"data: "), frame[:500]
    return name_line[7:].decode(), json.loads(data_line[6:])


def assert_failed(name, data, message):
    assert name == "response.failed", (name, data)
    response = data["response"]
    assert response["status"] == "failed"
    assert response["error"]["code"] == "upstream_error"
    assert message in response["error"]["message"], response["error"]


def created_head():
    script = Script("gpt-5.2").start()
    return script, script.events()


def answer():
    return Script("gpt-5.2").start().message(["Hel", "lo"]).completed()


# --- a line that never ends -------------------------------------------------------------------------

GIANT_LINE = {"raw": b"x" * MIB, "raw_repeat": 300}  # 300 MB without a newline, at full speed
TOO_LARGE = "The upstream sent an event too large to relay: a line is longer than 16777216 bytes."


@STREAMING
def test_a_giant_line_before_the_first_byte_is_a_502(gateway, upstream, worker, streaming):
    pid, peak_before = worker
    upstream.push(GIANT_LINE, account=ACCOUNT)
    with HealthPoller(gateway) as health:
        reply = post(gateway, {**BODY, "stream": streaming}, timeout=60)

    assert reply.status_code == 502, reply.text[:1000]
    error = error_of(reply)
    assert error["type"] == error["code"] == "upstream_error"
    assert error["message"] == TOO_LARGE
    health.check()
    [served] = upstream.raw_bodies
    assert not served["complete"] and served["sent"] < 100 * MIB  # the gateway stopped reading
    assert peak_rss(pid) - peak_before < 8 * LIMIT


def test_a_giant_line_after_the_first_byte_ends_with_response_failed(gateway, upstream, worker):
    pid, peak_before = worker
    script, head = created_head()
    upstream.push({**GIANT_LINE, "events": head}, account=ACCOUNT)
    with HealthPoller(gateway) as health:
        reply, frames = stream(gateway, BODY, deadline_seconds=60, read_timeout=60)

    received = events_of(frames)
    assert [frame.name for frame in received[:-1]] == [name for name, _ in head]
    assert_failed(received[-1].name, received[-1].data, TOO_LARGE)
    assert received[-1].data["response"]["id"] == script.response_id
    health.check()
    assert not upstream.raw_bodies[0]["complete"]
    assert peak_rss(pid) - peak_before < 8 * LIMIT


def test_the_worker_serves_the_next_request_after_a_giant_line(gateway, upstream, worker):
    upstream.push(GIANT_LINE, account=ACCOUNT)
    assert post(gateway, BODY, timeout=60).status_code == 502
    reply = post(gateway, BODY)
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "completed"


# --- a flood at full speed ----------------------------------------------------------------------------

def delta_frames(count):
    delta = {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0,
             "delta": "flood "}
    return "".join(sse([(delta["type"], delta)] * count)).encode()


def flood_served(upstream, health):
    """The flood went on for seconds, and /healthz was answered quickly all along, many times
    while it went on."""
    health.check(bound=1.5)
    [served] = upstream.raw_bodies
    during = [sent for sent, answered, _ in health.answers if served["started"] < sent < answered < served["ended"]]
    assert len(during) >= 5, (served, health.answers)


@pytest.mark.parametrize("flood", [
    pytest.param(b":\n" * 65536, id="comment-lines"),
    pytest.param(delta_frames(1000), id="delta-events"),
])
def test_a_flood_at_full_speed_does_not_stall_the_worker(gateway, upstream, worker, flood):
    """For 3 s the upstream sends as fast as the gateway reads; the gateway is busy all that
    time, and still /healthz is answered while the flood goes on."""
    pid, peak_before = worker
    _, head = created_head()
    upstream.push({"raw": flood, "raw_seconds": 3, "events": head}, account=ACCOUNT)
    with HealthPoller(gateway) as health:
        tail = raw_stream(gateway)

    assert_failed(*last_event(tail), "The upstream closed the stream before the response completed.")
    flood_served(upstream, health)
    assert peak_rss(pid) - peak_before < 8 * LIMIT


def test_a_flood_of_transfer_framing_does_not_stall_the_worker(gateway, upstream, worker):
    """The last chunk, then trailer lines without end: megabytes to read that make no body
    at all, so no event ever comes out to pace the reading."""
    trailers = b"0\r\n" + b"X-Junk: 1\r\n" * 6000
    upstream.push({"raw": trailers, "raw_seconds": 3, "chunked": False, "headers": {"Transfer-Encoding": "chunked"}},
                  account=ACCOUNT)
    with HealthPoller(gateway) as health:
        reply = post(gateway, BODY, timeout=60)

    assert reply.status_code == 502, reply.text[:1000]
    assert error_of(reply)["message"] == ("The upstream connection failed mid-stream: the upstream closed the "
                                          "connection before the end of the body.")
    flood_served(upstream, health)


@STREAMING
def test_a_flood_after_the_final_event_is_not_read(gateway, upstream, worker, streaming):
    """The answer is complete; what follows is not waited for, nor read to its end."""
    script = answer()
    upstream.push({"events": script.events(), "raw": b":\n" * 65536, "raw_seconds": 3}, account=ACCOUNT)
    with HealthPoller(gateway) as health:
        if streaming:
            _, frames = stream(gateway, BODY)
            assert events_of(frames)[-1].name == "response.completed"
        else:
            reply = post(gateway, BODY)
            assert reply.status_code == 200 and reply.json()["output"] == script.items, reply.text[:1000]

    health.check(bound=1.5)
    [served] = upstream.raw_bodies
    assert wait_for(lambda: served["ended"], timeout=10)
    assert not served["complete"]  # the gateway hung up instead of reading 3 s of it


# --- a compression the gateway cannot undo ------------------------------------------------------------

@STREAMING
def test_an_unsupported_content_encoding_is_a_502(gateway, upstream, worker, streaming):
    body = "".join(sse(Script("gpt-5.2").start().message(["hi"]).completed().events())).encode()
    upstream.push({"raw": body, "headers": {"Content-Encoding": "br"}}, account=ACCOUNT)
    reply = post(gateway, {**BODY, "stream": streaming})

    assert reply.status_code == 502, reply.text[:1000]
    error = error_of(reply)
    assert error["type"] == error["code"] == "upstream_error"
    assert error["message"] == "The upstream used an unsupported Content-Encoding: br."
    assert "<html" not in reply.text.lower()


# --- events whose data is not what their name promises -----------------------------------------------

def frames_of(events, names=True):
    """Raw SSE bytes for (name, payload) pairs; a payload may be any JSON value."""
    out = []
    for name, payload in events:
        data = json.dumps(payload, separators=(",", ":"))
        out.append((f"event: {name}\n" if names else "") + f"data: {data}\n\n")
    return "".join(out).encode()


def replace_payload(events, name, change):
    return [(event, change(payload) if event == name else payload) for event, payload in events]


def malformed_terminal(kind):
    script = answer()
    events = script.events()
    if kind == "response-is-a-list":
        events = replace_payload(events, "response.completed", lambda payload: {**payload, "response": [1]})
    elif kind == "response-is-a-string":
        events = replace_payload(events, "response.completed", lambda payload: {**payload, "response": "done"})
    elif kind == "output-is-a-string":
        events = replace_payload(events, "response.completed",
                                 lambda payload: {**payload, "response": {**payload["response"], "output": "Hello"}})
    elif kind == "output-holds-a-number":
        events = replace_payload(events, "response.completed",
                                 lambda payload: {**payload, "response": {**payload["response"], "output": [7]}})
    elif kind == "error-is-a-list":
        events = [*events[:-1], ("error", [1])]
    return script, events


MALFORMED_TERMINALS = ["response-is-a-list", "response-is-a-string", "output-is-a-string", "output-holds-a-number",
                       "error-is-a-list"]
MALFORMED = "The upstream sent a malformed final event."


@pytest.mark.parametrize("kind, names", [(kind, True) for kind in MALFORMED_TERMINALS] + [
    ("response-is-a-list", False), ("output-is-a-string", False)])
def test_a_malformed_final_event_fails_the_stream(gateway, upstream, worker, kind, names):
    script, events = malformed_terminal(kind)
    upstream.push({"raw": frames_of(events, names)}, account=ACCOUNT)
    reply, frames = stream(gateway, BODY)
    received = events_of(frames)
    assert [frame.data for frame in received[:-1]] == [payload for _, payload in events[:-1]]
    assert_failed(received[-1].name, received[-1].data, MALFORMED)
    assert received[-1].data["response"]["id"] == script.response_id


@pytest.mark.parametrize("kind", MALFORMED_TERMINALS)
def test_a_malformed_final_event_is_a_502(gateway, upstream, worker, kind):
    _, events = malformed_terminal(kind)
    upstream.push({"raw": frames_of(events)}, account=ACCOUNT)
    reply = post(gateway, BODY)
    assert reply.status_code == 502, reply.text[:1000]
    error = error_of(reply)
    assert error["code"] == "upstream_error" and error["message"] == MALFORMED


def test_a_malformed_final_event_as_the_only_event_is_a_502_when_streaming(gateway, upstream, worker):
    upstream.push({"raw": frames_of([("response.completed", {"type": "response.completed", "response": [1]})])},
                  account=ACCOUNT)
    reply = post(gateway, {**BODY, "stream": True})
    assert reply.status_code == 502, reply.text[:1000]
    assert error_of(reply)["message"] == MALFORMED


ODD_ITEM = {"id": "msg_odd", "type": "message", "role": "assistant", "status": "completed", "content": []}


def odd_events():
    """A good answer, but its ``response.created`` data is a list, two ``output_item.done``
    items are not objects, and one has no usable ``output_index``."""
    script = Script("gpt-5.2").start().message(["Hel", "lo"]).completed(empty_output=True)
    events = replace_payload(script.events(), "response.created", lambda payload: [1])
    done = "response.output_item.done"
    odd = [(done, {"type": done, "output_index": 1, "item": 5}), (done, {"type": done, "output_index": 2, "item": "x"}),
           (done, {"type": done, "output_index": None, "item": ODD_ITEM})]
    return script, events[:-1] + odd + events[-1:]


def test_odd_non_final_events_are_relayed_and_ignored(gateway, upstream, worker):
    _, events = odd_events()
    upstream.push({"raw": frames_of(events)}, account=ACCOUNT)
    tail = raw_stream(gateway)
    name, data = last_event(tail)
    assert name == "response.completed" and data["response"]["status"] == "completed"


def test_odd_non_final_events_do_not_spoil_the_folded_answer(gateway, upstream, worker):
    script, events = odd_events()
    upstream.push({"raw": frames_of(events)}, account=ACCOUNT)
    reply = post(gateway, BODY)
    assert reply.status_code == 200, reply.text[:1000]
    body = reply.json()
    assert body["id"] == script.response_id
    assert body["output"] == [*script.items, ODD_ITEM]  # rebuilt from the done items that are items

"""An upstream that sends what no well-behaved backend sends, here a line that never ends.
The request concerned fails cleanly (the JSON envelope before the first byte,
``response.failed`` after); the worker, alone here, keeps serving everyone else meanwhile,
is not restarted, and its memory stays bounded.
"""

import threading
import time

import pytest
import requests

from bench.procfs import children_map
from tests.conftest import Gateway
from tests.e2e.conftest import ACCOUNT, error_of, events_of, post, stream
from tests.fake_upstream import Script

BODY = {"model": "gpt-5.2", "input": "hi"}
MIB = 1024 * 1024
LIMIT = 16 * MIB  # RESPONSES_PROXY_MAX_EVENT_BYTES's default, which this gateway keeps
STREAMING = pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])


@pytest.fixture(scope="module")
def gateway(fake_upstream, tmp_path_factory):
    """One gevent worker: anything that blocks its event loop blocks every request."""
    server = Gateway(tmp_path_factory.mktemp("hostile-gateway"), fake_upstream.base_url, workers=1,
                     env={"RESPONSES_PROXY_KEEPALIVE_SECONDS": "1"})
    server.start()
    server.import_account()
    server.key = server.create_key()
    yield server
    server.stop()


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


def assert_failed(name, data, message):
    assert name == "response.failed", (name, data)
    response = data["response"]
    assert response["status"] == "failed"
    assert response["error"]["code"] == "upstream_error"
    assert message in response["error"]["message"], response["error"]


def created_head():
    script = Script("gpt-5.2").start()
    return script, script.events()


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



"""Soak: a few thousand mixed requests against the real server, then nothing is left held.

Two gevent workers, two accounts. Concurrently: good requests (JSON and streamed, over HTTP and
WebSockets), failovers, upstream streams cut, conversation turns racing on the same
conversations (409s), a key at its concurrency limit (429s), bad requests of every sort, and
clients that hang up at every phase: inside the request headers, mid-body, right after the
request, right after the answer's headers, mid-stream, mid-fold of a JSON answer, and while the
gateway fails over. Every answer that arrives whole must be in OpenAI's format.

Then each worker must come back to the baseline it had after a warm-up round (so that what
it keeps on purpose is already there): its open descriptors, event-loop watchers, requests in
progress and upstream requests in flight (the ``worker_*`` gauges of /metrics); the pool's
in-flight counts in the database and the limited key's are zero, no conversation holds its
turn lease, and a new turn on every conversation is served. The workers are the same
processes, and gunicorn logged no worker timeout and no traceback.

Two things a worker keeps on purpose vary with the traffic it saw: pooled upstream connections
and SQLite connections. Upstream, the pool is made small (``POOL_SIZE``) and a round of
concurrent slow answers fills it before each reading, so a worker holds exactly ``POOL_SIZE``
idle connections then: one more is a connection never given back. The SQLite connections
(SQLAlchemy's pool opens up to fifteen per worker at once and keeps five, and SQLite keeps
some descriptors of closed ones for reuse) are told apart by their files and only bounded.
Every other descriptor must be back exactly.
"""

import collections
import concurrent.futures
import glob
import itertools
import json
import os
import random
import socket
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from responses_proxy.store import limits as limit_store
from responses_proxy.store.tables import conversations, worker_load
from tests.e2e.helpers import TERMINAL, WebSocketClient, auth, query, split_frames, wait_for
from tests.fake_upstream import auth_json
from tests.helpers import Gateway, read_to_end, unique
from tests.prometheus import metric

WORKERS = 2
POOL_SIZE = 6  # upstream connections each worker keeps for reuse
FILL_ROUND = 64  # concurrent slow answers: far more than POOL_SIZE on each worker
CONCURRENCY = 32
LIMITED_CONCURRENCY = 3
IN_FLIGHT_LEASE_SECONDS = 4  # the key-lease renewer stops within a second of the last request
# SQLAlchemy's QueuePool (5 kept, 10 more at once) bounds SQLite's descriptors: the database and
# its WAL for each connection, the shared memory once. SQLite keeps a closed connection's
# database descriptor for the next one while another holds a lock: how many it has varies.
SQLITE_DESCRIPTORS = 2 * (5 + 10) + 1
CONVERSATIONS = 16
IO_TIMEOUT = 20
LOAD_SECONDS = 60
GAUGES = {"fds": "responses_proxy_worker_open_fds", "watchers": "responses_proxy_worker_event_loop_watchers",
          "requests": "responses_proxy_worker_requests_in_progress",
          "in_flight": "responses_proxy_worker_upstream_requests_in_flight"}
MODEL = "gpt-5.2"


@pytest.fixture(scope="module")
def gateway(fake_upstream, tmp_path_factory):
    server = Gateway(tmp_path_factory.mktemp("soak"), fake_upstream.base_url, workers=WORKERS, env={
        "RESPONSES_PROXY_UPSTREAM_POOL_SIZE": str(POOL_SIZE),
        "RESPONSES_PROXY_IN_FLIGHT_LEASE_SECONDS": str(IN_FLIGHT_LEASE_SECONDS),
        "RESPONSES_PROXY_CLIENT_TIMEOUT": "10",
        "RESPONSES_PROXY_LOG_LEVEL": "WARNING",
    })
    server.start()
    for index in range(2):
        server.import_account(auth_json(account_id=f"acct-soak-{index}", email=f"soak{index}@example.com",
                                        refresh_token=f"rt-soak-{index}", last_refresh="2099-01-01T00:00:00Z"))
    server.key = server.create_key()
    server.limited = server.create_key_row(concurrency=LIMITED_CONCURRENCY)
    yield server
    server.stop()


# -- talking HTTP over plain sockets: the test decides every byte and when to hang up -------------


def request_bytes(body=None, key=None, path="/v1/responses", raw=None, length=None):
    """(head, body) of a POST: ``body`` as JSON or ``raw`` bytes; ``length`` declares another length."""
    payload = raw if raw is not None else json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", "Content-Type: application/json",
             f"Content-Length: {len(payload) if length is None else length}"]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), payload


def connect(gateway):
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=IO_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def parse_answer(raw):
    """(status, headers with lower-case names, body) of a whole answer; fails on a partial one."""
    head, separator, body = raw.partition(b"\r\n\r\n")
    assert separator, f"no whole answer: {raw[:300]!r}"
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        assert raw.endswith(b"0\r\n\r\n"), f"a chunked answer cut short: {raw[-300:]!r}"
        body = b"".join(chunks(body))
    else:
        assert len(body) == int(headers["content-length"]), f"a short answer: {raw[:300]!r}"
    return int(lines[0].split()[1]), headers, body


def exchange(gateway, **request):
    """One whole request and answer, on a connection of its own."""
    head, payload = request_bytes(**request)
    with connect(gateway) as sock:
        sock.sendall(head + payload)
        return parse_answer(read_to_end(sock))


# -- what every answer must look like ------------------------------------------------------------


def check_envelope(headers, body):
    assert headers["content-type"].startswith("application/json"), headers
    document = json.loads(body)
    assert set(document) == {"error"}, document
    error = document["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str), error
    return error


def check_response_object(response):
    assert response["object"] == "response" and isinstance(response["id"], str), response
    assert isinstance(response["output"], list), response
    assert response["status"] in ("completed", "incomplete", "failed", "in_progress"), response


def check_frames(frames, whole):
    """SSE frames read so far (``whole``: the stream ended) are exactly OpenAI's events."""
    events = [frame for frame in frames if not frame.is_keepalive]
    for position, frame in enumerate(events):
        assert frame.name not in TERMINAL or position == len(events) - 1, f"events after the end: {events}"
        if frame.name.startswith("response.") and "response" in frame.data:
            check_response_object(frame.data["response"])
    if whole:
        assert events and events[-1].name in TERMINAL, f"a stream that did not end with a final event: {events}"
        if events[-1].name == "error":
            assert isinstance(events[-1].data.get("message") or events[-1].data.get("error"), (str, dict))
    return events


def check_answer(status, headers, body, completed=False):
    """The answer is OpenAI's: an error envelope, a response object, or a stream of events
    (``completed``: a 200 must be a completed response)."""
    if status >= 400:
        check_envelope(headers, body)
        return
    assert status == 200, (status, body[:300])
    if headers["content-type"].startswith("text/event-stream"):
        events = check_frames(split_frames([(0, body)]), whole=True)
        assert not completed or events[-1].name == "response.completed", events[-1].data
    else:
        response = json.loads(body)
        check_response_object(response)
        assert not completed or response["status"] == "completed", response


def check_message(message):
    """One WebSocket message: an event, or an error message with the envelope's fields."""
    if message["type"] == "error":
        error = message["error"]
        assert {"message", "type", "param", "code"} <= set(error) and isinstance(message["status"], int), message
    elif message["type"].startswith("response.") and "response" in message:
        check_response_object(message["response"])


# -- the load --------------------------------------------------------------------------------------


class Load:
    """Runs jobs (kind, function) concurrently; counts outcomes by kind and keeps every defect."""

    def __init__(self, gateway, upstream):
        self.gateway = gateway
        self.upstream = upstream
        self.outcomes = collections.defaultdict(collections.Counter)
        self.defects = []
        self.conversations = [f"conv_soak_{unique()}" for _ in range(CONVERSATIONS)]
        self._lock = threading.Lock()
        self._serial = itertools.count()

    def marker(self, kind):
        with self._lock:
            return f"soak {kind} {next(self._serial)} {unique()}"

    def script(self, marker, *behaviours):
        """What the upstream does for this request's attempts, in order, on whichever account."""
        for behaviour in behaviours:
            self.upstream.push(behaviour, account=("input", marker))

    def run(self, jobs, concurrency=CONCURRENCY, seconds=LOAD_SECONDS):
        """Every job, ``concurrency`` at a time; those not started within ``seconds`` are not
        run (a gateway that hangs would otherwise hold the test for each one's timeouts)."""
        deadline = time.monotonic() + seconds
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            for future in [pool.submit(self._one, kind, job, deadline) for kind, job in jobs]:
                future.result()

    def _one(self, kind, job, deadline):
        if time.monotonic() > deadline:
            with self._lock:
                self.defects.append(f"{kind}: not run, out of time")
            return
        try:
            outcome = job(self, kind)
        except Exception as exc:
            outcome = "defect"
            with self._lock:
                self.defects.append(f"{kind}: {type(exc).__name__}: {exc}"[:600])
        with self._lock:
            self.outcomes[kind][outcome] += 1

    # -- whole answers -------------------------------------------------------------------------

    def answered(self, allowed, completed=False, **request):
        status, headers, body = exchange(self.gateway, **request)
        check_answer(status, headers, body, completed)
        assert status in allowed, f"status {status}, not one of {allowed}: {body[:300]!r}"
        return status

    def good(self, kind, stream=False, key=None, allowed=(200,), **extra):
        body = {"model": MODEL, "input": self.marker(kind), "stream": stream, **extra}
        return self.answered(allowed, completed=True, body=body, key=key or self.gateway.key)

    def failover(self, kind, stream):
        marker = self.marker(kind)
        self.script(marker, {"status": random.choice((500, 502, 503))})
        return self.answered((200,), completed=True, body={"model": MODEL, "input": marker, "stream": stream},
                             key=self.gateway.key)

    def upstream_cut(self, kind, stream):
        marker = self.marker(kind)
        self.script(marker, {"cut_after": random.randint(2, 6)})
        return self.answered((200, 502), body={"model": MODEL, "input": marker, "stream": stream},
                             key=self.gateway.key)

    def turn(self, kind, conversation=None, stream=None):
        stream = random.random() < 0.5 if stream is None else stream
        conversation = conversation or random.choice(self.conversations)
        return self.good(kind, stream=stream, allowed=(200, 409), conversation=conversation)

    def limited(self, kind):
        return self.good(kind, stream=random.random() < 0.5, key=self.gateway.limited["key"], allowed=(200, 429))

    def bad(self, kind, allowed, **request):
        request.setdefault("key", self.gateway.key)
        return self.answered(allowed, **request)

    def huge_length(self, kind):
        """A body declared far larger than the limit, a little of it sent, then gone."""
        head, _ = request_bytes(body={}, key=self.gateway.key, length=10**10)
        with connect(self.gateway) as sock:
            sock.sendall(head + b'{"model": "' + b"x" * 4096)
            sock.settimeout(5)
            raw = read_to_end(sock)
        status, headers, body = parse_answer(raw)
        check_envelope(headers, body)
        assert status == 413, raw[:300]
        return status

    def websocket(self, kind, requests_per_connection=3):
        client = WebSocketClient(self.gateway)
        try:
            assert client.status == 101, client.status
            for _ in range(requests_per_connection):
                messages = client.request({"model": MODEL, "input": self.marker(kind)}, timeout=IO_TIMEOUT)
                for message in messages:
                    check_message(message)
                assert messages[-1]["type"] == "response.completed", messages[-1]
        finally:
            client.close()
        return 200

    # -- clients that hang up ------------------------------------------------------------------

    def gone_in_headers(self, kind):
        head, _ = request_bytes(body={"model": MODEL, "input": "hi"}, key=self.gateway.key)
        with connect(self.gateway) as sock:
            sock.sendall(head[:random.randint(1, len(head) - 4)])
        return "gone"

    def gone_mid_body(self, kind):
        head, payload = request_bytes(body={"model": MODEL, "input": self.marker(kind) + " " + "x" * 2000},
                                      key=self.gateway.key)
        with connect(self.gateway) as sock:
            sock.sendall(head + payload[:random.randint(1, len(payload) - 1)])
            time.sleep(random.random() * 0.05)
        return "gone"

    def gone_after_request(self, kind):
        marker = self.marker(kind)
        self.script(marker, {"delay": 0.02})
        head, payload = request_bytes(body={"model": MODEL, "input": marker, "stream": random.random() < 0.5},
                                      key=self.gateway.key)
        with connect(self.gateway) as sock:
            sock.sendall(head + payload)
        return "gone"

    def gone_after_headers(self, kind):
        marker = self.marker(kind)
        self.script(marker, {"delay": 0.02})
        head, payload = request_bytes(body={"model": MODEL, "input": marker, "stream": True}, key=self.gateway.key)
        with connect(self.gateway) as sock:
            sock.sendall(head + payload)
            received = b""
            while b"\r\n\r\n" not in received:
                data = sock.recv(65536)
                assert data, f"closed before the answer's headers: {received!r}"
                received += data
        assert received.startswith(b"HTTP/1.1 200"), received[:300]
        return "gone"

    def gone_mid_stream(self, kind, **extra):
        """Reads a few events of a slow stream (those checked), then hangs up."""
        marker = self.marker(kind)
        self.script(marker, {"delay": 0.03})
        head, payload = request_bytes(body={"model": MODEL, "input": marker, "stream": True, **extra},
                                      key=self.gateway.key)
        wanted = random.randint(1, 6)
        with connect(self.gateway) as sock:
            sock.sendall(head + payload)
            received = b""
            while received.count(b"\n\n") < wanted:  # frame ends (the chunks' framing is CRLF)
                data = sock.recv(65536)
                if not data:  # the answer ended first: then it is whole
                    check_answer(*parse_answer(received))
                    return "answered first"
                received += data
        head, _, body = received.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):  # a 409 of a busy conversation
            return "answered first"
        frames = b"".join(chunks(body))
        if b"\n\n" in frames:
            check_frames(split_frames([(0, frames[:frames.rindex(b"\n\n") + 2])]), whole=False)
        return "gone"

    def gone_after(self, kind, stream, *behaviours, **extra):
        """Sends a request whose attempts do ``behaviours``, and hangs up at a random moment."""
        marker = self.marker(kind)
        self.script(marker, *behaviours)
        head, payload = request_bytes(body={"model": MODEL, "input": marker, "stream": stream, **extra},
                                      key=self.gateway.key)
        received = b""
        with connect(self.gateway) as sock:
            sock.sendall(head + payload)
            sock.settimeout(random.uniform(0.02, 0.6))
            try:
                while data := sock.recv(65536):
                    received += data
            except TimeoutError:
                return "gone"
        check_answer(*parse_answer(received))
        return "answered first"

    def websocket_gone(self, kind):
        marker = self.marker(kind)
        self.script(marker, {"delay": 0.03})
        client = WebSocketClient(self.gateway)
        try:
            assert client.status == 101, client.status
            client.send({"type": "response.create", "model": MODEL, "input": marker})
            for _ in range(random.randint(1, 4)):
                check_message(client.receive(IO_TIMEOUT))
        finally:
            client.close()
        return "gone"


def chunks(body):
    """The data of the whole chunks at the start of a chunked body (read so far, or all of it)."""
    while True:
        size_line, separator, rest = body.partition(b"\r\n")
        if not separator:
            return
        size = int(size_line, 16)
        if size == 0 or len(rest) < size + 2:
            return
        yield rest[:size]
        body = rest[size + 2:]


def mix(scale=1.0):
    """[(kind, job)], shuffled: the whole load (``scale`` 1: about 2,800 requests)."""
    kinds = {
        "json": (300, lambda load, kind: load.good(kind)),
        "stream": (300, lambda load, kind: load.good(kind, stream=True)),
        "failover json": (100, lambda load, kind: load.failover(kind, False)),
        "failover stream": (100, lambda load, kind: load.failover(kind, True)),
        "upstream cut json": (30, lambda load, kind: load.upstream_cut(kind, False)),
        "upstream cut stream": (30, lambda load, kind: load.upstream_cut(kind, True)),
        "conversation turn": (300, lambda load, kind: load.turn(kind)),
        "conversation turn, gone mid-stream": (60, lambda load, kind: load.gone_mid_stream(
            kind, conversation=random.choice(load.conversations))),
        "conversation turn, gone mid-fold": (40, lambda load, kind: load.gone_after(
            kind, False, {"delay": 0.03}, conversation=random.choice(load.conversations))),
        "limited key": (150, lambda load, kind: load.limited(kind)),
        "websocket (3 requests)": (40, lambda load, kind: load.websocket(kind)),
        "invalid json": (80, lambda load, kind: load.bad(kind, (400,), raw=b'{"model": "gpt-5.2", "inp')),
        "wrong types": (80, lambda load, kind: load.bad(kind, (400,), body={"model": MODEL, "input": 5,
                                                                             "stream": "yes"})),
        "unknown fields": (60, lambda load, kind: load.bad(kind, (200, 400), body={
            "model": MODEL, "input": [{"type": "message", "role": "user", "content": "hi", "colour": "red"}],
            "no_such_field": {"nested": [1, 2]}})),
        "unknown model": (60, lambda load, kind: load.bad(kind, (400,), body={"model": "no-such-model",
                                                                               "input": "hi"})),
        "no key": (60, lambda load, kind: load.bad(kind, (401,), key=None, body={"model": MODEL, "input": "hi"})),
        "bad key": (60, lambda load, kind: load.bad(kind, (401,), key="sk-wrong-" + unique(),
                                                    body={"model": MODEL, "input": "hi"})),
        "no such route": (40, lambda load, kind: load.bad(kind, (404,), path="/v1/nowhere", body={})),
        "huge content-length, then gone": (40, lambda load, kind: load.huge_length(kind)),
        "gone inside the headers": (100, lambda load, kind: load.gone_in_headers(kind)),
        "gone mid-body": (100, lambda load, kind: load.gone_mid_body(kind)),
        "gone right after the request": (100, lambda load, kind: load.gone_after_request(kind)),
        "gone right after the answer's headers": (100, lambda load, kind: load.gone_after_headers(kind)),
        "gone mid-stream": (150, lambda load, kind: load.gone_mid_stream(kind)),
        "gone while a JSON answer is folded": (80, lambda load, kind: load.gone_after(kind, False, {"delay": 0.03})),
        "gone during a failover": (150, lambda load, kind: load.gone_after(
            kind, random.random() < 0.5, {"status": 503, "header_delay": random.uniform(0.05, 0.4)},
            {"delay": 0.03})),
        "websocket, gone mid-answer": (30, lambda load, kind: load.websocket_gone(kind)),
    }
    jobs = [(kind, job) for kind, (count, job) in kinds.items() for _ in range(max(1, round(count * scale)))]
    random.shuffle(jobs)
    return jobs


def fill_upstream_pools(load, upstream_port, rounds=3):
    """Concurrent slow answers, more than ``POOL_SIZE`` on each worker, until every worker holds
    ``POOL_SIZE`` idle upstream connections. A round can fall short (the kernel spreads the
    connections over the workers at random); a connection never given back makes one more."""

    def slow(load, kind):
        marker = load.marker(kind)
        load.script(marker, {"header_delay": 0.75})
        return load.answered((200,), body={"model": MODEL, "input": marker}, key=load.gateway.key)

    for _ in range(rounds):
        load.run([("fill", slow)] * FILL_ROUND, concurrency=FILL_ROUND)
        held = {pid: kept_on_purpose(load.gateway, pid, upstream_port)[0] for pid in load.gateway.worker_pids()}
        if min(held.values()) >= POOL_SIZE:
            return held
        print(f"  a round left fewer than {POOL_SIZE} upstream connections pooled: {held}")
    return held


def warm_up(load):
    """Every kind of request a few times, and each conversation's first turn: what a worker
    starts on first use (background loops, files, connections) is there before the baseline."""
    load.run([(kind, job) for kind, job in mix(scale=0.03) if not kind.startswith("conversation")])
    load.run([("conversation turn", lambda load, kind, name=name: load.turn(kind, name, stream=False))
              for name in load.conversations])


# -- what the workers hold -------------------------------------------------------------------------


def worker_gauges(gateway):
    """{pid: {gauge: value}} from one scrape, on a connection of its own."""
    reply = requests.get(gateway.url + "/metrics", headers={"Connection": "close"}, timeout=10)
    assert reply.status_code == 200, reply.text
    values = collections.defaultdict(dict)
    names = {metric: short for short, metric in GAUGES.items()}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            if sample.name in names:
                values[int(sample.labels["pid"])][names[sample.name]] = int(sample.value)
    return dict(values)


def socket_peers():
    """{socket inode: remote port} of this host's IPv4 TCP sockets."""
    peers = {}
    with open("/proc/net/tcp") as handle:
        for line in list(handle)[1:]:
            fields = line.split()
            peers[fields[9]] = int(fields[2].rsplit(":", 1)[1], 16)
    return peers


def kept_on_purpose(gateway, pid, upstream_port):
    """(pooled upstream connections, descriptors of the SQLite files) the worker ``pid`` holds."""
    database = os.path.join(str(gateway.data_dir), "responses-proxy.db")
    peers = socket_peers()
    upstream = files = 0
    for entry in glob.glob(f"/proc/{pid}/fd/*"):
        try:
            target = os.readlink(entry)
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            upstream += peers.get(target[len("socket:["):-1]) == upstream_port
        elif target.startswith(database):
            files += 1
    return upstream, files


def reading(gateway, upstream_port):
    """{pid: {gauge: value, "upstream": n, "database": n, "other fds": n}}."""
    gauges = worker_gauges(gateway)
    for pid, values in gauges.items():
        values["upstream"], values["database"] = kept_on_purpose(gateway, pid, upstream_port)
        values["other fds"] = values["fds"] - values["upstream"] - values["database"]
    return gauges


COMPARED = ("other fds", "upstream", "watchers", "requests", "in_flight")


def compared(values_by_pid):
    return {pid: {name: values[name] for name in COMPARED} for pid, values in values_by_pid.items()}


def steady(gateway, upstream_port, wanted=None, readings=3, seconds=20):
    """A reading once a second (the gauges' own pace) until ``readings`` in a row agree on
    everything compared, and agree with ``wanted`` when given; returns the last one. More than
    one: a reading taken while a greenlet was being woken, or a connection closed, is off by one."""
    agreeing = []
    deadline = time.monotonic() + seconds
    while True:
        current = reading(gateway, upstream_port)
        if agreeing and compared(agreeing[-1]) != compared(current):
            agreeing = []
        if wanted is None or compared(current) == compared(wanted):
            agreeing.append(current)
        if len(agreeing) >= readings:
            return current
        assert time.monotonic() < deadline, (
            f"the workers did not come back to their baseline\n  baseline: {wanted}\n  now:      {current}")
        time.sleep(1.05)


def busy(gateway):
    """What the database says is still held: in-flight counts, turn leases, the limited key's count."""
    now = time.time()
    held = {"worker_load": [row for row in query(gateway, select(worker_load)) if row["in_flight"] > 0],
            "turn leases": [row["id"] for row in query(gateway, select(conversations))
                            if row["busy_owner"] is not None or (row["busy_until"] or 0) > now]}
    engine = gateway.engine()
    try:
        row = limit_store.read(engine, gateway.limited["id"])
    finally:
        engine.dispose()
    held["limited key in flight"] = limit_store.counts(row, now, IN_FLIGHT_LEASE_SECONDS).in_flight
    return {name: value for name, value in held.items() if value}


def counted(gateway):
    """What the gateway's counters say of the load's phases (summed over the workers)."""
    text = requests.get(gateway.url + "/metrics", headers={"Connection": "close"}, timeout=10).text
    return {"requests": metric(text, "responses_proxy_requests_total"),
            "client gone (499)": metric(text, "responses_proxy_requests_total", status="499"),
            "failovers": metric(text, "responses_proxy_failovers_total"),
            "conversation conflicts": metric(text, "responses_proxy_conversation_conflicts_total"),
            "turns aborted": metric(text, "responses_proxy_conversation_turns_total", result="aborted")}


def test_a_soak_of_mixed_requests_leaves_every_worker_as_it_was(gateway, upstream, fake_upstream):
    started = time.monotonic()
    pids = gateway.worker_pids()
    assert len(pids) == WORKERS
    load = Load(gateway, upstream)
    port = fake_upstream.port

    warm_up(load)
    fill_upstream_pools(load, port)
    assert not load.defects, load.defects[:10]
    baseline = steady(gateway, port)
    assert sorted(baseline) == pids, baseline
    for pid, values in baseline.items():
        assert (values["requests"], values["in_flight"], values["upstream"]) == (0, 0, POOL_SIZE), (
            f"worker {pid} still holds requests after the warm-up: {values}")
    before = counted(gateway)
    load.outcomes.clear()

    jobs = mix()
    load_started = time.monotonic()
    load.run(jobs)
    load_seconds = time.monotonic() - load_started
    summary = {kind: dict(counter) for kind, counter in sorted(load.outcomes.items())}
    assert not load.defects, f"{len(load.defects)} defects, first ones: {load.defects[:10]}\n{summary}"
    seen = {name: value - before[name] for name, value in counted(gateway).items()}
    print(f"\nsoak: {len(jobs)} jobs in {load_seconds:.1f} s, {CONCURRENCY} at a time; the gateway counted {seen}")
    for kind, outcomes in summary.items():
        print(f"  {kind}: {outcomes}")
    # The phases the load is for did happen.
    assert seen["failovers"] >= len([kind for kind, _ in jobs if kind.startswith("failover")]), seen
    assert min(seen["client gone (499)"], seen["conversation conflicts"], seen["turns aborted"]) > 0, seen

    fill_upstream_pools(load, port)
    assert wait_for(lambda: not busy(gateway), timeout=5), busy(gateway)
    after = steady(gateway, port, wanted=baseline, readings=2)
    print(f"  baseline: {baseline}\n  after:    {after}")
    for pid in pids:
        assert after[pid]["database"] <= SQLITE_DESCRIPTORS, after

    # Every conversation takes a new turn at once, and holds whole turns only.
    for conversation in load.conversations:
        status, _, body = exchange(gateway, body={"model": MODEL, "input": "after the soak",
                                                  "conversation": conversation}, key=gateway.key)
        assert status == 200, body[:500]
        reply = requests.get(f"{gateway.url}/v1/conversations/{conversation}/items",
                             params={"order": "asc", "limit": 100}, headers=auth(gateway.key), timeout=10)
        items = reply.json()
        assert not items["has_more"], conversation
        roles = [item["role"] for item in items["data"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2), (conversation, roles)

    assert gateway.worker_pids() == pids
    log = gateway.log(None)
    assert "WORKER TIMEOUT" not in log and "Traceback" not in log, log[-3000:]
    print(f"  whole test: {time.monotonic() - started:.1f} s")

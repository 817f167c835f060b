"""What the end-to-end tests share: raw SSE and WebSocket clients, the usage table, the CLI.

Fixtures live in ``tests/e2e/conftest.py``; the helpers here are imported by name.
"""

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time

import requests
from sqlalchemy import create_engine, select
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from responses_proxy.store import accounts as account_store
from responses_proxy.store.tables import accounts, api_keys, usage
from tests.helpers import ROOT, unique

# One SSE frame as the gateway must write it: an event line and a one-line JSON data line, or
# the keepalive comment. Anything else (multi-line data, missing event line, stray blank line)
# is a framing error.
FRAME = re.compile(rb"event: ([^\r\n:]+)\ndata: ([^\r\n]+)\n\n|: keepalive\n\n")


KEEPALIVE = b": keepalive"


# The ChatGPT account id of the account the shared ``gateway`` fixture imports. Behaviours are
# pushed for it, not for "any account": the fake upstream hands an unaddressed behaviour to
# whatever asks next, token refreshes and quota polls included.
ACCOUNT = "acct-fake-1"


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def post(gateway, body, key=None, timeout=15, **kwargs):
    """A non-streaming ``POST /v1/responses`` (or a streaming one read in full)."""
    return requests.post(gateway.url + "/v1/responses", headers=auth(key or gateway.key), json=body,
                         timeout=timeout, **kwargs)


def error_of(reply):
    """The error object of a JSON error envelope, after checking the envelope's shape."""
    assert reply.headers["Content-Type"].startswith("application/json"), reply.headers
    body = reply.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"message", "type", "code", "param"} <= set(error), error
    assert isinstance(error["message"], str) and error["message"], error
    return error


class Frame:
    """One SSE frame the client received: an event (name + parsed data) or a keepalive."""

    def __init__(self, name, data, raw, arrived):
        self.name = name  # None for a keepalive comment
        self.data = data
        self.raw = raw
        self.arrived = arrived  # time.monotonic() of the chunk that completed the frame

    @property
    def is_keepalive(self):
        return self.name is None

    def __repr__(self):
        return f"Frame({self.name or 'keepalive'})"


def split_frames(chunks):
    """Frames from ``[(arrival time, bytes), ...]``; fails on any byte that is not exact framing."""
    raw = b"".join(data for _, data in chunks)
    ends = []
    total = 0
    for arrived, data in chunks:
        total += len(data)
        ends.append((total, arrived))
    frames = []
    position = 0
    while position < len(raw):
        match = FRAME.match(raw, position)
        assert match, f"bad SSE framing at byte {position}: {raw[position:position + 300]!r}"
        position = match.end()
        arrived = next(when for end, when in ends if end >= position)
        if match.group(1) is None:
            frames.append(Frame(None, None, match.group(0), arrived))
            continue
        name = match.group(1).decode()
        data = json.loads(match.group(2))
        assert data["type"] == name, f"event line {name!r} but data type {data.get('type')!r}"
        frames.append(Frame(name, data, match.group(0), arrived))
    return frames


def read_stream(reply, deadline_seconds=20):
    """Every chunk of a streaming reply with its arrival time; fails instead of hanging."""
    chunks = []
    deadline = time.monotonic() + deadline_seconds
    for chunk in reply.iter_content(chunk_size=None):
        chunks.append((time.monotonic(), chunk))
        assert time.monotonic() < deadline, "the stream did not end in time"
    return chunks


def stream(gateway, body, key=None, read_timeout=10, deadline_seconds=20):
    """POST a streaming request; returns (reply, frames) once the gateway ended the stream."""
    started = time.monotonic()
    reply = requests.post(gateway.url + "/v1/responses", headers=auth(key or gateway.key),
                          json={**body, "stream": True}, stream=True, timeout=(5, read_timeout))
    with reply:
        assert reply.status_code == 200, reply.content
        chunks = read_stream(reply, deadline_seconds)
    reply.started = started
    return reply, split_frames(chunks)


def events_of(frames):
    return [frame for frame in frames if not frame.is_keepalive]


def upstream_payloads(events):
    """The payloads the fake upstream sent for a ``Script(...).events()`` list."""
    return [payload for _, payload in events]


class RawStream:
    """A streaming request over a plain socket, so the test decides exactly when to hang up."""

    def __init__(self, gateway, body, key=None, headers=None):
        raw = json.dumps({**body, "stream": True}).encode()
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        head = (f"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n"
                f"Authorization: Bearer {key or gateway.key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(raw)}\r\n{extra}Connection: close\r\n\r\n").encode()
        self.sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        self.sock.sendall(head + raw)
        self.received = b""

    def read_until(self, marker, timeout=10):
        deadline = time.monotonic() + timeout
        while marker not in self.received:
            assert time.monotonic() < deadline, f"{marker!r} not received: {self.received[-500:]!r}"
            data = self.sock.recv(65536)
            assert data, f"connection closed before {marker!r}: {self.received[-500:]!r}"
            self.received += data
        return self.received

    def close(self):
        self.sock.close()


TERMINAL = ("response.completed", "response.incomplete", "response.failed", "error")


class WebSocketClient:
    """A WebSocket client on a plain socket (wsproto), so a test decides every byte and when to
    hang up. After the handshake, ``status`` is 101, or the HTTP status of the refusal with its
    ``headers`` and ``body``. Server pings are answered unless ``answer_pings`` is False."""

    def __init__(self, gateway, key=None, headers=None, extensions=None, answer_pings=True):
        self.sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        self.conn = WSConnection(ConnectionType.CLIENT)
        sent = [] if key is False else [("Authorization", f"Bearer {key or gateway.key}")]
        sent += list((headers or {}).items())
        self.sock.sendall(self.conn.send(Request(host=f"127.0.0.1:{gateway.port}", target="/v1/responses",
                                                 extra_headers=sent, extensions=extensions or [])))
        self.answer_pings = answer_pings
        self.pings = 0
        self.closed = None  # (code, reason) of the server's Close frame
        self.status = self.headers = None
        self.body = b""
        self._events = []
        self._text = ""
        self._rejection_done = False
        while self.status is None or (self.status != 101 and not self._rejection_done):
            assert self._read(), "the gateway closed the connection during the handshake"

    def _read(self, timeout=10):
        self.sock.settimeout(timeout)
        data = self.sock.recv(1 << 20)
        self.conn.receive_data(data or None)
        for event in self.conn.events():
            if isinstance(event, AcceptConnection):
                self.status = 101
                self.headers = {name.decode().lower(): value.decode() for name, value in event.extra_headers}
                self.extensions = event.extensions
            elif isinstance(event, RejectConnection):
                self.status = event.status_code
                self.headers = {name.decode().lower(): value.decode() for name, value in event.headers}
                self._rejection_done = not event.has_body
            elif isinstance(event, RejectData):
                self.body += event.data
                self._rejection_done = event.body_finished
            elif isinstance(event, Ping):
                self.pings += 1
                if self.answer_pings:
                    self.sock.sendall(self.conn.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.closed = (event.code, event.reason)
            else:
                self._events.append(event)
        return data

    def send(self, message):
        """A dict as a JSON text message, a str as a text message, bytes as a binary one."""
        if isinstance(message, dict):
            message = json.dumps(message)
        event = TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
        self.sock.sendall(self.conn.send(event))

    def receive_text(self, timeout=10):
        """The next text message, as sent; fails on anything else (or the connection's end)."""
        deadline = time.monotonic() + timeout
        while True:
            while self._events:
                event = self._events.pop(0)
                assert isinstance(event, TextMessage), event
                self._text += event.data
                if event.message_finished:
                    text, self._text = self._text, ""
                    return text
            assert self.closed is None, f"closed by the gateway: {self.closed}"
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message in time")
            assert self._read(left), "the gateway closed the connection"

    def receive(self, timeout=10):
        return json.loads(self.receive_text(timeout))

    def answer(self, timeout=20):
        """Every message of one answer, up to its terminal event (or error message), parsed."""
        messages = []
        deadline = time.monotonic() + timeout
        while not messages or messages[-1]["type"] not in TERMINAL:
            messages.append(self.receive(max(0.1, deadline - time.monotonic())))
        return messages

    def request(self, body, timeout=20):
        """Send a ``response.create`` message and read its answer."""
        self.send({"type": "response.create", **body})
        return self.answer(timeout)

    def wait_closed(self, timeout=10):
        """The server's Close frame (code, reason), then the end of the connection."""
        deadline = time.monotonic() + timeout
        while self.closed is None:
            left = deadline - time.monotonic()
            assert left > 0, "the gateway did not close the connection"
            if not self._read(left):
                break
        return self.closed

    def error(self):
        """The refusal's JSON envelope (after a handshake answered with an HTTP error)."""
        assert self.status != 101
        assert self.headers["content-type"].startswith("application/json"), self.headers
        return json.loads(self.body)["error"]

    def close(self):
        """Hang up without a Close frame, as the Codex CLI does."""
        self.sock.close()


def wait_for(predicate, timeout=5.0, interval=0.05):
    """Poll until ``predicate()`` is truthy; returns its value (or the last falsy one)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def query(gateway, statement):
    """Rows of a select on the gateway's SQLite database, as dicts."""
    engine = create_engine("sqlite:///" + os.path.join(str(gateway.data_dir), "responses-proxy.db"))
    try:
        with engine.connect() as conn:
            return [dict(row) for row in conn.execute(statement).mappings()]
    finally:
        engine.dispose()


def usage_row(gateway, request_id, timeout=5.0):
    """The usage row of the request sent with ``X-Request-Id: request_id`` (rows are batched)."""
    rows = wait_for(lambda: query(gateway, select(usage).where(usage.c.request_id == request_id)), timeout)
    assert len(rows) <= 1, rows
    return rows[0] if rows else None


def key_id(gateway, key):
    digest = hashlib.sha256(key.encode()).hexdigest()
    return query(gateway, select(api_keys.c.id).where(api_keys.c.key_hash == digest))[0]["id"]


def account_ids(gateway):
    return [row["id"] for row in query(gateway, select(accounts.c.id))]


def remove_accounts(gateway):
    app = gateway.app()
    engine = app.extensions["responses_proxy"].engine
    try:
        for account in account_store.all_rows(engine):
            account_store.remove(engine, account["id"])
    finally:
        engine.dispose()


def request_id():
    return "req-e2e-" + unique() + unique()


def database_env(database, postgres_schemas):
    """The environment of a gateway on ``database`` ("sqlite": its data dir's, "postgresql": a new schema)."""
    if database == "sqlite":
        return {}
    return {"RESPONSES_PROXY_DATABASE_URL": postgres_schemas()}


def cli(gateway, *args):
    """``flask --app wsgi ARGS`` on the gateway's database, as an operator runs it: its output."""
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, env=gateway.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout

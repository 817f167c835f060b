"""Client connections that must never hold a worker: a body flood after the answer, a client
that stops sending its body, a client that stops reading, and the keep-alive that ordinary
clients keep. One gevent worker, so anything that blocks it shows in ``/healthz``."""

import json
import socket
import threading
import time

import openai
import pytest
import requests
from sqlalchemy import select

from responses_proxy.store.tables import worker_load
from tests.e2e.helpers import ACCOUNT, account_ids, auth, error_of, post, query, request_id, usage_row, wait_for
from tests.fake_upstream import Script
from tests.helpers import Gateway, unique

CLIENT_TIMEOUT = 2
MAX_BODY_BYTES = 100_000
BODY = {"model": "gpt-5.2", "input": "hi"}


@pytest.fixture(scope="module")
def gateway(fake_upstream, tmp_path_factory):
    server = Gateway(tmp_path_factory.mktemp("connections-gateway"), fake_upstream.base_url, workers=1,
                     env={"RESPONSES_PROXY_KEEPALIVE_SECONDS": "1",
                          "RESPONSES_PROXY_CLIENT_TIMEOUT": str(CLIENT_TIMEOUT),
                          "RESPONSES_PROXY_MAX_BODY_BYTES": str(MAX_BODY_BYTES)})
    with server.serving():
        yield server


def healthy(gateway):
    """``/healthz`` answers (the bound only says "did not hang")."""
    return requests.get(gateway.url + "/healthz", timeout=3).status_code == 200


def parse_answer(raw):
    """(status, headers with lower-case names, JSON body) of an answer with a Content-Length."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers = {name.lower(): value for name, value in headers.items()}
    return int(lines[0].split()[1]), headers, json.loads(body[:int(headers["content-length"])])


class Flood:
    """Request headers, then body bytes as fast as the gateway takes them (for at most
    ``seconds``) from one thread, while another reads what the gateway answers."""

    MiB = 1024 * 1024

    def __init__(self, gateway, head, piece, seconds=25):
        self.sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        self.sock.sendall(head)
        self.sent = 0
        self.send_error = None  # what ended the sending; None if it ran out of time
        self.received = b""
        self.ended = threading.Event()  # the gateway ended the connection: EOF or reset
        self._deadline = time.monotonic() + seconds
        self._threads = [threading.Thread(target=self._send, args=(piece,), daemon=True),
                         threading.Thread(target=self._read, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _send(self, piece):
        try:
            while time.monotonic() < self._deadline:
                self.sock.sendall(piece)
                self.sent += len(piece)
        except OSError as exc:
            self.send_error = exc

    def _read(self):
        try:
            while data := self.sock.recv(65536):
                self.received += data
        except ConnectionResetError:
            pass
        except OSError:  # our own timeout: the gateway did not end the connection
            return
        self.ended.set()

    def close(self):
        self._deadline = 0
        for thread in self._threads:
            thread.join(15)
        self.sock.close()


def head(path="/v1/responses", key=None, content_type="application/json", framing=f"Content-Length: {10**12}",
         request_id=None):
    extra = f"Authorization: Bearer {key}\r\n" if key else ""
    extra += f"X-Request-Id: {request_id}\r\n" if request_id else ""
    return (f"POST {path} HTTP/1.1\r\nHost: gateway\r\n{extra}Content-Type: {content_type}\r\n"
            f"{framing}\r\n\r\n").encode()


PIECE = b"x" * 65536
CHUNK = b"%x\r\n%s\r\n" % (len(PIECE), PIECE)


@pytest.mark.parametrize(("keyed", "request_head", "piece", "status", "code"), [
    (False, {}, PIECE, 401, "invalid_api_key"),
    (True, {}, PIECE, 413, "request_too_large"),
    (True, {"framing": "Transfer-Encoding: chunked"}, CHUNK, 413, "request_too_large"),
    (True, {"content_type": "text/plain"}, PIECE, 400, "invalid_request_error"),
    (False, {"path": "/v1/nowhere"}, PIECE, 404, "not_found"),
], ids=["401-no-key", "413-declared", "413-chunked", "400-content-type", "404"])
def test_a_body_flood_after_the_answer_never_holds_the_worker(e2e, keyed, request_head, piece, status, code):
    workers = e2e.worker_pids()
    assert len(workers) == 1
    flood = Flood(e2e, head(key=e2e.key if keyed else None, **request_head), piece)
    try:
        # The gateway answered and is taking the flood in (or has already closed the connection).
        assert wait_for(lambda: flood.sent > 2 * Flood.MiB or flood.send_error, timeout=5), flood.sent
        for _ in range(3):
            assert healthy(e2e)
        assert flood.ended.wait(20), "the gateway did not close the connection"
        # The answer's end came first (a half-close); the connection itself closes after a
        # bounded linger, while the flood is still being sent.
        assert wait_for(lambda: flood.send_error, timeout=10), "the gateway kept reading the flood"
    finally:
        flood.close()
    got, headers, body = parse_answer(flood.received)
    assert got == status, flood.received[:500]
    assert headers["connection"] == "close"
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert healthy(e2e)
    assert e2e.worker_pids() == workers


def local_port_of_requests_reply(reply):
    return reply.raw.connection.sock.getsockname()[1]


def local_port_of_sdk_reply(http_response):
    return http_response.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_an_ordinary_401_keeps_the_connection_for_the_next_request(e2e, upstream):
    """A small body left unread is still read by the server: SDKs keep their pooled connection."""
    with requests.Session() as session:
        refused = session.post(e2e.url + "/v1/responses", json=BODY, headers=auth("sk-wrong"), stream=True,
                               timeout=10)
        port = local_port_of_requests_reply(refused)
        assert refused.status_code == 401
        assert refused.headers["Connection"] == "keep-alive"
        assert error_of(refused)["code"] == "invalid_api_key"
        served = session.post(e2e.url + "/v1/responses", json=BODY, headers=auth(e2e.key), stream=True,
                              timeout=10)
        assert local_port_of_requests_reply(served) == port
        assert served.status_code == 200, served.content
        assert served.json()["status"] == "completed"

    with openai.DefaultHttpxClient() as http_client:
        options = {"base_url": e2e.url + "/v1", "max_retries": 0, "timeout": 10, "http_client": http_client}
        with pytest.raises(openai.AuthenticationError) as refused:
            openai.OpenAI(api_key="sk-wrong", **options).responses.create(**BODY)
        port = local_port_of_sdk_reply(refused.value.response)
        served = openai.OpenAI(api_key=e2e.key, **options).responses.with_raw_response.create(**BODY)
        assert local_port_of_sdk_reply(served.http_response) == port
        assert served.parse().status == "completed"


def test_a_client_that_stops_sending_its_body_gets_a_408(e2e, upstream):
    rid = request_id()
    with socket.create_connection(("127.0.0.1", e2e.port), timeout=CLIENT_TIMEOUT + 8) as sock:
        sock.sendall(head(key=e2e.key, framing="Content-Length: 1000", request_id=rid) + b'{"model": ')
        received = b""
        while data := sock.recv(65536):
            received += data
    status, _, body = parse_answer(received)
    assert status == 408
    assert set(body) == {"error"} and body["error"]["code"] == "request_timeout", body
    row = usage_row(e2e, rid)
    assert (row["status"], row["error_code"]) == (408, "request_timeout")
    assert upstream.response_requests() == []


def big_stream():
    """An answer far larger than the socket buffers between the upstream and the client."""
    delta = {"type": "response.output_text.delta", "item_id": "msg_big", "output_index": 0, "content_index": 0,
             "delta": "x" * 65536}
    return Script("gpt-5.2").start().events() + [(delta["type"], delta)] * 512


def in_flight(gateway):
    return {row["account_id"]: row["in_flight"] for row in query(gateway, select(worker_load))}


def test_a_client_that_stops_reading_is_cut_off_and_releases_everything(e2e, upstream):
    upstream.push({"events": big_stream()}, account=ACCOUNT)
    account = account_ids(e2e)[0]
    conversation = f"conv_{unique()}"
    rid = request_id()
    raw = json.dumps({**BODY, "stream": True, "conversation": conversation}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    try:
        sock.connect(("127.0.0.1", e2e.port))
        sock.sendall(head(key=e2e.key, framing=f"Content-Length: {len(raw)}", request_id=rid) + raw)
        # It never reads. While it holds the stream, the account has a request in flight...
        assert wait_for(lambda: in_flight(e2e) == {account: 1}, timeout=5), in_flight(e2e)
        # ...until the client timeout cuts it off, and the upstream request with it.
        assert wait_for(lambda: upstream.closed_early, timeout=CLIENT_TIMEOUT + 10)
        row = usage_row(e2e, rid)
        assert (row["status"], row["error_code"]) == (499, "client_timeout")
        assert row["account_id"] == account
        assert wait_for(lambda: in_flight(e2e) == {}, timeout=5), in_flight(e2e)
    finally:
        sock.close()
    # The conversation's turn was given back: the next turn is served, not refused with a 409.
    reply = post(e2e, {**BODY, "input": "again", "conversation": conversation})
    assert reply.status_code == 200, reply.text
    assert healthy(e2e)
    assert "Traceback" not in e2e.log(None)

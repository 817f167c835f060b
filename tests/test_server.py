"""server.py against gunicorn's own HTTP/1 handler (its gevent worker), in-process.

The guard relies on gunicorn's internals: the bound ``Response.start_response`` it passes as
``start_response``, ``Response.force_close()``, the answer written through
``Response.sock.sendall``, ``environ["gunicorn.socket"]`` being the socket its body reads use,
the body's ``close()`` called after the answer is written, and a broken pipe ending a connection
quietly. Each test drives the real handler over a real TCP connection, so a gunicorn upgrade
that changes any of them fails here, loudly.
"""

import io
import itertools
import os
import socket
import struct
import threading
import time

import gevent
from gevent import socket as gevent_socket
from gunicorn.config import Config
from gunicorn.http2.response import HTTP2Response
from gunicorn.workers.ggevent import GeventWorker

from responses_proxy.server import CLIENT, SMALL_BODY_BYTES, ClientGuard
from tests.helpers import read_to_end

TIMEOUT = 0.5
BODY = b'{"error": {"message": "no"}}'


class Log:
    """Stands in for gunicorn's logger: keeps (level, message) of everything it logs."""

    def __init__(self):
        self.records = []

    def _record(level):
        def log(self, message, *args, **kwargs):
            self.records.append((level, message % args if args else message))

        return log

    debug = _record("debug")
    info = _record("info")
    warning = _record("warning")
    error = _record("error")
    exception = _record("exception")
    critical = _record("critical")

    def access(self, *args):
        pass

    def worse_than_debug(self):
        return [record for record in self.records if record[0] != "debug"]


def serve(app, client, keepalive=2):
    """One connection: ``client(address)`` runs in a thread against gunicorn's gevent handler
    serving ``ClientGuard(app)`` (or ``app`` itself, a guard already). Returns (what ``client``
    returned, gunicorn's log)."""
    cfg = Config()
    cfg.set("keepalive", keepalive)
    log = Log()
    worker = GeventWorker(0, os.getpid(), [], None, 30, cfg, log)
    worker.wsgi = app if isinstance(app, ClientGuard) else ClientGuard(app, TIMEOUT)
    listener = gevent_socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    result = {}

    def run_client():
        try:
            result["value"] = client(listener.getsockname())
        except BaseException as exc:  # raised again in the test's own thread
            result["error"] = exc

    def handle():
        connection, address = listener.accept()
        worker.handle(listener, connection, address)

    thread = threading.Thread(target=run_client, daemon=True)
    thread.start()
    try:
        handler = gevent.spawn(handle)
        handler.join(timeout=15)
        assert handler.dead, "gunicorn's handler did not finish"
        handler.get()
        thread.join(timeout=15)
        assert not thread.is_alive(), "the client did not finish"
    finally:
        listener.close()
        worker.tmp.close()
    if "error" in result:
        raise result["error"]
    return result["value"], log


def connect(address, receive_buffer=None):
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect(address)
    return sock


def read_answer(sock):
    """One answer with a Content-Length, leaving the connection usable."""
    received = b""
    while b"\r\n\r\n" not in received:
        data = sock.recv(65536)
        assert data, f"connection closed mid-answer: {received!r}"
        received += data
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


def answering(status="401 Unauthorized", read=0):
    """An app that reads ``read`` bytes of the body (None: all of it), then answers BODY."""

    def app(environ, start_response):
        if read is None:
            environ["wsgi.input"].read()
        elif read:
            environ["wsgi.input"].read(read)
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))])
        return [BODY]

    return app


def post_head(length=None, chunked=False):
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}"
    return (f"POST /v1/responses HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            f"{framing}\r\n\r\n").encode()


def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_an_answer_that_leaves_a_large_body_unread_closes_the_connection():
    def client(address):
        with connect(address) as sock:
            sock.sendall(post_head(10**12) + b"x" * 200_000)
            return read_to_end(sock)

    reply, log = serve(answering(), client)

    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), reply[:500]
    assert b"\r\nConnection: close\r\n" in head, f"gunicorn did not honour force_close(): {head!r}"
    # The whole answer, then the end of the connection (read_to_end returned).
    assert body == BODY
    assert log.worse_than_debug() == []


def test_a_chunked_body_left_unread_closes_the_connection():
    def client(address):
        with connect(address) as sock:
            sock.sendall(post_head(chunked=True) + chunk(b"x" * 10_000))
            return read_to_end(sock)

    reply, _ = serve(answering(read=10), client)

    assert reply.startswith(b"HTTP/1.1 401"), reply[:500]
    assert b"\r\nConnection: close\r\n" in reply.partition(b"\r\n\r\n")[0]


def test_bodies_read_to_the_end_or_small_keep_the_connection_open_past_the_client_timeout():
    requests = [
        post_head(SMALL_BODY_BYTES) + b"x" * SMALL_BODY_BYTES,  # small, never read: gunicorn reads it
        post_head(chunked=True) + chunk(b"x" * 1000) + chunk(b"y" * 1000) + b"0\r\n\r\n",  # read to its end
        post_head(SMALL_BODY_BYTES * 4) + b"x" * SMALL_BODY_BYTES * 4,  # read to its end
    ]
    reads = iter([0, None, None])

    def app(environ, start_response):
        return answering(read=next(reads))(environ, start_response)

    def client(address):
        answers = []
        with connect(address) as sock:
            for request in requests:
                sock.sendall(request)
                answers.append(read_answer(sock))
                # Idle for longer than the client timeout: only gunicorn's keep-alive (2 s) counts.
                time.sleep(TIMEOUT * 2)
        return answers

    answers, log = serve(app, client)

    assert len(answers) == 3
    for head, body in answers:
        assert head.startswith(b"HTTP/1.1 401"), head
        assert b"\r\nConnection: keep-alive\r\n" in head, head
        assert body == BODY
    assert log.worse_than_debug() == []


def test_a_client_that_stops_reading_is_cut_off_quietly():
    ended = []

    def app(environ, start_response):
        client = environ[CLIENT]
        assert client.socket is environ["gunicorn.socket"]
        start_response("200 OK", [("Content-Type", "text/event-stream")])

        def events():
            try:
                while True:
                    yield b"x" * 65536
            finally:
                ended.append(client.timed_out)

        return events()

    def client(address):
        with connect(address, receive_buffer=4096) as sock:
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: gateway\r\n\r\n")
            deadline = time.monotonic() + 10
            while not ended and time.monotonic() < deadline:  # never reads
                time.sleep(0.05)

    _, log = serve(app, client)

    assert ended == [True], "the answer's close() did not run, or the write did not time out"
    # A broken pipe to gunicorn: no traceback, no error, only its debug line.
    assert log.worse_than_debug() == []
    assert ("debug", "Ignoring EPIPE") in log.records, log.records


def test_a_client_that_stops_sending_its_body_times_out():
    def app(environ, start_response):
        try:
            environ["wsgi.input"].read(1000)
        except TimeoutError:
            start_response("408 Request Timeout", [("Content-Length", "0")])
            return [b""]
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    def client(address):
        with connect(address) as sock:
            sock.sendall(post_head(1000) + b"x" * 10)
            return read_to_end(sock)

    reply, log = serve(app, client)

    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert log.worse_than_debug() == []


def test_other_servers_get_the_app_untouched():
    seen = []

    def app(environ, start_response):
        seen.append((start_response, environ.get(CLIENT)))
        return [b"ok"]

    guard = ClientGuard(app, TIMEOUT)

    def start_response(status, headers, exc_info=None):
        return None

    # HTTP/2: gunicorn's response for one stream of a connection shared by many.
    http2_start_response = object.__new__(HTTP2Response).start_response
    for server_start_response in (start_response, http2_start_response):
        assert list(guard({"wsgi.input": io.BytesIO()}, server_start_response)) == [b"ok"]
        assert seen.pop() == (server_start_response, None)


def stream_of(pieces, seen, guard):
    """An app that notes ``guard.in_progress`` when called, then streams ``pieces`` (an
    exception among them is raised there) and notes when its body is closed."""

    def app(environ, start_response):
        seen.append(("called", guard.in_progress))
        start_response("200 OK", [("Content-Type", "text/event-stream")])

        def events():
            try:
                for piece in pieces:
                    if isinstance(piece, BaseException):
                        raise piece
                    yield piece
            finally:
                seen.append(("closed", guard.in_progress))

        return events()

    return app


def test_a_request_is_in_progress_until_gunicorn_closes_its_answer():
    seen = []
    guard = ClientGuard(None, TIMEOUT)
    guard.app = stream_of([b"one", b"two"], seen, guard)

    def client(address):
        with connect(address) as sock:
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
            return read_to_end(sock)

    reply, _ = serve(guard, client)

    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"0\r\n\r\n"), reply
    # Still in progress while the body closes; over once gunicorn has closed the answer.
    assert seen == [("called", 1), ("closed", 1)]
    assert guard.in_progress == 0


def test_a_request_whose_client_left_mid_stream_is_over():
    seen = []
    guard = ClientGuard(None, TIMEOUT)
    guard.app = stream_of(itertools.repeat(b"x" * 65536), seen, guard)

    def client(address):
        with connect(address) as sock:
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: gateway\r\n\r\n")
            assert sock.recv(65536)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset

    serve(guard, client)

    assert seen == [("called", 1), ("closed", 1)]
    assert guard.in_progress == 0


def test_a_request_that_raises_is_over():
    seen = []
    guard = ClientGuard(None, TIMEOUT)
    raising = ClientGuard(lambda environ, start_response: 1 / 0, TIMEOUT)
    guard.app = stream_of([b"one", RuntimeError("mid-stream")], seen, guard)

    def client(address):
        with connect(address) as sock:
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
            return read_to_end(sock)

    for app in (guard, raising):
        serve(app, client)
        assert app.in_progress == 0
    assert seen == [("called", 1), ("closed", 1)]


def test_other_servers_count_requests_in_progress_too():
    guard = ClientGuard(lambda environ, start_response: [b"ok"], TIMEOUT)

    body = guard({"wsgi.input": io.BytesIO()}, lambda status, headers, exc_info=None: None)
    assert guard.in_progress == 1
    assert list(body) == [b"ok"]
    body.close()
    body.close()  # a server that closes twice ends it once
    assert guard.in_progress == 0

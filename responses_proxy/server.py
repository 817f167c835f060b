"""The client connection under gunicorn: what WSGI cannot say, and every use of gunicorn's internals.

gunicorn (27, gevent workers) drops an application's ``Connection: close``, reads whatever
request body an answer left unread before it reads the next request on a keep-alive
connection, and writes to its client sockets with no timeout. gevent's ``recv`` does not yield
while data keeps arriving, so a client sending an endless body after its 401 holds the whole
worker; a client that stops reading holds its upstream request, its account's in-flight slot
and its conversation turn for good.

``ClientGuard`` wraps the WSGI app (``create_app`` installs it) and, under gunicorn's HTTP/1
handler, gives each request a ``Client`` (``environ[CLIENT]``):

- an answer that leaves more than ``SMALL_BODY_BYTES`` of the body unread (or an unknown
  amount of a chunked one) closes the connection, ``Connection: close`` included, after a
  bounded lingering close: the client gets to read the answer, the worker is never held;
- every read and write on the client socket times out after the client timeout; a write that
  times out ends the request as a broken pipe does (``ClientTimedOut``), and
  ``Client.timed_out`` tells the stream's usage row why its client went away.

Under any other server (Flask's test client, an HTTP/2 stream sharing its socket) requests pass
through untouched. tests/test_server.py runs gunicorn's own handler to check what this relies on.

Under any server, ``ClientGuard.in_progress`` counts the requests inside the app: from the call
until the server closes the answer (a stream's end, a client gone, an exception). A request
that never leaves shows there (the metrics' worker gauges export it).
"""

import errno
import socket
import time

import gevent
from gunicorn.http.wsgi import Response

CLIENT = "responses_proxy.client"
# An unread body up to this size is left to gunicorn, which reads it (bounded by its keep-alive
# timeout) and keeps the connection: an ordinary 401 does not cost the client a new connection.
SMALL_BODY_BYTES = 64 * 1024
# The lingering close reads and drops at most this much, for at most this long.
LINGER_SECONDS = 2.0
LINGER_BYTES = 8 * 1024 * 1024
LINGER_READ = 64 * 1024


class ClientTimedOut(BrokenPipeError):
    """The client accepted no data for the client timeout. A broken pipe to gunicorn, which
    then ends the connection quietly, as for a client that went away."""


class ClientGuard:
    """WSGI middleware: a ``Client`` for every request gunicorn's HTTP/1 handler serves."""

    def __init__(self, app, timeout):
        self.app = app
        self.timeout = timeout or None  # 0: never (a socket timeout of 0 would mean non-blocking)
        self.in_progress = 0

    def __call__(self, environ, start_response):
        self.in_progress += 1
        client = None
        try:
            # gunicorn passes its Response's bound start_response; HTTP/2 uses a subclass whose
            # socket carries other streams too, and is left alone.
            response = getattr(start_response, "__self__", None)
            if type(response) is not Response:
                body = self.app(environ, start_response)
            else:
                client = Client(environ, response, self.timeout)
                environ[CLIENT] = client
                body = self.app(environ, client.start_response)
        except BaseException:
            self.ended(client)
            raise
        return Answer(body, client, self)

    def ended(self, client):
        """A request's answer is over (closed by the server, or never made)."""
        self.in_progress -= 1
        if client is not None:
            client.finish()


class Client:
    """One request's client connection: its socket, with a timeout on every read and write."""

    def __init__(self, environ, response, timeout):
        self.socket = environ["gunicorn.socket"]
        self.timed_out = False
        self._response = response
        self._linger = False
        self._restore = self.socket.gettimeout()
        self.socket.settimeout(timeout)
        # gunicorn writes the whole answer (headers, chunks) with ``response.sock.sendall``.
        response.sock = self
        self._input = None
        length = environ.get("CONTENT_LENGTH")
        declared = int(length) if length else None  # gunicorn has checked that it is a number
        if (declared or 0) > SMALL_BODY_BYTES or (declared is None and "HTTP_TRANSFER_ENCODING" in environ):
            self._input = environ["wsgi.input"] = CountingInput(environ["wsgi.input"], declared)

    def start_response(self, status, headers, exc_info=None):
        if self._input is not None and self._input.leaves_unread():
            # gunicorn would read the rest to find the next request: close instead.
            self._response.force_close()
            self._linger = True
        return self._response.start_response(status, headers, exc_info)

    def fileno(self):
        return self.socket.fileno()

    def gone(self):
        """Whether the client left: the socket turned readable with its end (or an error);
        bytes instead are the next request, pipelined."""
        try:
            return self.socket.recv(1, socket.MSG_PEEK) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def sendall(self, data):
        try:
            self.socket.sendall(data)
        except TimeoutError:
            self.timed_out = True
            raise ClientTimedOut(errno.EPIPE, "the client stopped reading") from None

    def finish(self):
        """After the answer: gunicorn calls the body's ``close()`` once it has written the
        answer (or failed to), and closes the connection after it when it must."""
        try:
            if self._linger and not self.timed_out:
                self._lingering_close()
        finally:
            self.socket.settimeout(self._restore)

    def _lingering_close(self):
        """Closing a socket with unread data resets the connection, and a reset can destroy
        the answer before the client read it. So: half-close (the client sees the whole
        answer, then the end), read and drop what the client still sends for a bounded time
        and amount, and leave the close to gunicorn. ``recv`` returns at once while data keeps
        coming, so each read yields to the other greenlets."""
        deadline = time.monotonic() + LINGER_SECONDS
        dropped = 0
        try:
            self.socket.shutdown(socket.SHUT_WR)
            while dropped < LINGER_BYTES:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.socket.settimeout(left)
                data = self.socket.recv(LINGER_READ)
                if not data:
                    return
                dropped += len(data)
                gevent.sleep(0)
        except OSError:  # timed out, reset: the connection is being closed anyway
            pass


class Answer:
    """The app's answer as it was; its ``close()`` also ends the request (once), finishing its
    client's when it has one."""

    __slots__ = ("_body", "_client", "_guard")

    def __init__(self, body, client, guard):
        self._body = body
        self._client = client
        self._guard = guard

    def __iter__(self):
        return iter(self._body)

    def close(self):
        guard, self._guard = self._guard, None
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            if guard is not None:
                guard.ended(self._client)


class CountingInput:
    """``wsgi.input`` that knows whether the app left much of the body unread."""

    def __init__(self, stream, length):
        self._stream = stream
        self._left = length  # None: chunked, unknown until its end is read
        self._ended = False

    def read(self, size=None):
        data = self._stream.read(size)
        # gunicorn's body returns less than asked only at its end.
        self._seen(data, size is None or size < 0 or len(data) < size)
        return data

    def readline(self, size=None):
        data = self._stream.readline(size)
        self._seen(data, not data)
        return data

    def readlines(self, hint=None):
        return list(self)

    def __iter__(self):
        return iter(self.readline, b"")

    def _seen(self, data, ended):
        if self._left is not None:
            self._left -= len(data)
        if ended:
            self._ended = True

    def leaves_unread(self):
        return not self._ended and (self._left is None or self._left > SMALL_BODY_BYTES)

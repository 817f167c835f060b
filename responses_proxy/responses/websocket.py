"""The Responses API over a WebSocket (``GET /v1/responses`` upgraded), as the Codex CLI speaks it.

Each ``{"type": "response.create", ...}`` text message is one request, served by the same
validation, normalization, account pool, relay and usage record as a POST, always streaming;
each event of the answer goes back as one text message (the event's JSON as the upstream sent
it, without SSE framing). Requests are served one at a time, in the order they arrive: a
message sent while an answer streams waits for that answer to end.

Within a connection, ``previous_response_id`` continues the latest response: the connection
keeps that response's input and output items and the upstream, which is stateless, gets the
whole history. ``generate: false`` (Codex's prewarm) is answered at once without an upstream
request, and its input is kept the same way.

The socket is simple-websocket's (wsproto), which takes gunicorn's socket over from inside the
view: authentication and refusals before the upgrade are plain HTTP answers.
"""

import contextlib
import logging
import os
import secrets
import threading
import time
import weakref

import gevent
import orjson
import simple_websocket
from flask import Response
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import RemoteProtocolError

from ..errors import UNEXPECTED, ApiError, InvalidApiKey, InvalidRequest, api_error, log_failure
from ..items import user_text_message
from ..relay import ClientGone, Relay
from ..upstream.client import TURN_STATE, upstream_headers
from ..validation import EXPECTED, MISSING, explain
from .exchange import Exchange
from .normalize import messages_to_items
from .schemas import validate_request

log = logging.getLogger(__name__)

# Codex sends multi-megabyte requests; simple-websocket's default reads 4 KiB at a time.
RECEIVE_BYTES = 64 * 1024
TURN_METADATA = "x-codex-turn-metadata"
# A prewarm costs nothing upstream: its usage row says so.
NO_TOKENS = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0, "cached_tokens": 0, "reasoning_tokens": 0}
AGE_LIMIT = "The connection reached its age limit; open a new one."
GOING_AWAY = "The server is going away; open a new connection."


def text_frame(payload):
    """One unmasked, unfragmented text frame (RFC 6455, 5.2) around UTF-8 bytes.

    The relay's events go out as the bytes they came in: a ``str`` message would cost a
    decode and an encode of every event.
    """
    size = len(payload)
    if size < 126:
        return b"\x81" + size.to_bytes(1, "big") + payload
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


def text_frames(events):
    return b"".join([text_frame(data) for _, data in events])


class WebSocketRelay(Relay):
    """Each event as one text message. Nothing goes out while the upstream is silent: pings
    keep the connection alive instead."""

    encode = staticmethod(text_frames)


class WholeWrites:
    """gunicorn's socket as simple-websocket uses it, with every write whole and one at a time.

    simple-websocket 1.1.0 writes with ``send()``, which under gevent may write part of a large
    frame and return; the next frame then lands inside it. Its reader greenlet writes too
    (pongs, pings, close replies), so one lock covers every write of the connection.
    """

    __slots__ = ("_sock", "_lock", "_write_timeout")

    def __init__(self, sock, write_timeout):
        self._sock = sock
        self._lock = threading.Lock()
        # An idle connection may wait for its next request as long as pings are answered, but
        # a client that stops reading is cut off as over HTTP (RESPONSES_PROXY_CLIENT_TIMEOUT).
        sock.settimeout(None)
        self._write_timeout = write_timeout or None

    def send(self, data):
        with self._lock, gevent.Timeout(self._write_timeout, TimeoutError("the client stopped reading")):
            self._sock.sendall(data)
        return len(data)

    def recv(self, size):
        return self._sock.recv(size)

    def fileno(self):
        return self._sock.fileno()

    def close(self):
        self._sock.close()


class Hangup:
    """What the relay watches of a WebSocket client (as ``server.Client`` for HTTP):
    the read end of a pipe that turns readable only once the connection has ended."""

    __slots__ = ("_fd",)

    def __init__(self, fd):
        self._fd = fd

    def fileno(self):
        return self._fd

    def gone(self):
        return True


class WebSocket(simple_websocket.Server):
    """The server side of one connection, on the socket gunicorn hands over.

    permessage-deflate is declined: its zlib contexts cost about 100 KB more a connection once
    used (measured: 150 KB against 47 KB), for little gain on a LAN or behind TLS.
    """

    def __init__(self, environ, max_message_size, ping_interval, write_timeout):
        sock = environ.get("gunicorn.socket")
        if sock is None:  # another WSGI server than gunicorn: the client falls back to POST
            raise ApiError("This server cannot take over a connection for a WebSocket: send the request "
                           "as POST /v1/responses.", status=426, code="websockets_unavailable",
                           type="invalid_request_error")
        # The handshake reads the request's headers only; without the offer of an extension,
        # none is negotiated.
        handshake = {name: value for name, value in environ.items()
                     if name.startswith("HTTP_") and name != "HTTP_SEC_WEBSOCKET_EXTENSIONS"}
        handshake["gunicorn.socket"] = WholeWrites(sock, write_timeout)
        self._hangup = None
        try:
            super().__init__(handshake, receive_bytes=RECEIVE_BYTES, ping_interval=ping_interval or None,
                             max_message_size=max_message_size or None)
        except RemoteProtocolError as exc:  # nothing was written: the answer is still HTTP
            status = getattr(exc.event_hint, "status_code", 400)
            raise ApiError(f"Invalid WebSocket handshake: {exc}.", status=status, code="invalid_handshake",
                           type="invalid_request_error") from None
        self.environ = None

    def write(self, data):
        """Send bytes that are whole frames; ``ClientGone`` once the connection has ended."""
        if not self.connected:
            raise ClientGone()
        try:
            self.sock.send(data)
        except OSError:
            raise ClientGone() from None

    def end(self, reason, message):
        """Close politely (the client may already be gone), and wake a ``receive`` waiting in
        another greenlet."""
        with contextlib.suppress(simple_websocket.ConnectionClosed, OSError):
            self.close(reason, message)
        self.event.set()

    @contextlib.contextmanager
    def watched(self):
        """A ``Hangup`` for the relay, while one response streams: the socket itself is read by
        the reader greenlet, which writes to the pipe when the connection ends."""
        read, write = os.pipe()
        self._hangup = write
        if not self.connected:
            os.write(write, b"x")
        try:
            yield Hangup(read)
        finally:
            self._hangup = None
            os.close(read)
            os.close(write)

    def _thread(self):
        try:
            super()._thread()
        finally:
            if self._hangup is not None:
                os.write(self._hangup, b"x")


class Handled(Response):
    """The view's answer once the connection it took over has ended: no HTTP response may be
    written on that socket. gunicorn closes the connection on ``StopIteration``. Its status
    says what became of the request (the metrics count the WebSocket's requests instead)."""

    default_status = 101

    def __call__(self, environ, start_response):
        raise StopIteration()


def input_items(body):
    """A validated body's input as a list of items: what a later request continues from."""
    if body.get("messages") is not None:
        return messages_to_items(body["messages"])[1]
    value = body["input"]
    return [user_text_message(value)] if isinstance(value, str) else value


class Sessions:
    """A worker's open WebSocket sessions.

    An idle Codex session never ends by itself: a worker that stops (a reload, a shutdown)
    closes its sessions between two answers, and their clients reconnect to another worker,
    instead of keeping the worker alive until its graceful timeout cuts them.
    """

    def __init__(self):
        self._open = weakref.WeakSet()
        self.stopping = False

    def add(self, session):
        self._open.add(session)

    def discard(self, session):
        self._open.discard(session)

    def stop(self):
        self.stopping = True
        for session in list(self._open):
            session.leave()

    def stop_when(self, stopped, every=1.0):
        """``stop`` once ``stopped()`` is true, checked every ``every`` seconds in a greenlet."""

        def watch():
            while not stopped():
                gevent.sleep(every)
            self.stop()

        gevent.spawn(watch)


class Session:
    """One connection's requests, served one at a time, and the latest response's history."""

    def __init__(self, ws, shared, authorization, connection_id, headers, max_age):
        self.ws = ws
        self.shared = shared
        self.sessions = shared.websockets
        self.serving = False
        self.authorization = authorization
        self.id = connection_id
        # Upstream headers of the upgrade, by lower-case name: each request may replace its turn's.
        self.headers = {name.lower(): value for name, value in upstream_headers(headers).items()}
        self.deadline = time.monotonic() + max_age if max_age else None
        self.requests = 0
        # (id, the response's input and output items as JSON): what previous_response_id may name.
        self.previous = None

    def run(self):
        """Serve the connection's messages until it ends; returns why it ended."""
        self.sessions.add(self)
        self.shared.metrics.websocket_opened()
        try:
            while True:
                if self.sessions.stopping:
                    self.ws.end(CloseReason.GOING_AWAY, GOING_AWAY)
                    return "worker stopping"
                timeout = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
                try:
                    message = self.ws.receive(timeout)
                except simple_websocket.ConnectionClosed:
                    return "worker stopping" if self.sessions.stopping else "client closed"
                if message is None:  # the age limit passed between two requests
                    self.ws.end(CloseReason.NORMAL_CLOSURE, AGE_LIMIT)
                    return "age limit"
                if not self.ws.connected:
                    return "client closed"  # what it sent before it left needs no answer
                self.serving = True
                try:
                    served = self.serve(message)
                finally:
                    self.serving = False
                if not served:
                    self.ws.end(CloseReason.POLICY_VIOLATION, "The API key is no longer valid.")
                    return "key refused"
        except ClientGone:
            return "client gone"
        finally:
            self.shared.metrics.websocket_closed()
            self.sessions.discard(self)

    def leave(self):
        """The worker stops: close now between two answers; during one, ``run`` closes after it."""
        if not self.serving:
            self.ws.end(CloseReason.GOING_AWAY, GOING_AWAY)

    def serve(self, message):
        """Answer one message, as a POST would be answered; False when the key was refused."""
        try:
            key, accounts_version = self.shared.keys.authenticate(self.authorization)
        except InvalidApiKey as exc:  # revoked since the upgrade
            self.send_error(exc)
            return False
        except Exception as exc:
            error = api_error(exc)
            if error is None:
                raise
            log_failure(log, "database unavailable", exc)  # the connection stays: the next request may find it back
            self.send_error(error)
            return True
        self.requests += 1
        # A supplied request id may be 64 characters long, the column's size.
        exchange = Exchange(self.shared.recorder, f"{self.id[:52]}.{self.requests}", key["id"], "websocket",
                            metrics=self.shared.metrics)
        try:
            # The key's limits hold over a WebSocket as for a POST: each request counts.
            exchange.admit(self.shared.limits.admit(key))
            body, prewarm = self.request_of(message)
            exchange.describe(body)
            if prewarm:
                self.prewarm(exchange, key, body)
            else:
                self.respond(exchange, key, body, accounts_version)
        except ClientGone as exc:
            exchange.fail(exc)
            raise
        except ApiError as exc:
            exchange.fail(exc)
            self.send_error(exc)
        except Exception as exc:
            exchange.fail(exc)
            error = api_error(exc)
            if error is not None:
                log_failure(log, "database unavailable", exc)
            self.send_error(error or ApiError(UNEXPECTED))
        except BaseException as exc:
            exchange.fail(exc)
            raise
        return True

    def request_of(self, message):
        """(the validated body, whether it is a prewarm) of a ``response.create`` message, its
        input preceded by the history ``previous_response_id`` names."""
        if not isinstance(message, str):
            raise InvalidRequest("Binary messages are not accepted: send each request as a JSON text message.")
        try:
            frame = orjson.loads(message)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"The message is not valid JSON: {exc}.") from None
        if not isinstance(frame, dict):
            raise InvalidRequest('The message is not a JSON object: send {"type": "response.create", ...}.')
        kind = frame.pop("type", None)
        if not isinstance(kind, str):
            raise InvalidRequest(explain("type", MISSING if kind is None else EXPECTED + "a string", kind),
                                 param="type")
        if kind != "response.create":
            raise InvalidRequest(f"Invalid value for 'type': '{kind}'; the only message type is 'response.create'.",
                                 param="type")
        generate = frame.pop("generate", None)
        if generate is not None and not isinstance(generate, bool):
            raise InvalidRequest(explain("generate", EXPECTED + "a boolean", generate), param="generate")
        previous = frame.pop("previous_response_id", None)
        if previous is not None and frame.get("conversation") is not None:
            frame["previous_response_id"] = previous  # refused with a conversation, as in a POST
        body = validate_request(frame)
        if previous is not None:
            body["input"] = self.history(previous, body) + input_items(body)
        body["stream"] = True
        return body, generate is False

    def history(self, previous, body):
        """The items of the response ``previous`` names: its input, then its output."""
        if not isinstance(previous, str):
            raise InvalidRequest(explain("previous_response_id", EXPECTED + "a string", previous),
                                 param="previous_response_id")
        if body.get("messages") is not None:
            raise InvalidRequest("'previous_response_id' continues with 'input' items; 'messages' cannot be "
                                 "used with it.", param="messages")
        if self.previous is None or self.previous[0] != previous:
            # Only the latest response of this connection is kept: Codex then sends everything again.
            raise InvalidRequest(f"Previous response with id '{previous}' not found.", param="previous_response_id",
                                 code="previous_response_not_found")
        return orjson.loads(self.previous[1])

    def respond(self, exchange, key, body, accounts_version):
        metadata = body.get("client_metadata")
        turn = metadata.get(TURN_METADATA) if isinstance(metadata, dict) else None
        # The upgrade carried the metadata of the request that opened the connection; Codex puts
        # each later request's own in its client_metadata.
        headers = {**self.headers, TURN_METADATA: turn} if isinstance(turn, str) else self.headers
        with self.ws.watched() as client:
            stream, answer_headers = self.shared.responses.create(exchange, key, body, client, headers,
                                                                  accounts_version, relay_class=WebSocketRelay)
            try:
                issued = answer_headers.get(TURN_STATE)
                if issued is not None:
                    # What a POST gets as a response header; Codex reads it from this event here
                    # and echoes it in client_metadata for the rest of the turn.
                    self.ws.write(text_frame(orjson.dumps(
                        {"type": "response.metadata", "headers": {TURN_STATE: issued}})))
                for chunk in stream:
                    self.ws.write(chunk)
            finally:
                if isinstance(stream, Relay):
                    stream.close()
        if isinstance(stream, Relay) and stream.tracker.completed() and body.get("conversation") is None:
            self.remember(stream.tracker.final_response().get("id"), body, stream.tracker.output_items())

    def prewarm(self, exchange, key, body):
        """Codex's ``generate: false``: a complete, empty response, and nothing sent upstream.

        It only says that the connection and the request are good; its input is kept for the
        next request, which continues from it.
        """
        self.shared.responses.check_model(key, body["model"])
        exchange.decide("prewarm")
        response = {"id": "resp_" + secrets.token_hex(24), "object": "response", "created_at": int(time.time()),
                    "status": "in_progress", "model": body["model"], "output": []}
        created = {"type": "response.created", "sequence_number": 0, "response": response}
        completed = {"type": "response.completed", "sequence_number": 1,
                     "response": {**response, "status": "completed"}}
        self.ws.write(text_frame(orjson.dumps(created)) + text_frame(orjson.dumps(completed)))
        exchange.finish(200, ttfb=time.perf_counter() - exchange.started, usage=NO_TOKENS)
        if body.get("conversation") is None:
            self.remember(response["id"], body, [])

    def remember(self, response_id, body, output):
        """Keep this response for ``previous_response_id``, in place of the one before: one
        history per connection, as compact JSON (parsed objects take several times the room)."""
        if isinstance(response_id, str):
            self.previous = (response_id, orjson.dumps(input_items(body) + output))

    def send_error(self, exc):
        """An error instead of an answer: the HTTP status a POST would have had, and its envelope."""
        frame = {"type": "error", "status": exc.status, **exc.body()}
        if exc.headers:
            frame["headers"] = exc.headers
        self.ws.write(text_frame(orjson.dumps(frame)))


def serve(shared, request, connection_id):
    """Take the request's connection over and serve it to its end; returns the view's answer.

    Raises an ``ApiError`` (answered as HTTP) when the handshake cannot be completed.
    """
    settings = shared.settings
    ws = WebSocket(request.environ, settings["MAX_BODY_BYTES"], settings["WEBSOCKET_PING_SECONDS"],
                   settings["CLIENT_TIMEOUT"])
    started = time.perf_counter()
    session = Session(ws, shared, request.headers.get("Authorization"), connection_id, request.headers,
                      settings["WEBSOCKET_MAX_AGE_SECONDS"])
    try:
        ended = session.run()
    except Exception:  # the connection is no HTTP exchange any more: log, and close it
        log.exception("websocket failed", extra={"fields": {"request_id": connection_id}})
        ended = "server error"
        ws.end(CloseReason.INTERNAL_ERROR, UNEXPECTED)
    if log.isEnabledFor(logging.INFO):
        log.info("websocket", extra={"fields": {
            "request_id": connection_id, "requests": session.requests, "ended": ended,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3)}})
    return Handled()

"""Relaying an upstream event stream: as SSE to a streaming client, or folded into one object.

Deltas pass through as bytes. Only the events the gateway needs (created, the terminal ones,
``output_item.done`` when folding) are parsed as JSON.
"""

import logging
import secrets
import socket
import time

import orjson
from gevent import get_hub
from gevent.hub import Waiter

from .errors import UpstreamError
from .upstream.body import BodyError, UpstreamBody
from .upstream.sse import SSEParser

CREATED = b"response.created"
ITEM_ADDED = b"response.output_item.added"
ITEM_DONE = b"response.output_item.done"
TERMINAL = frozenset((b"response.completed", b"response.incomplete", b"response.failed", b"error"))
KEEPALIVE = b": keepalive\n\n"
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
# A network read that brings this much is relayed without waiting for more.
BATCH_BYTES = 256 * 1024

_UPSTREAM, _CLIENT, _TIMER = "upstream", "client", "timer"
# nginx's status for "the client closed the connection": the answer was cut, not refused.
CLIENT_CLOSED = 499
SETTLE_FAILED = "The response could not be stored in its conversation; nothing was added to it."
RELAY_FAILED = "The gateway could not relay the upstream's answer."

log = logging.getLogger(__name__)


class StreamFailed(Exception):
    """The upstream stream broke (read error, silence, or it ended before a terminal event)."""


class ClientGone(Exception):
    """The client closed its connection before its answer ended."""


class ClientConnection:
    """What the relay watches of a client: readable means it left (or sent its next request).

    Built by the web layer from the server's socket; the relay never reads from it.
    """

    __slots__ = ("_sock",)

    def __init__(self, sock):
        self._sock = sock

    @classmethod
    def of(cls, sock):
        return cls(sock) if sock is not None else None

    def fileno(self):
        return self._sock.fileno()

    def gone(self):
        """Peek: end of stream or an error means the client left; bytes are its next request."""
        try:
            return self._sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


class EventSource:
    """Upstream events as they arrive, read on the caller's greenlet.

    ``next(timeout)`` returns the events that are available (all of them: one network read
    often holds many), waiting up to ``timeout`` for some; it returns ``None`` when the time
    is up, so the caller can send a keepalive. With a client socket, the wait also watches
    it, and a client that goes away raises ``ClientGone`` at once instead of at the next write.
    """

    def __init__(self, response, read_timeout, client=None):
        self.body = UpstreamBody(response)
        self._parser = SSEParser()
        self._read_timeout = read_timeout
        self._last_data = time.monotonic()
        self._hub = get_hub()
        self._upstream_watcher = self._hub.loop.io(self.body.fileno(), 1)
        self._client = client
        self._client_watcher = None
        if client is not None:
            try:
                self._client_watcher = self._hub.loop.io(client.fileno(), 1)
            except (OSError, ValueError):
                self._client = None

    def next(self, timeout):
        deadline = time.monotonic() + timeout if timeout else None
        events = []
        size = 0
        while True:
            try:
                data = self.body.read()
            except BodyError as exc:
                if events:
                    return events  # relay what arrived; the failure shows at the next read
                raise StreamFailed(f"The upstream connection failed mid-stream: {exc}.") from None
            if data is None:
                if events:
                    return events
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._wait(left)
                continue
            if data:
                self._last_data = time.monotonic()
                batch = self._parser.feed(data)
                if batch:
                    events += batch
                    size += len(data)
                    if size >= BATCH_BYTES:
                        return events
            if self.body.done:
                if events:
                    return events
                raise StreamFailed("The upstream closed the stream before the response completed.")

    def _wait(self, timeout):
        """Sleep until the upstream or the client socket is readable, or ``timeout`` passes."""
        silent_for = time.monotonic() - self._last_data
        limit = self._read_timeout - silent_for
        if limit <= 0:
            raise StreamFailed(f"The upstream sent nothing for {self._read_timeout:g} seconds.")
        timeout = limit if timeout is None else min(timeout, limit)
        waiter = Waiter(self._hub)
        timer = self._hub.loop.timer(timeout)
        self._upstream_watcher.start(waiter.switch, _UPSTREAM)
        if self._client_watcher is not None:
            self._client_watcher.start(waiter.switch, _CLIENT)
        timer.start(waiter.switch, _TIMER)
        try:
            woken_by = waiter.get()
        finally:
            self._upstream_watcher.stop()
            if self._client_watcher is not None:
                self._client_watcher.stop()
            timer.close()
        if woken_by is _CLIENT:
            self._check_client()

    def _check_client(self):
        """The client socket turned readable: gone (EOF, reset), or just sent more bytes."""
        if self._client.gone():
            raise ClientGone()
        # Pipelined bytes are the next request's: stop watching, writes will tell if it leaves.
        self._client_watcher.close()
        self._client_watcher = None

    def drain(self):
        """After the terminal event: take the end of the body if it already arrived, so the
        connection can serve another request (else it is closed). Never waits."""
        try:
            while self.body.read():
                pass
        except BodyError:
            pass

    def close(self):
        self._upstream_watcher.close()
        if self._client_watcher is not None:
            self._client_watcher.close()
            self._client_watcher = None
        self.body.close()


class Tracker:
    """Watches the events going by: response id, terminal event, usage; frames them as SSE."""

    def __init__(self, redact=None):
        self.created = None
        self.terminal_name = None
        self.terminal = None
        self.count = 0
        # The finished items: the final event's output is rebuilt from them when it comes empty.
        self.items = []
        # Takes out of item and final events what the gateway asked for its own use only.
        self.redact = redact

    def observe(self, events):
        """Track a batch of events and return the list of (name, data) actually to relay."""
        for index, (name, data) in enumerate(events):
            if not name:
                name = event_type(data)
                events[index] = (name, data)
            if name in TERMINAL:
                self.terminal_name = name
                self.terminal = loads(data)
                rewritten = False
                response = self.final_response()
                if response is not None and not response.get("output") and self.items:
                    # Sent empty by the backend; clients build their answer from it.
                    response["output"] = self.output_items()
                    rewritten = True
                if self.redact is not None and (rewritten or b"encrypted_content" in data):
                    events[index] = (name, orjson.dumps(self.redact(self.terminal)))
                elif rewritten:
                    events[index] = (name, orjson.dumps(self.terminal))
                self.count += index + 1
                return events[:index + 1]
            if name == CREATED:
                self.created = (loads(data) or {}).get("response")
            elif name == ITEM_DONE:
                item = loads(data)
                if isinstance(item, dict):
                    self.items.append(item)
            if self.redact is not None and name in (ITEM_DONE, ITEM_ADDED) and b"encrypted_content" in data:
                events[index] = (name, orjson.dumps(self.redact(loads(data))))
        self.count += len(events)
        return events

    def output_items(self):
        """The output of the finished response (from the terminal event, else the done items)."""
        response = self.final_response() or {}
        if response.get("output"):
            return response["output"]
        items = sorted(self.items, key=lambda event: event.get("output_index", 0))
        return [event["item"] for event in items if isinstance(event.get("item"), dict)]

    def completed(self):
        """Whether the response finished (completed, or incomplete with what it produced)."""
        return self.terminal_name in (b"response.completed", b"response.incomplete") and \
            (self.final_response() or {}).get("status") in ("completed", "incomplete")

    def final_response(self):
        """The response object of the terminal event (None for an ``error`` event)."""
        if self.terminal_name == b"error" or not isinstance(self.terminal, dict):
            return None
        response = self.terminal.get("response")
        return response if isinstance(response, dict) else None

    def error_code(self):
        if self.terminal_name == b"error":
            error = self.terminal if isinstance(self.terminal, dict) else {}
            error = error.get("error") if isinstance(error.get("error"), dict) else error
            return str(error.get("code") or "upstream_error")
        response = self.final_response()
        if response is None:
            return None
        if response.get("status") == "failed":
            error = response.get("error") if isinstance(response.get("error"), dict) else {}
            return str(error.get("code") or "response_failed")
        return None

    def failure_event(self, message, code="upstream_error"):
        """A ``response.failed`` event for a stream the upstream did not finish."""
        response = dict(self.created) if isinstance(self.created, dict) else {
            "id": "resp_" + secrets.token_hex(12),
            "object": "response", "created_at": int(time.time()), "output": []}
        response.update(status="failed", error={"code": code, "message": message}, incomplete_details=None)
        payload = {"type": "response.failed", "sequence_number": self.count, "response": response}
        self.terminal_name = b"response.failed"
        self.terminal = payload
        self.count += 1
        return b"response.failed", orjson.dumps(payload)


def event_type(data):
    event = loads(data)
    kind = event.get("type") if isinstance(event, dict) else None
    return kind.encode() if isinstance(kind, str) else b""


def loads(data):
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def frame(events):
    parts = []
    for name, data in events:
        if name:
            parts.append(b"event: " + name + b"\n")
        if b"\n" in data:
            data = data.replace(b"\n", b"\ndata: ")
        parts.append(b"data: " + data + b"\n\n")
    return b"".join(parts)


def usage_of(response):
    """Token counts of a response object, as usage-row columns."""
    usage = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(usage, dict):
        return {}
    input_details = usage.get("input_tokens_details") or {}
    output_details = usage.get("output_tokens_details") or {}
    return {
        "input_tokens": usage.get("input_tokens"),
        "output_tokens": usage.get("output_tokens"),
        "total_tokens": usage.get("total_tokens"),
        "cached_tokens": input_details.get("cached_tokens") if isinstance(input_details, dict) else None,
        "reasoning_tokens": output_details.get("reasoning_tokens") if isinstance(output_details, dict) else None,
    }


class Relay:
    """Relays one upstream stream to a client, with disconnect detection.

    The relay reads the upstream on the client's own greenlet: while it writes to a slow
    client it does not read, so the upstream is slowed down instead of memory filling up.
    At the final event, ``on_final(tracker)`` runs before the event goes out (a conversation
    turn is stored then); if it raises, the client gets ``response.failed`` instead. The
    exchange is finished exactly once when the relay ends, however it ends.

    The body yields ``encode(events)`` for each batch of events, and ``idle`` (unless None)
    after a silent interval: a subclass defines both for its transport.
    """

    idle = None

    def __init__(self, source, tracker, exchange, keepalive, on_final=None, on_progress=None):
        self.keepalive = keepalive or None
        self.tracker = tracker
        self.exchange = exchange
        self.on_final = on_final
        self.on_progress = on_progress
        self.ttfb = None
        self.client_gone = False
        self._source = source
        self._generator = None
        self._ended = False

    def first(self, timeout):
        """Wait up to ``timeout`` for the first events; raise ``UpstreamError`` if the stream
        failed before sending any (so the client still gets a real status), None on timeout."""
        try:
            return self._source.next(timeout)
        except StreamFailed as exc:
            self._source.close()
            raise UpstreamError(str(exc)) from None
        except BaseException:
            self._source.close()
            raise

    def body(self, first=None):
        """What goes out, as an iterable (a WSGI body) whose ``close()`` ends the relay even if
        never iterated."""
        self._generator = self._relay(first)
        return self

    def __iter__(self):
        return self._generator

    def close(self):
        self._generator.close()
        if not self._ended:  # never iterated: the client went away before the first write
            self.client_gone = True
            self._end()

    def _relay(self, events):
        try:
            while True:
                # No event yet after a whole keepalive interval: ``idle`` goes out, if anything.
                out = self.idle if events is None else self.encode(self._outgoing(events))
                if out is not None and self.ttfb is None:
                    self.ttfb = time.perf_counter() - self.exchange.started
                if self.on_progress is not None:
                    self.on_progress()
                if out is not None:
                    yield out
                if self.tracker.terminal_name is not None:
                    return
                try:
                    events = self._source.next(self.keepalive)
                except StreamFailed as exc:
                    events = [self.tracker.failure_event(str(exc))]
        except (GeneratorExit, ClientGone):
            self.client_gone = True
        finally:
            self._end()

    def _outgoing(self, events):
        """The events to send: tracked, and the final one settled before it goes out. Anything
        unexpected ends the stream with ``response.failed`` rather than a cut connection."""
        try:
            events = self.tracker.observe(events)
            if self.tracker.terminal_name is not None and self.on_final is not None:
                try:
                    self.on_final(self.tracker)
                except Exception as exc:
                    log.error("could not settle the response", exc_info=exc)
                    events[-1] = self.tracker.failure_event(SETTLE_FAILED, code="server_error")
        except Exception as exc:
            log.error("could not relay the upstream's events", exc_info=exc)
            events = [self.tracker.failure_event(RELAY_FAILED, code="server_error")]
        return events

    def _end(self):
        if self._ended:
            return
        self._ended = True
        try:
            if self.tracker.terminal_name is not None:
                self._source.drain()
            self._source.close()
        finally:
            if self.client_gone and self.tracker.terminal_name is None:
                self.exchange.finish(CLIENT_CLOSED, "client_closed", self.ttfb)
            else:
                self.exchange.finish(200, self.tracker.error_code(), self.ttfb,
                                     usage_of(self.tracker.final_response()))


class SSERelay(Relay):
    """Server-sent events: ``event:``/``data:`` frames, a keepalive comment when silent."""

    idle = KEEPALIVE
    encode = staticmethod(frame)


def fold(source, tracker, on_final=None, on_progress=None):
    """Read a whole upstream stream and return the response object.

    The object comes from the final event; if its ``output`` is empty it is rebuilt from the
    ``response.output_item.done`` items, which the backend sends that way. ``on_final`` runs
    once the final event is in (it may raise: the caller's error then answers the request).
    """
    try:
        while tracker.terminal_name is None:
            tracker.observe(source.next(None))
            if on_progress is not None:
                on_progress()
        source.drain()
    except StreamFailed as exc:
        raise UpstreamError(str(exc)) from None
    finally:
        source.close()
    if tracker.terminal_name == b"error":
        error = tracker.terminal if isinstance(tracker.terminal, dict) else {}
        error = error.get("error") if isinstance(error.get("error"), dict) else error
        raise UpstreamError(str(error.get("message") or "The upstream reported an error."),
                            code=str(error.get("code") or "upstream_error"))
    result = tracker.final_response()
    if result is None:
        raise UpstreamError("The upstream sent a malformed final event.")
    if on_final is not None:
        on_final(tracker)
    return dict(result, output=tracker.output_items())

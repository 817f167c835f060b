"""Relaying an upstream event stream: as SSE to a streaming client, or folded into one object.

Deltas pass through as bytes. Only the events the gateway needs (created, the terminal ones,
``output_item.done``) are parsed as JSON.
"""

import logging
import secrets
import time

import orjson
from gevent import get_hub
from gevent.hub import Waiter

from .errors import DatabaseUnavailable, UpstreamError, log_failure, unavailable
from .upstream.body import BodyError, UnsupportedEncoding, UpstreamBody
from .upstream.client import TURN_STATE
from .upstream.sse import EventTooLarge, SSEParser

CREATED = b"response.created"
ITEM_ADDED = b"response.output_item.added"
ITEM_DONE = b"response.output_item.done"
# Headers the backend sends inside the stream (Codex reads its turn state from them).
METADATA = b"response.metadata"
TERMINAL = frozenset((b"response.completed", b"response.incomplete", b"response.failed", b"error"))
KEEPALIVE = b": keepalive\n\n"
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
# After this much read without a wait, the events so far are relayed and the event loop gets
# a turn before reading on.
BATCH_BYTES = 256 * 1024

_UPSTREAM, _CLIENT, _TIMER = "upstream", "client", "timer"
# nginx's status for "the client closed the connection": the answer was cut, not refused.
CLIENT_CLOSED = 499
SETTLE_FAILED = "The response could not be stored in its conversation; nothing was added to it."
RELAY_FAILED = "The gateway could not relay the upstream's answer."

log = logging.getLogger(__name__)


class StreamFailed(Exception):
    """The upstream stream broke (read error, silence, it ended before a terminal event, or it
    sent what the gateway cannot relay)."""


class ClientGone(Exception):
    """The client closed its connection before its answer ended."""


class EventSource:
    """Upstream events as they arrive, read on the caller's greenlet.

    ``next(timeout)`` returns the events that are available (all of them: one network read
    often holds many), each with its name, waiting up to ``timeout`` for some; it returns
    ``None`` when the time is up, so the caller can send a keepalive. With a client socket, the
    wait also watches it, and a client that goes away raises ``ClientGone`` at once instead of
    at the next write. The events stop at the terminal one; a stream that breaks, sends a line
    or an event over ``max_event_bytes``, or ends in a terminal event the gateway cannot read
    raises ``StreamFailed`` (after the events before the failure have been returned).
    """

    def __init__(self, response, read_timeout, client=None, *, max_event_bytes):
        """``client``: what to watch of the client (``fileno()``, and ``gone()`` once it turned
        readable), or None."""
        try:
            self.body = UpstreamBody(response)
        except UnsupportedEncoding as exc:
            raise UpstreamError(f"The upstream used an unsupported Content-Encoding: {exc.encoding}.") from None
        self._parser = SSEParser(max_event_bytes)
        self._read_timeout = read_timeout
        self._last_data = time.monotonic()
        self._processed_at_wait = 0  # ``body.processed`` when the event loop last had a turn
        self._failure = None  # why the stream failed, once the events before it are returned
        self._hub = get_hub()
        self._upstream_watcher = self._hub.loop.io(self.body.fileno(), 1)
        self.client = client
        self._client_watcher = None
        if client is not None:
            try:
                self._client_watcher = self._hub.loop.io(client.fileno(), 1)
            except (OSError, ValueError):
                self.client = None

    def next(self, timeout):
        if self._failure is not None:
            raise StreamFailed(self._failure)
        deadline = time.monotonic() + timeout if timeout else None
        events = []
        while True:
            if self.body.processed - self._processed_at_wait >= BATCH_BYTES:
                if events:
                    return events
                # gevent's recv returns at once while data is there: without a turn of the
                # event loop now and then, a fast upstream would stall every other greenlet.
                self._wait(0)
            try:
                data = self.body.read()
            except BodyError as exc:
                return self._fail(events, f"The upstream connection failed mid-stream: {exc}.")
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
                try:
                    batch = self._parser.feed(data)
                except EventTooLarge as exc:
                    return self._fail(events, f"The upstream sent an event too large to relay: {exc}.")
                for index, (name, payload) in enumerate(batch):
                    if not name:
                        name = event_type(payload)
                        batch[index] = (name, payload)
                    if name in TERMINAL:
                        if not readable_terminal(name, payload):
                            events += batch[:index]
                            return self._fail(events, "The upstream sent a malformed final event.")
                        events += batch[:index + 1]
                        return events
                events += batch
            if self.body.done:
                if events:
                    return events
                raise StreamFailed("The upstream closed the stream before the response completed.")

    def _fail(self, events, message):
        """Fail now, or, when events were read before the failure, after they are relayed."""
        if not events:
            raise StreamFailed(message)
        self._failure = message
        return events

    def _wait(self, timeout):
        """Sleep until the upstream or the client socket is readable, or ``timeout`` passes."""
        silent_for = time.monotonic() - self._last_data
        limit = self._read_timeout - silent_for
        if limit <= 0:
            raise StreamFailed(f"The upstream sent nothing for {self._read_timeout:g} seconds.")
        timeout = limit if timeout is None else min(timeout, limit)
        self._processed_at_wait = self.body.processed
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
        if self.client.gone():
            raise ClientGone()
        # Pipelined bytes are the next request's: stop watching, writes will tell if it leaves.
        self._client_watcher.close()
        self._client_watcher = None

    def drain(self):
        """After the terminal event: take the end of the body if it already arrived, so the
        connection can serve another request (else it is closed). Never waits, and gives up
        after a batch: what comes after a terminal event is a few bytes, not a stream."""
        limit = self.body.processed + BATCH_BYTES
        try:
            while self.body.processed < limit and self.body.read():
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

    def __init__(self, redact=None, on_turn_state=None):
        self.created = None
        self.terminal_name = None
        self.terminal = None
        self.count = 0
        # The finished items: the final event's output is rebuilt from them when it comes empty.
        self.items = []
        # Takes out of item and final events what the gateway asked for its own use only.
        self.redact = redact
        # Called with the turn state of a ``response.metadata`` event, before the event goes out.
        self.on_turn_state = on_turn_state

    def observe(self, events):
        """Track a batch of named events (as ``EventSource`` returns them) and return the list
        of (name, data) actually to relay. Events whose data is not what their name promises
        are relayed as they came and otherwise ignored."""
        for index, (name, data) in enumerate(events):
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
                response = field(loads(data), "response")
                if isinstance(response, dict):
                    self.created = response
            elif name in (ITEM_DONE, ITEM_ADDED):
                redact = self.redact is not None and b"encrypted_content" in data
                if name == ITEM_DONE or redact:
                    event = loads(data)
                    if name == ITEM_DONE and isinstance(field(event, "item"), dict):
                        self.items.append(event)
                    if redact and isinstance(event, dict):
                        events[index] = (name, orjson.dumps(self.redact(event)))
            elif name == METADATA and self.on_turn_state is not None:
                state = turn_state_in(loads(data))
                if state is not None:
                    self.on_turn_state(state)
        self.count += len(events)
        return events

    def output_items(self):
        """The output of the finished response (from the terminal event, else the done items)."""
        response = self.final_response() or {}
        if response.get("output"):
            return response["output"]
        items = sorted(self.items, key=output_index)
        return [event["item"] for event in items]

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


def turn_state_in(event):
    """The ``x-codex-turn-state`` of a ``response.metadata`` event's headers (any case), or None."""
    headers = field(event, "headers")
    if isinstance(headers, dict):
        for name, value in headers.items():
            if isinstance(value, str) and name.lower() == TURN_STATE:
                return value
    return None


def readable_terminal(name, data):
    """Whether a terminal event holds what the gateway reads from it: an object, and for the
    ``response.*`` ones a response object whose ``output``, if any, is a list of objects."""
    event = loads(data)
    if not isinstance(event, dict):
        return False
    if name == b"error":
        return True
    response = event.get("response")
    if not isinstance(response, dict):
        return False
    output = response.get("output")
    return output is None or isinstance(output, list) and all(isinstance(item, dict) for item in output)


def field(value, name):
    """``value[name]`` when ``value`` is an object, else None."""
    return value.get(name) if isinstance(value, dict) else None


def output_index(event):
    """Where a done item goes in the output (an index that is not a number sorts first)."""
    index = event.get("output_index")
    return index if isinstance(index, int) else 0


def event_type(data):
    kind = field(loads(data), "type")
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
    """Token counts of a response object, as usage-row columns (a count that is not a whole
    number is left out: the columns are integers)."""
    usage = field(response, "usage")
    if not isinstance(usage, dict):
        return {}
    return {
        "input_tokens": count(usage.get("input_tokens")),
        "output_tokens": count(usage.get("output_tokens")),
        "total_tokens": count(usage.get("total_tokens")),
        "cached_tokens": count(field(usage.get("input_tokens_details"), "cached_tokens")),
        "reasoning_tokens": count(field(usage.get("output_tokens_details"), "reasoning_tokens")),
    }


def count(value):
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62 else None


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

    def __init__(self, source, tracker, exchange, keepalive, on_final=None):
        self.keepalive = keepalive or None
        self.tracker = tracker
        self.exchange = exchange
        self.on_final = on_final
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
        self.exchange.metrics.stream_opened(self.exchange.transport)
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
                    log_failure(log, "could not settle the response", exc)
                    code = DatabaseUnavailable.code if unavailable(exc) else "server_error"
                    events[-1] = self.tracker.failure_event(SETTLE_FAILED, code=code)
        except Exception as exc:
            log.error("could not relay the upstream's events", exc_info=exc)
            events = [self.tracker.failure_event(RELAY_FAILED, code="server_error")]
        return events

    def _end(self):
        if self._ended:
            return
        self._ended = True
        self.exchange.metrics.stream_closed(self.exchange.transport)
        try:
            if self.tracker.terminal_name is not None:
                self._source.drain()
            self._source.close()
        finally:
            if self.client_gone and self.tracker.terminal_name is None:
                timed_out = getattr(self._source.client, "timed_out", False)
                self.exchange.finish(CLIENT_CLOSED, "client_timeout" if timed_out else "client_closed", self.ttfb)
            else:
                self.exchange.finish(200, self.tracker.error_code(), self.ttfb,
                                     usage_of(self.tracker.final_response()))


class SSERelay(Relay):
    """Server-sent events: ``event:``/``data:`` frames, a keepalive comment when silent."""

    idle = KEEPALIVE
    encode = staticmethod(frame)


def fold(source, tracker, on_final=None):
    """Read a whole upstream stream and return the response object.

    The object comes from the final event; if its ``output`` is empty it is rebuilt from the
    ``response.output_item.done`` items, which the backend sends that way. ``on_final`` runs
    once the final event is in (it may raise: the caller's error then answers the request).
    """
    try:
        while tracker.terminal_name is None:
            tracker.observe(source.next(None))
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

"""Relaying an upstream event stream: as SSE to a streaming client, or folded into one object.

Deltas pass through as bytes. Only the events the gateway needs (created, the terminal ones,
``output_item.done`` when folding) are parsed as JSON.
"""

import secrets
import socket
import time

import gevent
import orjson
import requests
from gevent.queue import Empty, Full, Queue

from .errors import UpstreamError
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
# How many parsed chunks may wait for a slow client before the upstream read pauses.
QUEUE_DEPTH = 64

_END = object()
_DISCONNECTED = object()


class StreamFailed(Exception):
    """The upstream stream broke (read error, or it ended before a terminal event)."""


def upstream_batches(response):
    """The upstream body as lists of ``(name, data)`` events, one list per network chunk."""
    parser = SSEParser()
    try:
        for chunk in response.iter_content(chunk_size=None):
            events = parser.feed(chunk)
            if events:
                yield events
    except (requests.RequestException, OSError) as exc:
        raise StreamFailed(f"The upstream connection failed mid-stream ({type(exc).__name__}).") from None


class Tracker:
    """Watches the events going by: response id, terminal event, usage; frames them as SSE."""

    def __init__(self, collect_items=False, strip_encrypted=False):
        self.created = None
        self.terminal_name = None
        self.terminal = None
        self.count = 0
        self.items = [] if collect_items else None
        # The gateway asked for encrypted reasoning for its own use (conversations); a client
        # that did not ask for it does not get it.
        self.strip_encrypted = strip_encrypted

    def observe(self, events):
        """Track a batch of events and return the list of (name, data) actually to relay."""
        for index, (name, data) in enumerate(events):
            if not name:
                name = event_type(data)
                events[index] = (name, data)
            if name in TERMINAL:
                self.terminal_name = name
                self.terminal = loads(data)
                if self.strip_encrypted and b"encrypted_content" in data:
                    events[index] = (name, orjson.dumps(without_encrypted(self.terminal)))
                self.count += index + 1
                return events[:index + 1]
            if name == CREATED:
                self.created = (loads(data) or {}).get("response")
            elif name == ITEM_DONE and self.items is not None:
                item = loads(data)
                if isinstance(item, dict):
                    self.items.append(item)
            if self.strip_encrypted and (name == ITEM_DONE or name == ITEM_ADDED) and b"encrypted_content" in data:
                events[index] = (name, orjson.dumps(without_encrypted(loads(data))))
        self.count += len(events)
        return events

    def output_items(self):
        """The output of the finished response (from the terminal event, else the done items)."""
        response = self.final_response() or {}
        if response.get("output"):
            return response["output"]
        items = sorted(self.items or (), key=lambda event: event.get("output_index", 0))
        return [event["item"] for event in items if isinstance(event.get("item"), dict)]

    @property
    def response_id(self):
        return self.created.get("id") if isinstance(self.created, dict) else None

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


def without_encrypted(value):
    """A copy of an event or response without the ``encrypted_content`` of reasoning items."""
    if isinstance(value, dict):
        return {key: without_encrypted(item) for key, item in value.items() if key != "encrypted_content"}
    if isinstance(value, list):
        return [without_encrypted(item) for item in value]
    return value


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


class SSERelay:
    """Relays one upstream stream to a client, with keepalives and disconnect detection.

    A greenlet reads the upstream into a bounded queue (so a slow client slows the upstream read
    instead of filling memory); the client side waits on the queue with the keepalive interval
    as timeout. ``finish(relay)`` is called exactly once when the relay ends, however it ends.
    """

    def __init__(self, response, keepalive, finish, client_socket=None, started=None, tracker=None,
                 on_progress=None):
        self.response = response
        self.keepalive = keepalive or None
        self.tracker = tracker or Tracker()
        self.on_progress = on_progress
        self.finish = finish
        self.ttfb = None
        self.started = time.perf_counter() if started is None else started
        self.client_gone = False
        self._queue = Queue(QUEUE_DEPTH)
        self._reader = gevent.spawn(self._read)
        self._socket = client_socket
        self._watcher = None
        self._generator = None
        self._ended = False

    def _read(self):
        try:
            for batch in upstream_batches(self.response):
                self._queue.put(batch)
            self._queue.put(_END)
        except StreamFailed as exc:
            self._queue.put(exc)

    def first(self, timeout):
        """Wait up to ``timeout`` for the first events; raise ``UpstreamError`` if the stream
        failed before sending any (so the client still gets a real status), None on timeout."""
        try:
            item = self._queue.get(timeout=timeout)
        except Empty:
            return None
        if item is _END or isinstance(item, StreamFailed):
            self.release()
            raise UpstreamError(str(item) if isinstance(item, StreamFailed)
                                else "The upstream closed the stream before sending any event.")
        return item

    def body(self, first=None):
        """The WSGI body: an iterable whose ``close()`` ends the relay even if never iterated."""
        self._generator = self._relay(first)
        return self

    def __iter__(self):
        return self._generator

    def close(self):
        self._generator.close()
        if not self._ended:  # never iterated: the client went away before the first write
            self.client_gone = True
            self._end()

    def _relay(self, first):
        try:
            self._watch_client()
            # No event yet after a whole keepalive interval: the headers and a keepalive go out now.
            item = KEEPALIVE if first is None else first
            while True:
                if item is None:
                    try:
                        item = self._queue.get(timeout=self.keepalive)
                    except Empty:
                        item = KEEPALIVE
                if item is _DISCONNECTED or self.client_gone:
                    if self._client_closed():
                        return
                    item = None
                    continue
                if item is KEEPALIVE:
                    out = KEEPALIVE
                elif item is _END:
                    out = frame([self.tracker.failure_event(
                        "The upstream closed the stream before the response completed.")])
                elif isinstance(item, StreamFailed):
                    out = frame([self.tracker.failure_event(str(item))])
                else:
                    out = frame(self.tracker.observe(item))
                if self.ttfb is None:
                    self.ttfb = time.perf_counter() - self.started
                if self.on_progress is not None:
                    self.on_progress()
                yield out
                if self.tracker.terminal_name is not None:
                    return
                item = None
        except GeneratorExit:
            self.client_gone = True
            raise
        finally:
            self._end()

    def _end(self):
        if self._ended:
            return
        self._ended = True
        self.release()
        self.finish(self)

    def release(self):
        """Stop watching the client and reading the upstream, and close the upstream request."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None
        if self._reader is not None:
            self._reader.kill(block=True, timeout=1)
            self._reader = None
        self.response.close()

    # A client that goes away is otherwise only noticed at the next write, which may be a
    # keepalive interval away; watching its socket lets the upstream request close at once.
    def _watch_client(self):
        if self._socket is None:
            return
        try:
            self._watcher = gevent.get_hub().loop.io(self._socket.fileno(), 1)
        except (OSError, ValueError):
            return
        self._watcher.start(self._on_readable)

    def _on_readable(self):
        self._watcher.stop()
        self.client_gone = True
        try:
            self._queue.put_nowait(_DISCONNECTED)
        except Full:
            pass  # the client side is busy writing and will see the flag

    def _client_closed(self):
        """After the client socket turned readable: has the client gone (EOF or reset)?"""
        self.client_gone = False
        try:
            gone = self._socket.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            gone = True
        self.client_gone = gone
        return gone


def fold(response, tracker=None, on_progress=None):
    """Read a whole upstream stream and return (tracker, response object).

    The object comes from the terminal event; if its ``output`` is empty it is rebuilt from the
    ``response.output_item.done`` items, which the backend sends that way.
    """
    tracker = tracker or Tracker(collect_items=True)
    try:
        for batch in upstream_batches(response):
            tracker.observe(batch)
            if on_progress is not None:
                on_progress()
            if tracker.terminal_name is not None:
                break
    except StreamFailed as exc:
        raise UpstreamError(str(exc)) from None
    finally:
        response.close()
    if tracker.terminal_name is None:
        raise UpstreamError("The upstream closed the stream before the response completed.")
    if tracker.terminal_name == b"error":
        error = tracker.terminal if isinstance(tracker.terminal, dict) else {}
        error = error.get("error") if isinstance(error.get("error"), dict) else error
        raise UpstreamError(str(error.get("message") or "The upstream reported an error."),
                            code=str(error.get("code") or "upstream_error"))
    result = tracker.final_response()
    if result is None:
        raise UpstreamError("The upstream sent a malformed final event.")
    result = dict(result, output=tracker.output_items())
    return tracker, without_encrypted(result) if tracker.strip_encrypted else result

"""What the fake upstream answers and what the load generator asks, built once as bytes.

The events are the fake Codex backend's of the test suite (``tests.fake_upstream.Script``), so
the bench relays the same shapes the end-to-end tests check. Each event is its own HTTP chunk,
as the real backend flushes them.
"""

import json

from tests.fake_upstream import Script, sse

# The model decides the answer; the fake's catalog lists these slugs so the gateway accepts them.
SHORT, LONG, SLOW = "bench-short", "bench-long", "bench-slow"
MODELS = (SHORT, LONG, SLOW)
SHORT_DELTAS = 30
LONG_DELTAS = 5000
# In a slow stream each delta's text is "t=<CLOCK_MONOTONIC seconds at send>;": the client reads
# the one-way delay of every delta from it (the monotonic clock is shared by all processes).
STAMP = b"@@STAMP@@"
STAMP_MARK = b'"delta":"t='

SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _frames(events):
    return [frame.encode() for frame in sse(events)]


def _words(count):
    words = ("Hello", "from", "the", "bench", "upstream,", "one", "small", "delta", "at", "a", "time.")
    return [words[i % len(words)] + " " for i in range(count)]


def answer(model, deltas):
    """The whole HTTP response (head and chunked body) of a text answer of ``deltas`` deltas."""
    frames = _frames(Script(model).start().message(_words(deltas)).completed().events())
    return SSE_HEAD + b"".join(chunk(frame) for frame in frames) + LAST_CHUNK, len(frames)


class SlowAnswer:
    """A text answer sent a delta at a time: ``head`` at once, then ``delta(i)`` each interval,
    then ``tail``. The deltas carry their send time."""

    def __init__(self, deltas):
        events = Script(SLOW).start().message([STAMP.decode()] * deltas).completed().events()
        frames = _frames(events)
        first = next(i for i, (name, _) in enumerate(events) if name.endswith(".delta"))
        self.count = deltas
        self.head = SSE_HEAD + b"".join(chunk(frame) for frame in frames[:first])
        self._deltas = [frame.split(STAMP) for frame in frames[first:first + deltas]]
        # The done events repeat the whole text; its placeholders become plain letters.
        self.tail = b"".join(chunk(frame.replace(STAMP, b"x")) for frame in frames[first + deltas:]) + LAST_CHUNK
        self.events = len(frames)

    def delta(self, index, now):
        before, after = self._deltas[index]
        return chunk(b"%st=%.6f;%s" % (before, now, after))


def request(host, path, body, headers=None):
    """The bytes of one POST (HTTP/1.1, keep-alive)."""
    raw = json.dumps(body, separators=(",", ":")).encode()
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
             "Accept: text/event-stream" if body.get("stream", True) else "Accept: application/json"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines.append(f"Content-Length: {len(raw)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + raw


def body(model, stream=True, prompt_cache_key=None):
    document = {"model": model, "input": "Say hello.", "stream": stream}
    if prompt_cache_key:
        document["prompt_cache_key"] = prompt_cache_key
    return document


# A client's WebSocket frames are masked (RFC 6455, 5.3); any key will do for the bench.
MASK = b"\x5a\x13\xc7\x2e"


def websocket_upgrade(host, path, headers=None):
    """The bytes of a WebSocket handshake request (no extension offered)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: YmVuY2gtd2Vic29ja2V0LTE=", "Sec-WebSocket-Version: 13"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(payload, opcode=0x1):
    """One masked client frame (text by default) around ``payload``."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        head = bytes((0x80 | opcode, 0xfe)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xff)) + size.to_bytes(8, "big")
    key = int.from_bytes((MASK * (size // 4 + 1))[:size], "big") if size else 0
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(size, "big") if size else b""
    return head + MASK + masked


def response_create(model, prompt_cache_key=None):
    """A ``response.create`` message: the streaming request body, as one masked text frame."""
    document = {"type": "response.create", **body(model, True, prompt_cache_key)}
    return client_frame(json.dumps(document, separators=(",", ":")).encode())

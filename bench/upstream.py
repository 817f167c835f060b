"""A fast fake Codex backend for the bench: raw asyncio, answers pre-built as bytes.

``python -m bench.upstream --port 0`` prints ``PORT <n>`` on stdout once listening. It serves
``GET */codex/models`` (the bench models), ``GET */wham/usage``, ``POST */oauth/token`` (fixed
answers) and ``POST */codex/responses``, answering by the model
named in the body: ``bench-short`` (a few dozen deltas), ``bench-long`` (5,000 deltas), both
written in one go, or ``bench-slow`` (one delta every ``--slow-interval`` seconds). HTTP/1.1
keep-alive, chunked, one event per chunk. It parses nothing but the request head.
"""

import argparse
import asyncio
import json
import resource
import sys
import time

from bench import payloads
from tests.fake_upstream import auth_json

NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
               b"Connection: close\r\n\r\n{}")
# Slow streams are served by one ticker: every SLOT seconds it writes the next delta of the
# streams in the current bucket, so thousands of streams cost one timer, not thousands.
SLOT = 0.01


def json_response(document):
    raw = json.dumps(document).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(raw), raw)


class Answers:
    def __init__(self, slow_interval, slow_deltas):
        self.short, _ = payloads.answer(payloads.SHORT, payloads.SHORT_DELTAS)
        self.long, _ = payloads.answer(payloads.LONG, payloads.LONG_DELTAS)
        self.slow = payloads.SlowAnswer(slow_deltas)
        self.models = json_response({"models": [{"slug": slug} for slug in payloads.MODELS]})
        # Token refreshes and quota polls get what the real services answer, should the gateway ask.
        tokens = auth_json(expires_in=7 * 86400)["tokens"]
        self.token = json_response({key: tokens[key] for key in ("id_token", "access_token", "refresh_token")})
        resets = int(time.time())
        self.usage = json_response({"plan_type": "plus", "rate_limit": {
            "primary_window": {"used_percent": 1, "reset_at": resets + 18000},
            "secondary_window": {"used_percent": 1, "reset_at": resets + 604800}}})
        self.buckets = [set() for _ in range(max(1, round(slow_interval / SLOT)))]
        self.tick = 0

    def start_slow(self, stream):
        # Put in the bucket just served: its first delta goes out one interval from now.
        self.buckets[(self.tick - 1) % len(self.buckets)].add(stream)
        stream.bucket = self.buckets[(self.tick - 1) % len(self.buckets)]

    def run_ticker(self, loop):
        start = loop.time()

        def tick():
            bucket = self.buckets[self.tick % len(self.buckets)]
            self.tick += 1
            for stream in list(bucket):
                stream.next_delta()
            # Drift-free: the next tick is at its scheduled time, however late this one ran.
            loop.call_at(start + self.tick * SLOT, tick)

        loop.call_at(start + SLOT, tick)


class Upstream(asyncio.Protocol):
    answers = None

    def __init__(self):
        self.transport = None
        self.buffer = b""
        self.streaming = False
        self.bucket = None
        self.sent = 0

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        if self.bucket is not None:
            self.bucket.discard(self)
            self.bucket = None

    def data_received(self, data):
        self.buffer += data
        while not self.streaming:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lower.find(b"\r\n", at + 2)
                length = int(lower[at + 17:stop if stop >= 0 else len(lower)])
            elif b"\r\ntransfer-encoding:" in lower:
                self.transport.write(BAD_REQUEST)  # the gateway and nginx send a length
                self.transport.close()
                return
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            self.respond(head[:head.find(b"\r\n")], body)

    def respond(self, request_line, body):
        method, path = request_line.split(b" ", 2)[:2]
        path = path.split(b"?", 1)[0]
        if method == b"GET" and path.endswith(b"/codex/models"):
            self.transport.write(self.answers.models)
        elif method == b"GET" and path.endswith(b"/wham/usage"):
            self.transport.write(self.answers.usage)
        elif method == b"POST" and path.endswith(b"/oauth/token"):
            self.transport.write(self.answers.token)
        elif method == b"POST" and path.endswith(b"/codex/responses"):
            if payloads.SLOW.encode() in body:
                self.streaming = True
                self.sent = 0
                self.transport.write(self.answers.slow.head)
                self.answers.start_slow(self)
            elif payloads.LONG.encode() in body:
                self.transport.write(self.answers.long)
            else:
                self.transport.write(self.answers.short)
        else:
            self.transport.write(NOT_FOUND)

    def next_delta(self):
        slow = self.answers.slow
        self.transport.write(slow.delta(self.sent, time.monotonic()))
        self.sent += 1
        if self.sent == slow.count:
            self.transport.write(slow.tail)
            self.bucket.discard(self)
            self.bucket = None
            self.streaming = False
            if self.buffer:
                self.data_received(b"")


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(port, slow_interval, slow_deltas):
    loop = asyncio.get_running_loop()
    Upstream.answers = Answers(slow_interval, slow_deltas)
    server = await loop.create_server(Upstream, "127.0.0.1", port, backlog=4096, reuse_address=True)
    Upstream.answers.run_ticker(loop)
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--slow-interval", type=float, default=0.2)
    parser.add_argument("--slow-deltas", type=int, default=150)
    args = parser.parse_args()
    raise_nofile()
    try:
        asyncio.run(serve(args.port, args.slow_interval, args.slow_deltas))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())

"""The load generator: raw asyncio sockets and a minimal HTTP/1.1 + SSE reader, in its own process.

``python -m bench.loadgen`` reads one JSON command per line on stdin and answers each with one
JSON line on stdout (see ``closed_loop``, ``open_streams``, ``websocket_turns`` and
``idle_websockets`` for the commands). Per request it measures the time to the first byte, to
the first ``output_text.delta`` event and to the end of the body (or of the WebSocket answer),
and checks that the answer ended with ``response.completed``. It also samples the CPU
and RSS of the process trees it is told about, so that the window of the figures is its own.
"""

import asyncio
import json
import os
import resource
import sys
import time

from bench import payloads, procfs
from bench.stats import Histogram, summary

monotonic = time.monotonic
DELTA_EVENT = b"event: response.output_text.delta\n"
COMPLETED_EVENT = b"event: response.completed\n"
BAD_ENDINGS = (b"event: response.failed\n", b"event: response.incomplete\n", b"event: error\n")
HEAD, BODY_CHUNKED, BODY_LENGTH, BODY_UNTIL_CLOSE, IDLE = range(5)
ERROR_SAMPLES = 5


class Run:
    """The settings and the tallies of one command, shared by its connections."""

    def __init__(self, command):
        self.loop = asyncio.get_running_loop()
        self.port = command["port"]
        self.requests = [raw.encode("latin-1") for raw in command.get("requests", ())]
        self.kind = command.get("kind", "sse")
        self.timeout = command.get("timeout", 30.0)
        self.expected_deltas = command.get("expected_deltas")
        self.delays = Histogram() if command.get("track_delays") else None
        # The same, of the deltas received once every stream of the run was open (open_streams).
        self.delays_all_open = Histogram() if command.get("track_delays") else None
        self.all_open = False
        self.groups = [procfs.Group(name, pid) for name, pid in command.get("groups", {}).items()]
        self.groups.append(procfs.Group("loadgen", os.getpid()))
        self.turn = 0
        self.conns = set()
        self.open = 0
        self.errors = {}
        self.error_samples = []

    def next_request(self):
        self.turn += 1
        return self.requests[self.turn % len(self.requests)]

    def error(self, reason, detail=None):
        self.errors[reason] = self.errors.get(reason, 0) + 1
        if len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append(f"{reason}: {detail}" if detail else reason)

    async def connect(self):
        _, conn = await asyncio.wait_for(
            self.loop.create_connection(lambda: Conn(self), "127.0.0.1", self.port), self.timeout)
        return conn

    async def watchdog(self):
        """Aborts the requests that outlived their deadline (one timer for all connections)."""
        while True:
            await asyncio.sleep(0.25)
            now = monotonic()
            for conn in list(self.conns):
                if conn.future is not None and not conn.future.done() and now > conn.deadline:
                    conn.fail("timeout")


class Conn(asyncio.Protocol):
    """One keep-alive connection; ``send`` returns a future of the outcome (None when all went well)."""

    def __init__(self, run):
        self.run = run
        self.transport = None
        self.future = None
        self.state = IDLE
        self.sent_at = self.first_byte = self.first_delta = self.opened = self.end = None

    def connection_made(self, transport):
        self.transport = transport
        self.run.conns.add(self)

    def connection_lost(self, exc):
        self.transport = None
        self.run.conns.discard(self)
        if self.future is not None and not self.future.done():
            self.finish(f"connection lost ({type(exc).__name__ if exc else 'closed by peer'})")

    def send(self, request):
        self.state = HEAD
        self.buffer = b""
        self.rest = b""
        self.left = 0
        self.status = None
        self.close_after = False
        self.body = b""
        self.events = self.deltas = self.keepalives = 0
        self.ending = None
        self.first_byte = self.first_delta = self.opened = self.end = None
        self.detail = None
        self.headed = self.run.loop.create_future()
        self.sent_at = monotonic()
        self.deadline = self.sent_at + self.run.timeout
        self.future = self.run.loop.create_future()
        self.transport.write(request)
        return self.future

    def fail(self, reason):
        if self.transport is not None:
            self.transport.abort()
        if self.future is not None and not self.future.done():
            self.finish(reason)

    def finish(self, outcome):
        self.end = monotonic()
        if not self.headed.done():
            self.headed.set_result(None)
        self.state = IDLE
        if self.run.kind == "sse" and self.opened is not None:
            self.run.open -= 1
        if (self.close_after or outcome) and self.transport is not None:
            self.transport.close()
        self.future.set_result(outcome)

    def data_received(self, data):
        now = monotonic()
        if self.state == IDLE:
            self.fail("unexpected bytes between responses")
            return
        if self.first_byte is None:
            self.first_byte = now
        buffer = self.buffer + data if self.buffer else data
        if self.state == HEAD:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            self.head(buffer[:end], now)
            buffer = buffer[end + 4:]
        if self.state == BODY_CHUNKED:
            buffer = self.chunked(buffer, now)
        elif self.state == BODY_LENGTH:
            take = buffer[:self.left]
            buffer = buffer[len(take):]
            self.left -= len(take)
            self.content(take, now)
            if not self.left:
                self.complete()
        elif self.state == BODY_UNTIL_CLOSE:
            self.content(buffer, now)
            buffer = b""
        self.buffer = buffer

    def head(self, raw, now):
        self.status = int(raw[9:12])
        lower = raw.lower()
        self.close_after = b"\r\nconnection: close" in lower
        if b"\r\ntransfer-encoding: chunked" in lower:
            self.state = BODY_CHUNKED
        elif b"\r\ncontent-length:" in lower:
            at = lower.index(b"\r\ncontent-length:") + 17
            stop = lower.find(b"\r\n", at)
            self.left = int(lower[at:stop if stop >= 0 else len(lower)])
            self.state = BODY_LENGTH
        else:
            self.state = BODY_UNTIL_CLOSE
            self.close_after = True
        if self.status == 200 and self.run.kind == "sse":
            self.opened = now
            self.run.open += 1
        self.headed.set_result(None)
        if self.state == BODY_LENGTH and not self.left:
            self.complete()

    def chunked(self, buffer, now):
        """Decode what ``buffer`` holds; return the undecoded rest.

        ``left`` > 0: bytes of chunk data to come; 0: a size line; -2: the CRLF after the data;
        -3: the CRLF that ends the body after the last chunk (no trailers are sent here).
        """
        position, size = 0, len(buffer)
        while position < size:
            left = self.left
            if left > 0:
                stop = min(size, position + left)
                self.content(buffer[position:stop], now)
                self.left = left - (stop - position)
                position = stop
                if self.left:
                    break
                self.left = -2
            elif left == 0:
                line_end = buffer.find(b"\r\n", position)
                if line_end < 0:
                    break
                length = int(buffer[position:line_end].split(b";", 1)[0], 16)
                position = line_end + 2
                self.left = length if length else -3
            else:
                if size - position < 2:
                    break
                position += 2
                if left == -3:
                    self.complete()
                    return buffer[position:]
                self.left = 0
        return buffer[position:]

    def content(self, piece, now):
        if self.status != 200 or self.run.kind != "sse":
            if len(self.body) < 65536:
                self.body += piece
            return
        data = self.rest + piece if self.rest else piece
        if b"\n\n" not in data:
            self.rest = data
            return
        parts = data.split(b"\n\n")
        self.rest = parts.pop()
        self.events += len(parts)
        delays = self.run.delays
        for part in parts:
            if part.startswith(DELTA_EVENT):
                self.deltas += 1
                if self.first_delta is None:
                    self.first_delta = now
                if delays is not None:
                    at = part.find(payloads.STAMP_MARK)
                    if at >= 0:
                        at += len(payloads.STAMP_MARK)
                        delay = now - float(part[at:part.index(b";", at)])
                        delays.add(delay)
                        if self.run.all_open:
                            self.run.delays_all_open.add(delay)
            elif part[:1] == b":":
                self.keepalives += 1
                self.events -= 1
            elif part.startswith(COMPLETED_EVENT):
                self.ending = "completed"
            elif part.startswith(BAD_ENDINGS):
                self.ending = part[7:part.index(b"\n")].decode()

    def complete(self):
        if self.status != 200:
            outcome = f"HTTP {self.status}"
            self.detail = self.body[:300].decode("utf-8", "replace")
        elif self.run.kind == "sse":
            if self.ending is None:
                outcome = "stream ended without a terminal event"
            elif self.ending != "completed":
                outcome = f"stream ended with {self.ending}"
            elif self.expected_deltas_missing():
                outcome = "deltas missing"
            else:
                outcome = None
        else:
            outcome = None if (b'"status":"completed"' in self.body or b'"status": "completed"' in self.body) \
                else "response not completed"
        self.finish(outcome)

    def expected_deltas_missing(self):
        return self.run.expected_deltas is not None and self.deltas < self.run.expected_deltas


def timings(conns):
    """Summaries of the timings (seconds from the request's send) of finished exchanges."""
    return {
        "ttfb": summary([c["first_byte"] for c in conns if c["first_byte"] is not None]),
        "first_delta": summary([c["first_delta"] for c in conns if c["first_delta"] is not None]),
        "total": summary([c["total"] for c in conns]),
    }


def exchange(conn):
    start = conn.sent_at
    return {"first_byte": conn.first_byte - start if conn.first_byte else None,
            "first_delta": conn.first_delta - start if conn.first_delta else None,
            "total": conn.end - start, "events": conn.events, "keepalives": conn.keepalives}


def cpu_delta(before, after):
    return {name: round(after[name]["cpu"] - before[name]["cpu"], 3) for name in after}


async def closed_loop(command):
    """``concurrency`` connections, each sending requests back to back (keep-alive).

    Either ``count`` requests in all (every one measured), or for ``warmup`` + ``duration``
    seconds: then only the exchanges that finish inside the last ``duration`` seconds count, and
    CPU is sampled at the edges of that window.
    """
    run = Run(command)
    concurrency = command["concurrency"]
    count = command.get("count")
    warmup = command.get("warmup", 0.0) if count is None else 0.0
    duration = command.get("duration")
    measured = []
    window = {}
    started = monotonic()
    stop_at = started + warmup + duration if count is None else None
    issued = 0

    async def worker():
        nonlocal issued
        conn = None
        while True:
            if count is not None:
                if issued >= count:
                    return
                issued += 1
            elif monotonic() >= stop_at:
                return
            if conn is None or conn.transport is None:
                try:
                    conn = await run.connect()
                except (TimeoutError, OSError) as exc:
                    run.error("connect failed", type(exc).__name__)
                    await asyncio.sleep(0.05)
                    continue
            outcome = await conn.send(run.next_request())
            in_window = count is not None or (window.get("start") is not None and "end" not in window)
            if not in_window:
                continue
            if outcome is None:
                measured.append(exchange(conn))
            else:
                run.error(outcome, conn.detail)

    async def sampler():
        if warmup:
            await asyncio.sleep(warmup)
        window["before"] = procfs.sample(run.groups)
        window["start"] = monotonic()
        if count is None:
            await asyncio.sleep(duration)
            window["end"] = monotonic()
            window["after"] = procfs.sample(run.groups)

    watchdog = asyncio.ensure_future(run.watchdog())
    sample_task = asyncio.ensure_future(sampler())
    await asyncio.sleep(0)
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await sample_task
    finally:
        watchdog.cancel()
        for conn in list(run.conns):
            if conn.transport is not None:
                conn.transport.close()
    if "end" not in window:
        window["end"] = monotonic()
        window["after"] = procfs.sample(run.groups)
    seconds = window["end"] - window["start"]
    return {"ok": len(measured), "errors": run.errors, "error_samples": run.error_samples,
            "seconds": round(seconds, 4), "rps": round(len(measured) / seconds, 2) if seconds else None,
            "events": sum(m["events"] for m in measured), **timings(measured),
            "cpu": cpu_delta(window["before"], window["after"]),
            "rss": {name: value["rss"] for name, value in window["after"].items()}}


async def open_streams(command):
    """``streams`` slow streams opened at once (at most ``opening`` connecting at a time), each
    read to its end: how many stay open without error, the one-way delay of their deltas, and the
    RSS of the process trees before and while they are open."""
    run = Run(command)
    streams = command["streams"]
    opening = asyncio.Semaphore(command.get("opening", 200))
    done = []
    trace = {"peak_open": 0, "samples": []}
    before = procfs.sample(run.groups)
    started = monotonic()
    last_open = [None]
    opened = [0]

    async def stream():
        async with opening:
            try:
                conn = await run.connect()
            except (TimeoutError, OSError) as exc:
                run.error("connect failed", type(exc).__name__)
                return
            future = conn.send(run.next_request())
            await conn.headed  # the next connection starts once this one's headers came (or it failed)
        if conn.opened is not None:
            last_open[0] = conn.opened
            opened[0] += 1
            run.all_open = opened[0] == streams
        outcome = await future
        if conn.transport is not None:
            conn.transport.close()
        if outcome is None:
            done.append(exchange(conn))
        else:
            run.error(outcome, conn.detail)

    async def sampler():
        while True:
            await asyncio.sleep(command.get("sample_every", 0.5))
            current = procfs.sample(run.groups)
            trace["samples"].append({"t": round(monotonic() - started, 2), "open": run.open,
                                     **{name: value["rss"] for name, value in current.items()}})
            if run.open >= trace["peak_open"]:
                trace["peak_open"] = run.open
                trace["at_peak"] = current

    watchdog = asyncio.ensure_future(run.watchdog())
    sample_task = asyncio.ensure_future(sampler())
    try:
        await asyncio.gather(*(stream() for _ in range(streams)))
    finally:
        watchdog.cancel()
        sample_task.cancel()
    after = procfs.sample(run.groups)
    peak = trace.get("at_peak") or after
    rss = {name: {"before": before[name]["rss"], "at_peak": peak[name]["rss"], "after": after[name]["rss"],
                  "max": max([s[name] for s in trace["samples"]] or [after[name]["rss"]])} for name in after}
    return {"streams": streams, "ok": len(done), "errors": run.errors, "error_samples": run.error_samples,
            "peak_open": trace["peak_open"], "seconds": round(monotonic() - started, 3),
            "all_open_after": round(last_open[0] - started, 3) if last_open[0] else None,
            "delay": run.delays.summary() if run.delays else None,
            "delay_all_open": run.delays_all_open.summary() if run.delays_all_open else None, **timings(done),
            "keepalives": sum(d["keepalives"] for d in done), "cpu": cpu_delta(before, after), "rss": rss,
            "samples": trace["samples"]}


class WsConn(asyncio.Protocol):
    """One WebSocket connection: the handshake, then ``send`` a ``response.create`` frame and
    read the answer's text messages up to ``response.completed``, with the same timings as
    ``Conn``. Server pings are answered."""

    DELTA = b'{"type":"response.output_text.delta"'
    COMPLETED = b'{"type":"response.completed"'
    FAILED = (b'{"type":"response.failed"', b'{"type":"error"', b'{"type":"response.incomplete"')

    def __init__(self, run):
        self.run = run
        self.transport = None
        self.opened = run.loop.create_future()  # True once upgraded; an error string otherwise
        self.future = None
        self.buffer = b""
        self.upgraded = False
        self.deadline = monotonic() + run.timeout
        self.detail = None

    def connection_made(self, transport):
        self.transport = transport
        self.run.conns.add(self)

    def connection_lost(self, exc):
        self.transport = None
        self.run.conns.discard(self)
        self.fail("connection lost")

    def fail(self, reason):
        if self.transport is not None:
            self.transport.abort()
        if not self.opened.done():
            self.opened.set_result(reason)
        if self.future is not None and not self.future.done():
            self.finish(reason)

    def send(self, frame):
        self.events = self.keepalives = 0
        self.first_byte = self.first_delta = None
        self.sent_at = monotonic()
        self.deadline = self.sent_at + self.run.timeout
        self.future = self.run.loop.create_future()
        self.transport.write(frame)
        return self.future

    def finish(self, outcome):
        self.end = monotonic()
        self.future.set_result(outcome)

    def data_received(self, data):
        now = monotonic()
        buffer = self.buffer + data if self.buffer else data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.detail = buffer[:300].decode("utf-8", "replace")
                self.fail(f"upgrade refused: {buffer[9:12].decode()}")
                return
            self.upgraded = True
            self.opened.set_result(True)
            buffer = buffer[end + 4:]
        while len(buffer) >= 2:
            size, at = buffer[1] & 0x7f, 2
            if size == 126:
                if len(buffer) < 4:
                    break
                size, at = int.from_bytes(buffer[2:4], "big"), 4
            elif size == 127:
                if len(buffer) < 10:
                    break
                size, at = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < at + size:
                break
            self.message(buffer[0] & 0x0f, buffer[at:at + size], now)
            buffer = buffer[at + size:]
        self.buffer = buffer

    def message(self, opcode, payload, now):
        if opcode == 0x9:
            self.transport.write(payloads.client_frame(payload, opcode=0xa))
            return
        if opcode == 0x8:
            self.fail(f"closed by the server ({int.from_bytes(payload[:2], 'big') if payload else None})")
            return
        if self.future is None or self.future.done():
            self.fail("a message between answers")
            return
        if self.first_byte is None:
            self.first_byte = now
        self.events += 1
        if payload.startswith(self.DELTA):
            if self.first_delta is None:
                self.first_delta = now
        elif payload.startswith(self.COMPLETED):
            self.finish(None)
        elif payload.startswith(self.FAILED):
            self.detail = payload[:300].decode("utf-8", "replace")
            self.finish("answer ended with " + payload[9:payload.index(b'"', 9)].decode())


async def open_websocket(run, upgrade):
    """A connected, upgraded ``WsConn`` (or an error string)."""
    try:
        _, conn = await asyncio.wait_for(
            run.loop.create_connection(lambda: WsConn(run), "127.0.0.1", run.port), run.timeout)
    except (TimeoutError, OSError) as exc:
        return f"connect failed: {type(exc).__name__}"
    conn.transport.write(upgrade)
    try:
        outcome = await asyncio.wait_for(asyncio.shield(conn.opened), run.timeout)
    except TimeoutError:
        outcome = "upgrade timed out"
    if outcome is not True:
        conn.fail(outcome)
        return outcome
    return conn


async def websocket_turns(command):
    """``count`` requests one after the other on one WebSocket: the timings of each answer."""
    run = Run(command)
    request = command["frame"].encode("latin-1")
    conn = await open_websocket(run, command["upgrade"].encode("latin-1"))
    if isinstance(conn, str):
        return {"failed": conn}
    measured = []
    watchdog = asyncio.ensure_future(run.watchdog())
    try:
        for _ in range(command["count"]):
            outcome = await conn.send(request)
            if outcome is None:
                measured.append(exchange(conn))
            else:
                run.error(outcome, conn.detail)
                break
    finally:
        watchdog.cancel()
        if conn.transport is not None:
            conn.transport.close()
    return {"ok": len(measured), "errors": run.errors, "error_samples": run.error_samples, **timings(measured)}


async def idle_websockets(command):
    """``connections`` WebSockets opened (``opening`` at a time) and left idle: the RSS of the
    process trees before, with all of them idle, and after one request on each."""
    run = Run(command)
    opening = asyncio.Semaphore(command.get("opening", 200))
    upgrade = command["upgrade"].encode("latin-1")
    request = command["frame"].encode("latin-1")
    settle = command.get("settle", 2.0)

    async def one():
        async with opening:
            conn = await open_websocket(run, upgrade)
        if isinstance(conn, str):
            run.error(conn)
            return None
        return conn

    async def turn(conn):
        async with opening:
            outcome = await conn.send(request)
        if outcome is not None:
            run.error(outcome, conn.detail)
        return outcome is None

    before = procfs.sample(run.groups)
    watchdog = asyncio.ensure_future(run.watchdog())
    try:
        conns = [conn for conn in await asyncio.gather(*(one() for _ in range(command["connections"]))) if conn]
        await asyncio.sleep(settle)
        idle = procfs.sample(run.groups)
        still_open = sum(1 for conn in conns if conn.transport is not None)
        turned = sum(await asyncio.gather(*(turn(conn) for conn in conns)))
        await asyncio.sleep(settle)
        after = procfs.sample(run.groups)
    finally:
        watchdog.cancel()
        for conn in list(run.conns):
            if conn.transport is not None:
                conn.transport.close()
    return {"connections": command["connections"], "opened": len(conns), "open_when_idle": still_open,
            "turns_ok": turned, "errors": run.errors, "error_samples": run.error_samples,
            "rss": {name: {"before": before[name]["rss"], "idle": idle[name]["rss"], "after_turn": after[name]["rss"]}
                    for name in after}}


COMMANDS = {"closed_loop": closed_loop, "open_streams": open_streams, "websocket_turns": websocket_turns,
            "idle_websockets": idle_websockets}


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for line in sys.stdin:
        command = json.loads(line)
        try:
            result = asyncio.run(COMMANDS[command["op"]](command))
        except Exception as exc:  # reported to the orchestrator, which decides what it means
            result = {"failed": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

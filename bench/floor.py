"""Floors of scenario 2: what the server stack itself costs, with none of the gateway in it.

Served exactly like the gateway (``gunicorn -c etc/gunicorn.conf.py``, gevent workers), so that
CPU per request can be split into what gunicorn, gevent and Flask cost and what the gateway adds:

- ``BENCH_FLOOR=flask``: ``POST /v1/responses`` reads the body and answers the 30-delta stream
  as fixed bytes, one write per event: no upstream, no database, no validation.
- ``BENCH_FLOOR=relay``: the same, but the answer is the fake upstream's, asked with urllib3
  (one pool per worker, kept-alive connections) and relayed chunk by chunk as it arrives: the
  least any relay written in this stack does per request.
"""

import os

import urllib3
from flask import Flask, Response, request

from bench import payloads
from tests.fake_upstream import Script, sse

MODE = os.environ.get("BENCH_FLOOR", "flask")
UPSTREAM = urllib3.util.parse_url(os.environ.get("BENCH_FLOOR_UPSTREAM", "http://127.0.0.1:1"))
HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
EVENTS = [frame.encode() for frame in
          sse(Script(payloads.SHORT).start().message(["word "] * payloads.SHORT_DELTAS).completed().events())]

app = Flask(__name__)
_pool = {}


def upstream_pool():
    pid = os.getpid()  # one pool per worker, made after the fork
    if pid not in _pool:
        _pool.clear()
        _pool[pid] = urllib3.HTTPConnectionPool(UPSTREAM.host, UPSTREAM.port, maxsize=1000, block=False)
    return _pool[pid]


@app.post("/v1/responses")
def responses():
    body = request.get_data()
    if MODE == "flask":
        return Response(iter(EVENTS), headers=HEADERS, direct_passthrough=True)
    upstream = upstream_pool().urlopen("POST", "/codex/responses", body=body, retries=False,
                                       headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
                                       preload_content=False, decode_content=False)

    def relay():
        try:
            yield from upstream.read_chunked(decode_content=False)
        finally:
            upstream.release_conn()

    return Response(relay(), headers=HEADERS, direct_passthrough=True)


@app.get("/healthz")
def healthz():
    return {"status": "ok"}

"""Prometheus metrics: what each request, upstream attempt and conversation turn counts, and
what a scrape of ``/metrics`` answers.

Under gunicorn (``etc/gunicorn.conf.py``) every worker writes its samples to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode) and a scrape, whichever
worker serves it, reads and sums them all. A worker that dies leaves its counters behind (what
it counted happened) and takes its gauges along (the master's ``child_exit`` drops its files:
its streams and WebSockets are gone). Without that variable (the Flask test client, another
WSGI server) each process counts on its own.

Each sample written costs a write into a memory-mapped file, so the request path writes only
what it must, through label children bound once per label set and kept (every label is of a
bounded set: routes, statuses, models of the catalog, accounts, keys).

The worker gauges (``worker_*``: open descriptors, event-loop watchers, requests in progress,
upstream requests in flight) are sampled once a second by a thread of each worker (a greenlet
under gevent), one series per worker (its ``pid``): what a worker holds when idle is its
baseline, and a leak shows as a value that never comes back to it.
"""

import logging
import os
import random
import threading
import time

import gevent
from gevent import monkey
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from ..pool import ACTIVE, COOLING_DOWN, DISABLED, NEEDS_RELOGIN

log = logging.getLogger(__name__)

PREFIX = "responses_proxy_"
# From a cached catalog answer to a long reasoning turn: 10 ms to 5 minutes.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
RESPONSES_ROUTE = "/v1/responses"
# How each transport's requests of /v1/responses are labelled: a WebSocket carries many
# requests, one per ``response.create`` message.
TRANSPORT_METHODS = {"http": "POST", "websocket": "WEBSOCKET"}
# Any other method, and the model of a request for one the catalog does not list, are labelled
# as one: a client must not be able to create series at will.
METHODS = frozenset(("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"))
OTHER = "other"
UNMATCHED = "unmatched"
TOKEN_KINDS = (("input_tokens", "input"), ("cached_tokens", "cached"), ("output_tokens", "output"),
               ("reasoning_tokens", "reasoning"))
ACCOUNT_STATES = (ACTIVE, COOLING_DOWN, DISABLED, NEEDS_RELOGIN)
QUOTA_WINDOWS = ("primary", "secondary")
WORKER_SAMPLE_SECONDS = 1.0
# Added to each pause at random. Other greenlets sleep a second at a time too, and timers armed
# in the same turn of the loop for the same delay fire together from then on: a sampler locked
# in step with one of them would never see that one's timer.
WORKER_SAMPLE_JITTER = 0.1
# Where a process finds its own open descriptors: Linux, then the BSDs and macOS.
DESCRIPTOR_DIRS = ("/proc/self/fd", "/dev/fd")


def multiprocess_dir():
    """The directory the workers share their samples in, or None when this process counts alone."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def attempt_outcome(status):
    """How an upstream answer is counted: ok, 401, 429, 4xx (any other), 5xx, or other (1xx-3xx)."""
    if status == 200:
        return "ok"
    if status in (401, 429):
        return str(status)
    if 400 <= status < 500:
        return "4xx"
    return "5xx" if status >= 500 else "other"


def open_descriptors():
    """How many file descriptors this process has open (None where the system does not say)."""
    for directory in DESCRIPTOR_DIRS:
        try:
            # Less one: the descriptor that lists the directory is in the list.
            return len(os.listdir(directory)) - 1
        except OSError:
            continue
    return None


def event_loop_watchers():
    """The active watchers of this process's gevent loop (libev): a timer or a socket wait for
    each greenlet that sleeps or waits on I/O. None without gevent's monkey-patching (threads
    then do the waiting) and on libuv, whose loop does not count them."""
    if not monkey.is_module_patched("socket"):
        return None
    loop = gevent.get_hub().loop
    if not type(loop).__module__.startswith("gevent.libev"):
        return None
    return loop.activecnt


class Metrics:
    """This process's instruments, and the registry a scrape of /metrics reads."""

    def __init__(self, pool, catalog):
        self._pool = pool
        self._catalog = catalog
        self._guard = None  # what counts the requests in progress (server.ClientGuard)
        self._sampling = None  # the pid whose worker gauges are being sampled
        self._stop_sampling = threading.Event()
        directory = multiprocess_dir()
        # What a scrape reads: every worker's samples summed, and the accounts as they are now.
        self.registry = CollectorRegistry()
        if directory is not None:
            os.makedirs(directory, exist_ok=True)
            MultiProcessCollector(self.registry, directory)
        # In multiprocess mode the instruments write to files and the collector above reads
        # them; registered as well, they would be counted twice.
        owner = None if directory is not None else self.registry
        self.registry.register(AccountsCollector(pool))

        self.requests = Counter(
            PREFIX + "requests_total",
            "Requests answered, by route, method, status and model (a WebSocket's requests have the method "
            "WEBSOCKET; the status of a stream its client left is 499).",
            ("route", "method", "status", "model"), registry=owner)
        self.duration = Histogram(
            PREFIX + "request_duration_seconds",
            "From the request to the last byte of its answer (a stream's end).",
            ("route", "method", "model", "stream"), buckets=LATENCY_BUCKETS, registry=owner)
        self.ttfb = Histogram(
            PREFIX + "time_to_first_byte_seconds",
            "From a /v1/responses request to the first byte of its answer (the whole answer when not streaming).",
            ("method", "model", "stream"), buckets=LATENCY_BUCKETS, registry=owner)
        self.open_streams = Gauge(
            PREFIX + "open_streams", "Answers of /v1/responses being streamed now.", ("method",),
            multiprocess_mode="livesum", registry=owner)
        self.websockets = Gauge(
            PREFIX + "websocket_connections", "Open WebSocket connections on GET /v1/responses.",
            multiprocess_mode="livesum", registry=owner)
        self.attempts = Counter(
            PREFIX + "upstream_attempts_total",
            "Requests sent to an upstream account, by account and outcome (ok, 401, 429, 4xx, 5xx, other, "
            "unreachable).",
            ("account", "outcome"), registry=owner)
        self.failovers = Counter(
            PREFIX + "failovers_total", "Requests moved on to another account, by the error of the one before.",
            ("reason",), registry=owner)
        self.refreshes = Counter(
            PREFIX + "token_refreshes_total", "Token refreshes of accounts, by result (ok, failed, needs_relogin).",
            ("result",), registry=owner)
        self.cooldowns = Counter(
            PREFIX + "cooldowns_total", "Accounts put in cooldown after a usage-limit answer.", ("account",),
            registry=owner)
        self.turns = Counter(
            PREFIX + "conversation_turns_total",
            "Conversation turns ended, by result: committed (stored), aborted (nothing stored), failed "
            "(the answer could not be stored).", ("result",), registry=owner)
        self.conflicts = Counter(
            PREFIX + "conversation_conflicts_total",
            "409 conversation_busy answers, by operation (turn: a response; items: adding items).",
            ("operation",), registry=owner)
        self.tokens = Counter(
            PREFIX + "tokens_total", "Tokens the upstream reported, by API key, model and kind.",
            ("key", "model", "kind"), registry=owner)
        # One series per worker (liveall: labelled with its pid, gone with it).
        self.worker_descriptors = Gauge(
            PREFIX + "worker_open_fds", "File descriptors the worker has open (sockets, files, pipes).",
            multiprocess_mode="liveall", registry=owner)
        self.worker_watchers = Gauge(
            PREFIX + "worker_event_loop_watchers",
            "Active watchers of the worker's event loop (a timer or socket wait per waiting greenlet).",
            multiprocess_mode="liveall", registry=owner)
        self.worker_requests = Gauge(
            PREFIX + "worker_requests_in_progress",
            "Requests inside the worker's app: from the call until the server closed the answer.",
            multiprocess_mode="liveall", registry=owner)
        self.worker_in_flight = Gauge(
            PREFIX + "worker_upstream_requests_in_flight",
            "Upstream requests the worker holds an account's in-flight slot for.",
            multiprocess_mode="liveall", registry=owner)
        self._streams = {transport: self.open_streams.labels(method) for transport, method in TRANSPORT_METHODS.items()}
        self._request_children = {}
        self._exchange_children = {}
        self._token_children = {}
        self._attempt_children = {}

    # -- this worker ------------------------------------------------------------------------------

    def watch_requests(self, guard):
        """Count the requests in progress of ``guard`` (a ``server.ClientGuard``)."""
        self._guard = guard

    def start_sampling(self):
        """Sample the worker gauges once a second from now on (once per process). Gunicorn's
        ``post_worker_init`` calls it; a process that only runs commands doesn't."""
        if self._sampling == os.getpid():
            return
        self._sampling = os.getpid()
        self._stop_sampling = threading.Event()
        threading.Thread(target=self._sample, args=(self._stop_sampling,), name="worker-gauges", daemon=True).start()

    def stop_sampling(self):
        self._stop_sampling.set()
        self._sampling = None

    def _sample(self, stop):
        while not stop.is_set():
            try:
                self.sample_worker()
            except Exception:
                log.warning("could not sample the worker gauges", exc_info=True)
            stop.wait(WORKER_SAMPLE_SECONDS + random.uniform(0, WORKER_SAMPLE_JITTER))

    def sample_worker(self):
        """Set the worker gauges to what this process holds now."""
        descriptors = open_descriptors()
        if descriptors is not None:
            self.worker_descriptors.set(descriptors)
        watchers = event_loop_watchers()
        if watchers is not None:
            self.worker_watchers.set(watchers)
        if self._guard is not None:
            self.worker_requests.set(self._guard.in_progress)
        self.worker_in_flight.set(self._pool.in_flight())

    # -- requests --------------------------------------------------------------------------------

    def request(self, route, method, status, seconds):
        """An HTTP request answered by any route but /v1/responses (its exchange counts it)."""
        if method not in METHODS:
            method = OTHER
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(route, method, status, ""), self.duration.labels(route, method, "", "false"))
        children[0].inc()
        children[1].observe(seconds)

    def exchange(self, transport, row):
        """A finished request of /v1/responses: its usage row (status, model, times, tokens)."""
        model = row["model"]
        if model is not None and not self._catalog.listed(model):
            model = OTHER
        key = (transport, row["status"], model, row["stream"])
        children = self._exchange_children.get(key)
        if children is None:
            method, label, stream = TRANSPORT_METHODS[transport], model or "", "true" if row["stream"] else "false"
            children = self._exchange_children[key] = (
                self.requests.labels(RESPONSES_ROUTE, method, row["status"], label),
                self.duration.labels(RESPONSES_ROUTE, method, label, stream),
                self.ttfb.labels(method, label, stream))
        requests, duration, ttfb = children
        requests.inc()
        duration.observe(row["duration_ms"] / 1000)
        if row["ttfb_ms"] is not None:
            ttfb.observe(row["ttfb_ms"] / 1000)
        if "input_tokens" in row and row["key_id"] is not None:
            self._count_tokens(row, model or "")

    def _count_tokens(self, row, model):
        key = (row["key_id"], model)
        children = self._token_children.get(key)
        if children is None:
            children = self._token_children[key] = tuple(
                (column, self.tokens.labels(row["key_id"], model, kind)) for column, kind in TOKEN_KINDS)
        for column, child in children:
            value = row.get(column)
            if value:
                child.inc(value)

    def stream_opened(self, transport):
        self._streams[transport].inc()

    def stream_closed(self, transport):
        self._streams[transport].dec()

    def websocket_opened(self):
        self.websockets.inc()

    def websocket_closed(self):
        self.websockets.dec()

    # -- the pool ----------------------------------------------------------------------------------

    def upstream_answered(self, account_id, status):
        self._attempt(account_id, attempt_outcome(status))

    def upstream_unreachable(self, account_id):
        self._attempt(account_id, "unreachable")

    def _attempt(self, account_id, outcome):
        key = (account_id, outcome)
        child = self._attempt_children.get(key)
        if child is None:
            child = self._attempt_children[key] = self.attempts.labels(account_id, outcome)
        child.inc()

    def failover(self, reason):
        self.failovers.labels(reason).inc()

    def refresh(self, result):
        self.refreshes.labels(result).inc()

    def cooldown(self, account_id):
        self.cooldowns.labels(account_id).inc()

    # -- conversations -----------------------------------------------------------------------------

    def turn(self, result):
        self.turns.labels(result).inc()

    def conflict(self, operation):
        self.conflicts.labels(operation).inc()


class AccountsCollector:
    """The accounts' states and plan windows, read from the pool when a scrape asks: nothing on
    the request path, and the same answer whichever worker is scraped."""

    def __init__(self, pool):
        self._pool = pool

    def collect(self):
        state = GaugeMetricFamily(
            PREFIX + "account_state",
            "1 for the state each upstream account is in (active: it can serve), 0 for the others.",
            labels=("account", "email", "state"))
        quota = GaugeMetricFamily(
            PREFIX + "account_quota_used_percent", "How much of each plan window an account has used.",
            labels=("account", "email", "window"))
        try:
            accounts = self._pool.snapshot()
        except Exception:  # the other metrics still answer while the database does not
            log.warning("account metrics unavailable", exc_info=True)
            accounts = ()
        now = time.time()
        for account in accounts:
            email = account.row["email"] or ""
            current = account.state(now)
            for name in ACCOUNT_STATES:
                state.add_metric((account.id, email, name), 1.0 if name == current else 0.0)
            for window in QUOTA_WINDOWS:
                used = ((account.quota or {}).get(window) or {}).get("used_percent")
                if isinstance(used, (int, float)):
                    quota.add_metric((account.id, email, window), float(used))
        yield state
        yield quota

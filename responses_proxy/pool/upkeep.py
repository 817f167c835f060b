"""Each worker's background upkeep: what the other workers must know of it, and the plan windows.

One thread (a greenlet under gevent) reports this worker's requests in flight, waking as soon
as they change so that other workers see a new stream within milliseconds; a burst of changes
is one write. It also writes affinity timestamps and deletes what has expired: affinity rows,
and the in-flight counts of workers that died without clearing them. A second one polls the
accounts' plan windows, so a slow upstream never holds up the load reports.
"""

import logging
import os
import secrets
import socket
import threading
import time

from ..errors import log_failure
from ..store import accounts as account_store
from ..store import pool_state
from ..upstream.client import UpstreamUnavailable

log = logging.getLogger(__name__)

# Readers ignore, and the upkeep deletes, counts older than this; a live worker re-sends its
# non-zero counts well within it.
LOAD_STALE_SECONDS = 10.0
LOAD_HEARTBEAT_SECONDS = LOAD_STALE_SECONDS / 3
LOAD_WRITE_GAP_SECONDS = 0.05  # at most one load write per gap: a burst of requests is one write
# The loop's round: affinity timestamps are written, heartbeats checked and stale counts deleted
# this often.
UPKEEP_ROUND_SECONDS = 1.0
AFFINITY_PRUNE_SECONDS = 600.0
QUOTA_FIRST_POLL_SECONDS = 1.0
QUOTA_CHECK_SECONDS = 60.0  # how often a worker looks for accounts due a poll (one worker polls each)


class Worker:
    """This process's name in the load table and in refresh-lock owners; a forked child gets
    its own."""

    def __init__(self):
        self._pid = None
        self._id = None

    @property
    def id(self):
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._id = f"{socket.gethostname()}:{self._pid}:{secrets.token_hex(3)}"
        return self._id


class Upkeep:
    def __init__(self, engine, worker, selector, snapshot, client, affinity_ttl, quota_interval):
        self._engine = engine
        self._worker = worker
        self._selector = selector
        self._snapshot = snapshot
        self._client = client
        self._affinity_ttl = affinity_ttl
        self._quota_interval = quota_interval
        self._pid = None
        self._stop = threading.Event()
        self._reported = {}
        self._reported_at = 0.0  # time.monotonic() of the last load write

    def start(self):
        """Start this process's upkeep (once per process)."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._stop = threading.Event()
        threading.Thread(target=self._keep_up, name="pool-upkeep", daemon=True).start()
        if self._quota_interval:
            threading.Thread(target=self._poll_quotas_forever, name="pool-quotas", daemon=True).start()

    def close(self):
        """Stop, and take this worker's counts out of the table at once."""
        self._stop.set()
        self._selector.load_changed.set()
        pool_state.clear_load(self._engine, self._worker.id)

    def _keep_up(self):
        stop, changed = self._stop, self._selector.load_changed
        next_round = next_affinity_prune = 0.0
        while not stop.is_set():
            if changed.wait(max(0.0, next_round - time.monotonic())):
                # At most one write per gap: a lone change goes out at once, a burst as one write.
                stop.wait(max(0.0, self._reported_at + LOAD_WRITE_GAP_SECONDS - time.monotonic()))
            if stop.is_set():
                break
            changed.clear()  # before the counts are read: a later change wakes the next round
            try:
                self.report_load()
                now = time.monotonic()
                if now >= next_round:
                    next_round = now + UPKEEP_ROUND_SECONDS
                    self.flush_affinity()
                    # Every round: a dead worker's counts leave the table a round after they
                    # went stale, not a whole stale period later.
                    pool_state.prune_load(self._engine, time.time() - LOAD_STALE_SECONDS)
                if now >= next_affinity_prune:
                    next_affinity_prune = now + AFFINITY_PRUNE_SECONDS
                    pool_state.affinity_prune(self._engine, time.time() - self._affinity_ttl)
            except Exception as exc:
                log_failure(log, "pool upkeep failed", exc)
                stop.wait(UPKEEP_ROUND_SECONDS)

    def report_load(self):
        """Write this worker's in-flight counts when they changed; re-send non-zero ones every
        few seconds, so readers can tell a live worker from a dead one."""
        counts = dict(self._selector.in_flight)
        now = time.monotonic()
        if counts != self._reported or (counts and now - self._reported_at > LOAD_HEARTBEAT_SECONDS):
            pool_state.report_load(self._engine, self._worker.id, counts)
            self._reported, self._reported_at = counts, now

    def flush_affinity(self):
        pending = self._selector.take_affinity_touches()
        if pending:
            try:
                pool_state.affinity_put(self._engine, [
                    {"cache_key": key, "account_id": account_id, "updated_at": at}
                    for key, (account_id, at) in pending.items()])
            except BaseException:
                self._selector.give_back_affinity_touches(pending)
                raise

    def _poll_quotas_forever(self):
        pause = QUOTA_FIRST_POLL_SECONDS
        while not self._stop.wait(pause):
            try:
                self.poll_quotas()
            except Exception as exc:
                log_failure(log, "quota poll failed", exc)
            pause = min(self._quota_interval, QUOTA_CHECK_SECONDS)

    def poll_quotas(self):
        """Fetch the plan windows of usable accounts not polled for an interval (one worker each)."""
        now = time.time()
        for account in self._snapshot.current():
            if not account.usable(now) or not account_store.claim_quota_check(self._engine, account.id,
                                                                               self._quota_interval):
                continue
            try:
                document = self._client.get_quota(account.credentials)
            except UpstreamUnavailable as exc:
                log.info("quota poll failed", extra={"fields": {"account": account.id, "reason": str(exc)}})
                continue
            quota = parse_quota(document)
            if quota:
                account_store.save_quota(self._engine, account.id, quota)


def parse_quota(document, now=None):
    """{"primary": {"used_percent", "resets_at"}, "secondary": {...}} from a wham/usage answer."""
    now = time.time() if now is None else now
    limits = document.get("rate_limit") if isinstance(document, dict) else None
    if not isinstance(limits, dict):
        return None
    quota = {}
    for name in ("primary", "secondary"):
        window = limits.get(f"{name}_window")
        if not isinstance(window, dict):
            continue
        resets_at = window.get("reset_at") or window.get("resets_at")
        if not isinstance(resets_at, (int, float)):
            after = window.get("reset_after_seconds") or window.get("resets_in_seconds")
            resets_at = now + after if isinstance(after, (int, float)) else None
        used = window.get("used_percent")
        quota[name] = {"used_percent": float(used) if isinstance(used, (int, float)) else None,
                       "resets_at": resets_at, "window_seconds": window.get("limit_window_seconds")}
    return quota or None

"""Batches usage rows so a request costs an append, not a transaction."""

import atexit
import logging
import threading
import time

from ..errors import describe_error, unavailable
from . import usage

log = logging.getLogger(__name__)

# Rows kept while the database cannot take them (an outage, a restart): about 1 KB each, so a
# worker holds at most ~10 MB of them; beyond that the oldest are dropped, and counted in the log.
PENDING_LIMIT = 10_000
# How often rows kept for an unavailable database are tried again when rows are written at once.
RETRY_SECONDS = 1.0


class UsageRecorder:
    """Collects usage rows and writes them every ``flush_seconds`` (0: at once).

    Rows the database cannot take because it is unavailable are kept, in order, and written
    when it is back (at most ``PENDING_LIMIT``). Under gevent the flusher is a greenlet
    (``threading`` is patched); rows still pending when the process exits are written by the
    atexit hook and by gunicorn's ``worker_exit``.
    """

    def __init__(self, engine, flush_seconds):
        self._engine = engine
        self._flush_seconds = flush_seconds
        self._rows = []
        self._dropped = 0
        self._keeping = False  # rows are kept for an unavailable database (logged once, not per try)
        self._lock = threading.Lock()
        self._flusher = None
        atexit.register(self.flush)

    def record(self, row):
        if not self._flush_seconds and not self._rows:
            self._write([row])
            return
        with self._lock:
            self._rows.append(row)  # after the ones kept for the database: rows go in order
            self._start_flusher()

    def flush(self):
        with self._lock:
            rows, self._rows = self._rows, []
        self._write(rows)

    def _start_flusher(self):
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._run, name="usage-flusher", daemon=True)
            self._flusher.start()

    def _run(self):
        # Runs for the life of the process: what is left at exit is written by ``flush``.
        while True:
            time.sleep(self._flush_seconds or RETRY_SECONDS)
            self.flush()

    def _write(self, rows):
        if not rows:
            return
        try:
            usage.insert_many(self._engine, rows)
        except Exception as exc:
            if not unavailable(exc):
                # Usage is bookkeeping: rows the database refuses must not fail the requests they describe.
                log.exception("could not write %d usage rows", len(rows))
                return
            self._keep(rows, describe_error(exc))
            return
        if self._keeping:
            self._keeping = False
            log.info("the database is back: the usage rows kept meanwhile are written",
                     extra={"fields": {"rows": len(rows), "dropped": self._dropped}})

    def _keep(self, rows, reason):
        with self._lock:
            self._rows[:0] = rows
            over = len(self._rows) - PENDING_LIMIT
            if over > 0:
                del self._rows[:over]
                self._dropped += over
            self._start_flusher()
        if not self._keeping or over > 0:
            self._keeping = True
            log.warning("the database is unavailable: usage rows are kept until it is back",
                        extra={"fields": {"limit": PENDING_LIMIT, "dropped": self._dropped, "reason": reason}})

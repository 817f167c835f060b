"""Batches usage rows so a request costs an append, not a transaction."""

import atexit
import logging
import threading
import time

from . import usage

log = logging.getLogger(__name__)


class UsageRecorder:
    """Collects usage rows and writes them every ``flush_seconds`` (0: at once).

    Under gevent the flusher is a greenlet (``threading`` is patched); rows still pending when
    the process exits are written by the atexit hook and by gunicorn's ``worker_exit``.
    """

    def __init__(self, engine, flush_seconds):
        self._engine = engine
        self._flush_seconds = flush_seconds
        self._rows = []
        self._lock = threading.Lock()
        self._flusher = None
        atexit.register(self.flush)

    def record(self, row):
        if not self._flush_seconds:
            self._write([row])
            return
        with self._lock:
            self._rows.append(row)
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._run, name="usage-flusher", daemon=True)
                self._flusher.start()

    def flush(self):
        with self._lock:
            rows, self._rows = self._rows, []
        self._write(rows)

    def _run(self):
        # Runs for the life of the process: what is left at exit is written by ``flush``.
        while True:
            time.sleep(self._flush_seconds)
            self.flush()

    def _write(self, rows):
        if not rows:
            return
        try:
            usage.insert_many(self._engine, rows)
        except Exception:
            # Usage is bookkeeping: a database hiccup must not fail the requests it describes.
            log.exception("could not write %d usage rows", len(rows))

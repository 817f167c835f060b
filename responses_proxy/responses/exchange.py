"""One exchange of ``POST /v1/responses`` (or one request on its WebSocket), from the request to
the last byte, and its owner.

An exchange holds what must be settled however it ends: the usage row and the request's log
line, the account's in-flight slot, the conversation turn, and the key's count of requests in
flight. ``finish`` settles all four, once; it is safe to call
again, and it runs on every path: a JSON answer, the end of a stream, an error before or after
the first byte, a client that went away, an exception nobody expected.
"""

import logging
import time

from ..errors import api_error
from ..relay import CLIENT_CLOSED, ClientGone

log = logging.getLogger("responses_proxy.request")


class Exchange:
    def __init__(self, recorder, request_id, key_id, transport="http", *, metrics):
        self._recorder = recorder
        self.metrics = metrics
        self.transport = transport  # "http" or "websocket", for the request's log line
        self.started = time.perf_counter()
        self.row = {"created_at": time.time(), "request_id": request_id, "key_id": key_id, "model": None,
                    "stream": False, "account_id": None, "status": 200, "error_code": None, "ttfb_ms": None}
        self.decisions = []
        self.turn = None
        self._slot = None
        self._admission = None
        self.finished = False

    def describe(self, body):
        self.row["model"] = body.get("model")
        self.row["stream"] = bool(body.get("stream"))

    def decide(self, event, **fields):
        """Note a decision (account chosen, failover, refresh...) for the request's log line."""
        self.decisions.append({"event": event, **fields})

    # -- the key's limits -----------------------------------------------------------------------

    def admit(self, admission):
        """Hold what the key's limits let in (None for a key without limits) until the end."""
        self._admission = admission

    @property
    def headers(self):
        """Headers every answer to this exchange carries, error or not: the key's rate limits."""
        return self._admission.headers if self._admission is not None else {}

    # -- the pool's in-flight slot -----------------------------------------------------------

    def hold(self, slot):
        """Hold an account's in-flight slot (an object with ``release()``) until the end."""
        self.release_slot()
        self._slot = slot

    def release_slot(self):
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()

    # -- the conversation turn ----------------------------------------------------------------

    def settle_turn(self, completed, output_items):
        """Keep what a finished answer added to the conversation; anything else adds nothing.

        Raises when a finished answer could not be stored (the turn is then released and the
        conversation left as it was): the caller tells the client before the answer ends.
        """
        turn, self.turn = self.turn, None
        if turn is None:
            return
        if completed:
            turn.commit(output_items, self.row["account_id"])
        else:
            turn.abort()

    # -- the end -----------------------------------------------------------------------------

    def finish(self, status, error_code=None, ttfb=None, usage=None):
        """Settle everything, once: the slot, the turn (aborted if still open), the key's
        request in flight, the usage row (its tokens count towards the key's day)."""
        if self.finished:
            return
        self.finished = True
        try:
            self.release_slot()
            turn, self.turn = self.turn, None
            if turn is not None:
                turn.abort()
        except Exception:
            log.exception("could not release what the request held")
        finally:
            if self._admission is not None:
                self._admission.release()
            self._record(status, error_code, ttfb, usage)

    def fail(self, exc):
        """``finish`` for an exception: its status and code (499 for a client that left)."""
        if isinstance(exc, (ClientGone, GeneratorExit)):
            self.finish(CLIENT_CLOSED, "client_closed")
            return
        error = api_error(exc) if isinstance(exc, Exception) else None
        if error is not None:
            self.finish(error.status, error.code)
            return
        if isinstance(exc, Exception):
            log.error("request failed", exc_info=exc, extra={"fields": {"request_id": self.row["request_id"]}})
        self.finish(500, "server_error")

    def _record(self, status, error_code, ttfb, usage):
        row = self.row
        row["status"] = status
        row["error_code"] = error_code
        if ttfb is not None:
            row["ttfb_ms"] = round(ttfb * 1000, 3)
        row["duration_ms"] = round((time.perf_counter() - self.started) * 1000, 3)
        if usage:
            row.update(usage)
        self._recorder.record(row)
        self.metrics.exchange(self.transport, row)
        if log.isEnabledFor(logging.INFO):
            log.info("response", extra={"fields": {**row, "transport": self.transport, "decisions": self.decisions}})

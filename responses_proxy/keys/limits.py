"""A key's limits on ``POST /v1/responses``: requests per minute, requests in flight, tokens per
day (UTC). Checked before a request is forwarded, counted in the database so that they hold
across workers and hosts (``store/limits.py`` has the arithmetic).

A key without limits costs nothing here. A limited key costs one statement when its request
starts and, with a concurrency limit, one when it ends (other workers learn of a free slot no
other way). Tokens are counted with the usage rows, off the request's path.
"""

import collections
import logging
import math
import threading
import time

from ..errors import RateLimitExceeded
from ..store import limits as store

log = logging.getLogger(__name__)

# A refused request reads the counters to say why; if meanwhile they let it in (a request
# ended), it tries again, this many times in all.
ATTEMPTS = 3


def duration(seconds):
    """OpenAI's form of the reset headers (Go's durations): ``20ms``, ``1s``, ``6m0s``, ``1h2m3.5s``."""
    milliseconds = round(seconds * 1000)
    if milliseconds <= 0:
        return "0s"
    if milliseconds < 1000:
        return f"{milliseconds}ms"
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    text = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours or minutes:
        text = f"{minutes}m" + text
    if hours:
        text = f"{hours}h" + text
    return text


def retry_after(seconds):
    return str(max(1, math.ceil(seconds)))


def until_midnight(now):
    return (store.day_of(now) + 1) * store.DAY - now


def has_limits(key):
    return key["rpm"] is not None or key["concurrency"] is not None or key["daily_tokens"] is not None


def rate_headers(key, counts, now):
    """OpenAI's ``x-ratelimit-*`` headers for the key's requests-per-minute and daily-token limits."""
    headers = {}
    rpm = key["rpm"]
    if rpm is not None:
        full_at = max(counts.bucket_full_at or now, now)
        remaining = int((now + store.MINUTE - full_at) / (store.MINUTE / rpm) + 1e-6)
        headers["x-ratelimit-limit-requests"] = str(rpm)
        headers["x-ratelimit-remaining-requests"] = str(min(rpm, max(0, remaining)))
        headers["x-ratelimit-reset-requests"] = duration(full_at - now)
    budget = key["daily_tokens"]
    if budget is not None:
        headers["x-ratelimit-limit-tokens"] = str(budget)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, budget - counts.tokens))
        headers["x-ratelimit-reset-tokens"] = duration(until_midnight(now))
    return headers


def refusal(key, counts, now):
    """The 429 for a key whose ``counts`` leave no room, or None when they do. With several
    limits reached, the one that lasts longest names the error (the client must wait for it)."""
    reached = []
    budget = key["daily_tokens"]
    if budget is not None and counts.tokens >= budget:
        wait = until_midnight(now)
        reached.append((wait, f"Rate limit reached for this API key on tokens per day (TPD): Limit {budget}, "
                              f"Used {counts.tokens}. Please try again in {duration(wait)}."))
    rpm = key["rpm"]
    if rpm is not None:
        start = max(counts.bucket_full_at or now, now)
        wait = start + store.MINUTE / rpm - store.MINUTE - now
        if wait > store.SLACK:
            reached.append((wait, f"Rate limit reached for this API key on requests per min (RPM): Limit {rpm}, "
                                  f"Used {rpm}, Requested 1. Please try again in {duration(wait)}."))
    concurrency = key["concurrency"]
    if concurrency is not None and counts.in_flight >= concurrency:
        reached.append((1.0, f"Rate limit reached for this API key on concurrent requests: Limit {concurrency}, "
                             f"In flight {counts.in_flight}. Please try again when one of them has finished."))
    if not reached:
        return None
    wait, message = max(reached)
    return RateLimitExceeded(message, headers={**rate_headers(key, counts, now), "Retry-After": retry_after(wait)})


class Admission:
    """One request let in by its key's limits; ``release`` (once) when it ends."""

    __slots__ = ("key_id", "period", "headers", "released", "renewing", "_limits")

    def __init__(self, limits, key_id, period, headers):
        self._limits = limits
        self.key_id = key_id
        self.period = period  # the lease period it counts in flight in; None: not counted
        self.headers = headers
        self.released = False
        self.renewing = False

    def release(self):
        """Out of flight (once; never raises)."""
        self._limits.release(self)


class KeyLimits:
    def __init__(self, engine, lease_seconds):
        self._engine = engine
        self._lease = lease_seconds
        self._held = set()  # admissions this process counts in flight
        self._lock = threading.Lock()  # guards the admissions' state, never held across a statement
        self._renewer = None

    def admit(self, key):
        """Let a request of ``key`` in: its ``Admission`` (None for a key without limits), or
        ``RateLimitExceeded`` and nothing counted."""
        if not has_limits(key):
            return None
        rpm, concurrency, budget = key["rpm"], key["concurrency"], key["daily_tokens"]
        for _ in range(ATTEMPTS):
            now = time.time()
            row = store.admit(self._engine, key["id"], now, self._lease, rpm, concurrency, budget)
            if row is not None:
                admission = Admission(self, key["id"], row.lease_period if concurrency is not None else None,
                                      rate_headers(key, store.counts(row, now, self._lease), now))
                if admission.period is not None:
                    self._hold(admission)
                return admission
            now = time.time()
            refused = refusal(key, store.counts(store.read(self._engine, key["id"]), now, self._lease), now)
            if refused is not None:
                raise refused
        raise RateLimitExceeded("Rate limit reached for this API key. Please try again in 1s.",
                                headers={"Retry-After": "1"})

    def release(self, admission):
        with self._lock:
            if admission.released:
                return
            admission.released = True
            self._held.discard(admission)
            if admission.renewing:  # the renewal under way releases it when its statement is done
                return
        self._write_release(admission)

    def _write_release(self, admission):
        if admission.period is None:
            return
        try:
            store.release(self._engine, admission.key_id, admission.period, time.time(), self._lease)
        except Exception:
            # The in-flight count then expires with its lease; the request itself is over.
            log.exception("could not release a request from its key's limits")

    # -- renewing the in-flight leases ------------------------------------------------------------

    def _hold(self, admission):
        with self._lock:
            self._held.add(admission)
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew_loop, name="key-leases", daemon=True)
                self._renewer.start()

    def _renew_loop(self):
        """While this process has requests in flight for limited keys, move them into each new
        lease period (one statement per key and period); a crashed process stops doing so, and
        its requests drop out of the counts."""
        while True:
            time.sleep(self._lease / 4)
            with self._lock:
                if not self._held:
                    self._renewer = None
                    return
                period = store.period_of(time.time(), self._lease)
                due = collections.defaultdict(list)
                for admission in self._held:
                    if admission.period < period:
                        admission.renewing = True
                        due[admission.key_id, admission.period].append(admission)
            for (key_id, registered), admissions in due.items():
                self._renew(key_id, registered, admissions)

    def _renew(self, key_id, registered, admissions):
        try:
            period = store.renew(self._engine, key_id, registered, len(admissions), time.time(), self._lease)
        except Exception:
            log.exception("could not renew the in-flight requests of a key")
            period = registered  # tried again at the next turn
        ended = []
        with self._lock:
            for admission in admissions:
                admission.renewing = False
                admission.period = period
                if period is None:  # the key's counters were reset: these no longer count
                    self._held.discard(admission)
                if admission.released:
                    ended.append(admission)
        for admission in ended:
            self._write_release(admission)

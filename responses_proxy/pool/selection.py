"""Which usable account serves a request: the one its cache key lives on, else the least busy."""

import collections
import logging
import random
import threading

from sqlalchemy.exc import SQLAlchemyError

from ..errors import describe_error
from ..store import pool_state
from ..store import usage as usage_store
from .upkeep import LOAD_STALE_SECONDS

log = logging.getLogger(__name__)

# How old the other workers' in-flight counts may be when a request is placed: re-read this
# often (one small query), so a stream opened on another worker is seen at once.
REMOTE_LOAD_SECONDS = 0.1
RECENT_USAGE_SECONDS = 30.0
AFFINITY_TRUST_SECONDS = 5.0
AFFINITY_LOCAL_MAX = 50_000


def used_percent(quota):
    """The fuller of an account's plan windows, in percent (0 when unknown)."""
    windows = quota.values() if isinstance(quota, dict) else ()
    return max((window.get("used_percent") or 0 for window in windows if isinstance(window, dict)), default=0)


class Selector:
    """This worker's requests in flight, what it knows of the others', and where cache keys live."""

    def __init__(self, engine, worker, affinity_ttl):
        self._engine = engine
        self._worker = worker
        self._affinity_ttl = affinity_ttl
        self.in_flight = collections.Counter()
        # Set on every change of ``in_flight``: the upkeep wakes and reports it.
        self.load_changed = threading.Event()
        self._dispatched = collections.Counter()  # requests sent since the recent-usage snapshot
        self._remote_load = {}
        self._remote_load_at = 0.0
        self._recent = {}
        self._recent_at = 0.0
        self._affinity = collections.OrderedDict()  # cache key -> (account id, checked at, boundary)
        self._affinity_touch = {}  # cache key -> (account id, time): timestamp refreshes to write

    # -- requests in flight ------------------------------------------------------------------

    def begin(self, account_id):
        self.in_flight[account_id] += 1
        self._dispatched[account_id] += 1
        self.load_changed.set()

    def end(self, account_id):
        self.in_flight[account_id] -= 1
        if self.in_flight[account_id] <= 0:
            del self.in_flight[account_id]
        self.load_changed.set()

    # -- choosing ----------------------------------------------------------------------------

    def pick(self, usable, cache_key, follow, now, prefer=None):
        """(account, decision) among ``usable`` (not empty); see ``AccountPool.choose``."""
        sticky = None
        if cache_key and follow:
            usable_ids = {account.id for account in usable}
            sticky = self._affinity_lookup(cache_key, now)
            if sticky not in usable_ids:
                # Another worker may already have moved this key: follow it there too.
                sticky = self._affinity_lookup(cache_key, now, fresh=True) or sticky
        chosen = None
        if prefer is not None:
            chosen = next((account for account in usable if account.id == prefer), None)
        if chosen is None and sticky is not None:
            chosen = next((account for account in usable if account.id == sticky), None)
        if chosen is None:
            remote = self._remote_loads(now)
            recent = self._recent_usage(now)
            chosen = min(usable, key=lambda account: self._busyness(account, remote, recent))
        decision = {"event": "account", "account": chosen.id}
        if chosen.id == prefer:
            decision["turn_state"] = "issuer"
        if cache_key:
            if chosen.id == sticky:
                decision["affinity"] = "hit"
            elif sticky:
                decision["affinity"] = "moved"
                decision["from"] = sticky  # what the thread's items were issued by
            else:
                decision["affinity"] = "new"
            self._affinity_remember(cache_key, chosen.id, now, changed=follow and chosen.id != sticky)
        return chosen, decision

    def _busyness(self, account, remote, recent):
        """Sort key: in-flight requests (all workers) weighed with plan use, then recent
        requests, then chance. Every 10% of the fuller plan window counts as one request in
        flight: an account at 95% serves only when the others are nine requests busier, and a
        one-request difference never outweighs headroom."""
        account_id = account.id
        used = int(used_percent(account.quota) // 10)
        return (self.in_flight[account_id] + remote.get(account_id, 0) + used, used,
                recent.get(account_id, (0, 0))[0] + self._dispatched[account_id], random.random())

    def _remote_loads(self, now):
        if now - self._remote_load_at > REMOTE_LOAD_SECONDS:
            self._remote_load_at = now
            self._remote_load = pool_state.load_totals(self._engine, self._worker.id, now - LOAD_STALE_SECONDS)
        return self._remote_load

    def _recent_usage(self, now):
        if now - self._recent_at > RECENT_USAGE_SECONDS:
            self._recent_at = now
            self._recent = usage_store.per_account(self._engine, now - 3600)
            self._dispatched.clear()
        return self._recent

    # -- cache affinity ----------------------------------------------------------------------

    def _affinity_lookup(self, cache_key, now, fresh=False):
        cached = self._affinity.get(cache_key)
        if cached and not fresh and now - cached[1] < AFFINITY_TRUST_SECONDS:
            return cached[0]
        row = pool_state.affinity_get(self._engine, cache_key, now - self._affinity_ttl)
        if row is None:
            return None
        self._affinity[cache_key] = (row[0], now, row[1])
        return row[0]

    def _affinity_remember(self, cache_key, account_id, now, changed):
        previous = self._affinity.pop(cache_key, None)
        # A thread that moves starts without a boundary (``set_boundary`` gives it its own).
        boundary = previous[2] if previous and previous[0] == account_id and not changed else None
        self._affinity[cache_key] = (account_id, now, boundary)
        if len(self._affinity) > AFFINITY_LOCAL_MAX:
            self._affinity.popitem(last=False)
        if changed:
            # Written at once: another worker seeing this key next must find the same account.
            # Affinity is an optimization: when the database cannot take the write (a full disk,
            # a stall), the request goes on and the upkeep writes it later.
            try:
                pool_state.affinity_put(self._engine, [{"cache_key": cache_key, "account_id": account_id,
                                                        "updated_at": now, "boundary": None}])
            except SQLAlchemyError as exc:
                log.warning("affinity not written; the upkeep will retry", extra={"fields": {
                    "error": describe_error(exc)}})
                self._affinity_touch[cache_key] = (account_id, now)
        elif previous is None or previous[0] != account_id or now - previous[1] > AFFINITY_TRUST_SECONDS:
            self._affinity_touch[cache_key] = (account_id, now)

    def boundary(self, cache_key):
        """The boundary of a key's thread as its last lookup found it (see ``tables.affinity``)."""
        cached = self._affinity.get(cache_key)
        return cached[2] if cached else None

    def set_boundary(self, cache_key, account_id, boundary, now):
        self._affinity[cache_key] = (account_id, now, boundary)
        pool_state.affinity_put(self._engine, [{"cache_key": cache_key, "account_id": account_id,
                                                "updated_at": now, "boundary": boundary}])

    def owner(self, key, now):
        """The account a turn state was issued by (``key``: see ``affinity.turn_state_key``), or None."""
        cached = self._affinity.get(key)
        # An issuer never changes: once known here, it needs no query.
        account_id = cached[0] if cached else self._affinity_lookup(key, now)
        if account_id:
            self._affinity_remember(key, account_id, now, changed=False)  # in use: kept past the TTL
        return account_id

    def remember_owner(self, key, account_id, now):
        cached = self._affinity.get(key)
        # Written at once: the turn's next request may reach another worker within milliseconds.
        self._affinity_remember(key, account_id, now, changed=cached is None or cached[0] != account_id)

    def take_affinity_touches(self):
        """The affinity timestamps to write, handed over once (the upkeep writes them in batches)."""
        pending, self._affinity_touch = self._affinity_touch, {}
        return pending

    def give_back_affinity_touches(self, pending):
        """Writes that failed, kept for the next round (unless a newer one came meanwhile)."""
        for key, value in pending.items():
            self._affinity_touch.setdefault(key, value)

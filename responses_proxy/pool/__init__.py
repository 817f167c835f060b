"""The pool of upstream accounts: which one serves a request, and what happens when one can't.

Everything that must hold across workers and hosts lives in the database: account status,
cooldowns, the refresh lock, cache affinity, quota windows and each worker's in-flight counts.
The parts: ``accounts`` (this worker's snapshot of the rows, and the rule of which can serve),
``selection`` (least busy, cache affinity), ``refresh`` (tokens) and ``upkeep`` (the
background work of each worker). ``AccountPool`` puts them together for the request path;
``admin`` is the operator's side (the ``accounts`` commands).
"""

import time

from ..errors import NoAccounts, UsageLimitReached
from ..store import accounts as account_store
from .accounts import ACTIVE, COOLING_DOWN, DISABLED, NEEDS_RELOGIN, Account, Snapshot, account_state, is_usable
from .refresh import Refresher
from .selection import Selector
from .upkeep import Upkeep, Worker

__all__ = ["ACTIVE", "COOLING_DOWN", "DISABLED", "NEEDS_RELOGIN", "Account", "AccountPool", "account_state",
           "is_usable"]


def init_app(app):
    from .cli import accounts_cli

    app.cli.add_command(accounts_cli)


class Slot:
    """One request in flight on one account; ``release`` ends it, once."""

    __slots__ = ("_pool", "_account_id")

    def __init__(self, pool, account_id):
        self._pool = pool
        self._account_id = account_id

    def release(self):
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.end(self._account_id)


class AccountPool:
    def __init__(self, engine, cipher, client, config):
        self._engine = engine
        worker = Worker()
        self._snapshot = Snapshot(engine, cipher)
        self._selector = Selector(engine, worker, config["AFFINITY_TTL_SECONDS"])
        self._refresher = Refresher(engine, cipher, self._snapshot, worker, config["AUTH_BASE_URL"],
                                    config["REFRESH_MARGIN_SECONDS"], config["REFRESH_MAX_AGE_SECONDS"])
        self._upkeep = Upkeep(engine, worker, self._selector, self._snapshot, client,
                              config["AFFINITY_TTL_SECONDS"], config["QUOTA_POLL_SECONDS"])

    # -- choosing ----------------------------------------------------------------------------

    def choose(self, cache_key=None, exclude=(), follow=True, version=None, prefer=None):
        """The account for the next attempt, and a dict describing the decision (for the log).

        ``prefer`` (the account that issued the request's turn state) serves while it is usable,
        and the cache key follows it. Else, with ``follow``, a ``cache_key`` seen before goes
        back to its account while that one is usable. Without it (a conversation's first turn:
        no cached prefix to reuse yet) the least busy account serves and is remembered for the
        turns that follow. When the key's account cannot serve, the decision says ``"affinity":
        "moved"`` and ``"from"`` that account. ``version`` is the accounts version read with the
        request's API key, which spares a query; a failover passes none, so it sees the
        cooldowns its request wrote. Raises the ``unavailable`` error.
        """
        now = time.time()
        accounts = self._snapshot.current(version)
        usable = [account for account in accounts if account.id not in exclude and account.usable(now)]
        if not usable:
            raise _why_unavailable(accounts, now)
        return self._selector.pick(usable, cache_key, follow, now, prefer)

    def owner_of(self, key):
        """The account that issued a turn state (by its hashed ``key``), if known: shared by every
        worker and host, as cache affinity is."""
        return self._selector.owner(key, time.time())

    def remember_owner(self, key, account_id):
        self._selector.remember_owner(key, account_id, time.time())

    def boundary_of(self, cache_key):
        """Where the items of the accounts a thread moved away from end, in what its client sends
        (as ``choose`` just found it; None: it never moved, or nothing was left behind)."""
        return self._selector.boundary(cache_key)

    def set_boundary(self, cache_key, account_id, boundary):
        """The thread of ``cache_key`` moved to ``account_id``: what it carries up to the item
        ``boundary`` names was issued elsewhere. Written at once, for every worker."""
        self._selector.set_boundary(cache_key, account_id, boundary, time.time())

    def first_usable(self):
        now = time.time()
        return next((account for account in self._snapshot.current() if account.usable(now)), None)

    def snapshot(self):
        """Every account as this worker sees it (``Account.state(now)`` says which can serve)."""
        return self._snapshot.current()

    def unavailable(self, now=None):
        """The error for a pool that has no usable account: why, and until when."""
        now = time.time() if now is None else now
        return _why_unavailable(self._snapshot.current(), now)

    # -- requests in flight ------------------------------------------------------------------

    def begin(self, account_id):
        """A request was sent to the account: it counts as in flight until the returned slot is
        released (or ``end``)."""
        self._selector.begin(account_id)
        return Slot(self, account_id)

    def end(self, account_id):
        self._selector.end(account_id)

    def in_flight(self):
        """How many requests this worker has in flight, over all accounts."""
        return sum(self._selector.in_flight.values())

    # -- failures and tokens -------------------------------------------------------------------

    def cool_down(self, account, until, reason):
        account_store.set_cooldown(self._engine, account.id, until, reason)

    def note_error(self, account, reason):
        account_store.record_error(self._engine, account.id, reason)

    def needs_refresh(self, account, now=None):
        return self._refresher.needs_refresh(account, now)

    def refresh(self, account, optional=False):
        return self._refresher.refresh(account, optional)

    # -- this worker's background upkeep -------------------------------------------------------

    def start_maintenance(self):
        """Start this worker's upkeep: in-flight reports, affinity writes, quota polls.

        Gunicorn's ``post_worker_init`` calls it; a process that only runs commands doesn't.
        """
        self._upkeep.start()

    def close(self):
        self._upkeep.close()


def _why_unavailable(accounts, now):
    """Why none of ``accounts`` can serve: ``UsageLimitReached`` until the earliest reset while
    any is cooling down, else ``NoAccounts`` counting the others."""
    if not accounts:
        return NoAccounts("No upstream account is configured. "
                          "Import one with `flask --app wsgi accounts import ~/.codex/auth.json`.")
    states = [(account, account.state(now)) for account in accounts]
    cooling = [account.row["cooldown_until"] for account, state in states if state == COOLING_DOWN]
    if cooling:
        resets_at = min(cooling)
        return UsageLimitReached("Every upstream account has reached its usage limit; try again after the reset.",
                                 resets_at=resets_at, resets_in_seconds=resets_at - now)
    disabled = sum(1 for _, state in states if state == DISABLED)
    relogin = sum(1 for _, state in states if state == NEEDS_RELOGIN)
    return NoAccounts(f"No upstream account can serve: {disabled} disabled, {relogin} need a new login "
                      "(re-import their auth.json).")

"""The pool of upstream accounts: which one serves a request, and what happens when one can't.

Everything that must hold across workers and hosts lives in the database: account status,
cooldowns, the refresh lock, cache affinity, quota windows and each worker's in-flight counts.
Each worker keeps a snapshot of the account rows and reloads it whenever a row changed (one
cheap query per request, fused with the API key's), so a cooldown set by one worker is obeyed by
all at once.
"""

import collections
import logging
import os
import random
import secrets
import socket
import threading
import time

import requests

from ..errors import NoAccounts, UsageLimitReached
from ..store import accounts as account_store
from ..store import pool_state
from ..store import usage as usage_store
from .client import UpstreamUnavailable
from .oauth import RefreshFailed, refresh_tokens

log = logging.getLogger(__name__)

REFRESH_LOCK_SECONDS = 30.0
REFRESH_BACKOFF_SECONDS = 60.0
LOAD_REPORT_SECONDS = 1.0
LOAD_STALE_SECONDS = 10.0
RECENT_USAGE_SECONDS = 30.0
AFFINITY_TRUST_SECONDS = 5.0
AFFINITY_LOCAL_MAX = 50_000
AFFINITY_PRUNE_SECONDS = 600.0  # how often a worker deletes expired affinity rows


class Account:
    __slots__ = ("id", "chatgpt_account_id", "tokens", "credentials", "access_expires_at", "last_refresh", "quota")

    def __init__(self, row, tokens):
        self.id = row["id"]
        self.chatgpt_account_id = row["chatgpt_account_id"]
        self.tokens = tokens
        self.credentials = {"access_token": tokens["access_token"], "chatgpt_account_id": row["chatgpt_account_id"]}
        self.access_expires_at = row["access_expires_at"]
        self.last_refresh = row["last_refresh"]
        self.quota = row.get("quota")


def used_percent(quota):
    """The fuller of an account's plan windows, in percent (0 when unknown)."""
    windows = quota.values() if isinstance(quota, dict) else ()
    return max((window.get("used_percent") or 0 for window in windows if isinstance(window, dict)), default=0)


class AccountPool:
    def __init__(self, engine, cipher, client, config):
        self._engine = engine
        self._cipher = cipher
        self._client = client
        self._auth_base_url = config["AUTH_BASE_URL"]
        self._affinity_ttl = config["AFFINITY_TTL_SECONDS"]
        self._refresh_margin = config["REFRESH_MARGIN_SECONDS"]
        self._refresh_max_age = config["REFRESH_MAX_AGE_SECONDS"]
        self._quota_interval = config["QUOTA_POLL_SECONDS"]
        self._version = None
        self._rows = ()
        self._tokens = {}  # ciphertext -> decrypted tokens: each token version decrypted once
        self._in_flight = collections.Counter()
        self._remote_load = {}
        self._remote_load_at = 0.0
        self._recent = {}
        self._recent_at = 0.0
        self._dispatched = collections.Counter()  # requests sent since the recent-usage snapshot
        self._affinity = collections.OrderedDict()  # cache key -> (account id, checked at)
        self._affinity_touch = {}  # cache key -> (account id, time): timestamp refreshes to write
        self._maintenance = None
        self._pid = None
        self._worker_id = None
        self._reported = {}
        self._reported_at = 0.0
        self._refresh_session = None
        self._refresh_backoff = {}  # account id -> until when an optional refresh is not retried

    # -- the account rows ------------------------------------------------------------------

    def _snapshot(self, version=None):
        if version is None:
            version = account_store.version(self._engine)
        if version != self._version:
            self._rows = account_store.all_rows(self._engine)
            self._version = version
        return self._rows

    def _usable_rows(self, now, version=None):
        return [row for row in self._snapshot(version) if row["status"] == account_store.ACTIVE
                and not (row["cooldown_until"] and row["cooldown_until"] > now)]

    def _account(self, row):
        tokens = self._tokens.get(row["tokens"])
        if tokens is None:
            tokens = account_store.tokens(self._cipher, row)
            if len(self._tokens) > 1000:
                self._tokens.clear()
            self._tokens[row["tokens"]] = tokens
        return Account(row, tokens)

    def first_usable(self):
        rows = self._usable_rows(time.time())
        return self._account(rows[0]) if rows else None

    # -- choosing ------------------------------------------------------------------------

    def choose(self, cache_key=None, exclude=(), follow=True, version=None):
        """The account for the next attempt, and a dict describing the decision (for the log).

        With ``follow``, a ``cache_key`` seen before goes back to its account while that one is
        usable. Without it (a conversation's first turn: no cached prefix to reuse yet) the
        least busy account serves and is remembered for the turns that follow. ``version`` is
        the accounts version read with the request's API key, which spares a query; a failover
        passes none, so it sees the cooldowns its request wrote.
        """
        now = time.time()
        usable = [row for row in self._usable_rows(now, version) if row["id"] not in exclude]
        if not usable:
            raise self.unavailable(now)
        sticky = None
        if cache_key and follow:
            usable_ids = {row["id"] for row in usable}
            sticky = self._affinity_lookup(cache_key, now)
            if sticky not in usable_ids:
                # Another worker may already have moved this key: follow it there too.
                sticky = self._affinity_lookup(cache_key, now, fresh=True) or sticky
            for row in usable:
                if row["id"] == sticky:
                    self._affinity_remember(cache_key, sticky, now, changed=False)
                    return self._account(row), {"event": "account", "account": sticky, "affinity": "hit"}
        chosen = min(usable, key=self._busyness)
        decision = {"event": "account", "account": chosen["id"]}
        if cache_key:
            decision["affinity"] = "moved" if sticky else "new"
            self._affinity_remember(cache_key, chosen["id"], now, changed=follow)
        return self._account(chosen), decision

    def _busyness(self, row):
        """Sort key: in-flight requests (all workers) weighed with plan use, then recent
        requests, then chance. Every 10% of the fuller plan window counts as one request in
        flight: an account at 95% serves only when the others are nine requests busier, and a
        one-request difference (or a load report a second old) never outweighs headroom."""
        account_id = row["id"]
        remote = self._remote_loads()
        recent = self._recent_usage().get(account_id, (0, 0))[0] + self._dispatched[account_id]
        used = int(used_percent(row["quota"]) // 10)
        return (self._in_flight[account_id] + remote.get(account_id, 0) + used, used, recent, random.random())

    def _remote_loads(self):
        now = time.time()
        if now - self._remote_load_at > LOAD_REPORT_SECONDS:
            self._remote_load_at = now
            self._remote_load = pool_state.load_totals(self._engine, self.worker_id, now - LOAD_STALE_SECONDS)
        return self._remote_load

    def _recent_usage(self):
        now = time.time()
        if now - self._recent_at > RECENT_USAGE_SECONDS:
            self._recent_at = now
            self._recent = usage_store.per_account(self._engine, now - 3600)
            self._dispatched.clear()
        return self._recent

    def _affinity_lookup(self, cache_key, now, fresh=False):
        cached = self._affinity.get(cache_key)
        if cached and not fresh and now - cached[1] < AFFINITY_TRUST_SECONDS:
            return cached[0]
        account_id = pool_state.affinity_get(self._engine, cache_key, now - self._affinity_ttl)
        if account_id:
            self._affinity[cache_key] = (account_id, now)
        return account_id

    def _affinity_remember(self, cache_key, account_id, now, changed):
        previous = self._affinity.pop(cache_key, None)
        self._affinity[cache_key] = (account_id, now)
        if len(self._affinity) > AFFINITY_LOCAL_MAX:
            self._affinity.popitem(last=False)
        if changed:
            # Written at once: another worker seeing this key next must find the same account.
            pool_state.affinity_put(self._engine, [{"cache_key": cache_key, "account_id": account_id,
                                                    "updated_at": now}])
        elif previous is None or previous[0] != account_id or now - previous[1] > AFFINITY_TRUST_SECONDS:
            self._affinity_touch[cache_key] = (account_id, now)

    # -- in-flight accounting ----------------------------------------------------------------

    def begin(self, account_id):
        self._in_flight[account_id] += 1
        self._dispatched[account_id] += 1

    def end(self, account_id):
        self._in_flight[account_id] -= 1
        if self._in_flight[account_id] <= 0:
            del self._in_flight[account_id]

    # -- failures --------------------------------------------------------------------------

    def unavailable(self, now=None):
        """The error for a pool that has no usable account: why, and until when."""
        now = time.time() if now is None else now
        rows = self._snapshot()
        if not rows:
            return NoAccounts("No upstream account is configured. "
                              "Import one with `flask --app wsgi accounts import ~/.codex/auth.json`.")
        cooling = [row["cooldown_until"] for row in rows
                   if row["status"] == account_store.ACTIVE and row["cooldown_until"] and row["cooldown_until"] > now]
        if cooling:
            resets_at = min(cooling)
            return UsageLimitReached(
                "Every upstream account has reached its usage limit; try again after the reset.",
                resets_at=resets_at, resets_in_seconds=resets_at - now)
        disabled = sum(1 for row in rows if row["status"] == account_store.DISABLED)
        relogin = sum(1 for row in rows if row["status"] == account_store.NEEDS_RELOGIN)
        return NoAccounts(f"No upstream account can serve: {disabled} disabled, {relogin} need a new login "
                          "(re-import their auth.json).")

    def cool_down(self, account, until, reason):
        account_store.set_cooldown(self._engine, account.id, until, reason)

    def note_error(self, account, reason):
        account_store.record_error(self._engine, account.id, reason)

    # -- tokens ------------------------------------------------------------------------------

    def needs_refresh(self, account, now=None):
        """Whether to refresh before use: the token expires soon or is old. After a refresh
        that failed for a passing reason, a still-valid token is used without trying again
        for a while (else every request would retry it)."""
        now = time.time() if now is None else now
        expires = account.access_expires_at
        if expires is not None and expires <= now:
            return True
        if now < self._refresh_backoff.get(account.id, 0):
            return False
        if expires is not None and expires - now < self._refresh_margin:
            return True
        return account.last_refresh is not None and now - account.last_refresh > self._refresh_max_age

    def refresh(self, account, optional=False):
        """New tokens for ``account``: refreshed here, or by whichever process holds the lock.

        Only one process refreshes an account at a time: the refresh token rotates, and a
        second refresh with the old one would fail for good. The others wait for the result,
        unless the refresh is ``optional`` (the current token still works): then they go on
        with it. Raises ``RefreshFailed`` (``permanent`` when the account needs a new login).
        """
        try:
            return self._refresh(account, optional)
        except RefreshFailed as exc:
            if not exc.permanent:
                self._refresh_backoff[account.id] = time.time() + REFRESH_BACKOFF_SECONDS
            raise

    def _refresh(self, account, optional):
        stale = account.tokens["access_token"]
        owner = f"{self.worker_id}:{secrets.token_hex(4)}"
        deadline = time.monotonic() + REFRESH_LOCK_SECONDS + 5
        while True:
            if account_store.try_lock_refresh(self._engine, account.id, owner, REFRESH_LOCK_SECONDS):
                break
            if optional:
                raise RefreshFailed("another process is refreshing this account", permanent=False)
            if time.monotonic() > deadline:
                raise RefreshFailed("another process is still refreshing this account", permanent=False)
            time.sleep(0.1)
            row = account_store.read(self._engine, account.id)
            if row is None or row["status"] == account_store.NEEDS_RELOGIN:
                raise RefreshFailed("the account needs a new login", permanent=True)
            if row["refresh_lock_owner"] is None and self._account(row).tokens["access_token"] != stale:
                return self._account(row)  # the other process succeeded
        row = account_store.read(self._engine, account.id)
        current = self._account(row)
        if current.tokens["access_token"] != stale:  # refreshed meanwhile: nothing to do
            account_store.release_refresh(self._engine, account.id, owner, None)
            return current
        try:
            fresh, expires = refresh_tokens(self._http(), self._auth_base_url, current.tokens)
        except RefreshFailed as exc:
            account_store.release_refresh(self._engine, account.id, owner, str(exc),
                                          account_store.NEEDS_RELOGIN if exc.permanent else None)
            raise
        if not account_store.save_refreshed(self._engine, self._cipher, account.id, owner, fresh, expires):
            raise RefreshFailed("the refresh lock expired before the new tokens were stored", permanent=False)
        return self._account(account_store.read(self._engine, account.id))

    def _http(self):
        if self._refresh_session is None or self._pid != os.getpid():
            self._refresh_session = requests.Session()
        return self._refresh_session

    # -- background upkeep (one thread/greenlet per worker) -----------------------------------

    @property
    def worker_id(self):
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._worker_id = f"{socket.gethostname()}:{self._pid}:{secrets.token_hex(3)}"
            self._maintenance = None
            self._refresh_session = None
        return self._worker_id

    def start_maintenance(self):
        """Start this worker's upkeep: in-flight reports, affinity writes, quota polls.

        Gunicorn's ``post_worker_init`` calls it; a process that only runs commands doesn't.
        """
        if self._maintenance is None or self._pid != os.getpid():
            self.worker_id  # noqa: B018  (resets per-process state after a fork)
            self._maintenance = threading.Thread(target=self._maintain, name="pool-upkeep", daemon=True)
            self._maintenance.start()

    def _maintain(self):
        stop = threading.Event()
        last_quota = last_prune = 0.0
        while not stop.wait(LOAD_REPORT_SECONDS):
            try:
                self.report_load()
                self.flush_affinity()
                if time.time() - last_prune > AFFINITY_PRUNE_SECONDS:
                    last_prune = time.time()
                    pool_state.affinity_prune(self._engine, last_prune - self._affinity_ttl)
                if self._quota_interval and time.time() - last_quota > min(self._quota_interval, 60):
                    last_quota = time.time()
                    self.poll_quotas()
            except Exception:
                log.exception("pool upkeep failed")

    def report_load(self, force=False):
        counts = dict(self._in_flight)
        now = time.time()
        # Re-sent at least every few seconds while non-zero, so readers can drop dead workers.
        if force or counts != self._reported or (counts and now - self._reported_at > LOAD_STALE_SECONDS / 3):
            pool_state.report_load(self._engine, self.worker_id, counts)
            self._reported, self._reported_at = counts, now

    def flush_affinity(self):
        pending, self._affinity_touch = self._affinity_touch, {}
        if pending:
            pool_state.affinity_put(self._engine, [
                {"cache_key": key, "account_id": account_id, "updated_at": at}
                for key, (account_id, at) in pending.items()])

    def poll_quotas(self):
        """Fetch the plan windows of accounts not polled for an interval (one worker each)."""
        for row in self._usable_rows(time.time()):
            if not account_store.claim_quota_check(self._engine, row["id"], self._quota_interval):
                continue
            try:
                document = self._client.get_quota(self._account(row).credentials)
            except UpstreamUnavailable as exc:
                log.info("quota poll failed", extra={"fields": {"account": row["id"], "reason": str(exc)}})
                continue
            quota = parse_quota(document)
            if quota:
                account_store.save_quota(self._engine, row["id"], quota)

    def close(self):
        pool_state.clear_load(self._engine, self.worker_id)


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

"""Refreshing an account's tokens: one process at a time, across every worker and host.

The refresh token rotates: a second refresh with the old one fails for good. So a process
refreshes only while it holds the account's refresh lock (a lease in the database), renews the
lease while the auth server thinks, and stores whatever new tokens it got. The others wait
for its result, or take over once a dead holder's lease has run out.
"""

import contextlib
import logging
import os
import secrets
import threading
import time

import requests

from ..errors import describe_error, log_failure, unavailable
from ..store import accounts as account_store
from ..upstream.oauth import RefreshFailed, refresh_tokens

log = logging.getLogger(__name__)

REFRESH_TIMEOUT = (10, 30)  # connect, read: the longest a refresh call can take is about their sum
# A dead holder's lock is free again after this; a live one renews it every few seconds.
REFRESH_LEASE_SECONDS = 15.0
REFRESH_RENEW_SECONDS = 5.0
# How long a request waits for another process's refresh before trying another account.
REFRESH_WAIT_SECONDS = sum(REFRESH_TIMEOUT) + 5.0
REFRESH_BACKOFF_SECONDS = 60.0
# Storing new tokens is retried this many times, this far apart: they are the only login left.
SAVE_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)
# After those, they are tried again this often, in the background, until the database takes them.
SAVE_LATER_SECONDS = 2.0


class Refresher:
    def __init__(self, engine, cipher, snapshot, worker, auth_base_url, margin, max_age):
        self._engine = engine
        self._cipher = cipher
        self._snapshot = snapshot
        self._worker = worker
        self._auth_base_url = auth_base_url
        self._margin = margin
        self._max_age = max_age
        self._session = None
        self._session_pid = None
        self._backoff = {}  # account id -> until when an optional refresh is not retried

    def needs_refresh(self, account, now=None):
        """Whether to refresh before use: the token expires soon or is old. After a refresh
        that failed for a passing reason, a still-valid token is used without trying again
        for a while (else every request would retry it)."""
        now = time.time() if now is None else now
        expires = account.access_expires_at
        if expires is not None and expires <= now:
            return True
        if now < self._backoff.get(account.id, 0):
            return False
        if expires is not None and expires - now < self._margin:
            return True
        return account.last_refresh is not None and now - account.last_refresh > self._max_age

    def refresh(self, account, optional=False):
        """New tokens for ``account``: refreshed here, or by whichever process holds the lock.

        The others wait for the result, unless the refresh is ``optional`` (the current token
        still works): then they go on with it. Raises ``RefreshFailed`` (``permanent`` when
        the account needs a new login).
        """
        try:
            return self._refresh(account, optional)
        except RefreshFailed as exc:
            if not exc.permanent:
                self._backoff[account.id] = time.time() + REFRESH_BACKOFF_SECONDS
            raise

    def _refresh(self, account, optional):
        stale = account.tokens["access_token"]
        owner = f"{self._worker.id}:{secrets.token_hex(4)}"
        deadline = time.monotonic() + REFRESH_WAIT_SECONDS
        while not account_store.try_lock_refresh(self._engine, account.id, owner, REFRESH_LEASE_SECONDS):
            if optional:
                raise RefreshFailed("another process is refreshing this account", permanent=False)
            if time.monotonic() > deadline:
                raise RefreshFailed("another process is still refreshing this account", permanent=False)
            time.sleep(0.1)
            row = account_store.read(self._engine, account.id)
            if row is None or row["status"] == account_store.NEEDS_RELOGIN:
                raise RefreshFailed("the account needs a new login", permanent=True)
            current = self._snapshot.account(row)
            if row["refresh_lock_owner"] is None and current.tokens and current.tokens["access_token"] != stale:
                return current  # the other process succeeded
        with self._lease_kept(account.id, owner):
            row = account_store.read(self._engine, account.id)
            if row is None:
                raise RefreshFailed("the account was removed", permanent=True)
            current = self._snapshot.account(row)
            if current.tokens is None or current.tokens["access_token"] != stale:
                # Refreshed meanwhile, or nothing to refresh with.
                account_store.release_refresh(self._engine, account.id, owner, current.problem)
                if current.tokens is None:
                    raise RefreshFailed(current.problem, permanent=False)
                return current
            try:
                fresh, expires = refresh_tokens(self._http(), self._auth_base_url, current.tokens, REFRESH_TIMEOUT)
            except RefreshFailed as exc:
                account_store.release_refresh(self._engine, account.id, owner, str(exc),
                                              account_store.NEEDS_RELOGIN if exc.permanent else None, row["tokens"])
                raise
            if not self._save(account.id, owner, fresh, expires):
                raise RefreshFailed("the account was removed", permanent=True)
        return self._snapshot.account(account_store.read(self._engine, account.id))

    @contextlib.contextmanager
    def _lease_kept(self, account_id, owner):
        """Renew the refresh lock in the background until the block ends: a refresh may take
        longer than the lease, and nobody else may refresh with the same token meanwhile."""
        done = threading.Event()

        def renew():
            while not done.wait(REFRESH_RENEW_SECONDS):
                try:
                    if not account_store.renew_refresh(self._engine, account_id, owner, REFRESH_LEASE_SECONDS):
                        return
                except Exception as exc:
                    log_failure(log, "could not renew the refresh lock", exc, {"account": account_id})

        threading.Thread(target=renew, name="refresh-lease", daemon=True).start()
        try:
            yield
        finally:
            done.set()

    def _save(self, account_id, owner, fresh, expires):
        """Store new tokens, retrying while the database fails for a moment. When it stays down
        longer, the request gives up, and the tokens are stored in the background as soon as it is
        back: the auth server has retired the old refresh token, so they are the only login left."""
        delays = iter(SAVE_RETRY_DELAYS)
        while True:
            try:
                return account_store.save_refreshed(self._engine, self._cipher, account_id, owner, fresh, expires)
            except Exception as exc:
                if not unavailable(exc):
                    raise
                fields = {"account": account_id, "reason": describe_error(exc)}
                delay = next(delays, None)
                if delay is None:
                    log.error("new tokens could not be stored; storing them once the database is back",
                              extra={"fields": fields})
                    threading.Thread(target=self._save_later, args=(account_id, owner, fresh, expires),
                                     name="refreshed-tokens", daemon=True).start()
                    raise RefreshFailed("the new tokens could not be stored", permanent=False) from None
                log.warning("storing new tokens failed; retrying", extra={"fields": fields})
                time.sleep(delay)

    def _save_later(self, account_id, owner, fresh, expires):
        while True:
            time.sleep(SAVE_LATER_SECONDS)
            try:
                saved = account_store.save_refreshed(self._engine, self._cipher, account_id, owner, fresh, expires)
            except Exception as exc:
                if unavailable(exc):
                    continue
                log.error("new tokens could not be stored; the account will need a new login", exc_info=exc,
                          extra={"fields": {"account": account_id}})
                return
            if saved:  # else the account was removed meanwhile
                log.info("new tokens stored now that the database is back", extra={"fields": {"account": account_id}})
            return

    def _http(self):
        # Not the upstream client's session: the auth server is another host, with other settings.
        if self._session is None or self._session_pid != os.getpid():
            self._session, self._session_pid = requests.Session(), os.getpid()
        return self._session

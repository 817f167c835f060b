"""The pool of upstream accounts: which one serves a request, and what happens when one can't.

Account state (status, cooldown) lives in the database, so every worker sees the same pool.
"""

import itertools
import logging
import time

from ..errors import NoAccounts, UsageLimitReached
from ..store import accounts as account_store

log = logging.getLogger(__name__)


class Account:
    __slots__ = ("id", "chatgpt_account_id", "plan", "credentials")

    def __init__(self, row, tokens):
        self.id = row["id"]
        self.chatgpt_account_id = row["chatgpt_account_id"]
        self.plan = row["plan"]
        self.credentials = {"access_token": tokens["access_token"], "chatgpt_account_id": row["chatgpt_account_id"]}


class AccountPool:
    def __init__(self, engine, cipher):
        self._engine = engine
        self._cipher = cipher
        self._tokens = {}  # ciphertext -> decrypted tokens: decrypting once per token version
        self._turn = itertools.count()

    def candidates(self):
        """Usable accounts in the order to try them; raises when there is none."""
        rows = account_store.usable(self._engine)
        if not rows:
            raise self.unavailable()
        start = next(self._turn) % len(rows)
        return [self._account(row) for row in rows[start:] + rows[:start]]

    def first_usable(self):
        rows = account_store.usable(self._engine)
        return self._account(rows[0]) if rows else None

    def _account(self, row):
        tokens = self._tokens.get(row["tokens"])
        if tokens is None:
            tokens = account_store.tokens(self._cipher, row)
            if len(self._tokens) > 1000:
                self._tokens.clear()
            self._tokens[row["tokens"]] = tokens
        return Account(row, tokens)

    def unavailable(self, now=None):
        """The error for a pool that has no usable account: why, and until when."""
        now = time.time() if now is None else now
        states = account_store.states(self._engine)
        if not states:
            return NoAccounts("No upstream account is configured. "
                              "Import one with `flask --app wsgi accounts import ~/.codex/auth.json`.")
        cooling = [row["cooldown_until"] for row in states
                   if row["status"] == account_store.ACTIVE and row["cooldown_until"] and row["cooldown_until"] > now]
        if cooling:
            resets_at = min(cooling)
            return UsageLimitReached(
                "Every upstream account has reached its usage limit; try again after the reset.",
                resets_at=resets_at, resets_in_seconds=resets_at - now)
        disabled = sum(1 for row in states if row["status"] == account_store.DISABLED)
        relogin = sum(1 for row in states if row["status"] == account_store.NEEDS_RELOGIN)
        return NoAccounts(f"No upstream account can serve: {disabled} disabled, {relogin} need a new login "
                          "(re-import their auth.json).")

    def cool_down(self, account, until, reason):
        log.info("account cooling down", extra={"fields": {"account": account.id, "until": until}})
        account_store.set_cooldown(self._engine, account.id, until, reason)

    def note_error(self, account, reason):
        account_store.record_error(self._engine, account.id, reason)

"""The accounts as this worker sees them, and the one rule of which of them can serve."""

import logging

from ..store import accounts as account_store

log = logging.getLogger(__name__)

ACTIVE, DISABLED, NEEDS_RELOGIN = account_store.ACTIVE, account_store.DISABLED, account_store.NEEDS_RELOGIN
COOLING_DOWN = "cooling_down"
TOKEN_CACHE_MAX = 1000


def account_state(row, now, readable=True):
    """"active" (the only state that serves), "cooling_down", "disabled" or "needs_relogin".

    An account whose stored tokens this process cannot decrypt (encrypted with another secret
    key) needs a new import, like a dead login. That is a verdict of this process only: the row
    is not marked, so one host started with the wrong key does not take the accounts away
    from the others.
    """
    status = row["status"]
    if status != ACTIVE:
        return status
    if not readable:
        return NEEDS_RELOGIN
    if row["cooldown_until"] and row["cooldown_until"] > now:
        return COOLING_DOWN
    return ACTIVE


def is_usable(row, now, readable=True):
    return account_state(row, now, readable) == ACTIVE


class Account:
    """One account row with its decrypted tokens (``tokens`` None, and ``problem`` saying why,
    when they cannot be decrypted)."""

    __slots__ = ("row", "id", "chatgpt_account_id", "tokens", "credentials", "access_expires_at", "last_refresh",
                 "quota", "problem")

    def __init__(self, row, tokens, problem=None):
        self.row = row
        self.id = row["id"]
        self.chatgpt_account_id = row["chatgpt_account_id"]
        self.tokens = tokens
        self.credentials = {"access_token": tokens["access_token"],
                            "chatgpt_account_id": row["chatgpt_account_id"]} if tokens is not None else None
        self.access_expires_at = row["access_expires_at"]
        self.last_refresh = row["last_refresh"]
        self.quota = row.get("quota")
        self.problem = problem

    def state(self, now):
        return account_state(self.row, now, self.tokens is not None)

    def usable(self, now):
        # The rule called directly (not through is_usable): this runs for every account, every request.
        return account_state(self.row, now, self.tokens is not None) == ACTIVE


class Snapshot:
    """This worker's copy of the account rows, reloaded when their version changes, so that a
    cooldown or a refresh written by any worker is seen by the next request everywhere."""

    def __init__(self, engine, cipher):
        self._engine = engine
        self._cipher = cipher
        self._version = None
        self._accounts = ()
        self._tokens = {}  # ciphertext -> (tokens, problem): each token version decrypted once

    def current(self, version=None):
        """Every account, oldest first. ``version`` is the accounts version when the caller has
        just read it (with the API key); else it is read here."""
        if version is None:
            version = account_store.version(self._engine)
        if version != self._version:
            self._accounts = tuple(self.account(row) for row in account_store.all_rows(self._engine))
            self._version = version
        return self._accounts

    def account(self, row):
        """An ``Account`` for a row read from the database."""
        decrypted = self._tokens.get(row["tokens"])
        if decrypted is None:
            try:
                tokens = account_store.tokens(self._cipher, row)
                if not isinstance(tokens, dict) or not isinstance(tokens.get("access_token"), str):
                    raise ValueError("stored tokens are not a token set")
                decrypted = tokens, None
            except ValueError as exc:
                decrypted = None, str(exc)
                # Once per token version: the snapshot meets the row again at every reload.
                log.error("account tokens cannot be decrypted; the account does not serve until re-imported",
                          extra={"fields": {"account": row["id"], "reason": str(exc)}})
            if len(self._tokens) >= TOKEN_CACHE_MAX:
                self._tokens.clear()
            self._tokens[row["tokens"]] = decrypted
        return Account(row, *decrypted)

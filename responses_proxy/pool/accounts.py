"""The accounts as this worker sees them, and the one rule of which of them can serve."""

from ..store import accounts as account_store

ACTIVE, DISABLED, NEEDS_RELOGIN = account_store.ACTIVE, account_store.DISABLED, account_store.NEEDS_RELOGIN
COOLING_DOWN = "cooling_down"
TOKEN_CACHE_MAX = 1000


def account_state(row, now):
    """"active" (the only state that serves), "cooling_down", "disabled" or "needs_relogin"."""
    status = row["status"]
    if status != ACTIVE:
        return status
    if row["cooldown_until"] and row["cooldown_until"] > now:
        return COOLING_DOWN
    return ACTIVE


def is_usable(row, now):
    return account_state(row, now) == ACTIVE


class Account:
    """One account row with its decrypted tokens."""

    __slots__ = ("row", "id", "chatgpt_account_id", "tokens", "credentials", "access_expires_at", "last_refresh",
                 "quota")

    def __init__(self, row, tokens):
        self.row = row
        self.id = row["id"]
        self.chatgpt_account_id = row["chatgpt_account_id"]
        self.tokens = tokens
        self.credentials = {"access_token": tokens["access_token"], "chatgpt_account_id": row["chatgpt_account_id"]}
        self.access_expires_at = row["access_expires_at"]
        self.last_refresh = row["last_refresh"]
        self.quota = row.get("quota")

    def state(self, now):
        return account_state(self.row, now)

    def usable(self, now):
        # The rule called directly (not through is_usable): this runs for every account, every request.
        return account_state(self.row, now) == ACTIVE


class Snapshot:
    """This worker's copy of the account rows, reloaded when their version changes, so that a
    cooldown or a refresh written by any worker is seen by the next request everywhere."""

    def __init__(self, engine, cipher):
        self._engine = engine
        self._cipher = cipher
        self._version = None
        self._accounts = ()
        self._tokens = {}  # ciphertext -> tokens: each token version decrypted once

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
        tokens = self._tokens.get(row["tokens"])
        if tokens is None:
            tokens = account_store.tokens(self._cipher, row)
            if len(self._tokens) >= TOKEN_CACHE_MAX:
                self._tokens.clear()
            self._tokens[row["tokens"]] = tokens
        return Account(row, tokens)

"""The accounts as an operator manages them: import logins, list them with their recent use,
take them out of rotation and back, remove them; and the words every listing (the ``accounts``
commands, the status page) describes them with."""

import time

from ..cli import when
from ..store import accounts as store
from ..store import usage as usage_store
from .accounts import COOLING_DOWN, NEEDS_RELOGIN, account_state


class AccountAdmin:
    def __init__(self, engine, cipher, pool):
        self.engine = engine
        self.cipher = cipher
        self.pool = pool

    def import_logins(self, logins):
        """Store parsed Codex logins (``upstream.credentials.parse_auth_json``); an account that
        is already there gets the new tokens. Returns the accounts, each with ``created``."""
        results = []
        for credentials in logins:
            account, created = store.upsert(self.engine, self.cipher, credentials)
            results.append({**account, "created": created})
        return results

    def listing(self, now=None):
        """Every account as the gateway sees it: its state by the pool's rule (tokens this
        process cannot decrypt included; ``problem`` says why), and its use in the last hour
        and day."""
        now = time.time() if now is None else now
        hour = usage_store.per_account(self.engine, now - 3600)
        day = usage_store.per_account(self.engine, now - 86400)
        rows = []
        for account in self.pool.snapshot():
            row = store.public(account.row)
            requests_hour, tokens_hour = hour.get(row["id"], (0, 0))
            requests_day, tokens_day = day.get(row["id"], (0, 0))
            rows.append({**row, "state": account_state(row, now, account.tokens is not None),
                         "problem": account.problem,
                         "last_hour": {"requests": requests_hour, "tokens": tokens_hour},
                         "last_day": {"requests": requests_day, "tokens": tokens_day}})
        return rows

    def set_status(self, account_id, status):
        """``active`` or ``disabled``; False when there is no such account."""
        return store.set_status(self.engine, account_id, status)

    def remove(self, account_id):
        return store.remove(self.engine, account_id)


def describe_state(row):
    """An account's state in words, as listings show it."""
    if row["state"] == COOLING_DOWN:
        return "cooling down until " + when(row["cooldown_until"])
    return {NEEDS_RELOGIN: "needs re-login"}.get(row["state"], row["state"])


def describe_window(window):
    """A plan window (``quota["primary"]`` or ``["secondary"]``) in words: "37% (resets <time>)"."""
    if not isinstance(window, dict) or window.get("used_percent") is None:
        return "-"
    resets = f" (resets {when(window['resets_at'])})" if window.get("resets_at") else ""
    return f"{window['used_percent']:.0f}%{resets}"

"""API keys without Flask: authentication on every request, and their administration."""

import time

from ..errors import InvalidApiKey
from ..store import changes
from ..store import keys as store
from ..store import limits as limit_store

# Digests this worker keeps between changes (unknown ones included: a client retrying with a
# wrong key costs no query either); past this many, it starts over.
KEPT_KEYS_MAX = 10_000
# What is kept is read again after this long even without a change signal: a bound that holds
# whatever happens to the signal (PostgreSQL delivers a notification a few milliseconds after
# the commit, and a listening connection can hang unnoticed behind a network partition).
KEPT_SECONDS = 1.0


class KeyService:
    def __init__(self, engine, lease_seconds, signal=None):
        self.engine = engine
        self.lease_seconds = lease_seconds
        # What every request needs, kept while nothing changed: key rows by digest (None for
        # no such unrevoked key) and the accounts version read with them.
        self._signal = changes.for_engine(engine) if signal is None else signal
        self._seen = None
        self._kept_since = 0.0
        self._keys = {}
        self._accounts_version = None

    def authenticate(self, header):
        """(the key row for an ``Authorization`` header value, the accounts version), or
        ``InvalidApiKey``.

        Both come from one query, or from what the last query read when the database says
        nothing was committed to keys or accounts since (``store.changes``) and it was read less
        than ``KEPT_SECONDS`` ago: a key revoked, or a cooldown written, anywhere is seen by the
        next request after its commit (SQLite), or after its notification arrives, milliseconds
        later (PostgreSQL), and in any case within a second.
        """
        token = bearer_token(header)
        if not token:
            raise InvalidApiKey("Missing API key: send it as 'Authorization: Bearer <key>'.")
        digest = store.hash_key(token)
        # Read before the query: a change committed after this point makes the next check differ.
        seen = self._signal.token()
        now = time.monotonic()
        if now - self._kept_since > KEPT_SECONDS:
            self._seen = None  # what is kept is too old: read it again
        if seen is not None and seen == self._seen and digest in self._keys:
            key, accounts_version = self._keys[digest], self._accounts_version
        else:
            key, accounts_version = store.find_active_by_hash(self.engine, digest)
            if seen != self._seen or len(self._keys) >= KEPT_KEYS_MAX:
                self._keys.clear()
                self._kept_since = now
            self._seen = seen
            if seen is not None:
                self._keys[digest] = key
                self._accounts_version = accounts_version
        if key is None:
            raise InvalidApiKey("Incorrect API key provided, or the key was revoked.")
        return key, accounts_version

    def create(self, name, allowed_models=None, rpm=None, concurrency=None, daily_tokens=None):
        """A new key: its row with the plaintext ``key``, the only time it exists."""
        return store.create(self.engine, name, allowed_models, rpm, concurrency, daily_tokens)

    def list(self):
        """Every key, with what its limits count now: requests in flight (None without a
        concurrency limit: they are not counted) and today's tokens."""
        now = time.time()
        counters = limit_store.read_all(self.engine)
        rows = []
        for row in store.list_all(self.engine):
            counts = limit_store.counts(counters.get(row["id"]), now, self.lease_seconds)
            rows.append({**row, "in_flight": counts.in_flight if row["concurrency"] is not None else None,
                         "tokens_today": counts.tokens})
        return rows

    def update(self, key_id, changes):
        """Change an unrevoked key (``changes``: name, allowed_models, rpm, concurrency,
        daily_tokens; None lifts a limit); the key after, or None when there is no such key."""
        return store.change(self.engine, key_id, changes)

    def reset_usage(self, key_id):
        """Forget what a key's limits counted (False when there is no such key)."""
        if store.get(self.engine, key_id) is None:
            return False
        limit_store.reset(self.engine, key_id)
        return True

    def revoke(self, key_id):
        """False when there is no such unrevoked key."""
        return store.revoke(self.engine, key_id)


def bearer_token(header):
    """The token of an ``Authorization: Bearer <token>`` header value ("" when it has none)."""
    scheme, _, token = (header or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""

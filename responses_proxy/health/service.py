"""Readiness without Flask: can this instance serve requests, and if not, why.

Four checks, each reported on its own:

- database: a committed write (an upsert of this host's row in ``readiness``) on a new
  connection. A rolled-back write may never reach the disk on SQLite (the pages stay in memory
  until commit), so it would miss a full disk or a file system that turned read-only; a commit
  meets them. A new connection meets what a restarted worker would (PostgreSQL's
  authentication and connection limit). SQLite may hand a new connection a descriptor this
  process already holds open for writing, so the files' write permission is checked as well:
  a database that new workers could only read is not ready either;
- schema: the database is at the revision this version's migrations end with;
- encryption: the stored account tokens decrypt with the configured key (a wrong
  RESPONSES_PROXY_ENCRYPTION_KEY shows here, not at the first request);
- accounts: at least one account can serve: active, or cooling down (it serves again by itself
  at a known time, and meanwhile the right answer is the 429 that says when).

The result is kept ``READINESS_CACHE_SECONDS``: a storm of probes costs one check per worker
per interval, and probes arriving during a check wait for its result.
"""

import os
import socket
import threading
import time

from alembic.runtime.migration import MigrationContext
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from ..errors import describe_error
from ..pool import ACTIVE, COOLING_DOWN, DISABLED, NEEDS_RELOGIN, account_state
from ..store import make_engine, migrate, upsert, write
from ..store.tables import accounts, readiness


def failed(error):
    return {"ok": False, "error": error}


class Readiness:
    def __init__(self, database_url, cipher, cache_seconds):
        self._database_url = database_url
        self._cipher = cipher
        self._cache_seconds = cache_seconds
        self._engine = None
        self._head = None
        self._decryptable = set()  # ciphertexts already seen to decrypt
        self._lock = threading.Lock()
        self._result = None
        self._expires = 0.0

    def report(self):
        """(ready, {"status": "ready"|"unready", "checks": {name: {"ok", ...}}})."""
        with self._lock:
            if self._result is None or time.monotonic() >= self._expires:
                self._result = self._check()
                self._expires = time.monotonic() + self._cache_seconds
            return self._result

    def _check(self):
        if self._engine is None:
            self._engine = make_engine(self._database_url, pooled=False, lock_wait=5)
        if self._head is None:
            self._head = migrate.head()
        try:
            checks = {"database": self._write()}
            with self._engine.connect() as conn:
                checks["schema"] = self._schema(conn)
                rows = conn.execute(select(accounts.c.status, accounts.c.cooldown_until, accounts.c.tokens)
                                    ).mappings().all()
        except SQLAlchemyError as exc:
            error = describe_error(exc)
            checks = {name: failed(f"database unavailable: {error}") for name in ("database", "schema")}
            checks["encryption"] = checks["accounts"] = failed("unknown: the database cannot be read")
        else:
            usable = self._decrypt(rows)
            checks["encryption"] = self._encryption(rows, usable)
            checks["accounts"] = self._accounts(rows, usable)
        ready = all(check["ok"] for check in checks.values())
        return ready, {"status": "ready" if ready else "unready", "checks": checks}

    def _write(self):
        try:
            with write(self._engine) as conn:
                upsert(conn, readiness, [{"host": socket.gethostname(), "checked_at": time.time()}], ["host"],
                       ["checked_at"])
        except SQLAlchemyError as exc:
            return failed(f"the database does not take writes: {describe_error(exc)}")
        for path in self._files():
            if os.path.exists(path) and not os.access(path, os.W_OK):
                return failed(f"the database does not take writes: {path} is not writable")
        return {"ok": True, "dialect": self._engine.dialect.name}

    def _files(self):
        """SQLite's files: the database, its write-ahead log and its shared index."""
        database = self._engine.url.database
        if self._engine.dialect.name != "sqlite" or not database or database == ":memory:":
            return ()
        return (database, database + "-wal", database + "-shm")

    def _schema(self, conn):
        try:
            revision = MigrationContext.configure(conn).get_current_revision()
        except SQLAlchemyError as exc:
            return failed(f"the schema revision cannot be read: {describe_error(exc)}")
        check = {"ok": revision == self._head, "revision": revision, "head": self._head}
        if not check["ok"]:
            check["error"] = (f"the database schema is at revision {revision}, this version needs {self._head}: "
                              "run `flask --app wsgi db upgrade`")
        return check

    def _decrypt(self, rows):
        """Which rows' tokens decrypt with the configured key (each ciphertext tried once)."""
        usable = []
        for row in rows:
            if row["tokens"] not in self._decryptable:
                try:
                    self._cipher.decrypt(row["tokens"])
                except ValueError:
                    usable.append(False)
                    continue
                if len(self._decryptable) > 10_000:
                    self._decryptable.clear()
                self._decryptable.add(row["tokens"])
            usable.append(True)
        return usable

    def _encryption(self, rows, usable):
        undecryptable = usable.count(False)
        check = {"ok": not undecryptable, "accounts": len(rows), "undecryptable": undecryptable}
        if undecryptable:
            check["error"] = (f"the tokens of {undecryptable} of {len(rows)} accounts cannot be decrypted: "
                              "RESPONSES_PROXY_ENCRYPTION_KEY (or DATA_DIR/secret.key) is not the key they "
                              "were encrypted with")
        return check

    def _accounts(self, rows, usable):
        now = time.time()
        counts = {ACTIVE: 0, COOLING_DOWN: 0, DISABLED: 0, NEEDS_RELOGIN: 0}
        serving = unreadable = 0
        for row, decrypts in zip(rows, usable, strict=True):
            state = account_state(row, now)
            counts[state] = counts.get(state, 0) + 1
            if state in (ACTIVE, COOLING_DOWN):
                serving += decrypts
                unreadable += not decrypts
        check = {"ok": serving > 0, "serving": serving, **counts}
        if not rows:
            check["error"] = "no account is configured: import one with `flask --app wsgi accounts import PATH`"
        elif not serving:
            check["error"] = "no account can serve: " + ", ".join(
                f"{count} {state.replace('_', ' ')}" for state, count in counts.items() if count)
            if unreadable:
                check["error"] += f" ({unreadable} with tokens that cannot be decrypted)"
        return check

"""A cheap signal that keys or accounts may have changed: what lets a worker keep the rows every
request needs (its API key, the accounts version) instead of asking the database each time.

``Changes.token()`` returns a value that stays equal while nothing that could matter was
committed by anyone, and differs once something was; None when it cannot tell (then nothing is
kept). It costs no round trip to the database server:

- SQLite: ``PRAGMA data_version`` on a connection of its own, which changes whenever another
  connection (any process, this one's other connections included) commits to the database.
  It reads the WAL's shared-memory header: a few microseconds. Most commits are of other
  tables (usage rows, limits, leases): only then is the counter that triggers on ``api_keys``
  and ``accounts`` move (migration 0006) read, in-process, about ten microseconds.
- PostgreSQL: a connection of its own LISTENs on ``CHANNEL``; triggers on ``api_keys`` and
  ``accounts`` (migration 0006) notify it in the transaction that changes them, delivered as
  it commits, to every worker of every host. A check is one ``select`` on that socket with no
  wait; the notification is read only when one arrived.

Either way a key revoked or an account cooled down on another host is seen by the next request
after the commit, as when every request read the rows.
"""

import logging
import os
import select
import sqlite3
import time

from sqlalchemy import event

log = logging.getLogger(__name__)

CHANNEL = "responses_proxy_changes"
# After a failure (database down), how long before the listening connection is tried again;
# meanwhile every check says "unknown" and the callers read the rows as before.
RECONNECT_SECONDS = 1.0


def for_engine(engine):
    """The signal for ``engine``'s database (one per process; each opens its connection lazily,
    after a fork), closed with the engine's ``dispose``."""
    if engine.dialect.name == "postgresql":
        signal = PostgresChanges(engine)
    elif not engine.url.database or engine.url.database == ":memory:":
        return Unknown()
    else:
        signal = SqliteChanges(os.path.abspath(engine.url.database))
    event.listen(engine, "engine_disposed", lambda _engine: signal.close())
    return signal


class Unknown:
    """No signal: every check says it cannot tell."""

    def token(self):
        return None

    def close(self):
        pass


class SqliteChanges:
    def __init__(self, path):
        self._path = path
        self._connection = None
        self._pid = None
        self._data_version = None
        self._changes = None

    def token(self):
        try:
            if self._pid != os.getpid():
                self._connection = None  # a parent's connection is not this process's to use
                self._connection = sqlite3.connect(self._path, timeout=0, isolation_level=None,
                                                   check_same_thread=False)
                self._pid = os.getpid()
                self._data_version = None
            data_version = self._connection.execute("PRAGMA data_version").fetchone()[0]
            if data_version != self._data_version:
                # Read after data_version: a change committed in between shows at the next check.
                self._changes = self._connection.execute("SELECT changes FROM change_counter").fetchone()[0]
                self._data_version = data_version
            return self._changes
        except sqlite3.Error:  # busy, or a schema from before the counter: unknown
            self.close()
            return None

    def close(self):
        connection, self._connection, self._pid = self._connection, None, None
        self._data_version = None
        if connection is not None:
            connection.close()


class PostgresChanges:
    def __init__(self, engine):
        self._engine = engine
        self._connection = None
        self._pid = None
        self._generation = 0
        self._retry_at = 0.0

    def token(self):
        connection = self._listening()
        if connection is None:
            return None
        try:
            readable, _, _ = select.select([connection.fileno()], [], [], 0)
            if readable:
                # Something arrived: a notification (or the end of the connection, which
                # ``notifies`` raises for). Read all there is, without waiting for more.
                for _ in connection.notifies(timeout=0):
                    pass
                self._generation += 1
        except Exception as exc:  # the connection broke: unknown until it is back
            log.warning("lost the database connection that listens for changes",
                        extra={"fields": {"error": type(exc).__name__}})
            self.close()
            self._retry_at = time.monotonic() + RECONNECT_SECONDS
            return None
        return self._generation

    def _listening(self):
        if self._pid == os.getpid() and self._connection is not None:
            return self._connection
        if self._pid != os.getpid():
            self._connection = None  # a parent's connection is not this process's to use
            self._pid = os.getpid()
            self._retry_at = 0.0
        if time.monotonic() < self._retry_at:
            return None
        try:
            # One of the engine's connections (its URL, timeouts and search_path), taken out of
            # its pool for good: it only ever listens.
            raw = self._engine.raw_connection()
            connection = raw.driver_connection
            raw.detach()
            connection.autocommit = True
            connection.execute(f"LISTEN {CHANNEL}")
        except Exception as exc:
            log.warning("cannot listen for changes in the database; reading keys on every request meanwhile",
                        extra={"fields": {"error": type(exc).__name__}})
            self._retry_at = time.monotonic() + RECONNECT_SECONDS
            return None
        self._connection = connection
        # What was kept before it listened may have changed unseen.
        self._generation += 1
        return connection

    def close(self):
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:
                pass

"""Storage: one SQLAlchemy engine per process, SQLite (WAL) by default, PostgreSQL by URL."""

import contextlib
import functools
import os
import sqlite3
import time
import weakref

from sqlalchemy import create_engine, event, or_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from ..config import DEFAULTS

# How long a write waits for another process's write lock on SQLite before it fails.
SQLITE_LOCK_WAIT_SECONDS = 30.0
_WRITE = "responses_proxy_write"
_SQLITE_BUSY = 5  # SQLITE_BUSY and its extended codes but BUSY_SNAPSHOT (517), which no wait cures
_SQLITE_BUSY_SNAPSHOT = 517


def make_engine(url, config=DEFAULTS, pooled=True, lock_wait=SQLITE_LOCK_WAIT_SECONDS):
    """The engine for ``url``; ``config`` gives PostgreSQL's ``DATABASE_*`` settings.

    ``pooled=False``: a new connection for every use, to meet the database as a starting
    worker would; ``lock_wait``: seconds to wait for a lock (SQLite) or a connection
    (PostgreSQL, unpooled). Statement parameters (conversation text, tokens) never appear in
    database error messages. Pooled connections are checked before use (``pool_pre_ping``):
    after a restart of the server, the dead ones are replaced instead of failing a request.
    """
    parsed = make_url(url)
    pooling = {} if pooled else {"poolclass": NullPool}
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed, pooling, lock_wait)
    if not pooled:
        limits = _postgresql_limits(parsed, config)
        limits["connect_timeout"] = max(1, int(lock_wait))
        return create_engine(url, connect_args=limits, hide_parameters=True, **pooling)
    return create_engine(url, pool_pre_ping=True, pool_size=config["DATABASE_POOL_SIZE"],
                         max_overflow=config["DATABASE_MAX_OVERFLOW"], hide_parameters=True,
                         connect_args=_postgresql_limits(parsed, config))


def _postgresql_limits(parsed, config):
    """How long the server may take: to connect (the driver's own timeout), and per statement
    or idle transaction (server settings, sent with every new connection in ``options``, after
    any the URL has: its ``search_path``, say)."""
    limits = {"connect_timeout": config["DATABASE_CONNECT_TIMEOUT"]}
    milliseconds = round(config["DATABASE_STATEMENT_TIMEOUT"] * 1000)
    if milliseconds:
        given = parsed.query.get("options") or ()
        options = [given] if isinstance(given, str) else list(given)
        options += [f"-c statement_timeout={milliseconds}", f"-c idle_in_transaction_session_timeout={milliseconds}"]
        limits["options"] = " ".join(options)
    return limits


def _sqlite_engine(url, parsed, pooling, lock_wait):
    if parsed.database and parsed.database != ":memory:":
        # Conversations are stored in plain text: the directory and the database are for the
        # gateway's user alone, whatever the umask (SQLite gives the WAL the database's mode).
        path = os.path.abspath(parsed.database)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        # Only a file that does not exist yet: closing any descriptor of a database file drops
        # every POSIX lock this process holds on it, and SQLite's connections rely on them.
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            pass
    # The driver does not begin transactions itself (isolation_level None) and never sleeps in C
    # on a lock (timeout 0): SQLite's busy handler would block the worker's whole event loop.
    # Transactions begin below; a lock wait is a retry loop with time.sleep, which gevent makes
    # cooperative, so the worker's other requests go on meanwhile.
    engine = create_engine(url, connect_args={"timeout": 0, "isolation_level": None}, hide_parameters=True,
                           **pooling)
    _LOCK_WAITS[engine] = lock_wait

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        # WAL lets every worker read while one writes (switching a new database to it takes a
        # lock: several processes may start at once); NORMAL is durable across crashes of the
        # process (only an OS crash may lose the last commits) and much cheaper than FULL.
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=0", "foreign_keys=ON"):
            waiting_for_locks(lock_wait, cursor.execute, "PRAGMA " + pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        # A writing transaction takes the write lock first: one that read first and then wrote
        # could fail for good (SQLITE_BUSY_SNAPSHOT) when another process wrote in between.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")

    @event.listens_for(engine, "do_execute")
    def _execute_waiting_for_locks(cursor, statement, parameters, _context):
        waiting_for_locks(lock_wait, cursor.execute, statement, parameters)
        return True

    return engine


# SQLite engines' lock waits, for ``write_one``, which runs below SQLAlchemy's events.
_LOCK_WAITS = weakref.WeakKeyDictionary()


def write_one(engine, statement, params, row_class):
    """One writing statement in a transaction of its own: its first row as ``row_class`` (a
    namedtuple of the columns it returns), or None.

    The same as ``with write(engine) as conn: conn.execute(statement, params).first()``. On
    SQLite, where the statement itself takes microseconds, it runs on the pooled connection's
    driver directly: SQLAlchemy's execution (events, compiled-cache lookup, result objects)
    costs several times the statement, and the key limits' statements run on every request.
    Errors are SQLAlchemy's all the same.
    """
    lock_wait = _LOCK_WAITS.get(engine)
    if lock_wait is None:
        with write(engine) as conn:
            row = conn.execute(statement, params).first()
        return None if row is None else row_class(*row)
    sql, names = _compiled(engine.dialect, statement)
    values = [params[name] for name in names]
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        try:
            waiting_for_locks(lock_wait, cursor.execute, "BEGIN IMMEDIATE")
            try:
                cursor.execute(sql, values)
                row = cursor.fetchone()
                cursor.execute("COMMIT")
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
        finally:
            cursor.close()
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, values, exc, sqlite3.Error, hide_parameters=True) from exc
    finally:
        connection.close()
    return None if row is None else row_class(*row)


@functools.lru_cache(maxsize=64)
def _compiled(dialect, statement):
    compiled = statement.compile(dialect=dialect)
    return str(compiled), tuple(compiled.positiontup)


def waiting_for_locks(wait, execute, *args):
    """``execute(*args)``, tried again while SQLite says another connection holds the lock it
    needs (a failed attempt did nothing), for up to ``wait`` seconds."""
    deadline = None
    pause = 0.002
    while True:
        try:
            return execute(*args)
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            if code is None or code & 0xFF != _SQLITE_BUSY or code == _SQLITE_BUSY_SNAPSHOT:
                raise
            now = time.monotonic()
            deadline = deadline or now + wait
            if now >= deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


@contextlib.contextmanager
def write(engine):
    """A transaction that writes (in place of ``engine.begin()``, also when it reads first): on SQLite
    it holds the write lock from its start, waited for without blocking other greenlets."""
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE: True})
        with conn.begin():
            yield conn




def take_lease(engine, table, row_id, until, owner_column, owner, seconds):
    """Mark a row held by ``owner`` for ``seconds`` unless someone else holds a live lease on
    it (one conditional UPDATE, so two processes never both win); True when taken."""
    now = time.time()
    with write(engine) as conn:
        return conn.execute(update(table).where(
            table.c.id == row_id, or_(until.is_(None), until < now),
        ).values({until: now + seconds, owner_column: owner})).rowcount == 1


def renew_lease(engine, table, row_id, until, owner_column, owner, seconds):
    """Extend ``owner``'s lease on a row; False when it is no longer theirs."""
    with write(engine) as conn:
        return conn.execute(update(table).where(table.c.id == row_id, owner_column == owner).values(
            {until: time.time() + seconds})).rowcount == 1


def insert_for(dialect_name):
    """The INSERT construct with ``on_conflict_do_update`` (SQLite and PostgreSQL spell it alike)."""
    return pg_insert if dialect_name == "postgresql" else sqlite_insert


def upsert(conn, table, rows, keys, updates):
    """Insert ``rows``, or update their ``updates`` columns where the ``keys`` already exist."""
    statement = insert_for(conn.dialect.name)(table)
    conn.execute(statement.on_conflict_do_update(
        index_elements=keys, set_={column: statement.excluded[column] for column in updates}), rows)

"""Storage: one SQLAlchemy engine per process, SQLite (WAL) by default, PostgreSQL by URL."""

import os
import time

from sqlalchemy import create_engine, event, or_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool


def make_engine(url, pooled=True, busy_timeout=30):
    """``pooled=False``: a new connection for every use, to meet the database as a starting
    worker would; ``busy_timeout``: seconds to wait for a lock (SQLite) or a connection
    (PostgreSQL)."""
    parsed = make_url(url)
    pooling = {} if pooled else {"poolclass": NullPool}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": busy_timeout}, **pooling)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            # WAL lets every worker read while one writes; NORMAL is durable across crashes of the
            # process (only an OS crash may lose the last commits) and much cheaper than FULL.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    if not pooled:
        return create_engine(url, connect_args={"connect_timeout": max(1, int(busy_timeout))}, **pooling)
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=20)


def take_lease(engine, table, row_id, until, owner_column, owner, seconds):
    """Mark a row held by ``owner`` for ``seconds`` unless someone else holds a live lease on
    it (one conditional UPDATE, so two processes never both win); True when taken."""
    now = time.time()
    with engine.begin() as conn:
        return conn.execute(update(table).where(
            table.c.id == row_id, or_(until.is_(None), until < now),
        ).values({until: now + seconds, owner_column: owner})).rowcount == 1


def insert_for(dialect_name):
    """The INSERT construct with ``on_conflict_do_update`` (SQLite and PostgreSQL spell it alike)."""
    return pg_insert if dialect_name == "postgresql" else sqlite_insert


def upsert(conn, table, rows, keys, updates):
    """Insert ``rows``, or update their ``updates`` columns where the ``keys`` already exist."""
    statement = insert_for(conn.dialect.name)(table)
    conn.execute(statement.on_conflict_do_update(
        index_elements=keys, set_={column: statement.excluded[column] for column in updates}), rows)

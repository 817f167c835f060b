"""``store.write_one``: a writing statement in a transaction of its own, below SQLAlchemy's
execution on SQLite, with the same results and the same errors as through it."""

import sqlite3
import threading
import time
from collections import namedtuple

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError

from responses_proxy.errors import unavailable
from responses_proxy.store import limits as limit_store
from responses_proxy.store import make_engine, migrate, write_one
from responses_proxy.store.tables import key_counters


def test_the_row_comes_back_and_the_change_is_committed(engine):
    row = limit_store.admit(engine, "key_a", 1000.0, 60, rpm=60, concurrency=5)
    assert (row.lease_period, row.in_flight) == (16, 1)
    limit_store.release(engine, "key_a", row.lease_period, 1001.0, 60)
    with engine.connect() as conn:
        assert conn.execute(select(key_counters.c.in_flight)).scalar() == 0


def test_a_refused_statement_returns_none_and_changes_nothing(engine):
    assert limit_store.admit(engine, "key_a", 1000.0, 60, concurrency=1) is not None
    assert limit_store.admit(engine, "key_a", 1000.0, 60, concurrency=1) is None
    with engine.connect() as conn:
        assert conn.execute(select(key_counters.c.in_flight)).scalar() == 1


def test_sqlite_waits_for_a_lock_without_blocking_and_fails_as_sqlalchemy_does(tmp_path):
    path = tmp_path / "locked.db"
    engine = make_engine(f"sqlite:///{path}", lock_wait=0.3)
    migrate.upgrade(engine)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError) as caught:
            limit_store.admit(engine, "key_a", 1000.0, 60, concurrency=1)
        assert time.monotonic() - started >= 0.3
        assert unavailable(caught.value), "a lock held too long is the database being unavailable: a 503"
        # Released within the wait: the statement goes through.
        threading.Timer(0.1, holder.execute, ["COMMIT"]).start()
        assert limit_store.admit(engine, "key_a", 1000.0, 60, concurrency=1).in_flight == 1
    finally:
        holder.close()
        engine.dispose()


def test_a_statement_error_rolls_back_and_leaves_the_connection_usable(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    migrate.upgrade(engine)
    broken = key_counters.insert().values(key_id=None).returning(key_counters.c.key_id)  # NOT NULL
    with pytest.raises(IntegrityError) as caught:
        write_one(engine, broken, {"key_id": None}, namedtuple("Row", "key_id"))
    assert not unavailable(caught.value)
    assert limit_store.admit(engine, "key_a", 1000.0, 60, concurrency=1).in_flight == 1
    engine.dispose()

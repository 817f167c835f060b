"""Shared pool state: cache affinity and per-worker in-flight counts."""

import time

from sqlalchemy import delete, func, select

from . import upsert, write
from .tables import affinity, worker_load


def affinity_get(engine, cache_key, not_before):
    """(account id, boundary) of a key used since ``not_before``, or None."""
    with engine.connect() as conn:
        row = conn.execute(select(affinity.c.account_id, affinity.c.boundary).where(
            affinity.c.cache_key == cache_key, affinity.c.updated_at >= not_before)).first()
    return tuple(row) if row else None


def affinity_put(engine, rows):
    """rows: [{"cache_key", "account_id", "updated_at"}], or all with a "boundary" too (which
    then replaces the stored one; else it is left as it is)."""
    if rows:
        updates = ["account_id", "updated_at", *(["boundary"] if "boundary" in rows[0] else [])]
        with write(engine) as conn:
            upsert(conn, affinity, rows, ["cache_key"], updates)


def affinity_prune(engine, older_than):
    with write(engine) as conn:
        return conn.execute(delete(affinity).where(affinity.c.updated_at < older_than)).rowcount


def report_load(engine, worker_id, counts):
    """Replace this worker's in-flight counts (only non-zero ones are kept)."""
    now = time.time()
    with write(engine) as conn:
        conn.execute(delete(worker_load).where(worker_load.c.worker_id == worker_id))
        rows = [{"worker_id": worker_id, "account_id": account_id, "in_flight": count, "updated_at": now}
                for account_id, count in counts.items() if count > 0]
        if rows:
            conn.execute(worker_load.insert(), rows)


def load_totals(engine, exclude_worker, fresh_after):
    """In-flight requests per account over the other live workers."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(worker_load.c.account_id, func.sum(worker_load.c.in_flight))
            .where(worker_load.c.worker_id != exclude_worker, worker_load.c.updated_at >= fresh_after)
            .group_by(worker_load.c.account_id)).all()
    return {account_id: int(total) for account_id, total in rows}


def clear_load(engine, worker_id):
    with write(engine) as conn:
        conn.execute(delete(worker_load).where(worker_load.c.worker_id == worker_id))


def prune_load(engine, older_than):
    """Forget the counts of workers that stopped reporting (they died without clearing them)."""
    with write(engine) as conn:
        return conn.execute(delete(worker_load).where(worker_load.c.updated_at < older_than)).rowcount

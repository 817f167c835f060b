"""Usage rows: one per request, written in batches by ``UsageRecorder``."""

import collections
import logging

from sqlalchemy import Integer, case, cast, func, insert, select

from . import limits, write
from .tables import api_keys, usage

log = logging.getLogger(__name__)

TOKENS = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "total_tokens")
COLUMNS = ("created_at", "request_id", "key_id", "account_id", "model", "stream", "status", "input_tokens",
           "output_tokens", "total_tokens", "cached_tokens", "reasoning_tokens", "ttfb_ms", "duration_ms",
           "error_code")


def insert_many(engine, rows):
    """Write usage rows, and add their tokens to their keys' day (``limits.add_tokens``) in the
    same transaction: a daily budget counts exactly what the rows say."""
    if rows:
        tokens = collections.Counter()
        for row in rows:
            if row.get("key_id") and row.get("total_tokens"):
                finished = row["created_at"] + (row.get("duration_ms") or 0) / 1000
                tokens[row["key_id"], limits.day_of(finished)] += row["total_tokens"]
        with write(engine) as conn:
            conn.execute(insert(usage), [{column: row.get(column) for column in COLUMNS} for row in rows])
            limits.add_tokens(conn, tokens)


# Time groups: whole periods since the epoch (UTC), as reports group rows by day or hour.
PERIODS = {"day": 86400, "hour": 3600}
GROUPS = {"key": usage.c.key_id, "model": usage.c.model, "account": usage.c.account_id}


def _period_of(dialect, seconds):
    value = usage.c.created_at / seconds
    # PostgreSQL rounds a cast to an integer; SQLite truncates, which for times since 1970 is floor.
    return func.floor(value) if dialect == "postgresql" else cast(value, Integer)


def summary(engine, since, until, groups=(), key_id=None):
    """Requests, errors and tokens of the rows in [since, until) (of one key, with ``key_id``),
    one row per value of ``groups`` (key, model, account; day and hour as whole periods since
    the epoch); grouping by key also gives the key's name."""
    columns = [(_period_of(engine.dialect.name, PERIODS[name]) if name in PERIODS else GROUPS[name]).label(name)
               for name in groups]
    names = [api_keys.c.name.label("key_name")] if "key" in groups else []
    query = (
        select(
            *columns, *names,
            func.count().label("requests"),
            func.coalesce(func.sum(case((usage.c.status >= 400, 1), else_=0)), 0).label("errors"),
            *(func.coalesce(func.sum(usage.c[name]), 0).label(name) for name in TOKENS),
            func.avg(usage.c.ttfb_ms).label("avg_ttfb_ms"),
        )
        .where(usage.c.created_at >= since, usage.c.created_at < until)
    )
    if names:
        query = query.select_from(usage.outerjoin(api_keys, api_keys.c.id == usage.c.key_id))
    if key_id is not None:
        query = query.where(usage.c.key_id == key_id)
    if columns:
        query = query.group_by(*columns, *names)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def per_account(engine, since):
    """{account_id: (requests, total tokens)} since ``since``."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(usage.c.account_id, func.count(), func.coalesce(func.sum(usage.c.total_tokens), 0))
            .where(usage.c.created_at >= since, usage.c.account_id.is_not(None))
            .group_by(usage.c.account_id)).all()
    return {account_id: (int(requests), int(tokens)) for account_id, requests, tokens in rows}


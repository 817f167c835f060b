"""Usage rows: one per request, written in batches by ``UsageRecorder``."""

import logging

from sqlalchemy import func, insert, select

from .tables import usage

log = logging.getLogger(__name__)

COLUMNS = ("created_at", "request_id", "key_id", "account_id", "model", "stream", "status", "input_tokens",
           "output_tokens", "total_tokens", "cached_tokens", "reasoning_tokens", "ttfb_ms", "duration_ms",
           "error_code")


def insert_many(engine, rows):
    if rows:
        with engine.begin() as conn:
            conn.execute(insert(usage), [{column: row.get(column) for column in COLUMNS} for row in rows])


def summary(engine, since, group_by="key_id"):
    """Requests, errors and tokens per ``group_by`` (key_id, account_id or model) since ``since``."""
    column = usage.c[group_by]
    query = (
        select(
            column.label("group"),
            func.count().label("requests"),
            func.sum((usage.c.status >= 400).cast(usage.c.status.type)).label("errors"),
            func.coalesce(func.sum(usage.c.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(usage.c.cached_tokens), 0).label("cached_tokens"),
            func.coalesce(func.sum(usage.c.output_tokens), 0).label("output_tokens"),
            func.coalesce(func.sum(usage.c.reasoning_tokens), 0).label("reasoning_tokens"),
            func.coalesce(func.sum(usage.c.total_tokens), 0).label("total_tokens"),
            func.avg(usage.c.ttfb_ms).label("avg_ttfb_ms"),
        )
        .where(usage.c.created_at >= since)
        .group_by(column)
        .order_by(func.count().desc())
    )
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def recent(engine, limit=100):
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(
            select(usage).order_by(usage.c.id.desc()).limit(limit)).mappings()]


def per_account(engine, since):
    """{account_id: (requests, total tokens)} since ``since``."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(usage.c.account_id, func.count(), func.coalesce(func.sum(usage.c.total_tokens), 0))
            .where(usage.c.created_at >= since, usage.c.account_id.is_not(None))
            .group_by(usage.c.account_id)).all()
    return {account_id: (int(requests), int(tokens)) for account_id, requests, tokens in rows}


def tokens_of_key(engine, key_id, since):
    """Total tokens of a key's requests since ``since``."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.sum(usage.c.total_tokens), 0))
                                .where(usage.c.key_id == key_id, usage.c.created_at >= since)).scalar())

"""Per-key limit counters: one row per key, one statement to check and count a request.

The three limits share the row, and one conditional upsert checks every limit a key has and
counts the request (a refused request changes nothing):

- requests per minute, as a GCRA (a bucket of ``rpm`` requests that refills continuously):
  ``bucket_full_at`` is when the bucket is full again. Each request pushes it 60/rpm seconds
  further, and is admitted while it stays within a minute from now;
- requests in flight, in lease periods: a request counts in the period it was admitted in,
  and its worker moves it into each new period while it runs (``renew``). The row keeps the
  current and the previous period's counts; anything older (what a crashed worker left
  behind) drops out, so a stale count expires after one to two periods;
- tokens per calendar day (UTC): the total tokens of the requests that finished that day,
  added when their usage rows are written (in the same transaction, batched: no statement of
  its own on the request's path), for every key, so that a budget set during the day starts
  from what the key used that day.

PostgreSQL re-checks the WHERE of a conflicting upsert against the row a concurrent
transaction committed, and SQLite has one writer at a time: two workers never both take the
last unit of a limit.
"""

import functools
from collections import namedtuple

from sqlalchemy import BigInteger, Float, Integer, String, and_, bindparam, case, delete, literal_column, select, update

from . import insert_for, write, write_one
from .tables import key_counters

MINUTE = 60.0
DAY = 86400
# Floating-point slack when a request lands exactly on the edge of the requests bucket.
SLACK = 0.001

_c = key_counters.c
_key = bindparam("key", type_=String)
_now = bindparam("now", type_=Float)
_period = bindparam("period", type_=BigInteger)
_day = bindparam("day", type_=Integer)
_registered = bindparam("registered", type_=BigInteger)
_count = bindparam("count", type_=Integer)
_finished_tokens = bindparam("finished_tokens", type_=BigInteger)
_interval = bindparam("interval", type_=Float)
# Constants written into the SQL: each bound parameter costs a little on every execution.
_0 = literal_column("0", Integer)
_1 = literal_column("1", Integer)

# The stored row seen from ``period`` and ``day``. A statement never moves the row back to an
# earlier period or day: another host's clock may run a little ahead.
_row_period = case((_c.lease_period >= _period, _c.lease_period), else_=_period)
_row_current = case((_c.lease_period >= _period, _c.in_flight), else_=_0)
_row_previous = case((_c.lease_period >= _period, _c.in_flight_previous),
                     (_c.lease_period == _period - _1, _c.in_flight), else_=_0)
_row_token_day = case((_c.token_day >= _day, _c.token_day), else_=_day)
_row_tokens = case((_c.token_day >= _day, _c.tokens), else_=_0)
_bucket_start = case((_c.bucket_full_at > _now, _c.bucket_full_at), else_=_now)

RETURNED = (_c.bucket_full_at, _c.lease_period, _c.in_flight, _c.in_flight_previous, _c.token_day, _c.tokens)

Counts = namedtuple("Counts", "in_flight tokens bucket_full_at")
Counters = namedtuple("Counters", [column.name for column in RETURNED])


def period_of(now, lease_seconds):
    return int(now // lease_seconds)


def day_of(now):
    return int(now // DAY)


def _fresh_row(**values):
    row = {"key_id": _key, "bucket_full_at": literal_column("NULL", Float), "lease_period": _period, "in_flight": _0,
           "in_flight_previous": _0, "token_day": _day, "tokens": _0}
    row.update(values)
    return row


@functools.cache
def _admit_statement(dialect, rpm, concurrency, tokens):
    """The upsert for a key with these limits (statements are built once: building one costs
    more than running it)."""
    changes, checks = {}, []
    fresh = {}
    if rpm:
        changes["bucket_full_at"] = _bucket_start + _interval
        checks.append(_bucket_start + _interval <= bindparam("horizon", type_=Float))
        fresh["bucket_full_at"] = _now + _interval
    if concurrency:
        changes.update(lease_period=_row_period, in_flight=_row_current + _1, in_flight_previous=_row_previous)
        checks.append(_row_current + _row_previous < bindparam("concurrency", type_=Integer))
        fresh["in_flight"] = _1
    if tokens:
        changes.update(token_day=_row_token_day, tokens=_row_tokens)
        checks.append(_row_tokens < bindparam("daily_tokens", type_=BigInteger))
    statement = insert_for(dialect)(key_counters).values(_fresh_row(**fresh))
    return statement.on_conflict_do_update(index_elements=[_c.key_id], set_=changes,
                                           where=and_(*checks)).returning(*RETURNED)


def admit(engine, key_id, now, lease_seconds, rpm=None, concurrency=None, daily_tokens=None):
    """Count one request against the key's limits: the counters row after it, or None (and
    nothing changed) when a limit refuses it. ``lease_period`` of the row is the period the
    request is counted in."""
    params = {"key": key_id, "now": now, "period": period_of(now, lease_seconds), "day": day_of(now)}
    if rpm is not None:
        params.update(interval=MINUTE / rpm, horizon=now + MINUTE + SLACK)
    if concurrency is not None:
        params["concurrency"] = concurrency
    if daily_tokens is not None:
        params["daily_tokens"] = daily_tokens
    statement = _admit_statement(engine.dialect.name, rpm is not None, concurrency is not None,
                                 daily_tokens is not None)
    return write_one(engine, statement, params, Counters)


_RELEASE = update(key_counters).where(_c.key_id == _key).values(
    lease_period=_row_period,
    in_flight=case((and_(_row_period == _registered, _row_current > _0), _row_current - _1), else_=_row_current),
    in_flight_previous=case((and_(_row_period - _1 == _registered, _row_previous > _0), _row_previous - _1),
                            else_=_row_previous)).returning(_c.lease_period)
Released = namedtuple("Released", "lease_period")


def release(engine, key_id, registered, now, lease_seconds):
    """A request counted in flight in period ``registered`` ended."""
    params = {"key": key_id, "registered": registered, "period": period_of(now, lease_seconds)}
    write_one(engine, _RELEASE, params, Released)


@functools.cache
def _add_tokens_statement(dialect):
    statement = insert_for(dialect)(key_counters).values(_fresh_row(tokens=_finished_tokens))
    # Tokens of a day before the row's count for nothing: that day is over.
    return statement.on_conflict_do_update(index_elements=[_c.key_id], set_={
        "token_day": _row_token_day,
        "tokens": case((_c.token_day > _day, _c.tokens), (_c.token_day == _day, _c.tokens + _finished_tokens),
                       else_=_finished_tokens)})


def add_tokens(conn, tokens):
    """Add ``tokens`` ({(key id, day): total tokens of its requests that finished that day}) to
    the keys' counts of the day."""
    if tokens:
        conn.execute(_add_tokens_statement(conn.dialect.name), [
            {"key": key_id, "day": day, "finished_tokens": count, "period": 0}
            for (key_id, day), count in tokens.items()])


_RENEW = update(key_counters).where(_c.key_id == _key).values(
    lease_period=_row_period,
    in_flight=_row_current + case((_row_period != _registered, _count), else_=_0),
    in_flight_previous=case(
        (_row_period - _1 == _registered, case((_row_previous > _count, _row_previous - _count), else_=_0)),
        else_=_row_previous),
).returning(_c.lease_period)


def renew(engine, key_id, registered, count, now, lease_seconds):
    """Move ``count`` requests still running from period ``registered`` into the current one;
    returns the period they now count in, or None when the key's counters were reset (they
    no longer count)."""
    with write(engine) as conn:
        return conn.execute(_RENEW, {"key": key_id, "registered": registered, "count": count,
                                     "period": period_of(now, lease_seconds)}).scalar()


def counts(row, now, lease_seconds):
    """What a counters row (or None) holds as of ``now``: in flight, today's tokens, bucket."""
    if row is None:
        return Counts(0, 0, None)
    period = period_of(now, lease_seconds)
    if row.lease_period >= period:
        in_flight = row.in_flight + row.in_flight_previous
    elif row.lease_period == period - 1:
        in_flight = row.in_flight
    else:
        in_flight = 0
    tokens = row.tokens if row.token_day >= day_of(now) else 0
    return Counts(in_flight, tokens, row.bucket_full_at)


def read(engine, key_id):
    with engine.connect() as conn:
        return conn.execute(select(*RETURNED).where(_c.key_id == key_id)).first()


def read_all(engine):
    """{key id: counters row} of every key that has one."""
    with engine.connect() as conn:
        return {row.key_id: row for row in conn.execute(select(_c.key_id, *RETURNED))}


def reset(engine, key_id):
    """Forget a key's counters: a full requests bucket, nothing in flight, no tokens today."""
    with write(engine) as conn:
        conn.execute(delete(key_counters).where(_c.key_id == key_id))

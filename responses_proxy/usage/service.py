"""Usage reports without Flask: the time window and groups as operators and clients write them,
and the rows the usage table holds for them."""

import re
import time
from datetime import UTC, datetime

from ..store import usage as store

DIMENSIONS = ("key", "model", "account", "day", "hour")
METRICS = ("requests", "errors", *store.TOKENS)
DURATION = re.compile(r"^(\d+)([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
TIME_FORMS = "a duration back from now (30m, 24h, 7d) or an ISO 8601 date or time (UTC unless it names a zone)"


def parse_time(value, now):
    """Epoch seconds for ``24h``-style durations (that long before ``now``) and ISO 8601 dates or
    times; ValueError saying what is accepted."""
    text = value.strip()
    match = DURATION.match(text)
    if match:
        return now - int(match.group(1)) * UNITS[match.group(2)]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected {TIME_FORMS}, got {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_groups(values, allowed=DIMENSIONS):
    """The group names of repeated and/or comma-separated ``values``, in order, once each."""
    groups = []
    for value in values:
        for name in value.split(","):
            name = name.strip().lower()
            if name not in allowed:
                raise ValueError(f"expected {', '.join(repr(item) for item in allowed)}, got {name!r}")
            if name not in groups:
                groups.append(name)
    return groups


class WindowError(ValueError):
    """A malformed bound of a time window; ``name`` says which (since or until)."""

    def __init__(self, name, message):
        super().__init__(message)
        self.name = name


def window(since, until, now=None):
    """(since, until) in epoch seconds from their written forms (``until`` None: now);
    ``WindowError`` naming the bound that is malformed, or ``since`` when they are out of order."""
    now = time.time() if now is None else now
    bounds = {}
    for name, value in (("since", since), ("until", until)):
        try:
            bounds[name] = now if value is None else parse_time(value, now)
        except ValueError as exc:
            raise WindowError(name, str(exc)) from None
    if bounds["since"] >= bounds["until"]:
        raise WindowError("since", "it must be earlier than 'until'")
    return bounds["since"], bounds["until"]


def label(name, value):
    """A group's value as reports show it: days and hours as UTC dates and times."""
    if name == "day":
        return datetime.fromtimestamp(int(value) * 86400, UTC).strftime("%Y-%m-%d")
    if name == "hour":
        return datetime.fromtimestamp(int(value) * 3600, UTC).strftime("%Y-%m-%dT%H:00:00Z")
    return value


class UsageService:
    def __init__(self, engine):
        self.engine = engine

    def report(self, since, until, groups=(), key_id=None):
        """One row per group (one row in all without groups): the group's values, then
        requests, errors, input/cached/output/reasoning/total tokens and the average time to
        first byte. Grouping by key adds the key's name. Times first and in order, then the
        busiest groups first."""
        rows = []
        for found in store.summary(self.engine, since, until, groups, key_id):
            row = {}
            for name in groups:
                row[name] = label(name, found[name])
                if name == "key":
                    row["key_name"] = found["key_name"]
            row.update({metric: int(found[metric] or 0) for metric in METRICS})
            row["avg_ttfb_ms"] = None if found["avg_ttfb_ms"] is None else round(float(found["avg_ttfb_ms"]), 1)
            rows.append(row)
        times = [name for name in groups if name in store.PERIODS]
        others = [name for name in groups if name not in store.PERIODS]
        rows.sort(key=lambda row: (tuple(row[name] for name in times), -row["requests"],
                                   tuple(str(row[name] or "") for name in others)))
        return rows

"""What the status page shows, as one document: the page is rendered from it and
``/status/data.json`` is it, so a refresh shows exactly what a reload would. Words and times
are written here, once, for both."""

import time
from datetime import UTC, datetime

from ..cli import when
from ..pool import COOLING_DOWN
from ..pool.admin import describe_state, describe_window
from ..usage.service import label

HOURS = 24  # the chart: one bar per hour of the last day, the current hour last
WINDOWS = ("primary", "secondary")
# A busy day must not hide a quiet hour: any hour with use gets at least this share of the height.
SMALLEST_BAR_PERCENT = 2.0


def status_document(services, now=None):
    """Accounts, keys and the last day's chart, as of ``now``."""
    now = time.time() if now is None else now
    return {"generated_at": now, "generated_at_text": when(now),
            "accounts": [account_entry(row) for row in services.accounts.listing(now)],
            "keys": key_entries(services, now),
            "chart": chart(services.usage, now)}


def account_entry(row):
    quota = row["quota"] if isinstance(row["quota"], dict) else {}
    error_at = None if row["problem"] else row["last_error_at"]
    return {"id": row["id"], "email": row["email"], "plan": row["plan"],
            "state": row["state"], "state_text": describe_state(row),
            "cooldown_until": row["cooldown_until"] if row["state"] == COOLING_DOWN else None,
            "quota": {name: window_entry(quota.get(name)) for name in WINDOWS},
            "last_error": row["problem"] or row["last_error"],
            "last_error_at": error_at, "last_error_at_text": when(error_at) if error_at else "",
            "last_hour": row["last_hour"], "last_day": row["last_day"]}


def window_entry(window):
    window = window if isinstance(window, dict) else {}
    return {"used_percent": window.get("used_percent"), "resets_at": window.get("resets_at"),
            "text": describe_window(window)}


def key_entries(services, now):
    """The keys that can still be used, with their limits, what the limits count now, and
    their last day's use."""
    day = {row["key"]: row for row in services.usage.report(now - 86400, now, ("key",))}
    entries = []
    for key in services.keys.list():
        if key["revoked_at"] is not None:
            continue
        used = day.get(key["id"], {})
        entries.append({name: key[name] for name in ("id", "name", "prefix", "rpm", "concurrency", "daily_tokens",
                                                     "in_flight", "tokens_today")}
                       | {"last_day": {"requests": used.get("requests", 0), "tokens": used.get("total_tokens", 0)}})
    return entries


def chart(usage, now):
    """Requests and tokens of each of the last ``HOURS`` hours (UTC), each with its height as a
    percentage of the busiest hour's."""
    first = (int(now) // 3600 - (HOURS - 1)) * 3600
    found = {row["hour"]: row for row in usage.report(first, now, ("hour",))}
    hours = []
    for index in range(HOURS):
        start = first + index * 3600
        row = found.get(label("hour", start // 3600), {})
        hours.append({"start": start, "label": hour_text(start),
                      "requests": row.get("requests", 0), "tokens": row.get("total_tokens", 0)})
    top = {name: max(hour[name] for hour in hours) for name in ("requests", "tokens")}
    for hour in hours:
        for name in ("requests", "tokens"):
            hour[name + "_percent"] = bar_percent(hour[name], top[name])
        hour["summary"] = (f"{hour['label']}–{hour_text(hour['start'] + 3600)} UTC: "
                           f"{hour['requests']} requests, {hour['tokens']} tokens")
    return {"since": first, "until": now, "max_requests": top["requests"], "max_tokens": top["tokens"],
            "hours": hours}


def hour_text(epoch):
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:00")


def bar_percent(value, top):
    if not value:
        return 0
    return round(max(SMALLEST_BAR_PERCENT, 100 * value / top), 1)

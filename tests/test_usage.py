"""Usage reports on SQLite AND PostgreSQL: ``flask --app wsgi usage`` and ``GET /v1/usage``."""

import csv
import io
import json
import time
from datetime import UTC, datetime

import pytest

from responses_proxy.store import keys as key_store
from responses_proxy.store import usage as usage_store
from responses_proxy.usage.service import parse_groups, parse_time, window
from tests.helpers import built_usage_row, make_app


def epoch(text):
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.fixture
def app(tmp_path, upstream, database_url):
    app = make_app(tmp_path, upstream.base_url, database_url)
    yield app
    app.extensions["responses_proxy"].engine.dispose()


@pytest.fixture
def services(app):
    return app.extensions["responses_proxy"]


def run(app, *args):
    with app.app_context():
        return app.test_cli_runner().invoke(args=["usage", *args])


def ok(result):
    assert result.exit_code == 0, result.output
    return result.output


def report(app, *args):
    return json.loads(ok(run(app, *args, "--json")))


@pytest.fixture
def keys(services):
    return key_store.create(services.engine, "alpha"), key_store.create(services.engine, "beta")


@pytest.fixture
def recent(services, keys):
    """Four rows of the last hour (alpha: 2 requests, one an error; beta: 2), one a week old."""
    alpha, beta = keys[0]["id"], keys[1]["id"]
    now = time.time()
    usage_store.insert_many(services.engine, [
        built_usage_row(now - 60, alpha, total=15, account_id="acct_1"),
        built_usage_row(now - 120, alpha, status=502, total=0, account_id="acct_1"),
        built_usage_row(now - 180, beta, model="gpt-4.1", total=25, account_id="acct_2"),
        built_usage_row(now - 240, beta, total=35, account_id="acct_1"),
        built_usage_row(now - 7 * 86400 - 60, alpha, total=1000),
    ])
    return alpha, beta


@pytest.fixture
def dated(services, keys):
    """Rows at fixed times over two UTC days."""
    alpha, beta = keys[0]["id"], keys[1]["id"]
    usage_store.insert_many(services.engine, [
        built_usage_row(epoch("2026-01-01T10:15:00"), alpha, total=10),
        built_usage_row(epoch("2026-01-01T10:45:00"), beta, total=20, model="gpt-4.1"),
        built_usage_row(epoch("2026-01-01T23:59:59"), alpha, total=30),
        built_usage_row(epoch("2026-01-02T00:00:00"), alpha, total=40, status=429),
    ])
    return alpha, beta


# --- the report -------------------------------------------------------------------------------------

def test_by_key_is_the_default_with_every_figure(app, recent, keys):
    alpha, beta = recent
    rows = report(app)

    assert [row["key"] for row in rows] == [alpha, beta] or [row["key"] for row in rows] == [beta, alpha]
    by_key = {row["key"]: row for row in rows}
    assert by_key[alpha] == {"key": alpha, "key_name": "alpha", "requests": 2, "errors": 1, "input_tokens": 5,
                             "cached_tokens": 2, "output_tokens": 10, "reasoning_tokens": 4, "total_tokens": 15,
                             "avg_ttfb_ms": 120.0}
    assert (by_key[beta]["requests"], by_key[beta]["errors"], by_key[beta]["total_tokens"]) == (2, 0, 60)


def test_by_model_and_by_account(app, recent):
    assert {row["model"]: row["requests"] for row in report(app, "--by", "model")} == {"gpt-5.2": 3, "gpt-4.1": 1}
    assert {row["account"]: row["total_tokens"] for row in report(app, "--by", "account")} == {
        "acct_1": 50, "acct_2": 25}


@pytest.mark.parametrize("since, expected", [("8d", 5), ("7d", 4), ("1h", 4), ("150s", 2), ("1m", 0)])
def test_since_a_duration(app, recent, since, expected):
    assert sum(row["requests"] for row in report(app, "--since", since)) == expected


def test_by_day_and_by_hour_in_utc(app, dated):
    window = ("--since", "2025-12-31", "--until", "2026-01-03")
    assert [(row["day"], row["requests"], row["total_tokens"]) for row in report(app, *window, "--by", "day")] == [
        ("2026-01-01", 3, 60), ("2026-01-02", 1, 40)]
    assert [(row["hour"], row["requests"]) for row in report(app, *window, "--by", "hour")] == [
        ("2026-01-01T10:00:00Z", 2), ("2026-01-01T23:00:00Z", 1), ("2026-01-02T00:00:00Z", 1)]


@pytest.mark.parametrize("groups", [("--by", "key", "--by", "day"), ("--by", "key,day"), ("--by", "key, day,key")])
def test_groups_combine(app, dated, groups):
    alpha, beta = dated
    rows = report(app, "--since", "2025-12-31", "--until", "2026-01-03", *groups)
    assert [(row["day"], row["key"], row["requests"], row["errors"]) for row in rows] == [
        ("2026-01-01", alpha, 2, 0), ("2026-01-01", beta, 1, 0), ("2026-01-02", alpha, 1, 1)]
    assert set(rows[0]) == {"key", "key_name", "day", "requests", "errors", "input_tokens", "cached_tokens",
                            "output_tokens", "reasoning_tokens", "total_tokens", "avg_ttfb_ms"}


@pytest.mark.parametrize("since, until, requests", [
    ("2026-01-01", "2026-01-02", 3),  # [since, until): midnight belongs to the next day
    ("2026-01-01T10:30:00Z", "2026-01-02T00:00:00+00:00", 2),
    ("2026-01-01T11:30+01:00", "2026-01-01T23:59:59", 1),
    ("2026-01-02", "2026-01-03", 1),
])
def test_since_and_until_as_iso_dates(app, dated, since, until, requests):
    assert sum(row["requests"] for row in report(app, "--since", since, "--until", until)) == requests


def test_formats(app, dated):
    args = ("--since", "2025-12-31", "--until", "2026-01-03", "--by", "day,model")
    rows = report(app, *args)
    assert json.loads(ok(run(app, *args, "--format", "json"))) == rows

    parsed = list(csv.reader(io.StringIO(ok(run(app, *args, "--format", "csv")))))
    assert parsed[0] == ["day", "model", "requests", "errors", "input_tokens", "cached_tokens", "output_tokens",
                         "reasoning_tokens", "total_tokens", "avg_ttfb_ms"]
    assert [dict(zip(parsed[0], line, strict=True)) for line in parsed[1:]] == [
        {name: str(value) for name, value in row.items()} for row in rows]

    text = ok(run(app, *args))
    lines = text.splitlines()
    assert lines[0].split() == ["DAY", "MODEL", "REQUESTS", "ERRORS", "INPUT", "CACHED", "OUTPUT", "REASONING",
                                "TOTAL", "AVG", "TTFB", "MS"]
    assert len(lines) == 1 + len(rows)
    assert lines[1].split()[:4] == [rows[0]["day"], rows[0]["model"], str(rows[0]["requests"]),
                                    str(rows[0]["errors"])]


def test_an_empty_report(app):
    assert report(app) == []
    assert "(none)" in ok(run(app))
    assert list(csv.reader(io.StringIO(ok(run(app, "--format", "csv", "--by", "model"))))) == [
        ["model", "requests", "errors", "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens",
         "total_tokens", "avg_ttfb_ms"]]


@pytest.mark.parametrize("args, fragment", [
    pytest.param(("--since", "yesterday"), "--since", id="since-word"),
    pytest.param(("--since", "24"), "--since", id="since-no-unit"),
    pytest.param(("--since", "-1h"), "--since", id="since-negative"),
    pytest.param(("--since", "1w"), "--since", id="since-weeks"),
    pytest.param(("--until", "2026-13-01"), "--until", id="until-no-such-month"),
    pytest.param(("--since", "1h", "--until", "2h"), "earlier than", id="since-after-until"),
    pytest.param(("--by", "colour"), "--by", id="unknown-group"),
    pytest.param(("--by", "key,"), "--by", id="empty-group"),
    pytest.param(("--format", "xml"), "--format", id="unknown-format"),
    pytest.param(("--format", "csv", "--json"), "--json", id="json-and-csv"),
])
def test_bad_options(app, args, fragment):
    result = run(app, *args)
    assert result.exit_code != 0
    assert fragment in result.output and "Traceback" not in result.output


def test_parsers():
    now = epoch("2026-01-02T00:00:00")
    assert parse_time("30m", now) == now - 1800
    assert parse_time("2026-01-01", now) == now - 86400
    assert parse_time("2026-01-01T01:00:00+01:00", now) == now - 86400
    assert parse_groups(["key,day", "day", " Model "]) == ["key", "day", "model"]
    assert window("2d", None, now) == (now - 2 * 86400, now)


# --- GET /v1/usage: a key's own ----------------------------------------------------------------------

def get(app, key, **params):
    return app.test_client().get("/v1/usage", query_string=params, headers={"Authorization": f"Bearer {key}"})


def test_a_key_sees_its_own_usage_only(app, keys, recent):
    alpha, beta = keys
    mine = get(app, alpha["key"])
    theirs = get(app, beta["key"])

    assert mine.status_code == 200 and theirs.status_code == 200
    assert mine.json["object"] == "usage" and mine.json["key_id"] == alpha["id"] and mine.json["group_by"] == []
    assert mine.json["until"] - mine.json["since"] == pytest.approx(86400, abs=1)
    assert mine.json["data"] == [{"requests": 2, "errors": 1, "input_tokens": 5, "cached_tokens": 2,
                                  "output_tokens": 10, "reasoning_tokens": 4, "total_tokens": 15}]
    assert theirs.json["data"][0]["requests"] == 2 and theirs.json["data"][0]["total_tokens"] == 60


def test_a_key_groups_its_usage(app, keys, dated):
    alpha = keys[0]
    window = {"since": "2025-12-31", "until": "2026-01-03"}
    by_day = get(app, alpha["key"], group_by="day", **window).json
    assert [(row["day"], row["requests"], row["total_tokens"]) for row in by_day["data"]] == [
        ("2026-01-01", 2, 40), ("2026-01-02", 1, 40)]
    by_both = get(app, alpha["key"], group_by="model,hour", **window).json
    assert by_both["group_by"] == ["model", "hour"]
    assert [(row["hour"], row["model"]) for row in by_both["data"]] == [
        ("2026-01-01T10:00:00Z", "gpt-5.2"), ("2026-01-01T23:00:00Z", "gpt-5.2"), ("2026-01-02T00:00:00Z", "gpt-5.2")]
    repeated = app.test_client().get("/v1/usage?group_by=model&group_by=day&since=2025-12-31&until=2026-01-03",
                                     headers={"Authorization": f"Bearer {alpha['key']}"})
    assert repeated.json["group_by"] == ["model", "day"]


@pytest.mark.parametrize("params, param, fragment", [
    pytest.param({"since": "yesterday"}, "since", "Invalid value for 'since': expected a duration", id="since"),
    pytest.param({"until": "soon"}, "until", "Invalid value for 'until'", id="until"),
    pytest.param({"since": ""}, "since", "Invalid value for 'since'", id="empty-since"),
    pytest.param({"since": "1h", "until": "2h"}, "since", "earlier than 'until'", id="order"),
    pytest.param({"group_by": "key"}, "group_by", "expected 'model', 'day', 'hour', got 'key'", id="by-key"),
    pytest.param({"group_by": "account"}, "group_by", "got 'account'", id="by-account"),
    pytest.param({"group_by": ""}, "group_by", "Invalid value for 'group_by'", id="empty-group"),
    pytest.param({"key_id": "key_other"}, "key_id", "Unrecognized query parameter: 'key_id'", id="other-key"),
    pytest.param({"start_time": "1"}, "start_time", "Unrecognized query parameter", id="unknown"),
])
def test_bad_queries_are_400_naming_the_param(app, keys, params, param, fragment):
    reply = get(app, keys[0]["key"], **params)
    assert reply.status_code == 400
    error = reply.json["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_request_error", param)
    assert fragment in error["message"], error["message"]


def test_a_parameter_given_twice_is_400(app, keys):
    reply = app.test_client().get("/v1/usage?since=1h&since=2h", headers={"Authorization": f"Bearer {keys[0]['key']}"})
    assert reply.status_code == 400 and reply.json["error"]["param"] == "since"


def test_usage_needs_a_key(app):
    reply = app.test_client().get("/v1/usage")
    assert reply.status_code == 401 and reply.json["error"]["code"] == "invalid_api_key"

"""Usage reports of real traffic through gunicorn, on SQLite and on PostgreSQL: the operator's
``flask --app wsgi usage`` and a key's ``GET /v1/usage`` add up to what was sent."""

import csv
import io
import json

import pytest
import requests

from tests.e2e.helpers import cli, database_env, wait_for
from tests.fake_upstream import USAGE, auth_json
from tests.helpers import Gateway

ACCOUNT = "acct-usage"
# What the fake upstream reports for every answer, as the reports name it.
TOKENS = {"input_tokens": USAGE["input_tokens"], "cached_tokens": USAGE["input_tokens_details"]["cached_tokens"],
          "output_tokens": USAGE["output_tokens"],
          "reasoning_tokens": USAGE["output_tokens_details"]["reasoning_tokens"], "total_tokens": USAGE["total_tokens"]}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def reporting(request, fake_upstream, tmp_path_factory, postgres_schemas):
    server = Gateway(tmp_path_factory.mktemp("usage"), fake_upstream.base_url,
                     env=database_env(request.param, postgres_schemas))
    server.start()
    server.import_account(auth_json(account_id=ACCOUNT, last_refresh="2099-01-01T00:00:00Z"))
    yield server
    server.stop()


def send(gateway, key, **body):
    reply = requests.post(gateway.url + "/v1/responses", headers={"Authorization": f"Bearer {key['key']}"},
                          json={"model": "gpt-5.2", "input": "hi", **body}, timeout=20)
    return reply.status_code


def own_usage(gateway, key, **params):
    reply = requests.get(gateway.url + "/v1/usage", params=params,
                         headers={"Authorization": f"Bearer {key['key']}"}, timeout=10)
    assert reply.status_code == 200, reply.text
    return reply.json()


def expected(requests_sent, answered, errors):
    return {"requests": requests_sent, "errors": errors, **{name: answered * value for name, value in TOKENS.items()}}


def test_reports_add_up_to_what_was_sent(reporting, upstream):
    alpha, beta = reporting.create_key_row(), reporting.create_key_row()
    statuses = [send(reporting, alpha), send(reporting, alpha, stream=True), send(reporting, alpha),
                send(reporting, alpha, model="gpt-4.1", stream=True), send(reporting, alpha, store=True),
                send(reporting, beta), send(reporting, beta, model="gpt-4.1")]
    assert statuses == [200, 200, 200, 200, 400, 200, 200]
    answered = len(upstream.response_requests())
    assert answered == 6
    # Rows are written in batches: wait until both keys' rows are all in.
    assert wait_for(lambda: own_usage(reporting, alpha)["data"][0]["requests"] == 5
                    and own_usage(reporting, beta)["data"][0]["requests"] == 2)

    mine, theirs = own_usage(reporting, alpha), own_usage(reporting, beta)
    assert mine["key_id"] == alpha["id"] and mine["data"] == [expected(5, 4, 1)]
    assert theirs["key_id"] == beta["id"] and theirs["data"] == [expected(2, 2, 0)]
    by_model = {row["model"]: row for row in own_usage(reporting, alpha, group_by="model")["data"]}
    # The refused request never named a model the gateway accepted: it has none.
    assert {model: row["requests"] for model, row in by_model.items()} == {"gpt-5.2": 3, "gpt-4.1": 1, None: 1}
    assert by_model["gpt-4.1"]["total_tokens"] == USAGE["total_tokens"]
    hours = own_usage(reporting, alpha, group_by="day,hour")["data"]
    assert sum(row["requests"] for row in hours) == 5 and all(row["hour"].startswith(row["day"]) for row in hours)

    parsed = list(csv.reader(io.StringIO(cli(reporting, "usage", "--by", "key", "--format", "csv"))))
    header, rows = parsed[0], [dict(zip(parsed[0], line, strict=True)) for line in parsed[1:]]
    assert header[:2] == ["key", "key_name"]
    by_key = {row["key"]: row for row in rows}
    assert set(by_key) == {alpha["id"], beta["id"]}
    for key, (sent, served, errors) in ((alpha, (5, 4, 1)), (beta, (2, 2, 0))):
        assert {name: int(by_key[key["id"]][name]) for name in expected(0, 0, 0)} == expected(sent, served, errors)
    assert sum(int(row["total_tokens"]) for row in rows) == answered * USAGE["total_tokens"]

    by_account = json.loads(cli(reporting, "usage", "--by", "account,model", "--json"))
    assert {(row["model"], row["requests"]) for row in by_account if row["account"]} == {("gpt-5.2", 4),
                                                                                        ("gpt-4.1", 2)}
    assert [row["requests"] for row in by_account if row["account"] is None] == [1]

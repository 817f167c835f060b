"""Per-key limits through gunicorn (two gevent workers), on SQLite and on PostgreSQL: what a
client of a limited key sees, what the operator sets with the CLI, and that the counts hold
across workers, hosts and a worker that crashed."""

import json
import os
import signal
import time

import pytest
import requests
from sqlalchemy import select

from responses_proxy.store import limits as limit_store
from responses_proxy.store.tables import usage
from tests.e2e.helpers import RawStream, cli, database_env, error_of, wait_for
from tests.fake_upstream import USAGE, Script, auth_json
from tests.helpers import Gateway

ACCOUNT = "acct-limits"
LEASE = 1.0  # seconds: a crashed worker's requests stop counting within two of these
HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
           "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")


def start_gateway(tmp_path_factory, upstream_url, env):
    server = Gateway(tmp_path_factory.mktemp("limits"), upstream_url,
                     env={"RESPONSES_PROXY_IN_FLIGHT_LEASE_SECONDS": str(LEASE),
                          "RESPONSES_PROXY_KEEPALIVE_SECONDS": "1", **env})
    server.start()
    return server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def limited(request, fake_upstream, tmp_path_factory, postgres_schemas):
    server = start_gateway(tmp_path_factory, fake_upstream.base_url, database_env(request.param, postgres_schemas))
    server.import_account(auth_json(account_id=ACCOUNT, last_refresh="2099-01-01T00:00:00Z"))
    yield server
    server.stop()


@pytest.fixture
def gateway(limited, upstream):
    return limited


def flask(gateway, *args):
    return json.loads(cli(gateway, *args, "--json"))


def new_key(gateway, **limits):
    return gateway.create_key_row(**limits)


def ask(gateway, key, stream=False, url=None, **body):
    reply = requests.post((url or gateway.url) + "/v1/responses", headers={"Authorization": f"Bearer {key['key']}"},
                          json={"model": "gpt-5.2", "input": "hi", "stream": stream, **body}, timeout=20)
    if reply.status_code == 200 and stream:
        assert reply.text.rstrip().splitlines()[-2] == "event: response.completed", reply.text[-300:]
    return reply


def rate_headers(reply):
    return {name: reply.headers[name] for name in HEADERS if name in reply.headers}


def usage_rows(gateway, key, count):
    """The key's usage rows, once ``count`` of them are written (they are batched)."""
    engine = gateway.engine()
    try:
        def rows():
            with engine.connect() as conn:
                found = [dict(row) for row in conn.execute(
                    select(usage).where(usage.c.key_id == key["id"]).order_by(usage.c.id)).mappings()]
            return found if len(found) >= count else None

        return wait_for(rows, timeout=5) or rows() or []
    finally:
        engine.dispose()


def stalled_stream(gateway, upstream, key):
    """A stream the upstream stops answering after its first events: in flight until closed."""
    upstream.push({"events": Script().start().message(["never", " done"]).completed().events(),
                   "stall_at": 3, "stall": 30}, account=ACCOUNT)
    stream = RawStream(gateway, {"model": "gpt-5.2", "input": "hi"}, key=key["key"])
    stream.read_until(b"event: response.output_item.added")
    return stream


def check_refused(reply, fragment):
    assert reply.status_code == 429, reply.text
    error = error_of(reply)
    assert (error["type"], error["code"], error["param"]) == ("rate_limit_exceeded", "rate_limit_exceeded", None)
    assert fragment in error["message"], error["message"]
    assert int(reply.headers["Retry-After"]) >= 1
    return error


def in_flight(gateway, key):
    engine = gateway.engine()
    try:
        return limit_store.counts(limit_store.read(engine, key["id"]), time.time(), LEASE).in_flight
    finally:
        engine.dispose()


def workers(gateway):
    with open(f"/proc/{gateway.process.pid}/task/{gateway.process.pid}/children") as handle:
        return [int(pid) for pid in handle.read().split()]


# --- requests per minute --------------------------------------------------------------------------

def test_requests_per_minute_hold_across_workers_and_hosts(gateway, upstream, tmp_path_factory):
    """Two gateways on one database (two hosts), each with two workers, every request on a new
    connection: the key gets its four requests a minute in all, not per worker or per host."""
    other = start_gateway(tmp_path_factory, upstream.base_url,
                          {"RESPONSES_PROXY_DATABASE_URL": gateway.env.get("RESPONSES_PROXY_DATABASE_URL")
                           or "sqlite:///" + os.path.join(str(gateway.data_dir), "responses-proxy.db")})
    try:
        key = flask(gateway, "keys", "create", "--name", "limited", "--rpm", "4")
        assert key["rpm"] == 4
        replies = [ask(gateway, key, url=url, stream=index % 2 == 1)
                   for index, url in enumerate([gateway.url, other.url, gateway.url, other.url])]
        refused = ask(gateway, key, url=other.url)
    finally:
        other.stop()

    assert [reply.status_code for reply in replies] == [200] * 4
    assert [reply.headers["x-ratelimit-remaining-requests"] for reply in replies] == ["3", "2", "1", "0"]
    for reply in replies:
        assert reply.headers["x-ratelimit-limit-requests"] == "4"
        assert "x-ratelimit-limit-tokens" not in reply.headers, "no daily budget: no token headers"
    # The bucket refills one request every 15 s: after the first request it is full again in 15 s.
    assert replies[0].headers["x-ratelimit-reset-requests"] == "15s"
    check_refused(refused, "requests per min (RPM): Limit 4")
    assert 1 <= int(refused.headers["Retry-After"]) <= 15
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(upstream.response_requests()) == 4, "the refused request never reached the upstream"
    rows = usage_rows(gateway, key, 5)
    assert sorted(row["status"] for row in rows) == [200, 200, 200, 200, 429]
    [row] = [row for row in rows if row["status"] == 429]
    assert (row["error_code"], row["account_id"], row["total_tokens"]) == ("rate_limit_exceeded", None, None)


def test_every_answer_of_a_limited_key_carries_the_headers(gateway, upstream):
    key = new_key(gateway, rpm=100, daily_tokens=100000)
    answers = {"json": ask(gateway, key)}
    usage_rows(gateway, key, 1)  # its tokens are counted with its usage row
    answers.update({
        "stream": ask(gateway, key, stream=True),
        "invalid body": ask(gateway, key, store=True),
        "unknown model": ask(gateway, key, model="gpt-unknown"),
    })
    assert [reply.status_code for reply in answers.values()] == [200, 200, 400, 400]
    assert answers["stream"].headers["Content-Type"] == "text/event-stream"
    for name, reply in answers.items():
        assert set(rate_headers(reply)) == set(HEADERS), name
        assert reply.headers["x-ratelimit-limit-requests"] == "100"
        assert reply.headers["x-ratelimit-limit-tokens"] == "100000"
        assert reply.headers["x-ratelimit-reset-tokens"][-1] == "s"
    assert answers["json"].headers["x-ratelimit-remaining-requests"] == "99"
    assert answers["stream"].headers["x-ratelimit-remaining-tokens"] == str(100000 - USAGE["total_tokens"])


def test_a_key_without_limits_gets_no_rate_limit_headers(gateway, upstream):
    key = new_key(gateway)
    reply = ask(gateway, key)
    assert reply.status_code == 200
    assert rate_headers(reply) == {}


# --- requests in flight -----------------------------------------------------------------------------

def test_concurrency_counts_open_streams(gateway, upstream):
    key = new_key(gateway, concurrency=1)
    stream = stalled_stream(gateway, upstream, key)
    try:
        check_refused(ask(gateway, key), "concurrent requests: Limit 1, In flight 1")
        check_refused(ask(gateway, key, stream=True), "concurrent requests")
    finally:
        stream.close()
    # The gateway notices the client left, ends the exchange and frees the slot.
    assert wait_for(lambda: ask(gateway, key).status_code == 200, timeout=8)


def upstream_error(upstream):
    upstream.push({"status": 500, "body": {"detail": "boom"}}, account=ACCOUNT)  # the only account: 502


def upstream_refusal(upstream):
    upstream.push({"status": 400, "body": {"detail": "Unsupported parameter: x"}}, account=ACCOUNT)


def broken_stream(upstream):
    upstream.push({"events": Script().start().message(["a", "b"]).completed().events(), "cut_after": 3},
                  account=ACCOUNT)


@pytest.mark.parametrize("prepare, body, status", [
    pytest.param(None, {}, 200, id="json"),
    pytest.param(None, {"stream": True}, 200, id="stream"),
    pytest.param(None, {"store": True}, 400, id="invalid-body"),
    pytest.param(upstream_refusal, {"x": 1}, 400, id="upstream-400"),
    pytest.param(upstream_error, {}, 502, id="upstream-5xx"),
    pytest.param(broken_stream, {"stream": True}, 200, id="stream-cut-mid-way"),
    pytest.param(broken_stream, {}, 502, id="json-cut-mid-way"),
])
def test_the_slot_is_released_on_every_path(gateway, upstream, prepare, body, status):
    key = new_key(gateway, concurrency=1)
    if prepare:
        prepare(upstream)
    reply = requests.post(gateway.url + "/v1/responses", headers={"Authorization": f"Bearer {key['key']}"},
                          json={"model": "gpt-5.2", "input": "hi", **body}, timeout=20)
    assert reply.status_code == status, reply.text
    # The answer ended: its slot is free before the client could ask again.
    for _ in range(3):
        assert ask(gateway, key).status_code == 200


def test_a_stream_longer_than_several_leases_keeps_its_slot(gateway, upstream):
    key = new_key(gateway, concurrency=1)
    stream = stalled_stream(gateway, upstream, key)
    try:
        time.sleep(4 * LEASE)  # its worker renewed it in every new lease period
        check_refused(ask(gateway, key), "concurrent requests")
    finally:
        stream.close()
    assert wait_for(lambda: ask(gateway, key).status_code == 200, timeout=8)


def test_the_slots_of_a_crashed_worker_expire(gateway, upstream):
    key = new_key(gateway, concurrency=1)
    stream = stalled_stream(gateway, upstream, key)
    for pid in workers(gateway):
        os.kill(pid, signal.SIGKILL)  # no finish, no release: the count is left behind
    killed_at = time.monotonic()
    stream.close()
    assert in_flight(gateway, key) == 1

    def served():
        try:
            return ask(gateway, key).status_code == 200
        except requests.ConnectionError:  # the master is starting new workers
            return False

    # Within two leases (plus the time new workers take to start) the key is usable again.
    assert wait_for(served, timeout=2 * LEASE + 10)
    assert time.monotonic() - killed_at >= LEASE, "the count expired, nobody released it"


# --- tokens per day -----------------------------------------------------------------------------

def test_the_daily_budget_and_reset_usage(gateway, upstream):
    total = USAGE["total_tokens"]  # what the fake upstream reports for every answer
    key = flask(gateway, "keys", "create", "--name", "budget", "--daily-tokens", str(2 * total - 1))

    first = ask(gateway, key)
    usage_rows(gateway, key, 1)  # tokens count once the answer's usage row is written
    second = ask(gateway, key, stream=True)
    usage_rows(gateway, key, 2)
    refused = ask(gateway, key)

    assert (first.status_code, second.status_code) == (200, 200)
    assert first.headers["x-ratelimit-remaining-tokens"] == str(2 * total - 1)
    assert second.headers["x-ratelimit-remaining-tokens"] == str(total - 1)
    check_refused(refused, f"tokens per day (TPD): Limit {2 * total - 1}, Used {2 * total}")
    midnight = (int(time.time()) // 86400 + 1) * 86400
    assert abs(int(refused.headers["Retry-After"]) - (midnight - time.time())) < 60
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert len(upstream.response_requests()) == 2
    [listed] = [row for row in flask(gateway, "keys", "list") if row["id"] == key["id"]]
    assert (listed["daily_tokens"], listed["tokens_today"], listed["in_flight"]) == (2 * total - 1, 2 * total, None)

    assert flask(gateway, "keys", "reset-usage", key["id"]) == {"id": key["id"], "reset": True}

    again = ask(gateway, key)
    assert again.status_code == 200
    assert again.headers["x-ratelimit-remaining-tokens"] == str(2 * total - 1)
    assert ask(gateway, key).status_code == 200, "the key is the same key, its budget counts anew"


def test_limits_changed_by_the_cli_apply_at_once(gateway, upstream):
    total = USAGE["total_tokens"]
    key = new_key(gateway)
    assert [ask(gateway, key).status_code for _ in range(2)] == [200, 200]
    usage_rows(gateway, key, 2)

    updated = flask(gateway, "keys", "update", key["id"], "--rpm", "1", "--daily-tokens", str(2 * total + 1))
    assert (updated["rpm"], updated["daily_tokens"], updated["concurrency"]) == (1, 2 * total + 1, None)
    limited = ask(gateway, key)
    assert limited.status_code == 200
    # A budget set during the day starts from what the key already used today.
    assert limited.headers["x-ratelimit-remaining-tokens"] == "1"
    usage_rows(gateway, key, 3)
    check_refused(ask(gateway, key), "tokens per day")

    flask(gateway, "keys", "update", key["id"], "--rpm", "none", "--daily-tokens", "none")
    free = [ask(gateway, key) for _ in range(3)]
    assert [reply.status_code for reply in free] == [200] * 3
    assert all(rate_headers(reply) == {} for reply in free)


def test_limits_hold_over_a_websocket(gateway, upstream, connect):
    """Each request message counts as a POST does; over its limit, the refusal is an error
    message with the 429 and its rate-limit headers, and the connection goes on."""
    key = new_key(gateway, rpm=2)
    ws = connect(gateway, key=key["key"])
    assert ws.status == 101
    answers = [ws.request({"model": "gpt-5.2", "input": f"turn {n}"}) for n in range(3)]
    assert [answer[-1]["type"] for answer in answers] == ["response.completed", "response.completed", "error"]
    refusal = answers[2][-1]
    assert refusal["status"] == 429
    assert (refusal["error"]["type"], refusal["error"]["code"]) == ("rate_limit_exceeded", "rate_limit_exceeded")
    assert refusal["headers"]["x-ratelimit-limit-requests"] == "2"
    assert refusal["headers"]["x-ratelimit-remaining-requests"] == "0"
    assert int(refusal["headers"]["Retry-After"]) >= 1
    assert len(upstream.response_requests()) == 2, "the refused request never reached the upstream"
    assert sorted(row["status"] for row in usage_rows(gateway, key, 3)) == [200, 200, 429]

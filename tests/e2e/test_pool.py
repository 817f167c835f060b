"""The account pool through gunicorn (two gevent workers), on SQLite and on PostgreSQL.

Each test gets a gateway of its own: pool state (cooldowns, affinity, tokens) is what is
being tested, and it lives in the database shared by the workers.
"""

import collections
import concurrent.futures
import json
import time

import pytest
import requests
from sqlalchemy import select, update

from responses_proxy.crypto import TokenCipher, fernet_key
from responses_proxy.store.tables import accounts
from tests.e2e.helpers import RawStream
from tests.fake_upstream import auth_json

LIMITED = {"status": 429, "body": {"error": {"type": "usage_limit_reached",
                                             "message": "The usage limit has been reached",
                                             "plan_type": "plus", "resets_in_seconds": 3}}}


def ask(gateway, stream=False, timeout=20, **body):
    reply = requests.post(gateway.url + "/v1/responses", headers={"Authorization": f"Bearer {gateway.key}"},
                          json={"model": "gpt-5.2", "input": "hi", "stream": stream, **body}, timeout=timeout,
                          stream=stream)
    if stream:
        return reply.status_code, reply.content.decode()
    return reply.status_code, reply.json()


def served_by(upstream):
    return collections.Counter(request["headers"]["chatgpt-account-id"] for request in upstream.response_requests())


def account_row(gateway, fake_id):
    engine = gateway.engine()
    try:
        with engine.connect() as conn:
            return conn.execute(select(accounts).where(accounts.c.chatgpt_account_id == fake_id)).mappings().one()
    finally:
        engine.dispose()


def test_a_limited_account_is_skipped_until_its_reset(make_gateway, upstream):
    gateway = make_gateway(3)
    upstream.push(LIMITED, account="acct-0")
    statuses = [ask(gateway, input=f"question {i}")[0] for i in range(12)]
    assert statuses == [200] * 12
    counts = served_by(upstream)
    assert counts["acct-0"] <= 1  # the one 429, then skipped by both workers
    assert counts["acct-1"] + counts["acct-2"] >= 11
    row = account_row(gateway, "acct-0")
    assert row["cooldown_until"] > time.time() - 1 and "usage limit" in row["last_error"]
    # The decision is in the request's structured log line.
    decisions = [json.loads(line)["decisions"] for line in gateway.log(tail=None).splitlines()
                 if line.startswith("{") and '"decisions"' in line]
    flat = [decision for line in decisions for decision in line]
    assert {"event": "cooldown", "account": row["id"], "until": row["cooldown_until"]} in flat
    assert any(decision["event"] == "failover" and decision["account"] == row["id"] for decision in flat)

    time.sleep(3.5)  # past resets_in_seconds: the account serves again, by itself
    upstream.requests.clear()
    for i in range(9):
        assert ask(gateway, input=f"again {i}")[0] == 200
    assert served_by(upstream)["acct-0"] >= 1


def test_all_accounts_limited_gives_429_with_the_earliest_reset_then_serves(make_gateway, upstream):
    gateway = make_gateway(2)
    upstream.push({**LIMITED, "body": {"error": {**LIMITED["body"]["error"], "resets_in_seconds": 2}}},
                  account="acct-0")
    upstream.push({**LIMITED, "body": {"error": {**LIMITED["body"]["error"], "resets_in_seconds": 30}}},
                  account="acct-1")
    before = time.time()
    reply = requests.post(gateway.url + "/v1/responses", headers={"Authorization": f"Bearer {gateway.key}"},
                          json={"model": "gpt-5.2", "input": "hi"}, timeout=20)
    assert reply.status_code == 429
    error = reply.json()["error"]
    assert error["type"] == error["code"] == "usage_limit_reached"
    assert before + 1 <= error["resets_at"] <= before + 4  # the earlier of the two resets
    assert 1 <= int(reply.headers["Retry-After"]) <= 3
    assert error["resets_in_seconds"] == int(reply.headers["Retry-After"])

    # While they cool down, nothing is sent upstream: the answer comes from the pool's state.
    upstream.requests.clear()
    status, body = ask(gateway, stream=True)
    assert status == 429 and upstream.response_requests() == []

    time.sleep(max(0, error["resets_at"] - time.time()) + 0.5)
    assert ask(gateway)[0] == 200
    assert served_by(upstream) == {"acct-0": 1}


def test_an_expired_token_is_refreshed_once_across_concurrent_requests(make_gateway, upstream):
    document = auth_json(account_id="acct-0", last_refresh="2099-01-01T00:00:00Z", refresh_token="rt-original")
    gateway = make_gateway(documents=[document])
    upstream.rejected_tokens.add(document["tokens"]["access_token"])

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda i: ask(gateway, input=f"q{i}")[0], range(12)))

    assert results == [200] * 12
    refreshes = [request for request in upstream.requests if request["path"] == "/oauth/token"]
    assert len(refreshes) == 1, gateway.log()
    assert '"refresh_token": "rt-original"' in refreshes[0]["body"] or '"refresh_token":"rt-original"' in \
        refreshes[0]["body"]
    assert '"grant_type"' in refreshes[0]["body"] and "app_EMoamEEZ73f0CkXaXp7hrann" in refreshes[0]["body"]
    row = account_row(gateway, "acct-0")
    assert row["status"] == "active" and row["last_refresh"] > time.time() - 60
    assert document["tokens"]["access_token"] not in row["tokens"]  # encrypted, and rotated anyway


def test_a_token_about_to_expire_is_refreshed_before_use(make_gateway, upstream):
    document = auth_json(account_id="acct-0", expires_in=60, last_refresh="2099-01-01T00:00:00Z")
    gateway = make_gateway(documents=[document])
    assert ask(gateway)[0] == 200
    assert [request["path"] for request in upstream.requests if request["path"] != "/codex/models"] == [
        "/oauth/token", "/codex/responses"]
    sent = upstream.response_requests()[0]["headers"]["authorization"]
    assert sent != "Bearer " + document["tokens"]["access_token"]


def test_a_dead_refresh_token_takes_the_account_out_of_rotation(make_gateway, upstream):
    documents = [auth_json(account_id=f"acct-{i}", last_refresh="2099-01-01T00:00:00Z") for i in range(2)]
    gateway = make_gateway(documents=documents)
    upstream.rejected_tokens.add(documents[0]["tokens"]["access_token"])
    upstream.push({"status": 400, "body": {"error": "invalid_grant", "error_description": "expired"}},
                  account="refresh")
    for i in range(6):
        assert ask(gateway, input=f"q{i}")[0] == 200
    row = account_row(gateway, "acct-0")
    assert row["status"] == "needs_relogin" and "invalid_grant" in row["last_error"]
    upstream.requests.clear()
    for i in range(4):
        assert ask(gateway, input=f"again {i}")[0] == 200
    assert served_by(upstream) == {"acct-1": 4}


def test_a_transient_refresh_failure_keeps_the_account(make_gateway, upstream):
    document = auth_json(account_id="acct-0", expires_in=60, last_refresh="2099-01-01T00:00:00Z")
    gateway = make_gateway(documents=[document])
    upstream.push({"status": 503, "body": {"error": "temporarily_unavailable"}}, account="refresh")
    # The token still works for a minute: the request is served with it.
    assert ask(gateway)[0] == 200
    assert account_row(gateway, "acct-0")["status"] == "active"


@pytest.mark.parametrize("failure", [
    {"status": 500, "body": {"detail": "boom"}},
    {"status": 502, "body": {"detail": "bad gateway"}},
    {"status": 403, "body": {"detail": "forbidden"}},
    {"header_delay": 4},
], ids=["500", "502", "403", "stall-before-headers"])
def test_failures_before_the_first_byte_fail_over(make_gateway, upstream, failure):
    gateway = make_gateway(2, env={"RESPONSES_PROXY_UPSTREAM_READ_TIMEOUT": "1"})
    upstream.push(failure, account="acct-0")
    upstream.push(failure, account="acct-1")
    upstream.push({}, account="acct-0")
    upstream.push({}, account="acct-1")
    # Both accounts fail once: the first request tries both (502), the next ones succeed.
    first, body = ask(gateway)
    assert first == 502 and body["error"]["code"] == "upstream_error"
    assert len(upstream.response_requests()) == 2
    assert ask(gateway)[0] == 200


def test_one_failing_account_does_not_fail_the_request(make_gateway, upstream):
    gateway = make_gateway(3)
    for _ in range(3):
        upstream.push({"status": 500, "body": {"detail": "boom"}}, account="acct-0")
    for i in range(9):
        assert ask(gateway, input=f"q{i}")[0] == 200


def test_connection_refused_is_bounded_by_max_attempts(make_gateway, upstream, tmp_path):
    gateway = make_gateway(5, env={"RESPONSES_PROXY_MAX_ATTEMPTS": "3"})
    gateway.stop()
    gateway.env["RESPONSES_PROXY_UPSTREAM_BASE_URL"] = "http://127.0.0.1:9"  # discard port: refused
    gateway.start()
    started = time.monotonic()
    status, body = ask(gateway)
    assert status == 502 and body["error"]["code"] == "upstream_error"
    assert "unreachable" in body["error"]["message"]
    assert time.monotonic() - started < 10


def test_a_cut_after_the_first_byte_is_not_retried(make_gateway, upstream):
    gateway = make_gateway(2)
    upstream.push({"cut_after": 4}, account="acct-0")
    upstream.push({"cut_after": 4}, account="acct-1")
    status, text = ask(gateway, stream=True)
    assert status == 200
    assert "event: response.created" in text
    assert text.rstrip().split("\n\n")[-1].startswith("event: response.failed")
    assert len(upstream.response_requests()) == 1


def test_prompt_cache_key_sticks_to_one_account_and_moves_when_it_cannot_serve(make_gateway, upstream):
    gateway = make_gateway(3)
    for i in range(6):
        assert ask(gateway, prompt_cache_key="thread-1", input=f"turn {i}")[0] == 200
    counts = served_by(upstream)
    assert len(counts) == 1, counts
    home = next(iter(counts))

    upstream.requests.clear()
    upstream.push(LIMITED, account=home)
    for i in range(4):
        assert ask(gateway, prompt_cache_key="thread-1", input=f"later {i}")[0] == 200
    moved = served_by(upstream)
    new_home = [account for account in moved if account != home]
    assert len(new_home) == 1 and moved[new_home[0]] == 4, moved


def test_a_multi_turn_client_without_a_key_sticks_too(make_gateway, upstream):
    gateway = make_gateway(3)
    history = [{"role": "user", "content": "first question"}]
    for turn in range(5):
        history += [{"role": "assistant", "content": f"answer {turn}"}, {"role": "user", "content": f"next {turn}"}]
        assert ask(gateway, instructions="be brief", input=list(history))[0] == 200
    assert len(served_by(upstream)) == 1


def test_requests_without_a_key_spread_over_the_accounts(make_gateway, upstream):
    gateway = make_gateway(3)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        assert set(pool.map(lambda i: ask(gateway, input="same question")[0], range(60))) == {200}
    counts = served_by(upstream)
    assert sorted(counts) == ["acct-0", "acct-1", "acct-2"]
    assert max(counts.values()) - min(counts.values()) <= 12, counts


def test_no_usable_account_is_503_saying_why(make_gateway, upstream):
    gateway = make_gateway(2)
    runner_env = gateway.app()
    runner = runner_env.test_cli_runner()
    for row in gateway.rows:
        result = runner.invoke(args=["accounts", "disable", row["id"]])
        assert result.exit_code == 0, result.output
    runner_env.extensions["responses_proxy"].engine.dispose()
    status, body = ask(gateway)
    assert status == 503
    assert body["error"]["code"] == "no_accounts" and "2 disabled" in body["error"]["message"]
    assert upstream.response_requests() == []


def test_quota_windows_are_polled_and_prefer_headroom(make_gateway, upstream):
    now = int(time.time())
    for fake_id, used in (("acct-0", 95), ("acct-1", 5)):
        for _ in range(5):
            upstream.push({"body": {"plan_type": "plus", "rate_limit": {
                "primary_window": {"used_percent": used, "reset_at": now + 3600},
                "secondary_window": {"used_percent": used // 2, "reset_at": now + 86400}}}},
                account=("usage", fake_id))
    gateway = make_gateway(2, env={"RESPONSES_PROXY_QUOTA_POLL_SECONDS": "2"})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if account_row(gateway, "acct-0")["quota"] and account_row(gateway, "acct-1")["quota"]:
            break
        time.sleep(0.3)
    assert account_row(gateway, "acct-0")["quota"]["primary"]["used_percent"] == 95
    assert account_row(gateway, "acct-1")["quota"]["secondary"]["resets_at"] == now + 86400

    upstream.requests.clear()
    for i in range(8):
        assert ask(gateway, input=f"q{i}")[0] == 200
    assert served_by(upstream) == {"acct-1": 8}

    time.sleep(0.5)  # usage rows are written every 0.1 s
    app = gateway.app()
    try:
        listing = app.test_cli_runner().invoke(args=["accounts", "list"])
        listed = json.loads(app.test_cli_runner().invoke(args=["accounts", "list", "--json"]).output)
    finally:
        app.extensions["responses_proxy"].engine.dispose()
    assert "95%" in listing.output and "5%" in listing.output
    busy = next(row for row in listed if row["chatgpt_account_id"] == "acct-1")
    assert busy["last_hour"]["requests"] == 8 and busy["last_day"]["tokens"] == 8 * 19
    assert busy["state"] == "active"


def test_a_failed_optional_refresh_is_not_retried_by_every_request(make_gateway, upstream):
    # The token is old (refresh due) but still valid for an hour; the token endpoint is down.
    document = auth_json(account_id="acct-0", last_refresh="2020-01-01T00:00:00Z")
    gateway = make_gateway(documents=[document])
    for _ in range(4):
        upstream.push({"status": 503, "body": {"error": "temporarily_unavailable"}}, account="refresh")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda i: ask(gateway, input=f"q{i}")[0], range(24))) == {200}
    refreshes = [request for request in upstream.requests if request["path"] == "/oauth/token"]
    assert 1 <= len(refreshes) <= 2  # at most once per worker, then backed off
    assert account_row(gateway, "acct-0")["status"] == "active"


def test_an_account_whose_tokens_cannot_be_decrypted_leaves_the_others_serving(make_gateway, upstream):
    gateway = make_gateway(2)
    assert ask(gateway)[0] == 200
    # One row's tokens were encrypted with another secret key (say, imported on a host set up
    # with another RESPONSES_PROXY_SECRET_KEY).
    foreign = TokenCipher(fernet_key("another key")).encrypt(json.dumps(auth_json()["tokens"]).encode())
    engine = gateway.engine()
    try:
        with engine.begin() as conn:
            conn.execute(update(accounts).where(accounts.c.chatgpt_account_id == "acct-0").values(
                tokens=foreign, updated_at=time.time()))
    finally:
        engine.dispose()

    upstream.requests.clear()
    for i in range(8):
        assert ask(gateway, input=f"q{i}")[0] == 200
        assert ask(gateway, input=f"q{i}", stream=True)[0] == 200
    assert served_by(upstream) == {"acct-1": 16}
    assert requests.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {gateway.key}"},
                        timeout=10).status_code == 200
    # Each worker says so once, not at every request.
    logged = [line for line in gateway.log(tail=None).splitlines() if "cannot be decrypted" in line]
    assert 1 <= len(logged) <= 2, logged
    assert account_row(gateway, "acct-0")["status"] == "active", "the row is left for a host with the right key"


def test_a_stream_in_flight_on_one_worker_steers_the_other_workers_requests(make_gateway, upstream):
    gateway = make_gateway(2, env={"RESPONSES_PROXY_QUOTA_POLL_SECONDS": "0"})
    assert ask(gateway)[0] == 200
    time.sleep(0.5)
    upstream.push({"stall_at": 3, "stall": 8})  # whichever account serves it next
    long = RawStream(gateway, {"model": "gpt-5.2", "input": "a long answer"})
    try:
        long.read_until(b"response.created")
        busy = upstream.response_requests()[-1]["headers"]["chatgpt-account-id"]
        upstream.requests.clear()
        for i in range(12):
            # Each on a new connection: the kernel spreads them over both workers.
            assert ask(gateway, input=f"quick {i}")[0] == 200
            time.sleep(0.25)
    finally:
        long.close()
    assert served_by(upstream) == {"acct-1" if busy == "acct-0" else "acct-0": 12}

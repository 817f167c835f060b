"""Metrics in one process (the Flask test client): what each request counts, and /metrics."""

import json
import os
import socket
import time
from datetime import UTC, datetime

import gevent
import pytest
from gevent import monkey

from responses_proxy.metrics.service import event_loop_watchers
from responses_proxy.store import accounts as account_store
from responses_proxy.store import conversations as conversation_store
from responses_proxy.store import keys as key_store
from tests.fake_upstream import Script
from tests.helpers import make_app
from tests.prometheus import label_values, metric
from tests.test_pool import add_account

BODY = {"model": "gpt-5.2", "input": "hi"}


def scrape(client, headers=None):
    with client.get("/metrics", headers=headers) as reply:
        assert reply.status_code == 200, reply.data
        assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return reply.get_data(as_text=True)


def key_id(services, api_key):
    return key_store.find_active_with_accounts_version(services.engine, api_key)[0]["id"]


def test_metrics_need_no_api_key_and_count_every_route(client, auth):
    assert client.get("/v1/models", headers=auth).status_code == 200
    assert client.get("/v1/models", headers=auth).status_code == 200
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/no-such-route").status_code == 404
    assert client.open("/v1/models", method="BREW").status_code == 405

    text = scrape(client)

    assert metric(text, "responses_proxy_requests_total", route="/v1/models", method="GET", status="200") == 2
    assert metric(text, "responses_proxy_requests_total", route="/v1/models", status="401") == 1
    # What a client can make up (paths, methods) is counted without becoming labels of its own.
    assert metric(text, "responses_proxy_requests_total", route="unmatched", method="GET", status="404") == 1
    assert metric(text, "responses_proxy_requests_total", route="unmatched", method="other", status="405") == 1
    assert "no-such-route" not in text and "BREW" not in text
    assert metric(text, "responses_proxy_request_duration_seconds_count", route="/v1/models") == 3


def test_a_response_is_counted_once_with_its_model_times_and_tokens(client, auth, services, api_key, account):
    assert client.post("/v1/responses", json=BODY, headers=auth).status_code == 200
    reply = client.post("/v1/responses", json={**BODY, "stream": True}, headers=auth)
    assert reply.status_code == 200 and b"response.completed" in reply.get_data()

    text = scrape(client)

    counted = {"route": "/v1/responses", "method": "POST", "status": "200", "model": "gpt-5.2"}
    assert metric(text, "responses_proxy_requests_total", **counted) == 2
    assert metric(text, "responses_proxy_requests_total", route="/v1/responses") == 2  # not again by the hook
    for stream in ("true", "false"):
        assert metric(text, "responses_proxy_time_to_first_byte_seconds_count", method="POST", model="gpt-5.2",
                      stream=stream) == 1
        assert metric(text, "responses_proxy_request_duration_seconds_count", route="/v1/responses",
                      stream=stream) == 1
    assert metric(text, "responses_proxy_open_streams", method="POST") == 0
    key = key_id(services, api_key)
    # The fake upstream reports 12 input (4 cached), 7 output (2 reasoning) tokens per answer.
    for kind, tokens in (("input", 24), ("cached", 8), ("output", 14), ("reasoning", 4)):
        assert metric(text, "responses_proxy_tokens_total", key=key, model="gpt-5.2", kind=kind) == tokens
    assert metric(text, "responses_proxy_upstream_attempts_total", account=account["id"], outcome="ok") == 2


def test_a_scraper_that_asks_for_openmetrics_gets_it(client):
    reply = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})

    assert reply.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert reply.get_data(as_text=True).endswith("# EOF\n")


def test_a_model_the_catalog_does_not_list_is_labelled_other(client, auth, account):
    reply = client.post("/v1/responses", json={**BODY, "model": "made-up-model-1"}, headers=auth)
    assert reply.status_code == 400 and reply.json["error"]["code"] == "model_not_found"

    text = scrape(client)

    assert metric(text, "responses_proxy_requests_total", route="/v1/responses", status="400", model="other") == 1
    assert "made-up-model-1" not in text


def test_a_request_without_a_body_to_read_has_no_model(client, auth):
    assert client.post("/v1/responses", data="{", headers={**auth, "Content-Type": "application/json"}
                       ).status_code == 400

    assert metric(scrape(client), "responses_proxy_requests_total", route="/v1/responses", status="400",
                  model="") == 1


def test_a_failover_counts_the_attempts_the_cooldown_and_the_reason(client, auth, services, upstream):
    first = add_account(services, account_id="acct-fake-1", email="one@example.com", refresh_token="rt-one")
    second = add_account(services, account_id="acct-fake-2", email="two@example.com", refresh_token="rt-two")
    upstream.push({"status": 429, "body": {"error": {"type": "usage_limit_reached", "message": "limit",
                                                     "resets_in_seconds": 600}}})

    assert client.post("/v1/responses", json=BODY, headers=auth).status_code == 200

    text = scrape(client)
    assert metric(text, "responses_proxy_upstream_attempts_total", outcome="429") == 1
    assert metric(text, "responses_proxy_upstream_attempts_total", outcome="ok") == 1
    assert label_values(text, "responses_proxy_upstream_attempts_total", "account") == {first["id"], second["id"]}
    assert metric(text, "responses_proxy_failovers_total", reason="usage_limit_reached") == 1
    assert metric(text, "responses_proxy_cooldowns_total") == 1
    cooled = next(row["id"] for row in account_store.all_rows(services.engine) if row["cooldown_until"])
    assert metric(text, "responses_proxy_cooldowns_total", account=cooled) == 1
    assert metric(text, "responses_proxy_account_state", account=cooled, state="cooling_down") == 1


@pytest.fixture
def fresh_account(services):
    """An account refreshed just now: only an upstream 401 makes the gateway refresh it."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return add_account(services, last_refresh=now)


def test_an_upstream_401_counts_the_refresh(client, auth, fresh_account, upstream):
    account = fresh_account
    upstream.push({"status": 401, "body": {"detail": "expired"}})

    assert client.post("/v1/responses", json=BODY, headers=auth).status_code == 200

    text = scrape(client)
    assert metric(text, "responses_proxy_upstream_attempts_total", account=account["id"], outcome="401") == 1
    assert metric(text, "responses_proxy_upstream_attempts_total", account=account["id"], outcome="ok") == 1
    assert metric(text, "responses_proxy_token_refreshes_total", result="ok") == 1


def test_a_refresh_refused_for_good_counts_as_needs_relogin(client, auth, fresh_account, upstream):
    account = fresh_account
    upstream.push({"status": 401, "body": {"detail": "expired"}})
    upstream.push({"status": 400, "body": {"error": "invalid_grant"}}, account="refresh")

    assert client.post("/v1/responses", json=BODY, headers=auth).status_code == 502

    text = scrape(client)
    assert metric(text, "responses_proxy_token_refreshes_total", result="needs_relogin") == 1
    assert metric(text, "responses_proxy_failovers_total", reason="upstream_error") == 1
    assert metric(text, "responses_proxy_account_state", account=account["id"], state="needs_relogin") == 1


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_upstream_is_an_attempt_of_its_own(tmp_path, upstream):
    app = make_app(tmp_path, f"http://127.0.0.1:{closed_port()}")
    services = app.extensions["responses_proxy"]
    try:
        account = add_account(services)
        client = app.test_client()
        key = key_store.create(services.engine, "test")["key"]

        reply = client.post("/v1/responses", json=BODY, headers={"Authorization": f"Bearer {key}"})

        assert reply.status_code == 502
        assert metric(scrape(client), "responses_proxy_upstream_attempts_total", account=account["id"],
                      outcome="unreachable") == 1
    finally:
        services.engine.dispose()


def test_account_gauges_follow_the_accounts(client, services, account):
    def states():
        text = scrape(client)
        return {state for state in ("active", "cooling_down", "disabled", "needs_relogin")
                if metric(text, "responses_proxy_account_state", account=account["id"], email="dev@example.com",
                          state=state) == 1}

    assert states() == {"active"}
    account_store.set_status(services.engine, account["id"], account_store.DISABLED)
    assert states() == {"disabled"}
    account_store.set_status(services.engine, account["id"], account_store.ACTIVE)
    account_store.set_cooldown(services.engine, account["id"], time.time() + 600, "limit")
    assert states() == {"cooling_down"}

    account_store.save_quota(services.engine, account["id"], {"primary": {"used_percent": 42.5, "resets_at": None},
                                                              "secondary": {"used_percent": None}})
    text = scrape(client)
    assert metric(text, "responses_proxy_account_quota_used_percent", account=account["id"], window="primary") == 42.5
    assert label_values(text, "responses_proxy_account_quota_used_percent", "window") == {"primary"}


def test_a_scrape_answers_while_the_accounts_cannot_be_read(client, services, monkeypatch):
    def broken():
        raise RuntimeError("database down")

    monkeypatch.setattr(services.pool, "snapshot", broken)
    assert client.get("/v1/models").status_code == 401

    assert metric(scrape(client), "responses_proxy_requests_total", route="/v1/models") == 1


def test_conversation_turns_and_conflicts_are_counted(client, auth, services, account, upstream):
    body = {**BODY, "conversation": "conv_metrics1"}
    assert client.post("/v1/responses", json=body, headers=auth).status_code == 200
    upstream.push({"events": Script().start().failed().events()})
    assert client.post("/v1/responses", json=body, headers=auth).status_code == 200
    assert conversation_store.acquire_turn(services.engine, "conv_metrics1", "someone-else", 60)
    assert client.post("/v1/responses", json=body, headers=auth).status_code == 409
    reply = client.post("/v1/conversations/conv_metrics1/items", headers=auth,
                        json={"items": [{"type": "message", "role": "user", "content": "more"}]})
    assert reply.status_code == 409

    text = scrape(client)
    assert metric(text, "responses_proxy_conversation_turns_total", result="committed") == 1
    assert metric(text, "responses_proxy_conversation_turns_total", result="aborted") == 1
    assert metric(text, "responses_proxy_conversation_conflicts_total", operation="turn") == 1
    assert metric(text, "responses_proxy_conversation_conflicts_total", operation="items") == 1
    assert metric(text, "responses_proxy_requests_total", route="/v1/responses", status="409") == 1


@pytest.fixture
def guarded(tmp_path, upstream):
    app = make_app(tmp_path, upstream.base_url, METRICS_TOKEN="scrape-secret")
    yield app
    app.extensions["responses_proxy"].engine.dispose()


@pytest.mark.parametrize("authorization, message", [
    (None, "Missing metrics token: send it as 'Authorization: Bearer <token>'."),
    ("Bearer wrong-token", "Incorrect metrics token."),
    ("Basic scrape-secret", "Missing metrics token: send it as 'Authorization: Bearer <token>'."),
])
def test_the_metrics_token_is_required_when_set(guarded, authorization, message):
    reply = guarded.test_client().get("/metrics", headers={"Authorization": authorization} if authorization else {})

    assert reply.status_code == 401
    assert reply.headers["WWW-Authenticate"] == "Bearer"
    assert reply.json == {"error": {"message": message, "type": "invalid_request_error",
                                    "code": "invalid_metrics_token", "param": None}}


def test_an_api_key_is_no_metrics_token(guarded):
    key = key_store.create(guarded.extensions["responses_proxy"].engine, "test")["key"]

    assert guarded.test_client().get("/metrics", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_the_metrics_token_opens_the_metrics(guarded):
    text = scrape(guarded.test_client(), {"Authorization": "Bearer scrape-secret"})

    assert "responses_proxy_requests_total" in text


def test_the_metrics_token_is_a_hidden_setting(guarded):
    values = json.loads(guarded.test_cli_runner().invoke(args=["settings", "--json"]).output)

    assert values["RESPONSES_PROXY_METRICS_TOKEN"] == "(set)"
    assert "METRICS_TOKEN" not in guarded.config


WORKER_GAUGES = ("responses_proxy_worker_open_fds", "responses_proxy_worker_event_loop_watchers",
                 "responses_proxy_worker_requests_in_progress", "responses_proxy_worker_upstream_requests_in_flight")


def test_worker_gauges_say_what_the_worker_holds_when_sampled(app, client, services, account):
    services.metrics.sample_worker()
    before = scrape(client)
    assert all(f"# HELP {name} " in before for name in WORKER_GAUGES)
    read, write = os.pipe()
    slot = services.pool.begin(account["id"])
    # An answer not yet closed: its request is still inside the app.
    reply = client.get("/healthz")
    try:
        services.metrics.sample_worker()
        open_now = len(os.listdir("/proc/self/fd")) - 1  # less the listing's own
        during = scrape(client)
    finally:
        reply.close()
        slot.release()
        os.close(read)
        os.close(write)
    services.metrics.sample_worker()
    after = scrape(client)

    descriptors = [metric(text, "responses_proxy_worker_open_fds") for text in (before, during, after)]
    assert descriptors == [descriptors[0], descriptors[0] + 2, descriptors[0]]
    assert descriptors[1] == open_now
    for name, held in (("responses_proxy_worker_requests_in_progress", 1),
                       ("responses_proxy_worker_upstream_requests_in_flight", 1)):
        assert (metric(before, name), metric(during, name), metric(after, name)) == (0, held, 0), name
    # Without gevent's monkey-patching (this process) threads wait, not the event loop.
    assert event_loop_watchers() is None


def test_event_loop_watchers_count_the_greenlets_that_wait(monkeypatch):
    monkeypatch.setattr(monkey, "is_module_patched", lambda name: True)
    idle = event_loop_watchers()
    sleepers = [gevent.spawn(gevent.sleep, 30) for _ in range(3)]
    try:
        gevent.sleep(0)  # they start, and wait on a timer each
        assert event_loop_watchers() == idle + 3
    finally:
        gevent.killall(sleepers)
    assert event_loop_watchers() == idle


def test_worker_gauges_are_sampled_once_a_second_once_per_process(services, monkeypatch):
    samples = []
    monkeypatch.setattr(services.metrics, "sample_worker", lambda: samples.append(time.monotonic()))
    services.metrics.start_sampling()
    try:
        services.metrics.start_sampling()
        deadline = time.monotonic() + 5
        while len(samples) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        services.metrics.stop_sampling()

    assert len(samples) == 2 and 1.0 <= samples[1] - samples[0] < 2.0, samples
    time.sleep(1.2)
    assert len(samples) == 2  # stopped

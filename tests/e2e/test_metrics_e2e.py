"""GET /metrics through gunicorn with two workers: one scrape, on whichever worker, sums them all.

Each worker writes its samples to files of its own in the metrics directory
(prometheus_client's multiprocess mode); these tests read those files too, to know which
worker counted what.
"""

import glob
import os
import signal
import subprocess
import sys

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from responses_proxy.store.tables import usage as usage_table
from tests.e2e.helpers import RawStream, auth, key_id, post, query, stream, wait_for
from tests.fake_upstream import Script
from tests.helpers import ROOT, Gateway, unique
from tests.prometheus import label_values, metric

TOKEN = "e2e-metrics-token-" + unique()
BODY = {"model": "gpt-5.2", "input": "Count me."}
RESPONSES = {"route": "/v1/responses", "method": "POST", "status": "200"}


@pytest.fixture(scope="module")
def gateway(fake_upstream, tmp_path_factory):
    """This module's ``e2e``: two workers, one account, and /metrics behind a token."""
    server = Gateway(tmp_path_factory.mktemp("metrics"), fake_upstream.base_url,
                     env={"RESPONSES_PROXY_METRICS_TOKEN": TOKEN})
    with server.serving():
        yield server


def scrape(gateway):
    """One scrape, on a connection of its own (so on either worker)."""
    reply = requests.get(gateway.url + "/metrics", headers=auth(TOKEN), timeout=10)
    assert reply.status_code == 200, reply.text
    return reply.text


def per_worker(gateway, kind, name, **labels):
    """{pid: value} of a metric, from each worker's own file (``kind``: counter, gauge_livesum...)."""
    values = {}
    for path in glob.glob(os.path.join(str(gateway.data_dir), "metrics", f"{kind}_*.db")):
        pid = int(os.path.basename(path).rsplit("_", 1)[1][:-len(".db")])
        for family in MultiProcessCollector.merge([path], accumulate=False):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                    values[pid] = values.get(pid, 0) + sample.value
    return values


def served(gateway):
    """How many /v1/responses requests each worker has answered 200."""
    return per_worker(gateway, "counter", "responses_proxy_requests_total", **RESPONSES)


def replace_worker(gateway, pid):
    """Kill a worker outright and wait until gunicorn has started another in its place."""
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: pid not in (pids := gateway.worker_pids()) and len(pids) == 2, timeout=30)
    assert wait_for(lambda: requests.get(gateway.url + "/healthz", timeout=5).status_code == 200)


def test_a_scrape_on_any_worker_sums_every_worker(e2e):
    before, by_worker = metric(scrape(e2e), "responses_proxy_requests_total", **RESPONSES), served(e2e)
    count = 24

    for _ in range(count):  # each on a new connection: the kernel spreads them over both workers
        assert post(e2e, BODY).status_code == 200

    after = served(e2e)
    assert sorted(after) == e2e.worker_pids()
    assert all(after[pid] > by_worker.get(pid, 0) for pid in after), (by_worker, after)  # both served some
    for _ in range(6):
        assert metric(scrape(e2e), "responses_proxy_requests_total", **RESPONSES) == before + count


def test_a_dead_workers_counts_stay_and_are_not_counted_twice(e2e):
    for _ in range(8):
        assert post(e2e, BODY).status_code == 200
    total = metric(scrape(e2e), "responses_proxy_requests_total", **RESPONSES)
    victim = max(served(e2e).items(), key=lambda item: item[1])[0]

    replace_worker(e2e, victim)

    for _ in range(4):
        assert metric(scrape(e2e), "responses_proxy_requests_total", **RESPONSES) == total
    for _ in range(3):
        assert post(e2e, BODY).status_code == 200
    assert metric(scrape(e2e), "responses_proxy_requests_total", **RESPONSES) == total + 3
    assert victim in served(e2e)  # its file is still read


def test_a_dead_workers_open_streams_leave_the_gauge(e2e, upstream):
    upstream.push({"stall_at": 3, "stall": 60})
    held = RawStream(e2e, BODY)
    try:
        held.read_until(b"response.output_item.added")
        text = scrape(e2e)
        assert metric(text, "responses_proxy_open_streams", method="POST") == 1
        holders = [pid for pid, value in per_worker(e2e, "gauge_livesum", "responses_proxy_open_streams").items()
                   if value == 1]
        assert len(holders) == 1
        total = metric(text, "responses_proxy_requests_total", **RESPONSES)

        replace_worker(e2e, holders[0])

        text = scrape(e2e)
        assert metric(text, "responses_proxy_open_streams", method="POST") == 0
        assert metric(text, "responses_proxy_requests_total", **RESPONSES) == total  # the cut stream never ended
    finally:
        held.close()


WORKER_GAUGES = ("responses_proxy_worker_open_fds", "responses_proxy_worker_event_loop_watchers",
                 "responses_proxy_worker_requests_in_progress", "responses_proxy_worker_upstream_requests_in_flight")


def worker_series(gateway, name):
    """{pid: value} of a worker gauge, as a scrape reads it."""
    return {int(sample.labels["pid"]): sample.value for family in text_string_to_metric_families(scrape(gateway))
            for sample in family.samples if sample.name == name}


def test_each_worker_samples_its_own_gauges_and_takes_them_along_when_it_dies(e2e, upstream):
    pids = e2e.worker_pids()
    assert wait_for(lambda: all(sorted(worker_series(e2e, name)) == pids for name in WORKER_GAUGES), timeout=5)
    upstream.push({"stall_at": 3, "stall": 60})
    held = RawStream(e2e, BODY)
    try:
        held.read_until(b"response.output_item.added")

        def holder():
            """The one worker with the stream in progress and in flight (sampled once a second)."""
            in_flight = worker_series(e2e, "responses_proxy_worker_upstream_requests_in_flight")
            in_progress = worker_series(e2e, "responses_proxy_worker_requests_in_progress")
            busy = [pid for pid in pids if in_flight.get(pid) == 1 and in_progress.get(pid) == 1]
            idle = [pid for pid in pids if in_flight.get(pid) == 0]
            return busy[0] if len(busy) == 1 and len(idle) == len(pids) - 1 else None

        victim = wait_for(holder, timeout=5)
        assert victim is not None
        assert worker_series(e2e, "responses_proxy_worker_open_fds")[victim] > 0
        assert worker_series(e2e, "responses_proxy_worker_event_loop_watchers")[victim] > 0

        replace_worker(e2e, victim)

        pids = e2e.worker_pids()
        assert wait_for(lambda: all(sorted(worker_series(e2e, name)) == pids for name in WORKER_GAUGES), timeout=5)
        assert victim not in pids
    finally:
        held.close()


def test_websocket_connections_and_their_requests(e2e, connect):
    client = connect(e2e)
    assert client.status == 101
    assert wait_for(lambda: metric(scrape(e2e), "responses_proxy_websocket_connections") == 1)
    before = metric(scrape(e2e), "responses_proxy_requests_total", route="/v1/responses", method="WEBSOCKET",
                    status="200", model="gpt-5.2")

    assert client.request(BODY)[-1]["type"] == "response.completed"

    # Counted when the relay ends, just after it wrote the final event: the client may read that
    # event first.
    assert wait_for(lambda: metric(scrape(e2e), "responses_proxy_requests_total", route="/v1/responses",
                                   method="WEBSOCKET", status="200", model="gpt-5.2") == before + 1)
    text = scrape(e2e)
    assert metric(text, "responses_proxy_requests_total", route="/v1/responses", method="GET") == 0
    client.close()
    assert wait_for(lambda: metric(scrape(e2e), "responses_proxy_websocket_connections") == 0)


@pytest.mark.parametrize("headers, message", [
    ({}, "Missing metrics token: send it as 'Authorization: Bearer <token>'."),
    ({"Authorization": "Bearer not-the-token"}, "Incorrect metrics token."),
])
def test_the_token_guards_the_metrics(e2e, headers, message):
    reply = requests.get(e2e.url + "/metrics", headers=headers, timeout=10)

    assert reply.status_code == 401
    assert reply.json() == {"error": {"message": message, "type": "invalid_request_error",
                                      "code": "invalid_metrics_token", "param": None}}
    assert requests.get(e2e.url + "/metrics", headers=auth(e2e.key), timeout=10).status_code == 401


def flask_cli(gateway, *args):
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, env=gateway.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def account_states(gateway, account_id):
    text = scrape(gateway)
    return {state for state in label_values(text, "responses_proxy_account_state", "state")
            if metric(text, "responses_proxy_account_state", account=account_id, state=state) == 1}


def test_account_state_gauges_follow_the_cli(e2e):
    row = e2e.import_account(account_id="acct-fake-metrics", email="metrics@example.com",
                                 refresh_token="rt-metrics-" + unique())
    assert account_states(e2e, row["id"]) == {"active"}
    assert metric(scrape(e2e), "responses_proxy_account_state", account=row["id"],
                  email="metrics@example.com", state="active") == 1

    flask_cli(e2e, "accounts", "disable", row["id"])
    for _ in range(4):  # whichever worker answers
        assert account_states(e2e, row["id"]) == {"disabled"}

    flask_cli(e2e, "accounts", "enable", row["id"])
    assert account_states(e2e, row["id"]) == {"active"}

    flask_cli(e2e, "accounts", "remove", row["id"])
    assert row["id"] not in label_values(scrape(e2e), "responses_proxy_account_state", "account")


def test_token_counters_add_up_what_the_upstream_reported(e2e, upstream):
    key = e2e.create_key()
    usage = {"input_tokens": 101, "input_tokens_details": {"cached_tokens": 33}, "output_tokens": 17,
             "output_tokens_details": {"reasoning_tokens": 5}, "total_tokens": 118}
    for _ in range(3):
        upstream.push({"events": Script().start().message(["Counted."]).completed(usage=usage).events()})
    assert post(e2e, BODY, key=key).status_code == 200
    stream(e2e, BODY, key=key)
    assert post(e2e, {**BODY, "stream": True}, key=key).status_code == 200

    text = scrape(e2e)
    owner = key_id(e2e, key)
    for kind, tokens in (("input", 303), ("cached", 99), ("output", 51), ("reasoning", 15)):
        assert metric(text, "responses_proxy_tokens_total", key=owner, model="gpt-5.2", kind=kind) == tokens
    recorded = wait_for(lambda: query(e2e, select(func.sum(usage_table.c.input_tokens).label("input"))
                                      .where(usage_table.c.key_id == owner))[0]["input"] == 303)
    assert recorded


def test_the_counts_start_over_with_the_server(fake_upstream, tmp_path):
    server = Gateway(tmp_path, fake_upstream.base_url)
    with server.serving():
        assert post(server, BODY).status_code == 200
        assert metric(requests.get(server.url + "/metrics", timeout=10).text, "responses_proxy_requests_total",
                      **RESPONSES) == 1
    server.start()
    try:
        assert metric(requests.get(server.url + "/metrics", timeout=10).text, "responses_proxy_requests_total",
                      **RESPONSES) == 0
    finally:
        server.stop()

"""A conversation turn holds its conversation for as long as it runs, however quiet the upstream,
and no longer than a short lease once the process serving it is gone."""

import concurrent.futures
import os
import signal
import time

import pytest
import requests

from tests.e2e.helpers import auth, wait_for
from tests.helpers import Gateway

LEASE = 1.5  # seconds: RESPONSES_PROXY_CONVERSATION_TURN_LEASE_SECONDS for these gateways


@pytest.fixture
def gateway(tmp_path, upstream):
    server = Gateway(tmp_path, upstream.base_url, workers=1,
                     env={"RESPONSES_PROXY_CONVERSATION_TURN_LEASE_SECONDS": str(LEASE),
                          "RESPONSES_PROXY_KEEPALIVE_SECONDS": "1"})
    with server.serving():
        yield server


def turn(gateway, conversation, text, timeout=30):
    return requests.post(gateway.url + "/v1/responses", headers=auth(gateway.key), timeout=timeout,
                         json={"model": "gpt-5.2", "input": text, "conversation": conversation})


def serving(gateway):
    try:
        return requests.get(gateway.url + "/healthz", timeout=2).status_code == 200
    except requests.RequestException:  # the new worker is not listening yet
        return False


def items(gateway, conversation):
    reply = requests.get(f"{gateway.url}/v1/conversations/{conversation}/items?order=asc",
                         headers=auth(gateway.key), timeout=10)
    return [part["text"] for item in reply.json()["data"] for part in item["content"]]


def test_a_turn_keeps_its_conversation_while_the_upstream_is_silent(gateway, upstream):
    """The upstream thinks for three leases before its first event: the turn still holds the
    conversation (its lease is renewed in the background), so an overlapping turn gets 409."""
    upstream.push({"stall_at": 0, "stall": 3 * LEASE})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(turn, gateway, "conv_quiet1", "slow")
        time.sleep(2 * LEASE)
        overlapping = turn(gateway, "conv_quiet1", "overlapping")
        assert slow.result().status_code == 200
    assert overlapping.status_code == 409, overlapping.text
    assert overlapping.json()["error"]["code"] == "conversation_busy"
    assert items(gateway, "conv_quiet1") == ["slow", "Hello from the fake upstream."]


def test_a_turn_whose_worker_died_frees_its_conversation_within_a_lease(gateway, upstream):
    """The worker serving a turn is killed mid-stream: the turn added nothing, and the next
    turn of that conversation goes through once the lease ran out (not minutes later)."""
    assert turn(gateway, "conv_dies1", "first").status_code == 200
    upstream.push({"stall_at": 3, "stall": 30})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        doomed = pool.submit(turn, gateway, "conv_dies1", "doomed")
        assert wait_for(lambda: len(upstream.response_requests()) == 2, timeout=10)
        [worker] = gateway.worker_pids()
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(requests.RequestException):
            doomed.result()
    killed_at = time.monotonic()
    # gunicorn starts a new worker; until the dead turn's lease runs out, the conversation is busy.
    assert wait_for(lambda: serving(gateway), timeout=20)
    answer = None
    while time.monotonic() - killed_at < 10 * LEASE:
        answer = turn(gateway, "conv_dies1", "after")
        if answer.status_code != 409:
            break
        time.sleep(0.2)
    freed_after = time.monotonic() - killed_at
    assert answer.status_code == 200, answer.text
    assert freed_after < 10 * LEASE
    assert items(gateway, "conv_dies1") == ["first", "Hello from the fake upstream.",
                                            "after", "Hello from the fake upstream."]

"""Two gateway hosts behind a load balancer, on one PostgreSQL: what one host learns or holds, the
other sees at once.

Two independent gunicorn masters (ports and data directories of their own) share
RESPONSES_PROXY_DATABASE_URL (a schema of this module's own) and RESPONSES_PROXY_ENCRYPTION_KEY,
in front of one fake upstream. Each test replaces the accounts with the ones it needs.
"""

import collections
import concurrent.futures
import json
import subprocess
import sys
import threading

import pytest
import requests

from tests.e2e.helpers import auth, error_of, remove_accounts
from tests.fake_upstream import auth_json, text_answer
from tests.helpers import ROOT, Gateway, unique

LIMITED = {"status": 429, "body": {"error": {"type": "usage_limit_reached", "plan_type": "plus",
                                             "message": "The usage limit has been reached",
                                             "resets_in_seconds": 600}}}


@pytest.fixture(scope="module")
def hosts(fake_upstream, module_postgres_url, tmp_path_factory):
    """Hosts A and B, started together (their masters migrate the shared schema at once)."""
    env = {"RESPONSES_PROXY_DATABASE_URL": module_postgres_url, "RESPONSES_PROXY_KEEPALIVE_SECONDS": "1"}
    pair = [Gateway(tmp_path_factory.mktemp(f"host-{name}"), fake_upstream.base_url, env=env) for name in "ab"]
    try:
        for host in pair:
            host.launch()
        for host in pair:
            host.wait_ready()
        pair[0].key = pair[1].key = pair[0].create_key()  # one key: it works on every host
        yield pair
    finally:
        for host in pair:
            host.stop()


@pytest.fixture
def accounts(hosts, upstream):
    """Replace the accounts (through host A's database) with fake ones: ``accounts(n, **auth_json)``."""

    def replace(n, **document):
        remove_accounts(hosts[0])
        document.setdefault("last_refresh", "2099-01-01T00:00:00Z")  # no refresh unless a test wants one
        return [hosts[0].import_account(auth_json(account_id=f"acct-{index}", **document)) for index in range(n)]

    return replace


def ask(host, key=None, timeout=30, **body):
    return requests.post(host.url + "/v1/responses", headers=auth(key or host.key), timeout=timeout,
                         json={"model": "gpt-5.2", "input": "hi", **body})


def served_by(upstream, since=0):
    return [request["headers"]["chatgpt-account-id"] for request in upstream.response_requests()[since:]]


def cli(host, *args):
    """A ``flask --app wsgi`` command run as an operator would on ``host``."""
    run = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args, "--json"], cwd=ROOT, env=host.env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_a_key_created_or_revoked_on_one_host_takes_effect_on_the_other_at_once(hosts, accounts):
    a, b = hosts
    accounts(1)
    created = cli(a, "keys", "create", "--name", "roaming")
    assert ask(b, created["key"]).status_code == 200
    models = requests.get(b.url + "/v1/models", headers=auth(created["key"]), timeout=10)
    assert models.status_code == 200
    cli(b, "keys", "revoke", created["id"])
    for host in (a, b):
        refused = ask(host, created["key"])
        assert refused.status_code == 401
        assert error_of(refused)["code"] == "invalid_api_key"


def test_a_cooldown_learned_on_one_host_is_respected_by_the_other(hosts, accounts, upstream):
    a, b = hosts
    accounts(2)
    for index in range(4):  # B's workers have the accounts loaded before the cooldown
        assert ask(b, input=f"warm {index}").status_code == 200
    upstream.push(LIMITED, account="acct-0")
    for index in range(10):  # until A has sent acct-0 its 429 (and failed over)
        assert ask(a, input=f"on a {index}").status_code == 200
        if "acct-0" in served_by(upstream, 4):
            break
    assert served_by(upstream, 4).count("acct-0") == 1
    seen = len(upstream.response_requests())
    for index in range(8):
        assert ask(b, input=f"on b {index}").status_code == 200
    assert served_by(upstream, seen) == ["acct-1"] * 8


def test_a_conversation_alternating_hosts_keeps_its_whole_history(hosts, accounts, upstream):
    accounts(2)
    conversation = "conv_" + unique() * 6
    said = []
    for index in range(6):
        host = hosts[index % 2]
        upstream.push({"events": text_answer(f"answer {index}")})
        reply = requests.post(host.url + "/v1/responses", headers=auth(hosts[0].key), timeout=30, stream=True,
                              json={"model": "gpt-5.2", "input": f"question {index}", "conversation": conversation,
                                    "stream": index % 3 == 0})
        body = reply.content.decode()
        assert reply.status_code == 200, body
        assert f"answer {index}" in body
        sent = upstream.response_requests()[-1]["body"]["input"]
        assert [text_of(item) for item in sent] == said + [f"question {index}"]
        said += [f"question {index}", f"answer {index}"]
    for host in hosts:
        listed = requests.get(f"{host.url}/v1/conversations/{conversation}/items?order=asc&limit=100",
                              headers=auth(hosts[0].key), timeout=10).json()
        assert [text_of(item) for item in listed["data"]] == said


def text_of(item):
    return "".join(part.get("text", "") for part in item["content"])


def test_concurrent_turns_of_one_conversation_on_the_two_hosts_get_one_409(hosts, accounts, upstream):
    accounts(2)
    conversation = "conv_" + unique() * 6
    assert ask(hosts[0], input="opening", conversation=conversation).status_code == 200
    for round_ in range(3):
        upstream.push({"stall_at": 2, "stall": 1.0})  # whichever turn wins holds the conversation a while
        start = threading.Barrier(2)

        def turn(host, text, start=start):
            start.wait()
            return ask(host, input=text, conversation=conversation)

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(turn, hosts, [f"a{round_}", f"b{round_}"]))
        statuses = sorted(reply.status_code for reply in replies)
        assert statuses == [200, 409], [reply.text for reply in replies]
        refused = next(reply for reply in replies if reply.status_code == 409)
        assert error_of(refused)["code"] == "conversation_busy"
    listed = requests.get(f"{hosts[1].url}/v1/conversations/{conversation}/items?order=asc",
                          headers=auth(hosts[0].key), timeout=10).json()["data"]
    assert len(listed) == 2 + 3 * 2  # the opening turn, then each round's winner alone
    assert len(upstream.response_requests()) == 1 + 3


def test_a_burst_across_both_hosts_refreshes_an_expired_token_once(hosts, accounts, upstream):
    accounts(1, expires_in=-60, refresh_token="rt-burst")
    upstream.push({"delay": 1.0}, account="refresh")  # the burst arrives while the refresh is in flight
    start = threading.Barrier(12)

    def request(index):
        start.wait()
        return ask(hosts[index % 2], input=f"burst {index}").status_code

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(request, range(12)))
    assert statuses == [200] * 12
    refreshes = [request for request in upstream.requests if request["path"] == "/oauth/token"]
    assert len(refreshes) == 1
    assert "rt-burst" in refreshes[0]["body"]
    tokens = {request["headers"]["authorization"] for request in upstream.response_requests()}
    assert len(tokens) == 1  # every request waited for the one refresh, on both hosts


def test_prompt_cache_key_affinity_holds_across_hosts(hosts, accounts, upstream):
    a, b = hosts
    accounts(3)
    keys = [f"thread-{unique()}" for _ in range(6)]
    for rounds in range(2):
        for key in keys:
            for host in (a, b):
                assert ask(host, input=f"{key} {rounds}", prompt_cache_key=key).status_code == 200
    served = served_by(upstream)
    by_key = collections.defaultdict(set)
    for index, account in enumerate(served):
        by_key[keys[index // 2 % len(keys)]].add(account)
    assert all(len(accounts_) == 1 for accounts_ in by_key.values()), by_key
    assert len(set(served)) > 1  # the keys spread over the pool: each one sticks
    # Its account runs out on host B: the key moves there, and host A follows it.
    moving = keys[0]
    [first] = by_key[moving]
    upstream.push(LIMITED, account=first)
    seen = len(upstream.response_requests())
    assert ask(b, input="moving", prompt_cache_key=moving).status_code == 200
    moved_to = served_by(upstream, seen)[-1]
    assert moved_to != first
    for host in (a, b, a):
        assert ask(host, input="after the move", prompt_cache_key=moving).status_code == 200
    assert served_by(upstream, seen + 2) == [moved_to] * 3

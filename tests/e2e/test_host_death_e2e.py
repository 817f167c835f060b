"""A host dies (its master and workers killed at once) while it streams conversation turns or
refreshes a token: the other host takes over what it held within seconds.

What the dead host held lives in the shared database as leases that only a live process renews:
a turn's hold on its conversation (``CONVERSATION_TURN_LEASE_SECONDS``, short here), the
account's refresh lock (15 s) and its workers' in-flight counts (stale after 10 s). Each test
prints how long the takeover took.
"""

import concurrent.futures
import time

import pytest
import requests
from sqlalchemy import select

from responses_proxy.config import DEFAULTS
from responses_proxy.pool.refresh import REFRESH_LEASE_SECONDS
from responses_proxy.pool.upkeep import LOAD_STALE_SECONDS, UPKEEP_ROUND_SECONDS
from responses_proxy.store.tables import accounts, worker_load
from tests.e2e.helpers import RawStream, auth, error_of, wait_for
from tests.fake_upstream import auth_json
from tests.helpers import Gateway, unique

TURN_LEASE = 3.0
ANSWER = "Hello from the fake upstream."
# What the task set as the longest acceptable takeover: seconds, not minutes.
TAKEOVER_GOAL_SECONDS = 30.0


@pytest.fixture
def hosts(upstream, postgres_url, tmp_path):
    env = {"RESPONSES_PROXY_DATABASE_URL": postgres_url, "RESPONSES_PROXY_KEEPALIVE_SECONDS": "1",
           "RESPONSES_PROXY_CONVERSATION_TURN_LEASE_SECONDS": str(TURN_LEASE)}
    pair = []
    for name in "ab":
        (tmp_path / name).mkdir()
        pair.append(Gateway(tmp_path / name, upstream.base_url, env=env).launch())
    try:
        for host in pair:
            host.wait_ready()
        pair[0].key = pair[1].key = pair[0].create_key()
        yield pair
    finally:
        for host in pair:
            host.stop()


def ask(host, timeout=30, **body):
    return requests.post(host.url + "/v1/responses", headers=auth(host.key), timeout=timeout,
                         json={"model": "gpt-5.2", "input": "hi", **body})


def rows(host, table):
    engine = host.engine()
    try:
        with engine.connect() as conn:
            return [dict(row) for row in conn.execute(select(table)).mappings()]
    finally:
        engine.dispose()


def load_of(host, pids):
    """The worker_load rows of the workers with these pids (worker ids are host:pid:random)."""
    return [row for row in rows(host, worker_load) if int(row["worker_id"].split(":")[1]) in pids]


def items(host, conversation):
    reply = requests.get(f"{host.url}/v1/conversations/{conversation}/items?order=asc", headers=auth(host.key),
                         timeout=10)
    return [part["text"] for item in reply.json()["data"] for part in item["content"]]


def test_turns_streaming_on_a_dead_host_are_taken_over_by_the_other(hosts, upstream):
    a, b = hosts
    for index in range(2):
        a.import_account(auth_json(account_id=f"acct-{index}", last_refresh="2099-01-01T00:00:00Z"))
    conversations = [f"conv_dying{index}_{unique()}" for index in range(3)]
    for conversation in conversations:
        assert ask(a, input="first", conversation=conversation).status_code == 200
    streams = []
    for conversation in conversations:
        upstream.push({"stall_at": 4, "stall": 60})  # mid-answer: the first delta never comes
        stream = RawStream(a, {"model": "gpt-5.2", "input": "doomed", "conversation": conversation})
        stream.read_until(b"response.content_part.added")
        streams.append(stream)
    pids = set(a.worker_pids())
    assert wait_for(lambda: sum(row["in_flight"] for row in load_of(a, pids)) == 3)

    a.kill()
    killed_at = time.monotonic()
    for stream in streams:
        stream.close()
    took = {}
    rows_gone = None  # when the dead workers' in-flight counts left worker_load
    for conversation in conversations:
        first = ask(b, input="next", conversation=conversation)
        assert first.status_code == 409  # the dead turn's lease still holds it, for a while
        assert error_of(first)["code"] == "conversation_busy"
    while len(took) < len(conversations) and time.monotonic() - killed_at < TAKEOVER_GOAL_SECONDS:
        for conversation in set(conversations) - set(took):
            reply = ask(b, input="next", conversation=conversation)
            if reply.status_code != 409:
                assert reply.status_code == 200, reply.text
                took[conversation] = time.monotonic() - killed_at
        if rows_gone is None and not load_of(b, pids):
            rows_gone = time.monotonic() - killed_at
        time.sleep(0.1)
    print(f"\nturn leases taken over {sorted(round(seconds, 2) for seconds in took.values())} s after the kill "
          f"(lease {TURN_LEASE:g} s)")
    assert len(took) == len(conversations), f"still busy {TAKEOVER_GOAL_SECONDS:g} s after the host died"
    # A dead turn holds its conversation for up to a whole lease (it may have just taken it):
    # at the default lease, too, another host takes over within the goal.
    assert max(took.values()) < TURN_LEASE + 2
    assert DEFAULTS["CONVERSATION_TURN_LEASE_SECONDS"] + 2 < TAKEOVER_GOAL_SECONDS
    for conversation in conversations:
        # The killed turn added nothing; the next one, served by B, follows the first.
        assert items(b, conversation) == ["first", ANSWER, "next", ANSWER]

    # The dead workers' in-flight counts leave worker_load a round after they went stale.
    if rows_gone is None:
        assert wait_for(lambda: not load_of(b, pids), timeout=3 * LOAD_STALE_SECONDS, interval=0.2)
        rows_gone = time.monotonic() - killed_at
    print(f"dead workers' in-flight rows gone {rows_gone:.1f} s after the kill "
          f"(stale after {LOAD_STALE_SECONDS:g} s)")
    assert rows_gone < LOAD_STALE_SECONDS + UPKEEP_ROUND_SECONDS + 3


def test_a_refresh_in_flight_on_a_dead_host_is_done_once_by_the_other(hosts, upstream):
    a, b = hosts
    a.import_account(auth_json(account_id="acct-0", expires_in=-60, refresh_token="rt-dying",
                               last_refresh="2099-01-01T00:00:00Z"))
    upstream.push({"delay": 120}, account="refresh")  # A's refresh is at the auth server when A dies
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        doomed = pool.submit(ask, a, input="doomed")
        assert wait_for(lambda: [r for r in upstream.requests if r["path"] == "/oauth/token"], timeout=10)
        [row] = rows(a, accounts)
        assert row["refresh_lock_owner"] is not None
        a.kill()
        killed_at = time.monotonic()
        with pytest.raises(requests.RequestException):
            doomed.result()

    reply = ask(b, input="after", timeout=60)  # waits for the dead host's refresh lock, then refreshes
    took = time.monotonic() - killed_at
    print(f"\nrefresh lease taken over and the refresh done {took:.1f} s after the kill "
          f"(lease {REFRESH_LEASE_SECONDS:g} s)")
    assert reply.status_code == 200, reply.text
    assert took < TAKEOVER_GOAL_SECONDS
    refreshes = [request["body"] for request in upstream.requests if request["path"] == "/oauth/token"]
    assert len(refreshes) == 2 and all("rt-dying" in body for body in refreshes)  # A's, abandoned; B's
    assert upstream.used_refresh_tokens == {"rt-dying"}  # one rotation

    # The rotated token was stored: B's next request needs no refresh, and once the upstream
    # rejects the access token, the stored refresh token (never used before) gets a new one.
    assert ask(b, input="again").status_code == 200
    assert len([request for request in upstream.requests if request["path"] == "/oauth/token"]) == 2
    upstream.rejected_tokens.add(upstream.response_requests()[-1]["headers"]["authorization"].partition(" ")[2])
    assert ask(b, input="after a 401").status_code == 200
    assert upstream.used_refresh_tokens == {"rt-dying", "rt-dying-next"}

"""Token refresh against the fake auth server: one refresher at a time across processes (two
``AccountPool`` objects on one database stand for two)."""

import concurrent.futures
import json
import time

import pytest

from responses_proxy.pool import AccountPool, refresh
from responses_proxy.store import accounts as account_store
from responses_proxy.upstream.credentials import parse_auth_json
from responses_proxy.upstream.oauth import RefreshFailed
from tests.fake_upstream import auth_json


@pytest.fixture
def account(services):
    """An account whose access token has expired: it must be refreshed before use."""
    row, _ = account_store.upsert(services.engine, services.cipher, parse_auth_json(json.dumps(
        auth_json(expires_in=-60, refresh_token="rt-first")).encode()))
    return row


def current(pool, account_id):
    return next(account for account in pool.snapshot() if account.id == account_id)


def stored(services, account_id):
    row = account_store.read(services.engine, account_id)
    return row, account_store.tokens(services.cipher, row)


def refresh_calls(upstream):
    return [request for request in upstream.requests if request["path"].endswith("/oauth/token")]


def another_process(services):
    return AccountPool(services.engine, services.cipher, services.client,
                       {**services.settings, "QUOTA_POLL_SECONDS": 0})


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def test_a_refresh_stores_the_new_tokens(services, upstream, account):
    old = current(services.pool, account["id"])
    fresh = services.pool.refresh(old)
    assert fresh.tokens["access_token"] != old.tokens["access_token"]
    assert fresh.tokens["refresh_token"] == "rt-first-next"
    row, tokens = stored(services, account["id"])
    assert tokens == fresh.tokens and row["refresh_lock_owner"] is None
    assert len(refresh_calls(upstream)) == 1


def test_a_slow_refresh_keeps_its_lock_and_the_other_process_waits_for_it(services, upstream, account,
                                                                          monkeypatch):
    # A lease far shorter than the refresh: only renewing it keeps the second process out.
    monkeypatch.setattr(refresh, "REFRESH_LEASE_SECONDS", 0.6)
    monkeypatch.setattr(refresh, "REFRESH_RENEW_SECONDS", 0.15)
    upstream.push({"delay": 2.0}, account="refresh")
    first, second = services.pool, another_process(services)

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        slow = executor.submit(first.refresh, current(first, account["id"]))
        assert wait_for(lambda: account_store.read(services.engine, account["id"])["refresh_lock_owner"])
        time.sleep(1.0)  # well past the lease the lock was taken with
        waited = second.refresh(current(second, account["id"]))
        refreshed = slow.result(timeout=30)

    assert len(refresh_calls(upstream)) == 1, "the rotating refresh token was used once"
    assert waited.tokens == refreshed.tokens == stored(services, account["id"])[1]
    assert stored(services, account["id"])[0]["status"] == "active"


def test_a_lock_left_by_a_dead_process_is_taken_over(services, upstream, account, monkeypatch):
    monkeypatch.setattr(refresh, "REFRESH_LEASE_SECONDS", 0.5)
    assert account_store.try_lock_refresh(services.engine, account["id"], "dead-process", 0.5)
    fresh = services.pool.refresh(current(services.pool, account["id"]))
    assert stored(services, account["id"])[1] == fresh.tokens
    assert len(refresh_calls(upstream)) == 1


def test_a_redirect_is_never_followed(services, upstream, account):
    elsewhere = upstream.base_url + "/elsewhere/oauth/token"
    upstream.push({"status": 307, "headers": {"Location": elsewhere}, "body": {}}, account="refresh")
    with pytest.raises(RefreshFailed, match="redirect") as raised:
        services.pool.refresh(current(services.pool, account["id"]))
    assert not raised.value.permanent
    assert [call["path"] for call in refresh_calls(upstream)] == ["/oauth/token"], "the token went nowhere else"
    row = account_store.read(services.engine, account["id"])
    assert row["status"] == "active" and row["refresh_lock_owner"] is None

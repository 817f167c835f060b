"""Token refresh against the fake auth server: one refresher at a time across processes (two
``AccountPool`` objects on one database stand for two), and new tokens are never lost."""

import concurrent.futures
import json
import sqlite3
import time

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from responses_proxy.pool import AccountPool, refresh
from responses_proxy.store import accounts as account_store
from responses_proxy.store.tables import accounts
from responses_proxy.upstream.credentials import parse_auth_json
from responses_proxy.upstream.oauth import RefreshFailed
from tests.fake_upstream import auth_json


@pytest.fixture
def account(services):
    """An account whose access token has expired: it must be refreshed before use."""
    row, _ = account_store.upsert(services.engine, services.cipher, parse_auth_json(json.dumps(
        auth_json(expires_in=-60, refresh_token="rt-first")).encode()))
    return row


def another_process(services):
    return AccountPool(services.engine, services.cipher, services.client,
                       {**services.settings, "QUOTA_POLL_SECONDS": 0})


def current(pool, account_id):
    return next(account for account in pool.snapshot() if account.id == account_id)


def stored(services, account_id):
    row = account_store.read(services.engine, account_id)
    return row, account_store.tokens(services.cipher, row)


def refresh_calls(upstream):
    return [request for request in upstream.requests if request["path"].endswith("/oauth/token")]


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


def test_new_tokens_are_stored_even_when_the_lock_was_lost_meanwhile(services, upstream, account):
    upstream.push({"delay": 1.0}, account="refresh")
    old = current(services.pool, account["id"])
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        pending = executor.submit(services.pool.refresh, old)
        assert wait_for(lambda: account_store.read(services.engine, account["id"])["refresh_lock_owner"])
        # The lock passes to another process (its holder looked dead to it).
        with services.engine.begin() as conn:
            conn.execute(update(accounts).where(accounts.c.id == account["id"]).values(
                refresh_lock_owner="another-process", refresh_lock_until=time.time() + 60))
        fresh = pending.result(timeout=30)

    # The auth server has retired the old refresh token: the new one is the only login left.
    row, tokens = stored(services, account["id"])
    assert tokens == fresh.tokens and tokens["refresh_token"] == "rt-first-next"
    assert row["refresh_lock_owner"] == "another-process", "someone else's lock is theirs to release"


def test_a_refresh_that_failed_with_the_old_token_does_not_condemn_the_new_one(services, upstream, account):
    old_ciphertext = account_store.read(services.engine, account["id"])["tokens"]
    services.pool.refresh(current(services.pool, account["id"]))
    # A late process, which read the old tokens and took the lock after the new ones were
    # stored, refreshes with the old refresh token and is refused for good.
    assert account_store.try_lock_refresh(services.engine, account["id"], "late-process", 60)
    account_store.release_refresh(services.engine, account["id"], "late-process", "invalid_grant",
                                  account_store.NEEDS_RELOGIN, old_ciphertext)
    assert stored(services, account["id"])[0]["status"] == "active"


def test_a_new_login_stored_after_a_refused_refresh_serves_again(services, upstream, account):
    account_store.set_status(services.engine, account["id"], account_store.NEEDS_RELOGIN)
    account_store.save_refreshed(services.engine, services.cipher, account["id"], "owner",
                                 {"access_token": "a", "refresh_token": "r", "id_token": "i"}, None)
    assert stored(services, account["id"])[0]["status"] == "active"


def test_storing_new_tokens_is_retried_after_a_database_error(services, upstream, account, monkeypatch):
    real = account_store.save_refreshed
    calls = []

    def locked_once(*args):
        calls.append(args)
        if len(calls) == 1:
            raise OperationalError("UPDATE accounts ...", {}, sqlite3.OperationalError("database is locked"))
        return real(*args)

    monkeypatch.setattr(account_store, "save_refreshed", locked_once)
    monkeypatch.setattr(refresh, "SAVE_RETRY_DELAYS", (0.01,))
    fresh = services.pool.refresh(current(services.pool, account["id"]))
    assert len(calls) == 2
    assert stored(services, account["id"])[1] == fresh.tokens


def test_a_database_that_stays_down_fails_the_refresh_after_the_retries(services, upstream, account,
                                                                        monkeypatch):
    def locked(*args):
        raise OperationalError("UPDATE accounts ...", {}, sqlite3.OperationalError("database is locked"))

    monkeypatch.setattr(account_store, "save_refreshed", locked)
    monkeypatch.setattr(refresh, "SAVE_RETRY_DELAYS", (0.01, 0.01))
    with pytest.raises(RefreshFailed, match="could not be stored") as raised:
        services.pool.refresh(current(services.pool, account["id"]))
    assert not raised.value.permanent


def test_new_tokens_the_database_could_not_take_are_stored_once_it_is_back(services, upstream, account,
                                                                             monkeypatch):
    real = account_store.save_refreshed
    outage = {"down": True}

    def down_for_a_while(*args):
        if outage["down"]:
            raise OperationalError("UPDATE accounts ...", {}, ConnectionError("server closed the connection"))
        return real(*args)

    monkeypatch.setattr(account_store, "save_refreshed", down_for_a_while)
    monkeypatch.setattr(refresh, "SAVE_RETRY_DELAYS", (0.01,))
    monkeypatch.setattr(refresh, "SAVE_LATER_SECONDS", 0.05)
    with pytest.raises(RefreshFailed, match="could not be stored"):
        services.pool.refresh(current(services.pool, account["id"]))
    time.sleep(0.2)
    outage["down"] = False
    # The rotated refresh token (the old one is spent) is stored, not lost with the outage.
    assert wait_for(lambda: stored(services, account["id"])[1]["refresh_token"] == "rt-first-next")
    assert stored(services, account["id"])[0]["refresh_lock_owner"] is None


def test_a_redirect_is_never_followed(services, upstream, account):
    elsewhere = upstream.base_url + "/elsewhere/oauth/token"
    upstream.push({"status": 307, "headers": {"Location": elsewhere}, "body": {}}, account="refresh")
    with pytest.raises(RefreshFailed, match="redirect") as raised:
        services.pool.refresh(current(services.pool, account["id"]))
    assert not raised.value.permanent
    assert [call["path"] for call in refresh_calls(upstream)] == ["/oauth/token"], "the token went nowhere else"
    row = account_store.read(services.engine, account["id"])
    assert row["status"] == "active" and row["refresh_lock_owner"] is None

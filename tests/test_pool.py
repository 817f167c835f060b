"""The pool's snapshot of the account rows: checked once per request, with the API key's query."""

import time

import pytest

from responses_proxy.errors import UsageLimitReached
from responses_proxy.store import accounts as account_store
from responses_proxy.store import keys as key_store


@pytest.fixture
def version_queries(monkeypatch):
    """Every accounts version query the pool makes of its own."""
    calls = []
    real = account_store.version

    def counted(engine):
        calls.append(engine)
        return real(engine)

    monkeypatch.setattr(account_store, "version", counted)
    return calls


# --- the accounts version read with the API key ---------------------------------------------------

def test_a_request_checks_the_accounts_with_its_key_query(services, api_key, account, version_queries):
    pool = services.pool
    _, version = key_store.find_active_with_accounts_version(services.engine, api_key)

    chosen, _ = pool.choose(version=version)
    assert chosen.id == account["id"] and version_queries == []
    # A failover passes no version: it must see what this request wrote since.
    pool.cool_down(chosen, time.time() + 60, "usage limit")
    with pytest.raises(UsageLimitReached):
        pool.choose(exclude={chosen.id})
    assert version_queries

    asked = len(version_queries)
    assert pool.first_usable() is None
    assert len(version_queries) == asked + 1, "outside a request the pool asks for itself"


def test_a_cooldown_written_elsewhere_is_seen_by_the_next_request(services, api_key, account, version_queries):
    pool = services.pool
    _, version = key_store.find_active_with_accounts_version(services.engine, api_key)
    assert pool.choose(version=version)[0].id == account["id"]

    # Another worker cools the account down; this worker's next request reads the new version.
    account_store.set_cooldown(services.engine, account["id"], time.time() + 60, "usage limit")
    _, version = key_store.find_active_with_accounts_version(services.engine, api_key)
    with pytest.raises(UsageLimitReached):
        pool.choose(version=version)


def test_a_request_through_the_app_reads_the_accounts_version_only_with_its_key(client, auth, account,
                                                                                 version_queries):
    body = {"model": "gpt-5.2", "input": "hi"}
    assert client.post("/v1/responses", json=body, headers=auth).status_code == 200
    version_queries.clear()  # the first request also fetched the model catalog

    assert client.post("/v1/responses", json=body, headers=auth).status_code == 200
    assert version_queries == []

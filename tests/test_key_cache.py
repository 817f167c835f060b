"""Each worker keeps API keys and the accounts version between requests, and still sees a key
revoked or an account changed by anyone else with the next request after the commit (SQLite's
data_version, PostgreSQL's notifications), on both databases."""

import json
import time

import pytest
from sqlalchemy import event, update

from responses_proxy.errors import InvalidApiKey
from responses_proxy.keys.service import KeyService
from responses_proxy.store import accounts as account_store
from responses_proxy.store import changes, make_engine
from responses_proxy.store import keys as key_store
from responses_proxy.store import usage as usage_store
from responses_proxy.store.accounts import upsert
from responses_proxy.store.tables import accounts
from responses_proxy.upstream.credentials import parse_auth_json
from tests.fake_upstream import auth_json
from tests.helpers import built_usage_row, make_app


@pytest.fixture
def services(tmp_path, upstream, database_url):
    app = make_app(tmp_path, upstream.base_url, database_url)
    services = app.extensions["responses_proxy"]
    yield services
    services.engine.dispose()


@pytest.fixture
def other(services):
    """Another process's engine on the same database (the CLI, another worker, another host)."""
    engine = make_engine(services.engine.url.render_as_string(hide_password=False))
    yield engine
    engine.dispose()


@pytest.fixture
def queries(services):
    """Statements the gateway's engine sends, counted."""
    sent = []
    event.listen(services.engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    return sent


def bearer(key):
    return "Bearer " + key["key"]


def test_a_known_key_costs_no_query_while_nothing_changes(services, queries):
    created = key_store.create(services.engine, "me")
    first = services.keys.authenticate(bearer(created))
    before = len(queries)
    for _ in range(20):
        assert services.keys.authenticate(bearer(created)) == first
    assert len(queries) == before


def test_a_key_revoked_elsewhere_stops_working_with_the_next_request(services, other):
    created = key_store.create(services.engine, "me")
    services.keys.authenticate(bearer(created))
    assert key_store.revoke(other, created["id"])
    with pytest.raises(InvalidApiKey):
        services.keys.authenticate(bearer(created))


def test_a_key_created_elsewhere_works_with_the_next_request(services, other):
    created = key_store.create(services.engine, "first")
    services.keys.authenticate(bearer(created))
    later = key_store.create(other, "second")
    assert services.keys.authenticate(bearer(later))[0]["id"] == later["id"]


def test_an_unknown_key_is_refused_from_what_is_kept_until_it_is_created(services, other, queries):
    with pytest.raises(InvalidApiKey):
        services.keys.authenticate("Bearer sk-rp-nobody")
    before = len(queries)
    with pytest.raises(InvalidApiKey):
        services.keys.authenticate("Bearer sk-rp-nobody")
    assert len(queries) == before


def test_limits_changed_elsewhere_apply_to_the_next_request(services, other):
    created = key_store.create(services.engine, "me")
    assert services.keys.authenticate(bearer(created))[0]["rpm"] is None
    key_store.change(other, created["id"], {"rpm": 5})
    assert services.keys.authenticate(bearer(created))[0]["rpm"] == 5


def test_an_account_changed_elsewhere_gives_a_new_accounts_version(services, other):
    created = key_store.create(services.engine, "me")
    upsert(services.engine, services.cipher, parse_auth_json(json.dumps(auth_json(account_id="acct-one")).encode()))
    _, version = services.keys.authenticate(bearer(created))
    with other.begin() as conn:
        conn.execute(update(accounts).values(updated_at=accounts.c.updated_at + 1))
    _, changed = services.keys.authenticate(bearer(created))
    assert changed != version
    assert changed == account_store.version(services.engine)


def test_without_a_signal_every_request_reads_the_key(services, other, queries):
    keys = KeyService(services.engine, 60, signal=changes.Unknown())
    created = key_store.create(services.engine, "me")
    keys.authenticate(bearer(created))
    before = len(queries)
    keys.authenticate(bearer(created))
    assert any("api_keys" in statement for statement in queries[before:])
    key_store.revoke(other, created["id"])
    with pytest.raises(InvalidApiKey):
        keys.authenticate(bearer(created))


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_lost_listening_connection_means_reading_again_not_keeping(services, other):
    created = key_store.create(services.engine, "me")
    services.keys.authenticate(bearer(created))
    services.keys._signal._connection.close()  # as a database restart would
    key_store.revoke(other, created["id"])
    with pytest.raises(InvalidApiKey):
        services.keys.authenticate(bearer(created))


def test_writes_to_other_tables_keep_what_was_read(services, other, queries):
    """Usage rows, limits and leases are written with every request: they change no key."""
    created = key_store.create(services.engine, "limited", rpm=1000)
    services.keys.authenticate(bearer(created))
    services.limits.admit(created).release()  # two commits to the limits' table
    usage_store.insert_many(other, [built_usage_row(time.time(), created["id"])])
    before = len(queries)
    services.keys.authenticate(bearer(created))
    assert len(queries) == before

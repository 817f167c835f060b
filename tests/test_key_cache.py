"""Each worker keeps API keys and the accounts version between requests, and still sees a key
revoked or an account changed by anyone else: with the next request after the commit on SQLite
(data_version), once the notification arrives on PostgreSQL (milliseconds), and within a second
whatever happens to the signal."""

import json
import time

import pytest
from sqlalchemy import event, update

from responses_proxy.errors import InvalidApiKey
from responses_proxy.keys import service as key_service
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
def queries(services, monkeypatch):
    """Statements the gateway's engine sends, counted (what is kept is kept for the whole test,
    however slow the machine: ``KEPT_SECONDS`` has a test of its own)."""
    monkeypatch.setattr(key_service, "KEPT_SECONDS", 60.0)
    sent = []
    event.listen(services.engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    return sent


def bearer(key):
    return "Bearer " + key["key"]


def soon(check, database_url):
    """``check()`` true at once on SQLite; on PostgreSQL once the notification has arrived (a few
    milliseconds after the commit: polled for up to half a second, well under ``KEPT_SECONDS``)."""
    deadline = time.monotonic() + (0.5 if database_url.startswith("postgresql") else 0.0)
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


def refused(keys, header):
    try:
        keys.authenticate(header)
    except InvalidApiKey:
        return True
    return False


def test_a_known_key_costs_no_query_while_nothing_changes(services, queries):
    created = key_store.create(services.engine, "me")
    first = services.keys.authenticate(bearer(created))
    before = len(queries)
    for _ in range(20):
        assert services.keys.authenticate(bearer(created)) == first
    assert len(queries) == before


def test_a_key_revoked_elsewhere_stops_working_with_the_next_request(services, other, database_url):
    created = key_store.create(services.engine, "me")
    services.keys.authenticate(bearer(created))
    assert key_store.revoke(other, created["id"])
    assert soon(lambda: refused(services.keys, bearer(created)), database_url)


def test_a_key_created_elsewhere_works_with_the_next_request(services, other, database_url):
    created = key_store.create(services.engine, "first")
    services.keys.authenticate(bearer(created))
    later = key_store.create(other, "second")
    assert soon(lambda: not refused(services.keys, bearer(later)), database_url)


def test_what_is_kept_is_read_again_within_a_second_whatever_the_signal(services, other, monkeypatch):
    """A signal that never moves (a notification lost, a listening connection hung): a key
    revoked elsewhere still stops working within KEPT_SECONDS."""
    monkeypatch.setattr(services.keys, "_signal", type("Stuck", (), {"token": lambda self: 1})())
    created = key_store.create(services.engine, "me")
    services.keys.authenticate(bearer(created))
    key_store.revoke(other, created["id"])
    assert not refused(services.keys, bearer(created)), "kept: the signal says nothing changed"
    time.sleep(1.1)
    assert refused(services.keys, bearer(created))


def test_an_unknown_key_is_refused_from_what_is_kept_until_it_is_created(services, other, queries):
    with pytest.raises(InvalidApiKey):
        services.keys.authenticate("Bearer sk-rp-nobody")
    before = len(queries)
    with pytest.raises(InvalidApiKey):
        services.keys.authenticate("Bearer sk-rp-nobody")
    assert len(queries) == before


def test_limits_changed_elsewhere_apply_to_the_next_request(services, other, database_url):
    created = key_store.create(services.engine, "me")
    assert services.keys.authenticate(bearer(created))[0]["rpm"] is None
    key_store.change(other, created["id"], {"rpm": 5})
    assert soon(lambda: services.keys.authenticate(bearer(created))[0]["rpm"] == 5, database_url)


def test_an_account_changed_elsewhere_gives_a_new_accounts_version(services, other, database_url):
    created = key_store.create(services.engine, "me")
    upsert(services.engine, services.cipher, parse_auth_json(json.dumps(auth_json(account_id="acct-one")).encode()))
    _, version = services.keys.authenticate(bearer(created))
    with other.begin() as conn:
        conn.execute(update(accounts).values(updated_at=accounts.c.updated_at + 1))
    assert soon(lambda: services.keys.authenticate(bearer(created))[1] != version, database_url)
    assert services.keys.authenticate(bearer(created))[1] == account_store.version(services.engine)


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
    assert refused(services.keys, bearer(created))


def test_writes_to_other_tables_keep_what_was_read(services, other, queries):
    """Usage rows, limits and leases are written with every request: they change no key."""
    created = key_store.create(services.engine, "limited", rpm=1000)
    services.keys.authenticate(bearer(created))
    services.limits.admit(created).release()  # two commits to the limits' table
    usage_store.insert_many(other, [built_usage_row(time.time(), created["id"])])
    before = len(queries)
    services.keys.authenticate(bearer(created))
    assert len(queries) == before

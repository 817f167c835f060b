"""Storage on SQLite AND PostgreSQL: keys, accounts, usage, migrations, the usage recorder."""

import hashlib
import json
import socket
import sqlite3
import time

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from responses_proxy.config import DEFAULTS
from responses_proxy.crypto import TokenCipher, fernet_key
from responses_proxy.errors import unavailable
from responses_proxy.store import accounts as account_store
from responses_proxy.store import keys as key_store
from responses_proxy.store import make_engine, migrate
from responses_proxy.store import recorder as recorder_module
from responses_proxy.store import usage as usage_store
from responses_proxy.store.recorder import UsageRecorder
from responses_proxy.store.tables import accounts, api_keys, metadata, usage, worker_load
from responses_proxy.upstream.credentials import parse_auth_json
from tests.fake_upstream import auth_json


@pytest.fixture
def cipher():
    return TokenCipher(fernet_key("store-test-secret"))


def credentials(**kwargs):
    return parse_auth_json(json.dumps(auth_json(**kwargs)).encode())


def raw_rows(engine, table):
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(select(table)).mappings()]


def row_text(row):
    """Every stored value of a row as one string, to look for secrets in it."""
    return " ".join(str(value) for value in row.values())


# --- migrations -----------------------------------------------------------------------------------

def head_revision():
    return ScriptDirectory.from_config(migrate.alembic_config(None)).get_current_head()


def test_migrations_build_the_whole_schema_on_an_empty_database(bare_engine):
    assert migrate.current(bare_engine) is None
    assert not set(inspect(bare_engine).get_table_names()) & set(metadata.tables)

    migrate.upgrade(bare_engine)

    assert migrate.current(bare_engine) == head_revision()
    inspector = inspect(bare_engine)
    for name, table in metadata.tables.items():
        columns = {column["name"]: column for column in inspector.get_columns(name)}
        assert set(columns) == {column.name for column in table.columns}, f"table {name}"
        for column in table.columns:
            assert columns[column.name]["nullable"] == column.nullable, f"{name}.{column.name}"


def test_migrations_are_idempotent(engine):
    migrate.upgrade(engine)
    assert migrate.current(engine) == head_revision()
    assert raw_rows(engine, api_keys) == []


# --- API keys -------------------------------------------------------------------------------------

def test_key_plaintext_is_returned_once_and_only_its_sha256_is_stored(engine):
    created = key_store.create(engine, "ci", ["gpt-5.2"])

    plaintext = created["key"]
    assert plaintext.startswith("sk-rp-") and len(plaintext) >= 40
    assert created["id"].startswith("key_")
    assert created["name"] == "ci"
    assert created["prefix"] == plaintext[:10]
    assert created["allowed_models"] == ["gpt-5.2"]
    assert created["revoked_at"] is None
    [row] = raw_rows(engine, api_keys)
    assert row["key_hash"] == hashlib.sha256(plaintext.encode()).hexdigest()
    assert plaintext not in row_text(row)
    assert plaintext[10:] not in row_text(row)
    listed = key_store.list_all(engine)
    assert [entry["id"] for entry in listed] == [created["id"]]
    assert "key" not in listed[0] and plaintext not in json.dumps(listed)


def test_keys_are_unique(engine):
    first, second = key_store.create(engine, "a"), key_store.create(engine, "a")
    assert first["key"] != second["key"] and first["id"] != second["id"]
    assert len(key_store.list_all(engine)) == 2


def test_find_active_and_revoke(engine):
    created = key_store.create(engine, "app", ["gpt-5.2", "gpt-4.1"])
    other = key_store.create(engine, "other")

    found = key_store.find_active(engine, created["key"])
    assert found == {"id": created["id"], "name": "app", "allowed_models": ["gpt-5.2", "gpt-4.1"], "rpm": None,
                     "concurrency": None, "daily_tokens": None}
    assert key_store.find_active(engine, other["key"])["allowed_models"] is None
    assert key_store.find_active(engine, created["key"] + "x") is None
    assert key_store.find_active(engine, created["key"][:10]) is None
    assert key_store.find_active(engine, "") is None
    assert key_store.find_active(engine, hashlib.sha256(created["key"].encode()).hexdigest()) is None

    assert key_store.revoke(engine, created["id"]) is True
    assert key_store.find_active(engine, created["key"]) is None
    assert key_store.find_active(engine, other["key"]) is not None
    assert key_store.revoke(engine, created["id"]) is False, "already revoked"
    assert key_store.revoke(engine, "key_does_not_exist") is False
    revoked = {entry["id"]: entry for entry in key_store.list_all(engine)}[created["id"]]
    assert revoked["revoked_at"] is not None and revoked["revoked_at"] <= time.time()


# --- accounts -------------------------------------------------------------------------------------

def test_upsert_creates_an_account(engine, cipher):
    row, created = account_store.upsert(engine, cipher, credentials(account_id="acct-1", email="a@example.com",
                                                                    plan="pro"))

    assert created is True
    assert row["id"].startswith("acct_")
    assert (row["chatgpt_account_id"], row["email"], row["plan"], row["status"]) == (
        "acct-1", "a@example.com", "pro", "active")
    assert row["access_expires_at"] > time.time()
    assert "tokens" not in row
    assert [entry["id"] for entry in account_store.all_rows(engine)] == [row["id"]]


def test_upsert_same_chatgpt_account_updates_without_duplicating(engine, cipher):
    first, _ = account_store.upsert(engine, cipher, credentials(account_id="acct-1", refresh_token="rt-old"))
    fresh = credentials(account_id="acct-1", refresh_token="rt-new", email="new@example.com", plan="pro")

    second, created = account_store.upsert(engine, cipher, fresh)

    assert created is False
    assert second["id"] == first["id"]
    assert (second["email"], second["plan"]) == ("new@example.com", "pro")
    [stored] = raw_rows(engine, accounts)
    assert account_store.tokens(cipher, stored) == {
        "id_token": fresh["id_token"], "access_token": fresh["access_token"], "refresh_token": "rt-new"}


def test_reimport_brings_a_failed_account_back(engine, cipher):
    row, _ = account_store.upsert(engine, cipher, credentials(account_id="acct-1"))
    account_store.set_status(engine, row["id"], account_store.NEEDS_RELOGIN)
    account_store.record_error(engine, row["id"], "refresh failed")

    again, _ = account_store.upsert(engine, cipher, credentials(account_id="acct-1"))

    assert (again["status"], again["last_error"]) == ("active", None)


def test_different_chatgpt_accounts_are_different_rows(engine, cipher):
    first, _ = account_store.upsert(engine, cipher, credentials(account_id="acct-1"))
    second, created = account_store.upsert(engine, cipher, credentials(account_id="acct-2"))
    assert created is True and second["id"] != first["id"]
    assert {row["chatgpt_account_id"] for row in account_store.all_rows(engine)} == {"acct-1", "acct-2"}


def test_tokens_are_encrypted_at_rest(engine, cipher):
    imported = credentials(account_id="acct-1", refresh_token="rt-very-secret-refresh")
    account_store.upsert(engine, cipher, imported)

    [stored] = raw_rows(engine, accounts)
    text = row_text(stored)
    for secret in (imported["access_token"], imported["id_token"], "rt-very-secret-refresh",
                   imported["access_token"].split(".")[1]):
        assert secret not in text
    assert account_store.tokens(cipher, stored)["access_token"] == imported["access_token"]
    with pytest.raises(ValueError, match="ENCRYPTION_KEY"):
        account_store.tokens(TokenCipher(fernet_key("another-secret")), stored)


def test_remove_account(engine, cipher):
    keep, _ = account_store.upsert(engine, cipher, credentials(account_id="acct-1"))
    gone, _ = account_store.upsert(engine, cipher, credentials(account_id="acct-2"))

    assert account_store.remove(engine, gone["id"]) is True
    assert account_store.remove(engine, gone["id"]) is False
    assert account_store.remove(engine, "acct_nope") is False
    assert [row["id"] for row in raw_rows(engine, accounts)] == [keep["id"]]


def test_the_key_lookup_reads_the_accounts_version_too(engine, cipher):
    created = key_store.create(engine, "app", ["gpt-5.2"])
    assert key_store.find_active_with_accounts_version(engine, "sk-rp-unknown") == (None, (0, None))

    account, _ = account_store.upsert(engine, cipher, credentials(account_id="acct-1"))
    key, version = key_store.find_active_with_accounts_version(engine, created["key"])
    assert key == key_store.find_active(engine, created["key"])
    assert version == account_store.version(engine) and version[0] == 1

    account_store.set_cooldown(engine, account["id"], time.time() + 60, "usage limit")
    key_store.revoke(engine, created["id"])
    key, changed = key_store.find_active_with_accounts_version(engine, created["key"])
    assert key is None and changed == account_store.version(engine) != version


# --- usage ----------------------------------------------------------------------------------------

def usage_row(created_at, key_id="key_a", account_id="acct_a", model="gpt-5.2", status=200, tokens=(10, 2, 5, 1),
              ttfb_ms=100.0, error_code=None):
    input_tokens, cached, output_tokens, reasoning = tokens
    return {"created_at": created_at, "request_id": "req_1", "key_id": key_id, "account_id": account_id,
            "model": model, "stream": True, "status": status, "input_tokens": input_tokens,
            "cached_tokens": cached, "output_tokens": output_tokens, "reasoning_tokens": reasoning,
            "total_tokens": input_tokens + output_tokens, "ttfb_ms": ttfb_ms, "duration_ms": 250.0,
            "error_code": error_code, "ignored_extra_field": "x"}


def test_usage_insert_many_and_summary(engine):
    now = time.time()
    usage_store.insert_many(engine, [
        usage_row(now - 10, key_id="key_a", tokens=(10, 2, 5, 1), ttfb_ms=100.0),
        usage_row(now - 20, key_id="key_a", tokens=(30, 0, 15, 3), ttfb_ms=300.0, model="gpt-4.1"),
        usage_row(now - 30, key_id="key_a", status=429, tokens=(0, 0, 0, 0), ttfb_ms=None,
                  error_code="usage_limit_reached", account_id=None),
        usage_row(now - 40, key_id="key_b", tokens=(1, 1, 1, 0), ttfb_ms=50.0),
        usage_row(now - 7200, key_id="key_b", tokens=(1000, 0, 1000, 0)),  # outside the window
    ])
    assert len(raw_rows(engine, usage)) == 5

    by_key = {row["key"]: row for row in usage_store.summary(engine, now - 3600, now, ["key"])}

    assert set(by_key) == {"key_a", "key_b"}
    a, b = by_key["key_a"], by_key["key_b"]
    assert (a["requests"], a["errors"], a["input_tokens"], a["cached_tokens"], a["output_tokens"],
            a["reasoning_tokens"], a["total_tokens"]) == (3, 1, 40, 2, 20, 4, 60)
    assert float(a["avg_ttfb_ms"]) == pytest.approx(200.0)
    assert (b["requests"], b["errors"], b["total_tokens"]) == (1, 0, 2)

    by_model = {row["model"]: row["requests"] for row in usage_store.summary(engine, now - 3600, now, ["model"])}
    assert by_model == {"gpt-5.2": 3, "gpt-4.1": 1}
    by_account = {row["account"]: row["requests"]
                  for row in usage_store.summary(engine, now - 3600, now, ["account"])}
    assert by_account == {"acct_a": 3, None: 1}
    [one_key] = usage_store.summary(engine, now - 3600, now, key_id="key_b")
    assert (one_key["requests"], one_key["total_tokens"]) == (1, 2)
    assert usage_store.summary(engine, now + 1, now + 2, ["key"]) == []


def test_usage_insert_many_of_nothing(engine):
    usage_store.insert_many(engine, [])
    assert raw_rows(engine, usage) == []


# --- what an unavailable database is ----------------------------------------------------------------

def sqlite_error(code, message):
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code
    return OperationalError("SELECT 1", {}, error)


@pytest.mark.parametrize("error, expected", [
    (sqlite_error(5, "database is locked"), True),
    (sqlite_error(10, "disk I/O error"), True),
    (sqlite_error(1, "no such table: usage"), False),  # a schema that is not there: a bug
    (OperationalError("SELECT 1", {}, ConnectionError("connection refused")), True),  # PostgreSQL's
    (InterfaceError("SELECT 1", {}, ConnectionError("the connection is closed")), True),
    (PoolTimeout("QueuePool limit of size 5 overflow 20 reached"), True),
    (IntegrityError("INSERT", {}, ValueError("duplicate key")), False),
    (ValueError("not from the database"), False),
], ids=["locked", "io", "no-table", "refused", "closed", "pool-timeout", "integrity", "other"])
def test_which_errors_mean_the_database_is_unavailable(error, expected):
    assert unavailable(error) is expected


def test_sqlite_reports_a_missing_table_with_its_generic_error():
    engine = make_engine("sqlite://")
    try:
        with pytest.raises(OperationalError) as raised, engine.connect() as conn:
            conn.execute(select(usage))
    finally:
        engine.dispose()
    assert not unavailable(raised.value)


# --- PostgreSQL's limits -------------------------------------------------------------------------

def limited(url, **settings):
    return make_engine(url, {**DEFAULTS, **{"DATABASE_" + name.upper(): value for name, value in settings.items()}})


def test_the_pool_settings_size_each_workers_connections(postgres_url):
    engine = limited(postgres_url, pool_size=2, max_overflow=1)
    try:
        with engine.connect(), engine.connect(), engine.connect():
            assert (engine.pool.size(), engine.pool.checkedout(), engine.pool.overflow()) == (2, 3, 1)
    finally:
        engine.dispose()


def test_a_statement_stuck_behind_a_lock_ends_at_the_statement_timeout(postgres_url):
    holder, engine = make_engine(postgres_url), limited(postgres_url, statement_timeout=0.5)
    try:
        migrate.upgrade(holder)
        with holder.begin() as conn:
            conn.execute(text("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE"))
            started = time.monotonic()
            with pytest.raises(OperationalError) as raised:
                key_store.find_active(engine, "sk-rp-anything")  # the URL's search_path still applies
            waited = time.monotonic() - started
        assert unavailable(raised.value) and "statement timeout" in str(raised.value.orig)
        assert waited < 5
        assert key_store.find_active(engine, "sk-rp-anything") is None  # the lock is gone: it works again
    finally:
        holder.dispose()
        engine.dispose()


def test_a_transaction_left_idle_is_ended_by_the_server(postgres_url):
    """What frees the row locks of a host that vanished in the middle of a transaction."""
    engine = limited(postgres_url, statement_timeout=0.5)
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError) as raised:
            conn.begin()
            conn.execute(text("SELECT 1"))
            time.sleep(1.5)
            conn.execute(text("SELECT 1"))
        assert "idle-in-transaction timeout" in str(raised.value.orig)
    finally:
        engine.dispose()


def test_a_server_that_never_answers_fails_the_connection_at_the_connect_timeout(postgres_server):
    with socket.socket() as silent:  # accepts connections (the kernel does) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        engine = limited(f"postgresql+psycopg://postgres@127.0.0.1:{silent.getsockname()[1]}/test", connect_timeout=2)
        started = time.monotonic()
        try:
            with pytest.raises(OperationalError) as raised:
                engine.connect()
        finally:
            engine.dispose()
        waited = time.monotonic() - started
    assert unavailable(raised.value)
    assert waited < 10


# --- UsageRecorder --------------------------------------------------------------------------------

def count_usage(engine):
    return len(raw_rows(engine, usage))


def test_recorder_without_batching_writes_each_row_at_once(engine):
    recorder = UsageRecorder(engine, 0)
    recorder.record(usage_row(time.time()))
    assert count_usage(engine) == 1


def test_recorder_batches_until_flush(engine):
    recorder = UsageRecorder(engine, 3600)
    for index in range(5):
        recorder.record(usage_row(time.time(), key_id=f"key_{index}"))
    assert count_usage(engine) == 0, "rows wait for the batch"

    recorder.flush()

    assert sorted(row["key_id"] for row in raw_rows(engine, usage)) == [f"key_{index}" for index in range(5)]
    recorder.flush()
    assert count_usage(engine) == 5, "a second flush writes nothing twice"


def test_recorder_flushes_by_itself_after_flush_seconds(engine):
    recorder = UsageRecorder(engine, 0.05)
    recorder.record(usage_row(time.time()))
    recorder.record(usage_row(time.time()))
    deadline = time.monotonic() + 5
    while count_usage(engine) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert count_usage(engine) == 2
    recorder.record(usage_row(time.time()))
    deadline = time.monotonic() + 5
    while count_usage(engine) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert count_usage(engine) == 3


def test_recorder_survives_a_database_error(bare_engine):
    """Usage is bookkeeping: a failed write is logged, never raised into the request."""
    recorder = UsageRecorder(bare_engine, 0)  # no tables: the insert fails
    recorder.record(usage_row(time.time()))
    batching = UsageRecorder(bare_engine, 3600)
    batching.record(usage_row(time.time()))
    batching.flush()


class Outage:
    """``usage.insert_many`` as the recorder sees it while the database is down, then back."""

    def __init__(self, monkeypatch):
        self.down = True
        self.refused = 0
        self._insert = recorder_module.usage.insert_many
        monkeypatch.setattr(recorder_module.usage, "insert_many", self.insert_many)

    def insert_many(self, engine, rows):
        if self.down:
            self.refused += 1
            raise OperationalError("INSERT", {}, ConnectionError("server closed the connection unexpectedly"))
        self._insert(engine, rows)


@pytest.mark.parametrize("flush_seconds", [0, 0.05])
def test_recorder_keeps_rows_while_the_database_is_down_and_writes_them_once_back(engine, monkeypatch,
                                                                                   flush_seconds):
    outage = Outage(monkeypatch)
    recorder = UsageRecorder(engine, flush_seconds)
    for index in range(3):
        recorder.record(usage_row(time.time(), key_id=f"key_{index}"))  # never raises into the request
    deadline = time.monotonic() + 5
    while outage.refused < 2:
        assert time.monotonic() < deadline, "the rows were not tried again"
        time.sleep(0.02)
    assert count_usage(engine) == 0
    outage.down = False
    recorder.record(usage_row(time.time(), key_id="key_3"))
    deadline = time.monotonic() + recorder_module.RETRY_SECONDS + 5
    while count_usage(engine) < 4:
        assert time.monotonic() < deadline, "the kept rows were not written once the database was back"
        time.sleep(0.02)
    rows = sorted(raw_rows(engine, usage), key=lambda row: row["id"])
    assert [row["key_id"] for row in rows] == ["key_0", "key_1", "key_2", "key_3"]  # in order, each once


def test_recorder_keeps_the_newest_rows_up_to_its_limit(engine, monkeypatch):
    monkeypatch.setattr(recorder_module, "PENDING_LIMIT", 3)
    outage = Outage(monkeypatch)
    recorder = UsageRecorder(engine, 3600)
    for index in range(5):
        recorder.record(usage_row(time.time(), key_id=f"key_{index}"))
        recorder.flush()
    outage.down = False
    recorder.flush()
    assert sorted(row["key_id"] for row in raw_rows(engine, usage)) == ["key_2", "key_3", "key_4"]


def test_expired_affinity_rows_are_pruned(engine):
    from responses_proxy.store import pool_state

    now = time.time()
    pool_state.affinity_put(engine, [{"cache_key": "old", "account_id": "acct_a", "updated_at": now - 7200},
                                     {"cache_key": "new", "account_id": "acct_b", "updated_at": now}])
    assert pool_state.affinity_prune(engine, now - 1800) == 1
    assert pool_state.affinity_get(engine, "old", 0) is None
    assert pool_state.affinity_get(engine, "new", now - 1800) == ("acct_b", None)
    # Re-putting a key moves it (upsert), on both databases.
    pool_state.affinity_put(engine, [{"cache_key": "new", "account_id": "acct_c", "updated_at": now + 1,
                                      "boundary": "b" * 64}])
    assert pool_state.affinity_get(engine, "new", now - 1800) == ("acct_c", "b" * 64)
    # A timestamp written without a boundary leaves it; one written with it replaces it.
    pool_state.affinity_put(engine, [{"cache_key": "new", "account_id": "acct_c", "updated_at": now + 2}])
    assert pool_state.affinity_get(engine, "new", now - 1800) == ("acct_c", "b" * 64)
    pool_state.affinity_put(engine, [{"cache_key": "new", "account_id": "acct_d", "updated_at": now + 3,
                                      "boundary": None}])
    assert pool_state.affinity_get(engine, "new", now - 1800) == ("acct_d", None)


def test_the_counts_of_dead_workers_are_pruned(engine):
    from responses_proxy.store import pool_state

    now = time.time()
    pool_state.report_load(engine, "alive", {"acct_a": 2})
    pool_state.report_load(engine, "dead", {"acct_a": 1, "acct_b": 1})
    with engine.begin() as conn:
        conn.execute(worker_load.update().where(worker_load.c.worker_id == "dead").values(updated_at=now - 60))
    assert pool_state.load_totals(engine, "me", now - 10) == {"acct_a": 2}
    assert pool_state.prune_load(engine, now - 10) == 2
    assert [row["worker_id"] for row in raw_rows(engine, worker_load)] == ["alive"]

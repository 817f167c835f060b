"""The account pool: its snapshot of the rows, the rule of which account serves, the choice
among them, and each worker's upkeep. Two ``AccountPool`` objects on one database stand for
two workers."""

import json
import logging
import threading
import time

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.exc import OperationalError

from responses_proxy.crypto import TokenCipher, fernet_key
from responses_proxy.errors import NoAccounts, UsageLimitReached
from responses_proxy.pool import AccountPool, account_state, selection, upkeep
from responses_proxy.store import accounts as account_store
from responses_proxy.store import keys as key_store
from responses_proxy.store import make_engine, pool_state
from responses_proxy.store import usage as usage_store
from responses_proxy.store.tables import accounts, worker_load
from responses_proxy.upstream.credentials import parse_auth_json
from tests.fake_upstream import auth_json
from tests.helpers import free_port


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


def add_account(services, **kwargs):
    return account_store.upsert(services.engine, services.cipher,
                                parse_auth_json(json.dumps(auth_json(**kwargs)).encode()))[0]


def another_worker(services):
    """A second pool on the same database, as another worker process has one."""
    return AccountPool(services.engine, services.cipher, services.client,
                       {**services.settings, "QUOTA_POLL_SECONDS": 0})


def scramble_tokens(engine, account_id):
    """Tokens encrypted with another key, as a host started with the wrong secret sees them."""
    foreign = TokenCipher(fernet_key("some other key")).encrypt(b'{"access_token": "x", "refresh_token": "y"}')
    with engine.begin() as conn:
        conn.execute(update(accounts).where(accounts.c.id == account_id).values(
            tokens=foreign, updated_at=time.time()))


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def load_rows(engine):
    with engine.connect() as conn:
        return {(row.worker_id, row.account_id): row.in_flight for row in conn.execute(select(worker_load))}


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
    assert len(version_queries) == 1

    assert pool.first_usable() is None
    assert len(version_queries) == 2, "outside a request the pool asks for itself"


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


# --- the one rule of which account serves ---------------------------------------------------------

@pytest.mark.parametrize("status, cooldown, readable, state", [
    ("active", None, True, "active"),
    ("active", -60, True, "active"),  # a cooldown that is over
    ("active", 60, True, "cooling_down"),
    ("active", 60, False, "needs_relogin"),
    ("active", None, False, "needs_relogin"),
    ("disabled", 60, True, "disabled"),
    ("disabled", None, False, "disabled"),
    ("needs_relogin", None, True, "needs_relogin"),
])
def test_account_state(status, cooldown, readable, state):
    now = time.time()
    row = {"status": status, "cooldown_until": None if cooldown is None else now + cooldown}
    assert account_state(row, now, readable) == state


def test_no_usable_account_says_why(services):
    pool = services.pool
    with pytest.raises(NoAccounts, match="No upstream account is configured"):
        pool.choose()
    first, second, third = (add_account(services, account_id=f"acct-{i}") for i in range(3))
    account_store.set_status(services.engine, first["id"], account_store.DISABLED)
    account_store.set_status(services.engine, second["id"], account_store.NEEDS_RELOGIN)
    scramble_tokens(services.engine, third["id"])
    with pytest.raises(NoAccounts) as raised:
        pool.choose()
    assert raised.value.message == ("No upstream account can serve: 1 disabled, 2 need a new login "
                                    "(re-import their auth.json).")


# --- tokens this process cannot decrypt -----------------------------------------------------------

@pytest.fixture
def pool_log():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("responses_proxy.pool.accounts")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_an_account_whose_tokens_cannot_be_decrypted_is_skipped(services, pool_log):
    pool = services.pool
    broken = add_account(services, account_id="acct-broken")
    good = add_account(services, account_id="acct-good")
    scramble_tokens(services.engine, broken["id"])

    assert {pool.choose(f"key {i}")[0].id for i in range(20)} == {good["id"]}
    assert pool.first_usable().id == good["id"]
    listed = {account.id: account for account in pool.snapshot()}
    assert listed[broken["id"]].state(time.time()) == "needs_relogin"
    assert "cannot be decrypted" in listed[broken["id"]].problem
    assert listed[good["id"]].problem is None

    # The row itself is not marked: another host, with the right key, still uses it.
    assert account_store.read(services.engine, broken["id"])["status"] == "active"

    # Logged once, not at every reload of the rows.
    account_store.set_cooldown(services.engine, good["id"], time.time() - 1, "reset")
    pool.choose()
    assert [record.fields["account"] for record in pool_log] == [broken["id"]]

    account_store.set_cooldown(services.engine, good["id"], time.time() + 60, "usage limit")
    with pytest.raises(UsageLimitReached):
        pool.choose()


# --- least busy, across workers -------------------------------------------------------------------

def usage_row(account_id):
    return {"created_at": time.time(), "request_id": "req", "key_id": "key", "account_id": account_id,
            "model": "gpt-5.2", "stream": False, "status": 200, "total_tokens": 10, "duration_ms": 10.0}


def test_a_request_in_flight_on_another_worker_is_seen_at_once(services):
    a = add_account(services, account_id="acct-a")
    b = add_account(services, account_id="acct-b")
    # b served more lately: while nothing is in flight, a is the one to choose.
    usage_store.insert_many(services.engine, [usage_row(b["id"])] * 3)
    pool = services.pool
    assert pool.choose()[0].id == a["id"]

    pool_state.report_load(services.engine, "another-worker", {a["id"]: 1})
    time.sleep(selection.REMOTE_LOAD_SECONDS * 2)

    assert pool.choose()[0].id == b["id"]


def test_requests_in_flight_here_count_at_once(services):
    a = add_account(services, account_id="acct-a")
    b = add_account(services, account_id="acct-b")
    pool = services.pool
    pool.begin(a["id"])
    assert {pool.choose(f"key {i}")[0].id for i in range(10)} == {b["id"]}
    pool.begin(b["id"])
    pool.begin(b["id"])
    assert pool.choose()[0].id == a["id"]
    pool.end(b["id"])
    pool.end(b["id"])
    pool.end(a["id"])


def test_a_cache_key_sticks_while_its_account_is_usable(services):
    a = add_account(services, account_id="acct-a")
    add_account(services, account_id="acct-b")
    pool = services.pool
    home, decision = pool.choose("thread-1")
    assert decision["affinity"] == "new"
    pool.begin(home.id)  # busier now, but the cache lives there
    assert pool.choose("thread-1") == (home, {"event": "account", "account": home.id, "affinity": "hit"})
    # Another worker finds it there too.
    assert another_worker(services).choose("thread-1")[0].id == home.id

    account_store.set_cooldown(services.engine, home.id, time.time() + 60, "usage limit")
    moved, decision = pool.choose("thread-1")
    # The decision names where the thread comes from: what it carries was issued there.
    assert moved.id != home.id and decision == {"event": "account", "account": moved.id, "affinity": "moved",
                                                "from": home.id}
    pool.end(home.id)
    assert a["id"] in (home.id, moved.id)


def test_the_issuer_of_a_turn_state_serves_before_the_cache_key_and_takes_it_along(services):
    a = add_account(services, account_id="acct-a")
    b = add_account(services, account_id="acct-b")
    pool, other = services.pool, another_worker(services)
    assert other.owner_of("turn-state-1") is None
    pool.remember_owner("turn-state-1", a["id"])
    # Written at once: the turn's next request may reach another worker right away.
    assert other.owner_of("turn-state-1") == a["id"]

    home, _ = pool.choose("thread-1", prefer=b["id"])
    assert home.id == b["id"]
    chosen, decision = other.choose("thread-1", prefer=a["id"])
    assert decision == {"event": "account", "account": a["id"], "turn_state": "issuer", "affinity": "moved",
                        "from": b["id"]}
    # The thread follows its turn state: without it now, it still goes there, on any worker.
    assert other.choose("thread-1")[0].id == a["id"]
    assert another_worker(services).choose("thread-1")[0].id == a["id"]

    account_store.set_status(services.engine, a["id"], "disabled")
    chosen, decision = other.choose("thread-1", prefer=a["id"])
    assert chosen.id == b["id"] and "turn_state" not in decision
    assert decision["affinity"] == "moved" and decision["from"] == a["id"]
    assert other.choose(prefer=b["id"]) == (chosen, {"event": "account", "account": b["id"], "turn_state": "issuer"})


def test_a_moved_threads_boundary_is_shared_and_a_new_move_clears_it(services):
    add_account(services, account_id="acct-a")
    add_account(services, account_id="acct-b")
    pool, other = services.pool, another_worker(services)
    home, _ = pool.choose("thread-1")
    account_store.set_cooldown(services.engine, home.id, time.time() + 60, "usage limit")
    moved, decision = pool.choose("thread-1")
    assert decision["affinity"] == "moved" and pool.boundary_of("thread-1") is None
    pool.set_boundary("thread-1", moved.id, "m" * 64)
    assert pool.boundary_of("thread-1") == "m" * 64
    # Another worker finds it with the account, in the same lookup.
    assert other.choose("thread-1")[1]["affinity"] == "hit" and other.boundary_of("thread-1") == "m" * 64
    assert pool.choose("thread-1")[0].id == moved.id and pool.boundary_of("thread-1") == "m" * 64

    account_store.set_cooldown(services.engine, home.id, None, "")
    account_store.set_cooldown(services.engine, moved.id, time.time() + 60, "usage limit")
    assert other.choose("thread-1")[1]["affinity"] == "moved" and other.boundary_of("thread-1") is None
    third = another_worker(services)
    assert third.choose("thread-1")[1]["affinity"] == "hit" and third.boundary_of("thread-1") is None


def test_a_turn_states_issuer_needs_no_query_once_known_and_is_kept_while_in_use(services, monkeypatch):
    selector = selection.Selector(services.engine, upkeep.Worker(), 1800.0)
    now = time.time()
    selector.remember_owner("turn-state-key", "acct_a", now)
    assert pool_state.affinity_get(services.engine, "turn-state-key", 0) == ("acct_a", None)
    selector.take_affinity_touches()
    queries = []
    monkeypatch.setattr(pool_state, "affinity_get", lambda *args: queries.append(args))
    assert selector.owner("turn-state-key", now + 600) == "acct_a" and queries == []
    # Used, so its row is touched (written by the upkeep): a long turn outlives the TTL.
    assert selector.take_affinity_touches() == {"turn-state-key": ("acct_a", now + 600)}


def test_an_affinity_the_database_cannot_take_is_written_later_and_the_request_goes_on(services, monkeypatch):
    """A full disk or a stalled database: cache affinity is an optimization, so choosing an
    account still works, and the upkeep writes the affinity once the database takes it."""
    account_id = add_account(services, account_id="acct-one")["id"]
    pool = services.pool
    put = pool_state.affinity_put

    def full_disk(*args, **kwargs):
        raise OperationalError("INSERT INTO affinity", {}, Exception("database or disk is full"))

    monkeypatch.setattr(pool_state, "affinity_put", full_disk)
    account, decision = pool.choose("thread-full-disk")
    assert (account.id, decision["affinity"]) == (account_id, "new")
    assert pool_state.affinity_get(services.engine, "thread-full-disk", 0) is None
    with pytest.raises(OperationalError):
        pool._upkeep.flush_affinity()  # still full: kept for the next round
    monkeypatch.setattr(pool_state, "affinity_put", put)
    pool._upkeep.flush_affinity()
    assert pool_state.affinity_get(services.engine, "thread-full-disk", 0)[0] == account_id


# --- each worker's upkeep ---------------------------------------------------------------------------

def upkeep_threads():
    return [thread for thread in threading.enumerate() if thread.name == "pool-upkeep"]


def test_the_upkeep_reports_a_change_in_flight_without_waiting_for_its_round(services, monkeypatch):
    monkeypatch.setattr(upkeep, "UPKEEP_ROUND_SECONDS", 3600.0)
    account = add_account(services)
    pool = another_worker(services)
    pool.start_maintenance()
    try:
        pool.begin(account["id"])
        assert wait_for(lambda: list(load_rows(services.engine).values()) == [1])
        pool.begin(account["id"])
        assert wait_for(lambda: list(load_rows(services.engine).values()) == [2])
        pool.end(account["id"])
        pool.end(account["id"])
        assert wait_for(lambda: load_rows(services.engine) == {})
    finally:
        pool.close()
    assert wait_for(lambda: not upkeep_threads()), "close stops the upkeep"


def test_the_upkeep_deletes_the_counts_of_dead_workers(services):
    account = add_account(services)
    now = time.time()
    with services.engine.begin() as conn:
        conn.execute(insert(worker_load), [
            {"worker_id": "dead", "account_id": account["id"], "in_flight": 3, "updated_at": now - 3600},
            {"worker_id": "alive", "account_id": account["id"], "in_flight": 1, "updated_at": now}])
    pool = another_worker(services)
    pool.start_maintenance()
    try:
        assert wait_for(lambda: set(load_rows(services.engine)) == {("alive", account["id"])})
    finally:
        pool.close()


def test_a_dead_workers_counts_are_deleted_a_round_after_they_went_stale(services):
    account = add_account(services)
    with services.engine.begin() as conn:  # its last report: it goes stale in half a second
        conn.execute(insert(worker_load), [{"worker_id": "dying", "account_id": account["id"], "in_flight": 2,
                                            "updated_at": time.time() - upkeep.LOAD_STALE_SECONDS + 0.5}])
    pool = another_worker(services)
    pool.start_maintenance()
    try:
        assert wait_for(lambda: not load_rows(services.engine), timeout=upkeep.UPKEEP_ROUND_SECONDS + 1.5)
    finally:
        pool.close()


def test_while_the_database_is_down_the_upkeep_logs_a_line_a_round_not_a_stack(services):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("responses_proxy.pool.upkeep")
    logger.addHandler(handler)
    down = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test")  # nothing listens there
    pool = AccountPool(down, services.cipher, services.client, {**services.settings, "QUOTA_POLL_SECONDS": 0})
    pool.start_maintenance()
    try:
        assert wait_for(lambda: records)
    finally:
        with pytest.raises(OperationalError):
            pool.close()
        logger.removeHandler(handler)
        down.dispose()
    [record] = records[:1]
    assert (record.levelname, record.getMessage(), record.exc_info) == ("WARNING", "pool upkeep failed", None)
    assert "OperationalError" in record.fields["reason"]


def test_close_takes_this_workers_counts_out(services):
    account = add_account(services)
    pool = another_worker(services)
    pool.start_maintenance()
    pool.begin(account["id"])
    assert wait_for(lambda: load_rows(services.engine))
    pool.close()
    assert load_rows(services.engine) == {}

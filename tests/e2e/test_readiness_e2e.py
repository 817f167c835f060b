"""``/readyz`` through gunicorn (two gevent workers), on SQLite and on PostgreSQL: it turns 503
when the instance cannot serve, says why, and turns back to 200 when that is fixed."""

import os

import pytest
import requests

from tests.e2e.helpers import cli, database_env, wait_for
from tests.fake_upstream import auth_json
from tests.helpers import Gateway, read_only


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def probed(request, fake_upstream, tmp_path_factory, postgres_schemas):
    server = Gateway(tmp_path_factory.mktemp("ready"), fake_upstream.base_url,
                     env=database_env(request.param, postgres_schemas))
    server.start()
    server.account = server.import_account(auth_json(account_id="acct-ready", last_refresh="2099-01-01T00:00:00Z"))
    server.database = request.param
    yield server
    server.stop()


def readiness(gateway):
    reply = requests.get(gateway.url + "/readyz", timeout=10)
    return reply.status_code, reply.json()


def becomes(gateway, status):
    """Wait out the cached result (1 s) until /readyz answers ``status``; its body."""
    def answered():
        found = readiness(gateway)
        return found if found[0] == status else None

    found = wait_for(answered, timeout=8)
    assert found, f"/readyz never answered {status}: {readiness(gateway)}"
    return found[1]


def database_file(gateway):
    return os.path.join(str(gateway.data_dir), "responses-proxy.db")


def test_ready_and_alive_without_a_key(probed):
    status, body = readiness(probed)
    assert status == 200, body
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "schema", "encryption", "accounts"}
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["database"]["dialect"] == probed.database
    alive = requests.get(probed.url + "/healthz", timeout=10)
    assert (alive.status_code, alive.json()) == (200, {"status": "ok"})


def test_every_account_disabled_then_one_enabled(probed):
    cli(probed, "accounts", "disable", probed.account["id"])
    try:
        body = becomes(probed, 503)
        assert body["status"] == "unready"
        assert body["checks"]["accounts"]["ok"] is False
        assert body["checks"]["accounts"]["error"] == "no account can serve: 1 disabled"
        assert body["checks"]["database"]["ok"] and body["checks"]["schema"]["ok"]
    finally:
        cli(probed, "accounts", "enable", probed.account["id"])
    assert becomes(probed, 200)["status"] == "ready"


def test_a_wrong_encryption_key(probed, tmp_path):
    database_url = probed.env.get("RESPONSES_PROXY_DATABASE_URL") or "sqlite:///" + database_file(probed)
    other = Gateway(tmp_path, probed.env["RESPONSES_PROXY_UPSTREAM_BASE_URL"],
                    env={"RESPONSES_PROXY_DATABASE_URL": database_url,
                         "RESPONSES_PROXY_ENCRYPTION_KEY": "a-key-these-tokens-were-not-encrypted-with"})
    other.start()
    try:
        status, body = readiness(other)
    finally:
        other.stop()
    assert status == 503
    assert body["checks"]["encryption"]["ok"] is False
    assert "RESPONSES_PROXY_ENCRYPTION_KEY" in body["checks"]["encryption"]["error"]
    assert readiness(probed)[0] == 200, "the instance with the right key stays ready"


def test_a_read_only_database_file(probed):
    if probed.database != "sqlite":
        pytest.skip("a file permission is a SQLite matter")
    database = database_file(probed)
    # The write-ahead log too, when a connection has it open: then even writes through
    # descriptors already open fail (for root; modes bind only those who open the file next).
    with read_only([path for path in (database, database + "-wal") if os.path.exists(path)]):
        body = becomes(probed, 503)
        assert body["checks"]["database"]["ok"] is False
        assert body["checks"]["database"]["error"].startswith("the database does not take writes: ")
    assert becomes(probed, 200)["checks"]["database"]["ok"] is True

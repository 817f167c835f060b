"""``/readyz`` and ``/healthz`` on SQLite AND PostgreSQL: each check, its cache, no key needed."""

import json
import time

import pytest
from sqlalchemy import select, text

from responses_proxy import create_app
from responses_proxy.store import accounts as account_store
from responses_proxy.store import migrate
from responses_proxy.store.tables import readiness
from responses_proxy.upstream.credentials import parse_auth_json
from tests.fake_upstream import auth_json
from tests.helpers import SECRET, make_app, read_only


@pytest.fixture
def make(tmp_path, upstream, database_url):
    """Apps on one database (each with its own settings), disposed of at the end."""
    made = []

    def build(**overrides):
        app = make_app(tmp_path, upstream.base_url, database_url, **{"READINESS_CACHE_SECONDS": 0, **overrides})
        made.append(app)
        return app

    yield build
    for app in made:
        app.extensions["responses_proxy"].engine.dispose()


def import_account(app, account_id="acct-ready"):
    services = app.extensions["responses_proxy"]
    document = auth_json(account_id=account_id)
    return account_store.upsert(services.engine, services.cipher, parse_auth_json(json.dumps(document).encode()))[0]


def probe(app):
    reply = app.test_client().get("/readyz")
    assert reply.headers["Cache-Control"] == "no-store"
    return reply.status_code, reply.json


def test_ready(make):
    app = make()
    import_account(app)

    status, body = probe(app)

    assert status == 200
    assert body["status"] == "ready"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["schema"] == {"ok": True, "revision": migrate.head(), "head": migrate.head()}
    assert body["checks"]["encryption"] == {"ok": True, "accounts": 1, "undecryptable": 0}
    assert body["checks"]["accounts"] == {"ok": True, "serving": 1, "active": 1, "cooling_down": 0, "disabled": 0,
                                          "needs_relogin": 0}
    with app.extensions["responses_proxy"].engine.connect() as conn:
        [row] = conn.execute(select(readiness)).mappings().all()
    assert row["checked_at"] > time.time() - 60, "the check wrote its row"


def test_no_account_is_unready(make):
    status, body = probe(make())
    assert status == 503 and body["status"] == "unready"
    assert body["checks"]["accounts"]["ok"] is False
    assert "no account is configured" in body["checks"]["accounts"]["error"]
    assert all(body["checks"][name]["ok"] for name in ("database", "schema", "encryption"))


@pytest.mark.parametrize("status, cooldown, ready, fragment", [
    ("disabled", None, False, "no account can serve: 1 disabled"),
    ("needs_relogin", None, False, "no account can serve: 1 needs relogin"),
    ("active", 3600, True, None),
])
def test_account_states(make, status, cooldown, ready, fragment):
    app = make()
    row = import_account(app)
    engine = app.extensions["responses_proxy"].engine
    account_store.set_status(engine, row["id"], status)
    if cooldown:
        account_store.set_cooldown(engine, row["id"], time.time() + cooldown, "usage limit")

    code, body = probe(app)

    assert (code == 200) is ready
    if fragment:
        assert fragment in body["checks"]["accounts"]["error"]
    else:
        assert body["checks"]["accounts"]["cooling_down"] == 1


def test_one_serving_account_is_enough(make):
    app = make()
    engine = app.extensions["responses_proxy"].engine
    account_store.set_status(engine, import_account(app, "acct-a")["id"], "disabled")
    import_account(app, "acct-b")
    assert probe(app)[0] == 200


def test_a_wrong_encryption_key_is_unready(make):
    import_account(make())
    status, body = probe(make(ENCRYPTION_KEY="not-the-key-the-tokens-were-encrypted-with"))

    assert status == 503
    assert body["checks"]["encryption"]["ok"] is False
    assert body["checks"]["encryption"]["undecryptable"] == 1
    assert "RESPONSES_PROXY_ENCRYPTION_KEY" in body["checks"]["encryption"]["error"]
    assert body["checks"]["accounts"]["ok"] is False
    assert "cannot be decrypted" in body["checks"]["accounts"]["error"]


def test_a_schema_behind_is_unready(make):
    app = make()
    import_account(app)
    engine = app.extensions["responses_proxy"].engine
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0003'"))

    status, body = probe(app)

    assert status == 503
    assert body["checks"]["schema"]["ok"] is False
    assert body["checks"]["schema"]["revision"] == "0003"
    assert "db upgrade" in body["checks"]["schema"]["error"]


def test_a_database_file_new_workers_could_only_read(make):
    """This process may still write through a descriptor it holds open; a new worker could not."""
    app = make()
    import_account(app)
    engine = app.extensions["responses_proxy"].engine
    if engine.dialect.name != "sqlite":
        pytest.skip("a file permission is a SQLite matter")
    with engine.connect() as held:
        held.execute(text("SELECT 1"))
        # While another connection of this process has the file open, SQLite keeps the
        # descriptor of a closed one for the next connection to reuse: opened for writing.
        assert probe(app)[0] == 200
        with read_only([engine.url.database]):
            status, body = probe(app)

    assert status == 503
    assert body["checks"]["database"] == {
        "ok": False, "error": f"the database does not take writes: {engine.url.database} is not writable"}
    assert probe(app)[0] == 200


def test_the_result_is_kept_briefly(make):
    app = make(READINESS_CACHE_SECONDS=60)
    row = import_account(app)
    assert probe(app)[0] == 200
    account_store.set_status(app.extensions["responses_proxy"].engine, row["id"], "disabled")
    assert probe(app)[0] == 200, "the cached result"
    assert probe(make())[0] == 503, "without a cache the same database is unready"


def test_an_unreachable_database(tmp_path, upstream):
    app = create_app({"DATA_DIR": str(tmp_path), "DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/none",
                      "UPSTREAM_BASE_URL": upstream.base_url, "ENCRYPTION_KEY": SECRET, "LOG_LEVEL": "WARNING"})
    status, body = probe(app)
    liveness = app.test_client().get("/healthz")

    assert status == 503
    assert "database unavailable" in body["checks"]["database"]["error"]
    assert {check["ok"] for check in body["checks"].values()} == {False}
    assert (liveness.status_code, liveness.json) == (200, {"status": "ok"}), "liveness needs no database"


def test_probes_need_no_key(make):
    app = make()
    assert app.test_client().get("/healthz").status_code == 200
    assert app.test_client().get("/readyz").status_code in (200, 503)

"""Fixtures: a fresh app per test (flaskr style), the fake upstream, PostgreSQL, a real gunicorn."""

import json

import pytest
from sqlalchemy import create_engine, text

from responses_proxy.store import keys as key_store
from responses_proxy.store import make_engine, migrate
from responses_proxy.store.accounts import upsert
from responses_proxy.upstream.credentials import parse_auth_json
from tests.fake_upstream import FakeUpstream, auth_json
from tests.helpers import POSTGRES_URL, Gateway, fresh_schema, make_app, service_missing


@pytest.fixture(scope="session")
def fake_upstream():
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture
def upstream(fake_upstream):
    fake_upstream.reset()
    return fake_upstream


@pytest.fixture(scope="session")
def postgres_server():
    engine = create_engine(POSTGRES_URL)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # not reachable: fail in CI, skip on a laptop without it
        service_missing(f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc}")
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url(postgres_server):
    """A schema of its own for one test."""
    with fresh_schema(postgres_server) as url:
        yield url


@pytest.fixture(scope="module")
def module_postgres_url(postgres_server):
    """A schema of its own for one test module (gateways shared by its tests)."""
    with fresh_schema(postgres_server) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Storage tests run once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return "sqlite:///" + str(tmp_path / "test.db")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def bare_engine(database_url):
    """An engine on the parametrized database, its schema not made."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(bare_engine):
    """An engine on the parametrized database, its schema current."""
    migrate.upgrade(bare_engine)
    return bare_engine


@pytest.fixture
def app(tmp_path, upstream):
    app = make_app(tmp_path, upstream.base_url)
    yield app
    app.extensions["responses_proxy"].engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def services(app):
    return app.extensions["responses_proxy"]


@pytest.fixture
def api_key(services):
    return key_store.create(services.engine, "test")["key"]


@pytest.fixture
def account(services):
    row, _ = upsert(services.engine, services.cipher, parse_auth_json(json.dumps(auth_json()).encode()))
    return row


@pytest.fixture
def auth(api_key):
    return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture(scope="module")
def gateway(fake_upstream, tmp_path_factory):
    """gunicorn with two gevent workers, one account and a 1 s keepalive, for a whole module."""
    server = Gateway(tmp_path_factory.mktemp("gateway"), fake_upstream.base_url,
                     env={"RESPONSES_PROXY_KEEPALIVE_SECONDS": "1"})
    with server.serving():
        yield server


@pytest.fixture
def e2e(gateway, upstream):
    """The module's gateway with a freshly reset fake upstream."""
    return gateway

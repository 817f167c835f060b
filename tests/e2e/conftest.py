"""Fixtures of the end-to-end tests: WebSocket clients, module-long PostgreSQL schemas, gateways
with several accounts. The shared gateway (``gateway``/``e2e``) comes from ``tests/conftest.py``."""

import uuid

import pytest
from sqlalchemy import text

from tests.e2e.helpers import WebSocketClient
from tests.fake_upstream import auth_json
from tests.helpers import POSTGRES_URL, Gateway


@pytest.fixture
def connect():
    """Opens ``WebSocketClient``s (same arguments) and hangs them all up after the test."""
    clients = []

    def open_client(gateway, **kwargs):
        clients.append(WebSocketClient(gateway, **kwargs))
        return clients[-1]

    yield open_client
    for client in clients:
        client.close()


@pytest.fixture(scope="module")
def postgres_schemas(request):
    """New PostgreSQL schemas that live as long as the module (``postgres_url`` lives for one
    test): for a module-scoped gateway on PostgreSQL."""
    made = []

    def new():
        engine = request.getfixturevalue("postgres_server")
        schema = "t_" + uuid.uuid4().hex[:12]
        with engine.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        made.append((engine, schema))
        return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"

    yield new
    for engine, schema in made:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))


@pytest.fixture(params=["sqlite", "postgresql"])
def make_gateway(request, upstream, tmp_path_factory):
    """Start a gateway with ``n`` accounts (fake ids acct-0..n-1) on the parametrized database."""
    started = []
    # Its schema is made before any gateway, so that it is dropped after they have all stopped:
    # a worker still writing while it is dropped deadlocks the DROP.
    database_url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None

    def start(n=3, env=None, documents=None):
        env = dict(env or {})
        if database_url is not None:
            env["RESPONSES_PROXY_DATABASE_URL"] = database_url
        server = Gateway(tmp_path_factory.mktemp("pool"), upstream.base_url, env=env)
        started.append(server)
        server.start()
        documents = documents or [auth_json(account_id=f"acct-{i}", last_refresh="2099-01-01T00:00:00Z")
                                  for i in range(n)]
        server.rows = [server.import_account(document) for document in documents]
        server.key = server.create_key()
        return server

    yield start
    for server in started:
        server.stop()

"""PostgreSQL restarts or goes away for a while under a serving gateway.

The server is a private one the tests start themselves (``initdb`` in a temporary directory, a
port and a socket directory of its own; as the ``postgres`` user when the tests run as root),
so the machine's server is never touched. While it is down, every request that needs the
database gets a 503 envelope at once (``database_unavailable``), no worker dies, streams already
open finish (their usage rows are written once the database is back) and everything recovers
by itself.
"""

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
import requests
from sqlalchemy import create_engine, select, text

from responses_proxy.store.tables import usage
from tests.e2e.helpers import RawStream, WebSocketClient, auth, error_of, request_id, wait_for
from tests.fake_upstream import auth_json
from tests.helpers import Gateway, die_with_parent, free_port, service_missing, unique

# Fast shutdown (the server ends its sessions, then stops) and immediate (it just exits, as in
# a crash): the signals ``pg_ctl stop -m fast`` and ``-m immediate`` send to the postmaster.
STOP_SIGNALS = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT}
# RESPONSES_PROXY_DATABASE_STATEMENT_TIMEOUT of the gateway here.
STATEMENT_TIMEOUT = 2.0
# A request during the outage is answered within this: a refused connection fails at once, and
# the connect and statement timeouts are far below it.
ANSWER_BOUND_SECONDS = 10.0


def postgres_binaries():
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(found)
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(versions[-1]) if versions else None


class PrivatePostgres:
    """A PostgreSQL server of this test module's own, started and stopped at will.

    The postmaster is a child of the test process (it dies with the run); stopping it sends the
    signal ``pg_ctl stop -m MODE`` would. PostgreSQL refuses to run as root: then it runs as
    the ``postgres`` user, which owns the temporary directory.
    """

    def __init__(self, binaries):
        self.binaries = binaries
        self.directory = tempfile.mkdtemp(prefix="rp-postgres-")
        self.data = os.path.join(self.directory, "data")
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.user = None
        if os.geteuid() == 0:
            self.user = "postgres"
            os.chown(self.directory, pwd.getpwnam(self.user).pw_uid, -1)
        self.process = None
        subprocess.run([os.path.join(binaries, "initdb"), "-D", self.data, "-A", "trust", "-U", "postgres",
                        "--no-sync", "-E", "UTF8"], check=True, capture_output=True, user=self.user)

    def start(self):
        with open(os.path.join(self.directory, "postgres.log"), "ab") as log:
            self.process = subprocess.Popen(
                [os.path.join(self.binaries, "postgres"), "-D", self.data, "-p", str(self.port),
                 "-k", self.directory, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                stdout=log, stderr=subprocess.STDOUT, user=self.user, preexec_fn=die_with_parent)
        engine = create_engine(self.url)
        try:
            def accepting():
                try:
                    with engine.connect() as conn:
                        return conn.execute(text("SELECT 1")).scalar() == 1
                except Exception:
                    assert self.process.poll() is None, self.log()
                    return False

            assert wait_for(accepting, timeout=30, interval=0.1), self.log()
        finally:
            engine.dispose()

    def stop(self, mode="fast"):
        self.process.send_signal(STOP_SIGNALS[mode])
        self.process.wait(timeout=30)

    def log(self):
        with open(os.path.join(self.directory, "postgres.log"), errors="replace") as handle:
            return handle.read()[-3000:]

    def destroy(self):
        if self.process is not None and self.process.poll() is None:
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    binaries = postgres_binaries()
    if binaries is None:
        service_missing("PostgreSQL's server binaries (initdb, postgres) are not installed")
    server = PrivatePostgres(binaries)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="module")
def gateway(fake_upstream, postgres, tmp_path_factory):
    server = Gateway(tmp_path_factory.mktemp("outage"), fake_upstream.base_url,
                     env={"RESPONSES_PROXY_DATABASE_URL": postgres.url, "RESPONSES_PROXY_KEEPALIVE_SECONDS": "1",
                          "RESPONSES_PROXY_DATABASE_STATEMENT_TIMEOUT": str(STATEMENT_TIMEOUT)})
    with server.serving(auth_json(last_refresh="2099-01-01T00:00:00Z")):
        yield server


def timed(method, url, **kwargs):
    started = time.monotonic()
    reply = requests.request(method, url, timeout=ANSWER_BOUND_SECONDS, **kwargs)
    return reply, time.monotonic() - started


def unavailable(reply):
    """The 503 envelope of a request that needed the database while it was down."""
    assert reply.status_code == 503, reply.text
    error = error_of(reply)
    assert (error["type"], error["code"]) == ("server_error", "database_unavailable"), error
    return error


def usage_rows(postgres, request_ids):
    engine = create_engine(postgres.url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(usage).where(usage.c.request_id.in_(request_ids))).mappings().all()
    finally:
        engine.dispose()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_while_the_database_is_down_requests_get_503_and_everything_recovers(gateway, postgres, upstream, mode):
    key = gateway.key
    conversation = "conv_" + unique() * 6
    reply = requests.post(gateway.url + "/v1/responses", headers=auth(key), timeout=10,
                          json={"model": "gpt-5.2", "input": "before", "conversation": conversation})
    assert reply.status_code == 200, reply.text
    pids = gateway.worker_pids()
    # Streams open across the outage: a plain one, and a conversation turn (which must store
    # its items at its end).
    upstream.push({"stall_at": 4, "stall": 3})
    upstream.push({"stall_at": 4, "stall": 3})
    open_id, turn_id = request_id(), request_id()
    open_stream = RawStream(gateway, {"model": "gpt-5.2", "input": "across"}, headers={"X-Request-Id": open_id})
    open_turn = RawStream(gateway, {"model": "gpt-5.2", "input": "lost", "conversation": conversation},
                          headers={"X-Request-Id": turn_id})
    for stream in (open_stream, open_turn):
        stream.read_until(b"response.content_part.added")
    ws = WebSocketClient(gateway)

    postgres.stop(mode)
    down_at = time.monotonic()
    try:
        attempts = {
            "response": ("POST", "/v1/responses", {"model": "gpt-5.2", "input": "during"}),
            "stream": ("POST", "/v1/responses", {"model": "gpt-5.2", "input": "during", "stream": True}),
            "turn": ("POST", "/v1/responses", {"model": "gpt-5.2", "input": "during", "conversation": conversation}),
            "models": ("GET", "/v1/models", None),
            "items": ("GET", f"/v1/conversations/{conversation}/items", None),
            "new conversation": ("POST", "/v1/conversations", {}),
        }
        took = {}
        for name, (method, path, body) in attempts.items():
            reply, took[name] = timed(method, gateway.url + path, headers=auth(key), json=body)
            assert "database" in unavailable(reply)["message"], name
        refused = WebSocketClient(gateway)  # the handshake authenticates: a 503 too
        assert refused.status == 503 and refused.error()["code"] == "database_unavailable"
        refused.close()
        # A WebSocket opened before gets an error message and stays open.
        [message] = ws.request({"model": "gpt-5.2", "input": "during"})
        assert (message["type"], message["status"], message["error"]["code"]) == (
            "error", 503, "database_unavailable")
        print(f"\n{mode}: answers during the outage took {max(took.values()):.2f} s at most")
        # The plain stream opened before the outage ends as it would have; the turn cannot be
        # stored, and says so in its final event.
        open_stream.read_until(b"event: response.completed", timeout=15)
        ended = open_turn.read_until(b'"code":"database_unavailable"', timeout=15)
        assert b"event: response.failed" in ended and b"event: response.completed" not in ended
        assert gateway.worker_pids() == pids  # no worker died
    finally:
        open_stream.close()
        open_turn.close()
        postgres.start()
    back_at = time.monotonic()

    def serving():
        reply = requests.post(gateway.url + "/v1/responses", headers=auth(key), timeout=ANSWER_BOUND_SECONDS,
                              json={"model": "gpt-5.2", "input": "after"})
        return reply.status_code == 200

    assert wait_for(serving, timeout=20, interval=0.2)
    print(f"{mode}: down {back_at - down_at:.1f} s, serving again {time.monotonic() - back_at:.2f} s after it was back")
    assert ws.request({"model": "gpt-5.2", "input": "after"})[-1]["type"] == "response.completed"
    ws.close()

    # The turn that could not be stored still held its conversation: released once the
    # database was back, not a whole lease (20 s by default) later.
    def turn_served():
        reply = requests.post(gateway.url + "/v1/responses", headers=auth(key), timeout=ANSWER_BOUND_SECONDS,
                              json={"model": "gpt-5.2", "input": "after", "conversation": conversation})
        assert reply.status_code in (200, 409), reply.text
        return reply.status_code == 200

    assert wait_for(turn_served, timeout=5, interval=0.2)
    items = requests.get(f"{gateway.url}/v1/conversations/{conversation}/items?order=asc", headers=auth(key),
                         timeout=10).json()["data"]
    assert [item["content"][0]["text"] for item in items if item["role"] == "user"] == ["before", "after"]
    assert gateway.worker_pids() == pids
    # The usage rows of the streams that ended during the outage, kept meanwhile, are written now.
    assert wait_for(lambda: len(usage_rows(postgres, [open_id, turn_id])) == 2, timeout=10)
    rows = {row["request_id"]: row for row in usage_rows(postgres, [open_id, turn_id])}
    assert (rows[open_id]["status"], rows[open_id]["error_code"], rows[open_id]["total_tokens"]) == (200, None, 19)
    assert (rows[turn_id]["status"], rows[turn_id]["error_code"]) == (200, "database_unavailable")


def test_a_database_that_does_not_answer_in_time_gives_503_not_a_hang(gateway, postgres):
    """Another client holds a lock on the keys: a request with a key no worker has read yet
    waits for the statement timeout, then gets 503; once the lock is gone, it goes through.
    (A key the workers have read serves meanwhile: nothing can revoke it while the table is
    locked.)"""
    newcomer = gateway.create_key()
    holder = create_engine(postgres.url)
    try:
        with holder.begin() as conn:
            conn.execute(text("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE"))
            reply, took = timed("POST", gateway.url + "/v1/responses", headers=auth(newcomer),
                                json={"model": "gpt-5.2", "input": "locked out"})
            unavailable(reply)
        assert STATEMENT_TIMEOUT <= took < ANSWER_BOUND_SECONDS
    finally:
        holder.dispose()
    reply = requests.post(gateway.url + "/v1/responses", headers=auth(newcomer), timeout=10,
                          json={"model": "gpt-5.2", "input": "free again"})
    assert reply.status_code == 200, reply.text
    reply = requests.post(gateway.url + "/v1/responses", headers=auth(gateway.key), timeout=10,
                          json={"model": "gpt-5.2", "input": "free again"})
    assert reply.status_code == 200, reply.text

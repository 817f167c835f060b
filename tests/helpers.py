"""What the tests share: the app and gunicorn they run, the services they need, small utilities.

Fixtures live in ``tests/conftest.py``; the helpers here are imported by name.
"""

import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
import requests
from sqlalchemy import text

from responses_proxy import create_app
from responses_proxy.store import keys as key_store
from responses_proxy.store import make_engine, migrate
from responses_proxy.store.accounts import upsert
from responses_proxy.upstream.credentials import parse_auth_json
from tests.fake_upstream import auth_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


IN_CI = os.environ.get("CI") == "true"


POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


SECRET = "test-secret-key"


def service_missing(message):
    """A test that needs a service fails in CI (the service must be there) and skips elsewhere."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def fresh_schema(server, url=POSTGRES_URL):
    """A URL whose connections use a schema of their own, dropped at the end."""
    schema = "t_" + uuid.uuid4().hex[:12]
    with server.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{url}?options=-csearch_path%3D{schema}"
    finally:
        with server.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))


def make_app(data_dir, upstream_url, database_url=None, **overrides):
    config = {"DATA_DIR": str(data_dir), "DATABASE_URL": database_url, "UPSTREAM_BASE_URL": upstream_url,
              "AUTH_BASE_URL": upstream_url, "ENCRYPTION_KEY": SECRET, "USAGE_FLUSH_SECONDS": 0,
              "LOG_LEVEL": "WARNING", **overrides}
    app = create_app(config)
    app.config["TESTING"] = True
    migrate.upgrade(app.extensions["responses_proxy"].engine)
    return app


def built_usage_row(created_at, key_id, model="gpt-5.2", status=200, total=15, account_id="acct_x"):
    """A usage row as the recorder writes it (tokens: ``total`` - 5 in, 5 out)."""
    return {"created_at": created_at, "request_id": "req", "key_id": key_id, "account_id": account_id,
            "model": model, "stream": False, "status": status, "input_tokens": total - 5, "output_tokens": 5,
            "total_tokens": total, "cached_tokens": 1, "reasoning_tokens": 2, "ttfb_ms": 120.0,
            "duration_ms": 300.0, "error_code": None if status < 400 else "upstream_error"}


@contextlib.contextmanager
def read_only(paths):
    """The files made read-only: by their mode, or, for root (whom modes do not bind), by the
    immutable attribute, which also fails writes through descriptors already open."""
    if os.geteuid() != 0:
        modes = {path: os.stat(path).st_mode for path in paths}
        for path in paths:
            os.chmod(path, 0o444)
        try:
            yield
        finally:
            for path, mode in modes.items():
                os.chmod(path, mode)
        return
    if subprocess.run(["chattr", "+i", *paths], capture_output=True).returncode != 0:
        pytest.skip("running as root (file modes do not bind) on a filesystem without chattr +i")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *paths], check=True)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def die_with_parent():
    """In the child before exec: a server started by a test run never outlives that run."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Gateway:
    """A real gunicorn (gevent workers) serving wsgi:app on a free port, in a process group of
    its own (``kill`` takes the whole host down)."""

    def __init__(self, data_dir, upstream_url, env=None, workers=2):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "RESPONSES_PROXY_DATA_DIR": str(data_dir),
            "RESPONSES_PROXY_UPSTREAM_BASE_URL": upstream_url,
            "RESPONSES_PROXY_AUTH_BASE_URL": upstream_url,
            "RESPONSES_PROXY_ENCRYPTION_KEY": SECRET,
            "RESPONSES_PROXY_WORKERS": str(workers),
            "RESPONSES_PROXY_USAGE_FLUSH_SECONDS": "0.1",
            "RESPONSES_PROXY_ACCESS_LOG": "off",
            **(env or {}),
        }
        self.log_path = os.path.join(str(data_dir), "gunicorn.log")
        self.process = None

    def start(self):
        return self.launch().wait_ready()

    @contextlib.contextmanager
    def serving(self, document=None, **account):
        """Started, with one account (``import_account``'s arguments) and an API key in
        ``self.key``; stopped at the end, whatever happened."""
        self.start()
        try:
            self.import_account(document, **account)
            self.key = self.create_key()
            yield self
        finally:
            self.stop()

    def launch(self):
        """Start gunicorn without waiting for it: several gateways then start together. From the
        main thread: the server gets SIGTERM when the thread that started it ends."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "etc/gunicorn.conf.py", "-b", f"127.0.0.1:{self.port}",
                 "wsgi:app"], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent, process_group=0)
        return self

    def wait_ready(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log()}")
            try:
                if requests.get(self.url + "/healthz", timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not start: {self.log()}")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self):
        """SIGKILL to the master and its workers at once (their process group), as when the
        host dies: nothing gets to clean up."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def worker_pids(self):
        """The pids of gunicorn's workers (the master's children)."""
        pid = self.process.pid
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return sorted(int(child) for child in handle.read().split())

    def log(self, tail=5000):
        """gunicorn's output (its last ``tail`` characters; None: all of it)."""
        with open(self.log_path, "rb") as handle:
            text = handle.read().decode("utf-8", "replace")
        return text[-tail:] if tail else text

    def app(self):
        """An app on the same database and secret, for setting up keys and accounts."""
        return make_app(self.data_dir, self.env["RESPONSES_PROXY_UPSTREAM_BASE_URL"],
                        self.env.get("RESPONSES_PROXY_DATABASE_URL"))

    def create_key(self, allowed_models=None):
        return self.create_key_row(allowed_models)["key"]

    def create_key_row(self, allowed_models=None, **limits):
        """A new API key (``limits``: rpm, concurrency, daily_tokens): its row, with the plaintext ``key``."""
        app = self.app()
        try:
            return key_store.create(app.extensions["responses_proxy"].engine, "e2e", allowed_models, **limits)
        finally:
            app.extensions["responses_proxy"].engine.dispose()

    def import_account(self, document=None, **kwargs):
        """Import an auth.json document (default: ``auth_json(**kwargs)``); returns the row."""
        document = document or auth_json(**kwargs)
        app = self.app()
        services = app.extensions["responses_proxy"]
        try:
            return upsert(services.engine, services.cipher, parse_auth_json(json.dumps(document).encode()))[0]
        finally:
            services.engine.dispose()

    def engine(self):
        return make_engine(self.env.get("RESPONSES_PROXY_DATABASE_URL")
                           or "sqlite:///" + os.path.join(str(self.data_dir), "responses-proxy.db"))


def unique():
    return secrets.token_hex(4)


def read_to_end(sock):
    """Everything a raw socket receives until the other side closes (or resets) it."""
    received = b""
    try:
        while data := sock.recv(65536):
            received += data
    except ConnectionResetError:
        pass
    return received

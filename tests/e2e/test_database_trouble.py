"""A database that stalls or fails never freezes a worker: its other requests go on."""

import os
import subprocess
import sys
import threading
import time

import pytest
import requests

from tests.e2e.helpers import auth
from tests.helpers import Gateway


@pytest.fixture
def one_worker(tmp_path, upstream):
    gateway = Gateway(tmp_path, upstream.base_url, workers=1,
                      env={"RESPONSES_PROXY_USAGE_FLUSH_SECONDS": "0"})
    gateway.start()
    gateway.import_account()
    gateway.key = gateway.create_key()
    yield gateway
    gateway.stop()


def hold_write_lock(database, seconds):
    """Another process (a cron job, a CLI import) holding SQLite's write lock for ``seconds``."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys, time\n"
         f"db = sqlite3.connect({database!r}, isolation_level=None)\n"
         "db.execute('BEGIN IMMEDIATE')\n"
         "print('locked', flush=True)\n"
         f"time.sleep({seconds})\n"
         "db.execute('COMMIT')\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
    finally:
        holder.stdout.close()
    return holder


def test_a_held_sqlite_write_lock_stalls_no_other_request(one_worker):
    """Before, SQLite's busy handler slept inside C for up to 30 s: every request of the worker
    waited. Now a write waits cooperatively, and reads (health, authentication) go on."""
    gateway = one_worker
    database = os.path.join(str(gateway.data_dir), "responses-proxy.db")
    answers = {}

    def conversation_turn():
        started = time.monotonic()
        reply = requests.post(gateway.url + "/v1/responses", headers=auth(gateway.key), timeout=30,
                              json={"model": "gpt-5.2", "input": "hi", "conversation": "conv_locked1"})
        answers["turn"] = (reply.status_code, time.monotonic() - started, reply.text)

    holder = hold_write_lock(database, 4)
    released_at = None
    try:
        turn = threading.Thread(target=conversation_turn)
        turn.start()
        time.sleep(0.3)  # the turn is now waiting for the write lock
        for _ in range(8):
            started = time.monotonic()
            health = requests.get(gateway.url + "/healthz", timeout=10)
            models = requests.get(gateway.url + "/v1/models", headers=auth(gateway.key), timeout=10)
            elapsed = time.monotonic() - started
            assert health.status_code == 200 and models.status_code == 200
            assert elapsed < 1.5, f"the worker stalled for {elapsed:.1f} s while another process held the lock"
            time.sleep(0.2)
    finally:
        holder.wait(timeout=10)
        released_at = time.monotonic()
    turn.join(timeout=30)
    status, took, text = answers["turn"]
    # The turn waited for the lock and then went through: it was not refused, nor lost.
    assert status == 200, text
    assert took > 3
    assert released_at is not None
    reply = requests.get(gateway.url + "/v1/conversations/conv_locked1/items", headers=auth(gateway.key),
                         timeout=10)
    assert [item["role"] for item in reply.json()["data"]] == ["assistant", "user"]

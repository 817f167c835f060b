"""What ships is what is tested: the README's quick start, run as a newcomer runs it.

A copy of the working tree (what a clone holds) gets a virtualenv built by the README's own
install command from ``requirements.txt`` alone: no test tools in it, so a runtime import of
a package only the dev requirements bring fails here. The README's commands then run in its
order, through a shell: the CLI on a fresh data directory, the serve command exactly as written,
the curl example, and a streaming request. The virtualenv is cached under ``.cache/shipping``,
keyed by the requirements' hash and the Python version.
"""

import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import requests

from tests.e2e.helpers import events_of, split_frames
from tests.fake_upstream import auth_json
from tests.helpers import ROOT, die_with_parent, free_port

README = os.path.join(ROOT, "README.md")
CACHE = os.path.join(ROOT, ".cache", "shipping")
README_PORT = "127.0.0.1:8000"
UMASK = "umask 022\n"  # the usual one: files it creates are world-readable unless asked otherwise


def quick_start_commands():
    """The shell commands of the README's quick start, in order (continuation lines joined)."""
    with open(README, encoding="utf-8") as handle:
        text = handle.read()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def find(commands, prefix):
    matching = [command for command in commands if command.startswith(prefix)]
    assert matching, f"the README's quick start has no command starting with {prefix!r}: {commands}"
    return matching


def runtime_venv(install_command):
    """The virtualenv the README's install command builds, from a directory holding only
    ``requirements.txt`` (cached: building it takes a while)."""
    with open(os.path.join(ROOT, "requirements.txt"), "rb") as handle:
        requirements = handle.read()
    digest = hashlib.sha256(requirements + sys.version.encode() + install_command.encode()).hexdigest()[:16]
    home = os.path.join(CACHE, digest)
    done = os.path.join(home, ".complete")
    if not os.path.exists(done):
        shutil.rmtree(home, ignore_errors=True)
        os.makedirs(home)
        with open(os.path.join(home, "requirements.txt"), "wb") as handle:
            handle.write(requirements)
        result = subprocess.run(["bash", "-c", install_command], cwd=home, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, f"the README's install command failed:\n{result.stdout}\n{result.stderr}"
        open(done, "w").close()
    return os.path.join(home, ".venv")


def working_tree_copy(destination):
    """The files a clone of this checkout holds: tracked ones, and new ones not ignored."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = os.path.join(ROOT, name)
        if not os.path.isfile(source):
            continue  # deleted in the working tree
        target = os.path.join(destination, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(source, target)


@pytest.fixture(scope="module")
def readme():
    commands = quick_start_commands()
    install = find(commands, "python3 -m venv")[0]
    return {
        "install": install,
        "serve": find(commands, ".venv/bin/gunicorn")[0],
        "import": find(commands, ".venv/bin/flask --app wsgi accounts import")[0],
        "keys": find(commands, ".venv/bin/flask --app wsgi keys create")[0],
        "curl": find(commands, "curl ")[0],
        "venv": runtime_venv(install),
    }


class Newcomer:
    """A fresh clone with the README's virtualenv, a home with a Codex login, and a shell."""

    def __init__(self, tmp_path, readme, upstream_url):
        self.readme = readme
        self.clone = tmp_path / "clone"
        self.clone.mkdir()
        working_tree_copy(str(self.clone))
        os.symlink(readme["venv"], self.clone / ".venv")
        home = tmp_path / "home"
        (home / ".codex").mkdir(parents=True)
        login = auth_json(last_refresh=datetime.datetime.now(datetime.UTC).isoformat())
        (home / ".codex" / "auth.json").write_text(json.dumps(login))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Only what a user would set: where the upstream is (the fake one), and the bind
        # address through the variable the README documents (so the command stays as written).
        # PATH without this test run's virtualenv, so nothing of it leaks in.
        path = os.pathsep.join(entry for entry in os.environ.get("PATH", "").split(os.pathsep)
                               if not entry.startswith(os.path.dirname(sys.executable)))
        self.env = {"HOME": str(home), "PATH": path, "LANG": "C.UTF-8",
                    "RESPONSES_PROXY_UPSTREAM_BASE_URL": upstream_url,
                    "RESPONSES_PROXY_AUTH_BASE_URL": upstream_url,
                    "RESPONSES_PROXY_BIND": self.address,
                    "RESPONSES_PROXY_ACCESS_LOG": "off"}
        self.server = None
        self.key = None

    def shell(self, command, timeout=60):
        command = command.replace(README_PORT, self.address)
        return subprocess.run(["bash", "-c", UMASK + command], cwd=self.clone, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def ok(self, command):
        result = self.shell(command)
        assert result.returncode == 0, f"{command!r} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr, result.stderr
        return result.stdout

    def add_account_and_key(self):
        imported = self.ok(self.readme["import"])
        assert "imported acct_" in imported, imported
        created = self.ok(self.readme["keys"])
        self.key = re.search(r"^key: (\S+)$", created, re.M).group(1)
        self.env["KEY"] = self.key

    def serve(self):
        self.log = open(self.clone / "serve.log", "wb")  # noqa: SIM115  (closed in stop())
        self.server = subprocess.Popen(["bash", "-c", UMASK + "exec " + self.readme["serve"]], cwd=self.clone,
                                       env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                       preexec_fn=die_with_parent)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.server.poll() is None, f"the serve command exited: {self.output()}"
            try:
                if requests.get(f"http://{self.address}/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise AssertionError(f"the serve command did not start serving: {self.output()}")

    def output(self):
        return (self.clone / "serve.log").read_text(errors="replace")[-5000:]

    def stop(self):
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        if self.server is not None:
            self.log.close()

    def check_requests(self):
        # The README's curl example, as written (only the port differs).
        answer = self.shell(self.readme["curl"] + " --silent --show-error --fail-with-body")
        assert answer.returncode == 0, answer.stdout + answer.stderr
        response = json.loads(answer.stdout)
        assert response["object"] == "response" and response["status"] == "completed", response
        assert response["output"][0]["content"][0]["text"] == "Hello from the fake upstream."

        reply = requests.post(f"http://{self.address}/v1/responses", stream=True, timeout=20,
                              headers={"Authorization": f"Bearer {self.key}"},
                              json={"model": "gpt-5.2", "input": "Count to five", "stream": True})
        with reply:
            assert reply.status_code == 200, reply.content
            assert reply.headers["Content-Type"] == "text/event-stream"
            frames = split_frames([(time.monotonic(), chunk) for chunk in reply.iter_content(chunk_size=None)])
        names = [frame.name for frame in events_of(frames)]
        assert names[0] == "response.created" and names[-1] == "response.completed", names
        assert "response.output_text.delta" in names


@pytest.fixture
def newcomer(tmp_path, readme, upstream):
    person = Newcomer(tmp_path, readme, upstream.base_url)
    yield person
    person.stop()


def test_runtime_virtualenv_holds_no_test_tools(readme):
    python = os.path.join(readme["venv"], "bin", "python")
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    for dev_only in ("pytest", "responses", "openai"):
        found = subprocess.run([python, "-c", f"import {dev_only}"], capture_output=True, text=True)
        assert found.returncode != 0, f"{dev_only} is importable in the runtime virtualenv"


def test_account_and_key_before_the_first_start(newcomer):
    """The order of a deploy script: configure, then start."""
    newcomer.add_account_and_key()
    newcomer.serve()
    newcomer.check_requests()
    # And the CLI keeps working next to the running server.
    deadline = time.monotonic() + 10
    while True:  # usage rows are written in batches, a second apart
        listed = json.loads(newcomer.ok(".venv/bin/flask --app wsgi accounts list --json"))
        if listed[0]["last_day"]["requests"] == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert [(row["chatgpt_account_id"], row["state"]) for row in listed] == [("acct-fake-1", "active")]
    assert listed[0]["last_day"]["requests"] == 2
    # Conversations and tokens are stored there: nobody but the gateway's user may read them,
    # whatever the umask (a newcomer's is usually 022).
    data = newcomer.clone / "var"
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in [data, *data.iterdir()]
             if not path.name.endswith(".ctl")}
    assert modes["var"] == "0o700", modes
    for name in ("responses-proxy.db", "responses-proxy.db-wal", "secret.key"):
        assert modes[name] == "0o600", modes


def test_account_and_key_after_the_first_start(newcomer):
    """The order of the README: start, then add an account and a key from another shell."""
    newcomer.serve()
    reply = requests.post(f"http://{newcomer.address}/v1/responses", json={"model": "gpt-5.2", "input": "hi"},
                          timeout=10)
    assert reply.status_code == 401
    newcomer.add_account_and_key()
    newcomer.check_requests()
    keys = json.loads(newcomer.ok(".venv/bin/flask --app wsgi keys list --json"))
    assert [key["name"] for key in keys] == ["me"]


def test_cli_errors_are_one_line(newcomer):
    """Bad file, unknown id, unreachable database, mistyped setting: a sentence and exit 1."""
    cases = [
        (".venv/bin/flask --app wsgi accounts import ~/missing.json", "cannot read"),
        (".venv/bin/flask --app wsgi accounts remove acct_nope", "no account with id acct_nope"),
        (".venv/bin/flask --app wsgi keys revoke key_nope", "no active key with id key_nope"),
        ("RESPONSES_PROXY_DATABASE_URL=postgresql+psycopg://nobody@127.0.0.1:1/none "
         ".venv/bin/flask --app wsgi keys list", "database error"),
        ("RESPONSES_PROXY_MAX_ATTEMPTS=three .venv/bin/flask --app wsgi keys list", "RESPONSES_PROXY_MAX_ATTEMPTS"),
    ]
    for command, fragment in cases:
        result = newcomer.shell(command)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], (command, result.stderr)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_cli_on_a_fresh_database_from_several_processes_at_once(newcomer, database, request):
    """A deploy that provisions from several processes at once: each brings the schema up to
    date, in turns, and every command succeeds."""
    if database == "postgresql":
        newcomer.env["RESPONSES_PROXY_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    commands = [subprocess.Popen(["bash", "-c", f".venv/bin/flask --app wsgi keys create --name k{index} --json"],
                                 cwd=newcomer.clone, env=newcomer.env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for index in range(4)]
    results = [(command.wait(timeout=120), *command.communicate()) for command in commands]
    assert [code for code, _, _ in results] == [0, 0, 0, 0], results
    keys = json.loads(newcomer.ok(".venv/bin/flask --app wsgi keys list --json"))
    assert sorted(key["name"] for key in keys) == ["k0", "k1", "k2", "k3"]

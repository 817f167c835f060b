"""The processes of a bench run: fake upstream, gateway (gunicorn), nginx, load generator.

Every process is started in a session of its own (a Ctrl-C reaches only the bench) and is
stopped by pid, its descendants included, by ``Processes.stop_all`` whatever happens.
"""

import datetime
import http.client
import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

from bench import procfs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
ENV_PREFIX = "RESPONSES_PROXY_"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port, process, deadline, what):
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} in time")


class Processes:
    """Every process the bench started, to be stopped in reverse order."""

    def __init__(self):
        self._started = []

    def start(self, name, argv, stop_signal=signal.SIGTERM, **kwargs):
        process = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self._started.append((name, process, stop_signal))
        return process

    def stop(self, process, grace=15.0):
        for entry in list(self._started):
            if entry[1] is process:
                self._started.remove(entry)
                stop_tree(entry[1], entry[2], grace)

    def stop_all(self):
        while self._started:
            _, process, stop_signal = self._started.pop()
            stop_tree(process, stop_signal, 10.0)


def stop_tree(process, stop_signal, grace):
    """Signal the root, wait, then kill by pid whatever is left of the tree seen before."""
    if process.poll() is not None:
        return
    pids = procfs.tree(process.pid)
    try:
        process.send_signal(stop_signal)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    except OSError:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


class FakeUpstream:
    def __init__(self, processes, slow_interval, slow_deltas):
        self.process = processes.start(
            "upstream", [sys.executable, "-m", "bench.upstream", "--port", "0", "--slow-interval",
                         str(slow_interval), "--slow-deltas", str(slow_deltas)],
            cwd=ROOT, stdout=subprocess.PIPE)
        ready, _, _ = select.select([self.process.stdout], [], [], 20)
        line = self.process.stdout.readline().decode() if ready else ""
        if not line.startswith("PORT "):
            raise RuntimeError("the fake upstream did not start")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.pid = self.process.pid


class Gateway:
    """gunicorn serving wsgi:app exactly as the README says, on a free port, with its own data dir."""

    def __init__(self, processes, name, upstream_url, workdir, workers=None, app="wsgi:app", extra_env=None):
        self.name = name
        self.port = free_port()
        self.data_dir = os.path.join(workdir, name)
        os.makedirs(self.data_dir)
        self.upstream_url = upstream_url
        self.log_path = os.path.join(self.data_dir, "gunicorn.log")
        env = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
        env.update({
            "RESPONSES_PROXY_DATA_DIR": self.data_dir,
            "RESPONSES_PROXY_UPSTREAM_BASE_URL": upstream_url,
            "RESPONSES_PROXY_AUTH_BASE_URL": upstream_url,
            "RESPONSES_PROXY_ACCESS_LOG": "off",
            "RESPONSES_PROXY_LOG_LEVEL": "WARNING",
        })
        if workers:
            env["RESPONSES_PROXY_WORKERS"] = str(workers)
        env.update(extra_env or {})
        self.command = [os.path.join(BIN, "gunicorn"), "-c", "etc/gunicorn.conf.py", app,
                        "-b", f"127.0.0.1:{self.port}"]
        with open(self.log_path, "ab") as log:
            # SIGINT: gunicorn's quick shutdown (SIGTERM would wait up to graceful_timeout).
            self.process = processes.start(name, self.command, stop_signal=signal.SIGINT, cwd=ROOT, env=env,
                                           stdout=log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid
        self.key = None

    def wait_ready(self, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn ({self.name}) exited: {self.log_tail()}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    connection.close()
                    return self
                connection.close()
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn ({self.name}) did not become healthy: {self.log_tail()}")

    def provision(self, accounts, key_limits=False):
        """An API key (with limits it never reaches, if ``key_limits``) and ``accounts`` upstream
        accounts, through the store like the CLI does."""
        from responses_proxy import create_app
        from responses_proxy.store import accounts as account_store
        from responses_proxy.store import keys as key_store
        from responses_proxy.upstream.credentials import parse_auth_json
        from tests.fake_upstream import auth_json

        # A fresh last_refresh: no token refresh in the measured path (an old one triggers one).
        last_refresh = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        app = create_app({"DATA_DIR": self.data_dir, "DATABASE_URL": None, "ENCRYPTION_KEY": None,
                          "UPSTREAM_BASE_URL": self.upstream_url, "AUTH_BASE_URL": self.upstream_url,
                          "LOG_LEVEL": "WARNING"})
        services = app.extensions["responses_proxy"]
        try:
            limits = {"rpm": 10**9, "concurrency": 10**6, "daily_tokens": 10**15} if key_limits else {}
            self.key = key_store.create(services.engine, "bench", **limits)["key"]
            for index in range(accounts):
                document = auth_json(account_id=f"acct-bench-{index:03d}", email=f"bench{index}@example.com",
                                     expires_in=7 * 86400, last_refresh=last_refresh)
                account_store.upsert(services.engine, services.cipher, parse_auth_json(json.dumps(document).encode()))
        finally:
            services.engine.dispose()
        return self

    def workers(self):
        return sorted(procfs.tree(self.pid)[1:])

    def log_tail(self, limit=4000):
        try:
            with open(self.log_path, "rb") as handle:
                return handle.read().decode("utf-8", "replace")[-limit:]
        except OSError:
            return ""


NGINX_CONF = """\
daemon off;
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {connections}; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    upstream fake {{
        server 127.0.0.1:{upstream_port};
        keepalive 1024;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def find_nginx():
    return shutil.which("nginx") or next((path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                          if os.access(path, os.X_OK)), None)


def ensure_nginx(allow_install, say):
    """The nginx binary, installed from Debian's packages when missing; (None, why) if it can't be had."""
    binary = find_nginx()
    if binary or not allow_install:
        return binary, None if binary else "nginx is not installed (--no-install)"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "nginx is not installed and apt-get cannot be used here (not root, or no apt-get)"
    say("nginx is missing: apt-get update && apt-get install -y nginx ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv, timeout in ((["apt-get", "update"], 300), (["apt-get", "install", "-y", "nginx"], 600)):
        try:
            done = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, f"{' '.join(argv)} timed out"
        if done.returncode:
            return None, f"{' '.join(argv)} failed: {done.stdout.decode(errors='replace')[-300:]}"
    binary = find_nginx()
    return binary, None if binary else "apt-get install nginx did not provide an nginx binary"


def nginx_version(binary):
    done = subprocess.run([binary, "-v"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
    return done.stdout.decode().strip().split("/")[-1]


class Nginx:
    """nginx as a reverse proxy with buffering off, from a generated config in a temp dir."""

    def __init__(self, processes, binary, upstream_port, workdir, workers="auto"):
        self.port = free_port()
        self.prefix = os.path.join(workdir, "nginx")
        os.makedirs(self.prefix)
        nofile = resource_hard_limit()
        conf = os.path.join(self.prefix, "nginx.conf")
        with open(conf, "w") as handle:
            handle.write(NGINX_CONF.format(workers=workers, nofile=nofile, connections=max(1024, nofile - 100),
                                           prefix=self.prefix, upstream_port=upstream_port, port=self.port))
        self.process = processes.start("nginx", [binary, "-p", self.prefix, "-c", conf, "-e",
                                                 os.path.join(self.prefix, "error.log")],
                                       stop_signal=signal.SIGTERM, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.STDOUT)
        self.pid = self.process.pid
        wait_port(self.port, self.process, time.monotonic() + 15, "nginx")

    def log_tail(self, limit=2000):
        try:
            with open(os.path.join(self.prefix, "error.log"), "rb") as handle:
                return handle.read().decode("utf-8", "replace")[-limit:]
        except OSError:
            return ""


def resource_hard_limit():
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


class LoadGenerator:
    """The load generator process; ``call`` sends one command and waits (bounded) for its result."""

    def __init__(self, processes, log_path):
        self._processes = processes
        self._log_path = log_path
        self._start()

    def _start(self):
        with open(self._log_path, "ab") as log:
            self.process = self._processes.start("loadgen", [sys.executable, "-m", "bench.loadgen"], cwd=ROOT,
                                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)

    def call(self, command, timeout):
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else b""
        if not line:
            # Hung or dead: replace it, and report the run as failed rather than wait forever.
            self._processes.stop(self.process, grace=2)
            self._start()
            return {"failed": f"the load generator gave no result within {timeout:.0f} s"}
        return json.loads(line)

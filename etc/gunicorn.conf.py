"""Gunicorn settings for responses-proxy: gevent workers, many open streams per worker.

Every value can be set by a RESPONSES_PROXY_* variable; command-line flags (-b, -w...) still win.
This file must not import the app: the master stays free of gevent's monkey-patching, and each
worker builds its own app (and database engine, and upstream session) after the fork.
"""

import multiprocessing
import os
import resource
import subprocess
import sys


def env(name, default):
    return os.environ.get("RESPONSES_PROXY_" + name) or default


bind = env("BIND", "127.0.0.1:8000")
worker_class = "gevent"
# gevent workers are single-threaded event loops: one per core uses the machine.
workers = int(env("WORKERS", multiprocessing.cpu_count()))
# Each open stream holds one connection; a Codex session keeps one open for minutes.
worker_connections = int(env("WORKER_CONNECTIONS", 10000))
# For gevent workers this is only a liveness check of the event loop, not a request timeout.
timeout = int(env("WORKER_TIMEOUT", 60))
# How long open streams may finish when workers are replaced (HUP, deploy) before they are cut.
graceful_timeout = int(env("GRACEFUL_TIMEOUT", 120))
# Idle seconds a client connection stays open between requests. Short, because a stop or
# reload waits for idle connections too; a proxy in front should close its idle upstream
# connections sooner (etc/nginx.conf.example: keepalive_timeout 4s).
keepalive = int(env("KEEPALIVE", 5))
backlog = int(env("BACKLOG", 4096))
# Each worker listens on a socket of its own (SO_REUSEPORT) and the kernel spreads new
# connections over them. On one shared socket, a burst of connections (an SDK's pool, a
# proxy's keep-alive connections) tends to land on a single worker and stays there.
reuse_port = env("REUSE_PORT", "on").lower() not in ("off", "0", "no", "false")
accesslog = env("ACCESS_LOG", "-")
if accesslog.lower() in ("off", "none", "0"):
    accesslog = None
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms "%(a)s" %({x-request-id}o)s'
errorlog = "-"
loglevel = env("LOG_LEVEL", "info").lower()
proc_name = "responses-proxy"
# gunicornc's control socket lives beside the data, so several instances on one host never collide.
_data_dir = os.path.abspath(env("DATA_DIR", "./var"))
os.makedirs(_data_dir, mode=0o700, exist_ok=True)  # conversations and tokens live there
control_socket = os.path.join(_data_dir, "gunicorn.ctl")
# Each worker writes its metrics to files here (prometheus_client's multiprocess mode, which the
# variable turns on in the workers), and a scrape of /metrics on any worker sums them all.
metrics_dir = os.path.abspath(env("METRICS_DIR", os.path.join(_data_dir, "metrics")))
os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
# Each stream needs two descriptors (client and upstream); raise the soft limit to the hard one.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _soft < _hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))


def on_starting(server):
    # Migrations run once, before any worker forks, in a separate interpreter so that the
    # master never imports the app (nor SQLAlchemy, nor anything gevent should patch first).
    # It prints its own one-line error; gunicorn stops here rather than start workers on a
    # database it cannot use.
    if subprocess.run([sys.executable, "-m", "responses_proxy.store.migrate"]).returncode != 0:
        sys.exit(1)
    # The counts start over with the server (not with a reload, which keeps them): files left by
    # an earlier run would add its workers' counts, and its gauges, to this one's.
    os.makedirs(metrics_dir, mode=0o700, exist_ok=True)
    for name in os.listdir(metrics_dir):
        if name.endswith(".db"):
            os.remove(os.path.join(metrics_dir, name))


def post_worker_init(worker):
    if reuse_port:
        # gunicorn accepts one connection per loop turn when workers share a socket (so that
        # one worker does not take them all). With a socket per worker that is the kernel's
        # job, and accepting in batches lets thousands of streams open quickly while
        # thousands of others are relayed. (gunicorn reads this worker count for that alone.)
        worker.cfg.set("workers", 1)
    services = getattr(worker.wsgi, "extensions", {}).get("responses_proxy")
    if services is not None:
        services.pool.start_maintenance()
        services.metrics.start_sampling()
        # A stopping worker closes its idle WebSockets rather than wait graceful_timeout for them.
        services.websockets.stop_when(lambda: not worker.alive)


def worker_exit(server, worker):
    services = getattr(worker.wsgi, "extensions", {}).get("responses_proxy")
    if services is not None:
        services.recorder.flush()
        services.pool.close()


def child_exit(server, worker):
    # A dead worker's counters stay in the sums: what they counted happened. Its gauges (open
    # streams and WebSockets, which died with it) leave them.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, metrics_dir)

"""``python -m bench``: start the fake upstream, nginx and the gateway, run the scenarios, report.

Targets of one scenario are measured in the same run, interleaved (their order rotates from one
repetition to the next), and each figure is the median over the repetitions.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from bench import payloads, procs, report
from bench.stats import median

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SCENARIOS = {"1": "latency", "2": "throughput", "3": "long_answer", "4": "open_streams", "5": "pool",
             "6": "websocket"}
POOL_ACCOUNTS = 50
CACHE_KEYS = 200  # distinct prompt_cache_key values cycled over in scenario 5


@dataclass
class Settings:
    quick: bool = False
    scenarios: tuple = tuple(SCENARIOS.values())
    reps: int = 5                   # latency
    throughput_reps: int = 3        # throughput, pool, long answer
    open_reps: int = 1              # open streams (each run lasts the whole slow stream)
    latency_requests: int = 200
    concurrency: tuple = (20, 100)
    duration: float = 4.0
    warmup: float = 0.5
    long_requests: int = 10         # CPU is read in 10 ms ticks: enough work per repetition
    streams: tuple = (1000, 5000)
    slow_interval: float = 0.2
    slow_deltas: int = 150
    websockets: tuple = (1000, 5000)  # idle WebSocket connections of scenario 6
    settle: float = 2.0             # seconds before memory is read, once connections are open
    nginx: bool = True
    install: bool = True
    key_limits: bool = True         # the bench key has limits (never reached), checked and counted as usual
    floors: bool = True             # scenario 2 also measures the server stack without the gateway
    out: str = os.path.join(RESULTS, "latest.json")

    @classmethod
    def quick_mode(cls):
        return cls(quick=True, reps=1, throughput_reps=1, latency_requests=10, duration=0.5, warmup=0.2,
                   long_requests=2, streams=(20, 50), slow_interval=0.1, slow_deltas=10, websockets=(20, 50),
                   settle=0.5)


def say(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rotate(items, turn):
    turn %= len(items)
    return items[turn:] + items[:turn]


class Target:
    """Where the load generator sends a request: the fake itself, nginx, or a gateway."""

    def __init__(self, name, port, path, relay=None, key=None, cache_keys=0):
        self.name = name
        self.port = port
        self.path = path
        self.relay = relay  # the Gateway or Nginx whose processes do the relaying
        self.key = key
        self.cache_keys = cache_keys

    def requests(self, model, stream=True):
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        host = f"127.0.0.1:{self.port}"
        keys = [f"bench-thread-{index}" for index in range(self.cache_keys)] or [None]
        return [payloads.request(host, self.path, payloads.body(model, stream, key), headers).decode("latin-1")
                for key in keys]


class Bench:
    def __init__(self, settings, processes, workdir):
        self.s = settings
        self.processes = processes
        self.workdir = workdir
        self.targets = {}
        self.gateways = []
        self.events = []  # worker restarts and other things worth a line in the report
        self.results = {}
        self.busy_at_start = busy()

    # -- set-up ------------------------------------------------------------------------------

    def start(self):
        say(f"work dir {self.workdir}")
        binary, why = procs.ensure_nginx(self.s.install, say) if self.s.nginx else (None, "--no-nginx given")
        self.nginx_binary, self.nginx_missing = binary, why
        self.upstream = procs.FakeUpstream(self.processes, self.s.slow_interval, self.s.slow_deltas)
        self.loadgen = procs.LoadGenerator(self.processes, os.path.join(self.workdir, "loadgen.log"))
        self.targets["direct"] = Target("direct", self.upstream.port, "/codex/responses")
        if binary:
            self.nginx = procs.Nginx(self.processes, binary, self.upstream.port, self.workdir)
            self.targets["nginx"] = Target("nginx", self.nginx.port, "/codex/responses", self.nginx)
        else:
            self.nginx = None
            say(f"nginx column skipped: {why}")

    def start_gateways(self, specs):
        """Start several gateways at once (each migrates and boots in parallel), then provision."""
        started = []
        for name, workers, accounts, cache_keys in specs:
            gateway = procs.Gateway(self.processes, name, self.upstream.url, self.workdir, workers)
            started.append((gateway, accounts, cache_keys))
        for gateway, accounts, cache_keys in started:
            gateway.wait_ready().provision(accounts, self.s.key_limits)
            self.gateways.append(gateway)
            self.targets[gateway.name] = Target(gateway.name, gateway.port, "/v1/responses", gateway, gateway.key,
                                                cache_keys)
            say(f"{gateway.name}: pid {gateway.pid}, workers {gateway.workers()}, {accounts} account(s)")
        for gateway, _, _ in started:
            self.warm(gateway.name)

    def start_floors(self):
        """Scenario 2's floors: the same gunicorn and Flask serving ``bench/floor.py`` (see there)."""
        started = []
        for name, mode in (("floor_flask", "flask"), ("floor_relay", "relay")):
            started.append(procs.Gateway(self.processes, name, self.upstream.url, self.workdir, app="bench.floor:app",
                                         extra_env={"BENCH_FLOOR": mode, "BENCH_FLOOR_UPSTREAM": self.upstream.url}))
        for floor in started:
            floor.wait_ready()
            self.targets[floor.name] = Target(floor.name, floor.port, "/v1/responses", floor)
            say(f"{floor.name}: pid {floor.pid}, workers {floor.workers()}")
            self.warm(floor.name)

    def stop_gateway(self, name):
        target = self.targets.pop(name)
        self.processes.stop(target.relay.process)

    def warm(self, name):
        """First requests of each worker: catalog fetch, database and upstream connections."""
        target = self.targets[name]
        self.closed(name, payloads.SHORT, 4, count=40)
        if target.key:
            self.closed(name, payloads.SHORT, 4, count=8, stream=False)

    # -- one measurement -----------------------------------------------------------------------

    def groups(self, target):
        groups = {"upstream": self.upstream.pid}
        if target.relay is not None:
            groups["relay"] = target.relay.pid
        return groups

    def closed(self, name, model, concurrency, count=None, duration=None, warmup=0.0, stream=True):
        target = self.targets[name]
        command = {"op": "closed_loop", "port": target.port, "requests": target.requests(model, stream),
                   "kind": "sse" if stream else "json", "concurrency": concurrency, "groups": self.groups(target),
                   "timeout": 60.0}
        if count is not None:
            command["count"] = count
            bound = 120 + count * 2.0
        else:
            command.update(duration=duration, warmup=warmup)
            bound = 120 + duration + warmup
        return self.measure(target, command, bound)

    def measure(self, target, command, bound):
        before = target.relay.workers() if isinstance(target.relay, procs.Gateway) else None
        result = self.loadgen.call(command, bound)
        if before is not None:
            after = target.relay.workers()
            if after != before:
                self.events.append(f"{target.name}: worker pids changed during a {command['op']} run "
                                   f"(c={command.get('concurrency', command.get('streams'))}): {before} -> {after}")
        if "failed" in result:
            self.events.append(f"{target.name}: {command['op']} run failed: {result['failed']}")
            say(f"  {target.name}: FAILED {result['failed']}")
        elif result.get("errors"):
            self.events.append(f"{target.name}: errors in a {command['op']} run: {result['errors']} "
                               f"{result.get('error_samples', [])[:2]}")
        return result

    # -- scenarios -------------------------------------------------------------------------------

    def latency(self):
        """1: added latency at concurrency 1, streaming and not."""
        s = self.s
        stream_targets = [name for name in ("direct", "nginx", "gateway") if name in self.targets]
        runs = {"stream": {name: [] for name in stream_targets}, "non_stream": {"direct": [], "gateway": []}}
        for rep in range(s.reps):
            say(f"1 latency: repetition {rep + 1}/{s.reps}")
            for name in rotate(stream_targets, rep):
                runs["stream"][name].append(self.closed(name, payloads.SHORT, 1, count=s.latency_requests))
            for name in rotate(["direct", "gateway"], rep):
                # Non-streaming through the gateway is compared with the same upstream stream read directly.
                runs["non_stream"][name].append(self.closed(name, payloads.SHORT, 1, count=s.latency_requests,
                                                            stream=name == "direct"))
        result = {"requests_per_rep": s.latency_requests, "reps": s.reps}
        for mode, by_target in runs.items():
            metrics = ("ttfb", "first_delta", "total") if mode == "stream" else ("ttfb", "total")
            section = {name: latency_figures(by_target[name], metrics) for name in by_target}
            for name in by_target:
                if name != "direct":
                    section[f"{name}_minus_direct"] = latency_difference(by_target[name], by_target["direct"], metrics)
            section["errors"] = {name: error_total(by_target[name]) for name in by_target}
            result[mode] = section
        return result

    def long_answer(self):
        """3: one stream of 5,000 deltas at a time: events per second, and per CPU second of the relay."""
        s = self.s
        names = [name for name in ("direct", "nginx", "gateway") if name in self.targets]
        runs = {name: [] for name in names}
        for rep in range(s.throughput_reps):
            say(f"3 long answer: repetition {rep + 1}/{s.throughput_reps}")
            for name in rotate(names, rep):
                runs[name].append(self.closed(name, payloads.LONG, 1, count=s.long_requests))
        result = {"deltas": payloads.LONG_DELTAS, "requests_per_rep": s.long_requests, "reps": s.throughput_reps}
        for name, results in runs.items():
            good = [r for r in results if "failed" not in r and r["events"]]
            result[name] = {
                "events_per_request": median([r["events"] / r["ok"] for r in good if r["ok"]]),
                "events_per_s": median([r["events"] / r["seconds"] for r in good]),
                "events_per_cpu_s": median([r["events"] / r["cpu"]["relay"] for r in good
                                            if r["cpu"].get("relay")]),
                "total_ms": median([r["total"]["p50"] for r in good if r.get("total")]),
                "loadgen_cpu_share": median([r["cpu"]["loadgen"] / r["seconds"] for r in good]),
                "errors": error_total(results),
            }
        return result

    def throughput(self, with_plain, with_pool):
        """2 and 5: closed-loop short streams at each concurrency, every target interleaved."""
        s = self.s
        names = [name for name in ("direct", "nginx", "floor_flask", "floor_relay", "gateway") if name in self.targets
                 ] if with_plain else []
        if with_pool:
            names = names if "gateway" in names else names + ["gateway"]
            names.append("gateway_pool")
        by_concurrency = {}
        for concurrency in s.concurrency:
            runs = {name: [] for name in names}
            for rep in range(s.throughput_reps):
                say(f"2/5 throughput c={concurrency}: repetition {rep + 1}/{s.throughput_reps}")
                for name in rotate(names, rep):
                    runs[name].append(self.closed(name, payloads.SHORT, concurrency, duration=s.duration,
                                                  warmup=s.warmup))
            by_concurrency[f"c{concurrency}"] = runs
        plain, pool = {}, {}
        for label, runs in by_concurrency.items():
            figures = {name: throughput_figures(results) for name, results in runs.items()}
            if with_plain:
                section = {name: figures[name] for name in names if name != "gateway_pool"}
                if "floor_relay" in figures:
                    section["gateway_vs_floor_relay"] = ratio(runs, "gateway", "floor_relay")
                section["gateway_vs_direct"] = ratio(runs, "gateway", "direct")
                section["gateway_vs_nginx"] = ratio(runs, "gateway", "nginx")
                section["nginx_vs_direct"] = ratio(runs, "nginx", "direct")
                plain[label] = section
            if with_pool:
                pool[label] = {"gateway_pool": figures["gateway_pool"], "gateway": figures["gateway"],
                               "pool_vs_single": ratio(runs, "gateway_pool", "gateway")}
        if with_plain:
            plain.update(duration_s=s.duration, warmup_s=s.warmup, reps=s.throughput_reps)
            self.results["throughput"] = plain
        if with_pool:
            pool.update(accounts=POOL_ACCOUNTS, prompt_cache_keys=CACHE_KEYS, duration_s=s.duration,
                        reps=s.throughput_reps)
            self.results["pool"] = pool

    def open_streams(self):
        """4: N slow streams open at once, on a gateway with 2 workers."""
        s = self.s
        self.start_gateways([("gateway_2w", 2, 1, 0)])
        names = [name for name in ("direct", "nginx", "gateway_2w") if name in self.targets]
        stream_seconds = s.slow_interval * s.slow_deltas
        result = {"interval_s": s.slow_interval, "deltas": s.slow_deltas, "stream_s": stream_seconds,
                  "workers": 2, "reps": s.open_reps}
        for streams in s.streams:
            runs = {name: [] for name in names}
            for rep in range(s.open_reps):
                for name in rotate(names, rep):
                    say(f"4 open streams N={streams}: {name} (repetition {rep + 1}/{s.open_reps}, "
                        f"~{stream_seconds:.0f} s)")
                    target = self.targets[name]
                    command = {"op": "open_streams", "port": target.port,
                               "requests": target.requests(payloads.SLOW), "streams": streams, "opening": 200,
                               "timeout": stream_seconds + 90, "expected_deltas": s.slow_deltas,
                               "track_delays": True, "groups": self.groups(target),
                               "sample_every": min(0.5, stream_seconds / 4)}
                    runs[name].append(self.measure(target, command, stream_seconds + 300))
            result[f"n{streams}"] = {name: open_stream_figures(results) for name, results in runs.items()}
        self.stop_gateway("gateway_2w")
        return result

    def websocket(self):
        """6: one turn over a WebSocket against the same request by POST (concurrency 1), and the
        memory of idle WebSocket connections, on a gateway of its own with 2 workers."""
        s = self.s
        frame = payloads.response_create(payloads.SHORT).decode("latin-1")

        def websocket_command(target, op, **fields):
            upgrade = payloads.websocket_upgrade(f"127.0.0.1:{target.port}", "/v1/responses",
                                                 {"Authorization": f"Bearer {target.key}"}).decode("latin-1")
            return {"op": op, "port": target.port, "upgrade": upgrade, "frame": frame, "timeout": 60.0,
                    "groups": self.groups(target), **fields}

        self.start_gateways([("gateway_ws", 2, 1, 0)])
        target = self.targets["gateway_ws"]

        runs = {"direct": [], "post": [], "websocket": []}
        for rep in range(s.reps):
            say(f"6 websocket latency: repetition {rep + 1}/{s.reps}")
            for name in rotate(list(runs), rep):
                if name == "websocket":
                    command = websocket_command(target, "websocket_turns", count=s.latency_requests)
                    runs[name].append(self.measure(target, command, 120 + s.latency_requests * 2.0))
                else:
                    runs[name].append(self.closed("direct" if name == "direct" else "gateway_ws", payloads.SHORT, 1,
                                                  count=s.latency_requests))
        metrics = ("ttfb", "first_delta", "total")
        latency = {name: latency_figures(results, metrics) for name, results in runs.items()}
        for name, baseline in (("post", "direct"), ("websocket", "direct"), ("websocket", "post")):
            latency[f"{name}_minus_{baseline}"] = latency_difference(runs[name], runs[baseline], metrics)
        latency["errors"] = {name: error_total(results) for name, results in runs.items()}
        result = {"requests_per_rep": s.latency_requests, "reps": s.reps, "workers": 2, "latency": latency}
        self.stop_gateway("gateway_ws")
        for connections in s.websockets:
            # A fresh gateway each time: memory freed by an earlier run would hide the growth.
            name = f"gateway_ws_{connections}"
            self.start_gateways([(name, 2, 1, 0)])
            target = self.targets[name]
            for _ in range(4):  # on separate connections, so that every worker has served one
                self.measure(target, websocket_command(target, "websocket_turns", count=5), 120)
            say(f"6 websocket: {connections} idle connections")
            command = websocket_command(target, "idle_websockets", connections=connections, opening=200,
                                        settle=s.settle)
            result[f"n{connections}"] = idle_figures(self.measure(target, command, 300 + connections * 0.05))
            self.stop_gateway(name)
        return result

    def run(self):
        selected = set(self.s.scenarios)
        self.start()
        needs_gateway = selected & {"latency", "throughput", "long_answer", "pool"}
        specs = [("gateway", None, 1, 0)] if needs_gateway else []
        if "pool" in selected:
            specs.append(("gateway_pool", None, POOL_ACCOUNTS, CACHE_KEYS))
        if specs:
            self.start_gateways(specs)
        if "throughput" in selected and self.s.floors:
            self.start_floors()
        for name in ("direct", "nginx"):
            if name in self.targets:
                self.closed(name, payloads.SHORT, 4, count=100)
        if "latency" in selected:
            self.results["latency"] = self.latency()
        if "long_answer" in selected:
            self.results["long_answer"] = self.long_answer()
        if selected & {"throughput", "pool"}:
            self.throughput("throughput" in selected, "pool" in selected)
        for name in ("gateway", "gateway_pool", "floor_flask", "floor_relay"):
            if name in self.targets:
                self.stop_gateway(name)
        if "open_streams" in selected:
            self.results["open_streams"] = self.open_streams()
        if "websocket" in selected:
            self.results["websocket"] = self.websocket()
        return self.document()

    def document(self):
        # Everything a gateway logged at WARNING or above, less the migration's normal start-up line.
        logs = {gateway.name: "\n".join(line for line in gateway.log_tail(20000).splitlines()
                                        if line.strip() and not line.startswith("database schema up to date"))
                for gateway in self.gateways}
        return {
            "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "mode": "quick" if self.s.quick else "full",
            "machine": machine(),
            "busy": {"start": self.busy_at_start, "end": busy()},
            "setup": {
                "gateway": "gunicorn -c etc/gunicorn.conf.py wsgi:app -b 127.0.0.1:PORT (gevent workers; default "
                           "worker count, except scenario 4: RESPONSES_PROXY_WORKERS=2), "
                           "RESPONSES_PROXY_ACCESS_LOG=off, RESPONSES_PROXY_LOG_LEVEL=WARNING, SQLite in a temp dir"
                           + ("; the API key has limits it never reaches (rpm, concurrency, daily tokens)"
                              if self.s.key_limits else "; the API key has no limits (--no-key-limits)"),
                "gateway_workers": default_workers(),
                "nginx": procs.nginx_version(self.nginx_binary) if self.nginx_binary else None,
                "nginx_missing": self.nginx_missing,
                "settings": {key: value for key, value in asdict(self.s).items() if key != "out"},
            },
            "scenarios": self.results,
            "events": self.events,
            "gateway_logs": logs,
        }


# -- figures ---------------------------------------------------------------------------------------


def good_runs(results):
    return [r for r in results if "failed" not in r]


def error_total(results):
    total = {}
    for result in results:
        if "failed" in result:
            total["run failed"] = total.get("run failed", 0) + 1
        for reason, count in result.get("errors", {}).items():
            total[reason] = total.get(reason, 0) + count
    return total


def latency_figures(results, metrics):
    results = good_runs(results)
    return {metric: {stat: median([r[metric][stat] for r in results if r.get(metric)]) for stat in ("p50", "p99")}
            for metric in metrics}


def latency_difference(results, baseline, metrics):
    """Per repetition, the percentile minus the baseline's; then the median over repetitions."""
    pairs = [(a, b) for a, b in zip(results, baseline, strict=False) if "failed" not in a and "failed" not in b]
    out = {}
    for metric in metrics:
        # A non-streaming response has no deltas; its baseline for ttfb is the direct stream's ttfb.
        out[metric] = {stat: median([round(a[metric][stat] - b[metric][stat], 3) for a, b in pairs
                                     if a.get(metric) and b.get(metric)]) for stat in ("p50", "p99")}
    return out


def ratio(runs, name, baseline):
    if name not in runs or baseline not in runs:
        return None
    values = [a["rps"] / b["rps"] for a, b in zip(runs[name], runs[baseline], strict=False)
              if "failed" not in a and "failed" not in b and a.get("rps") and b.get("rps")]
    value = median(values)
    return round(value, 4) if value is not None else None


def throughput_figures(results):
    good = [r for r in good_runs(results) if r.get("ok")]
    return {
        "rps": median([r["rps"] for r in good]),
        "relay_cpu_s_per_1000": median([r["cpu"]["relay"] / r["ok"] * 1000 for r in good if "relay" in r["cpu"]]),
        "relay_cpu_share": median([r["cpu"]["relay"] / r["seconds"] for r in good if "relay" in r["cpu"]]),
        "upstream_cpu_share": median([r["cpu"]["upstream"] / r["seconds"] for r in good]),
        "loadgen_cpu_share": median([r["cpu"]["loadgen"] / r["seconds"] for r in good]),
        "total_p50_ms": median([r["total"]["p50"] for r in good if r.get("total")]),
        "total_p99_ms": median([r["total"]["p99"] for r in good if r.get("total")]),
        "requests": sum(r["ok"] for r in good),
        "errors": error_total(results),
    }


def open_stream_figures(results):
    good = good_runs(results)
    figures = {
        "streams": results[0].get("streams") if results else None,
        "ok": median([r["ok"] for r in good]),
        "peak_open": median([r["peak_open"] for r in good]),
        "all_open_after_s": median([r["all_open_after"] for r in good]),
        "delay_p50_ms": median([r["delay"]["p50"] for r in good if r.get("delay")]),
        "delay_p99_ms": median([r["delay"]["p99"] for r in good if r.get("delay")]),
        "delay_max_ms": median([r["delay"]["max"] for r in good if r.get("delay")]),
        # Once all N are open: the ramp (N requests opened while the first ones stream) left out.
        "delay_all_open_p50_ms": median([r["delay_all_open"]["p50"] for r in good if r.get("delay_all_open")]),
        "delay_all_open_p99_ms": median([r["delay_all_open"]["p99"] for r in good if r.get("delay_all_open")]),
        "ttfb_p99_ms": median([r["ttfb"]["p99"] for r in good if r.get("ttfb")]),
        "keepalives": sum(r.get("keepalives", 0) for r in good),
        "errors": error_total(results),
        "error_samples": [sample for r in results for sample in r.get("error_samples", [])][:5],
    }
    if any("relay" in r["rss"] for r in good):
        growth = [(r["rss"]["relay"]["at_peak"] - r["rss"]["relay"]["before"]) / r["peak_open"]
                  for r in good if "relay" in r["rss"] and r["peak_open"]]
        figures["rss_before_mb"] = median([r["rss"]["relay"]["before"] / 2 ** 20 for r in good if "relay" in r["rss"]])
        figures["rss_at_peak_mb"] = median([r["rss"]["relay"]["at_peak"] / 2 ** 20 for r in good
                                            if "relay" in r["rss"]])
        figures["rss_growth_kb_per_stream"] = median([g / 1024 for g in growth])
        figures["relay_cpu_s"] = median([r["cpu"]["relay"] for r in good])
    # What the load generator and the fake upstream took of the same two cores meanwhile.
    figures["harness_cores"] = median([(r["cpu"].get("loadgen", 0) + r["cpu"].get("upstream", 0)) / r["seconds"]
                                       for r in good if r.get("seconds")])
    figures["runs"] = [{key: value for key, value in r.items() if key != "samples"} for r in results]
    return figures


def idle_figures(result):
    """Memory of idle WebSockets: the gateway's RSS growth per open connection, idle and after
    one request on each (which leaves the response's history kept for previous_response_id)."""
    figures = {key: result.get(key) for key in ("connections", "opened", "open_when_idle", "turns_ok", "errors",
                                                 "error_samples", "failed")}
    rss = (result.get("rss") or {}).get("relay")
    opened = result.get("open_when_idle")
    if rss and opened:
        figures.update(
            rss_before_mb=rss["before"] / 2 ** 20, rss_idle_mb=rss["idle"] / 2 ** 20,
            rss_after_turn_mb=rss["after_turn"] / 2 ** 20,
            idle_kb_per_connection=(rss["idle"] - rss["before"]) / opened / 1024,
            after_turn_kb_per_connection=(rss["after_turn"] - rss["before"]) / opened / 1024)
    return figures


def default_workers():
    import multiprocessing

    return multiprocessing.cpu_count()


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for package in ("gunicorn", "gevent", "flask", "requests"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:  # a missing package is reported as such, not fatal
            versions[package] = None
    return {"cpu": model, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "kernel": platform.release(), "packages": versions}


def busy():
    """How contended the CPU is (this machine is shared): load average and pressure stall info."""
    pressure = None
    try:
        with open("/proc/pressure/cpu") as handle:
            fields = dict(item.split("=") for item in handle.readline().split()[1:])
            pressure = {key: float(value) for key, value in fields.items() if key.startswith("avg")}
    except (OSError, ValueError):
        pass
    return {"load_average": [round(value, 2) for value in os.getloadavg()], "cpu_pressure_some_pct": pressure}


# -- command line ----------------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds: tiny N, short runs")
    parser.add_argument("--scenarios", default="all",
                        help="comma-separated numbers or names: 1 latency, 2 throughput, 3 long_answer, "
                             "4 open_streams, 5 pool, 6 websocket (default: all)")
    parser.add_argument("--reps", type=int, help="repetitions of every scenario (default 5 for latency, "
                                                 "3 for throughput/pool/long answer, 1 for open streams)")
    parser.add_argument("--duration", type=float, help="seconds measured per throughput run (default 4)")
    parser.add_argument("--streams", help="open-stream counts of scenario 4, comma-separated (default 1000,5000)")
    parser.add_argument("--slow-deltas", type=int, help="deltas per slow stream (default 150, one per 200 ms)")
    parser.add_argument("--websockets", help="idle WebSocket counts of scenario 6, comma-separated (default 1000,5000)")
    parser.add_argument("--no-nginx", action="store_true", help="skip the nginx column")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install nginx when missing")
    parser.add_argument("--no-key-limits", action="store_true",
                        help="a bench key without limits (by default it has limits it never reaches: rpm, "
                             "concurrency, daily tokens, checked and counted on every request)")
    parser.add_argument("--no-floors", action="store_true",
                        help="skip scenario 2's floors (gunicorn + Flask alone, and a bare urllib3 relay)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "latest.json"), help="where to write the JSON")
    args = parser.parse_args(argv)
    scenarios = tuple(SCENARIOS.values())
    if args.scenarios != "all":
        chosen = [SCENARIOS.get(item.strip(), item.strip()) for item in args.scenarios.split(",") if item.strip()]
        unknown = [item for item in chosen if item not in SCENARIOS.values()]
        if unknown:
            parser.error(f"unknown scenario(s): {', '.join(unknown)}")
        scenarios = tuple(name for name in SCENARIOS.values() if name in chosen)
    settings = Settings.quick_mode() if args.quick else Settings()
    settings.scenarios = scenarios
    settings.nginx = not args.no_nginx
    settings.install = not args.no_install
    settings.out = args.out
    settings.key_limits = not args.no_key_limits
    settings.floors = not args.no_floors
    if args.reps:
        settings.reps = settings.throughput_reps = settings.open_reps = args.reps
    if args.duration:
        settings.duration = args.duration
    if args.streams:
        settings.streams = tuple(int(item) for item in args.streams.split(","))
    if args.slow_deltas:
        settings.slow_deltas = args.slow_deltas
    if args.websockets:
        settings.websockets = tuple(int(item) for item in args.websockets.split(","))
    return settings


def interrupted(signum, _frame):
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def main(argv=None):
    settings = parse_args(sys.argv[1:] if argv is None else argv)
    # Also SIGINT: a shell may start a background job with it ignored, and Ctrl-C must still clean up.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupted)
    processes = procs.Processes()
    workdir = tempfile.mkdtemp(prefix="responses-proxy-bench-")
    started = time.monotonic()
    try:
        document = Bench(settings, processes, workdir).run()
    except KeyboardInterrupt:
        document = None
    finally:
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    if document is None:
        say("interrupted: every process the bench started is stopped")
        sys.exit(130)
    document["elapsed_s"] = round(time.monotonic() - started, 1)
    document["targets"] = report.targets(document)
    text = report.render(document)
    os.makedirs(os.path.dirname(os.path.abspath(settings.out)), exist_ok=True)
    with open(settings.out, "w") as handle:
        json.dump(document, handle, indent=2)
    with open(os.path.splitext(settings.out)[0] + ".txt", "w") as handle:
        handle.write(text)
    print(text)
    say(f"wrote {settings.out}")

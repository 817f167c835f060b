"""``python -m bench.compare [--no-key-limits] before=DIR after=DIR``: CPU per request of the gateway
from different checkouts (``git worktree add DIR REV``), one worker each, interleaved in one run.

Scenario 2's short streams at each concurrency; the order of the checkouts rotates from one
repetition to the next and each figure is the median. One worker per gateway, so that a figure
is one event loop's cost. The fake upstream and the load generator are this checkout's; each
gateway runs its own checkout's code (gunicorn is started in that folder) and database schema.
"""

import argparse
import statistics
import tempfile

from bench import payloads, procs
from bench.run import Bench, Settings


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("checkouts", nargs="+", metavar="NAME=DIR")
    parser.add_argument("--concurrency", default="20,100")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--no-key-limits", action="store_true")
    args = parser.parse_args(argv)
    trees = dict(item.split("=", 1) for item in args.checkouts)
    concurrency = [int(item) for item in args.concurrency.split(",")]
    processes = procs.Processes()
    try:
        settings = Settings(nginx=False, key_limits=not args.no_key_limits)
        bench = Bench(settings, processes, tempfile.mkdtemp(prefix="bench-compare-"))
        bench.start()
        default_root = procs.ROOT
        for name, path in trees.items():
            procs.ROOT = path
            try:
                bench.start_gateways([(name, 1, 1, 0)])
            finally:
                procs.ROOT = default_root
        runs = {(name, c): [] for name in trees for c in concurrency}
        for rep in range(args.reps):
            names = list(trees)
            names = names[rep % len(names):] + names[:rep % len(names)]
            for c in concurrency:
                for name in names:
                    result = bench.closed(name, payloads.SHORT, c, duration=args.duration, warmup=0.5)
                    if result.get("ok"):
                        cpu_ms = result["cpu"]["relay"] / result["ok"] * 1000
                        runs[name, c].append((cpu_ms, result["ok"] / result["seconds"]))
        print(f"key limits {'off' if args.no_key_limits else 'on'}; 1 worker each; median of {args.reps}")
        print(f"{'':10s} {'c':>4s} {'CPU ms/request':>15s} {'requests/s':>11s}")
        for (name, c), values in runs.items():
            if values:
                print(f"{name:10s} {c:4d} {statistics.median(v for v, _ in values):15.3f} "
                      f"{statistics.median(r for _, r in values):11,.0f}")
    finally:
        processes.stop_all()


if __name__ == "__main__":
    main()

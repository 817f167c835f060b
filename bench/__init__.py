"""Load benchmarks of the gateway against the floor (direct) and a plain reverse proxy (nginx).

``python -m bench`` (or ``make bench``) runs every scenario in one go, prints a table and writes
the same figures to ``bench/results/latest.json``; ``python -m bench --help`` lists the options.
The fake upstream (``bench.upstream``) and the load generator (``bench.loadgen``) are separate
processes built to stay far from being the bottleneck: the report shows their own ceiling.
"""

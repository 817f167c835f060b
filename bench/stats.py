"""Percentiles and medians, shared by the load generator and the report."""

import math


def percentile(sorted_values, q):
    """Nearest-rank percentile (``q`` in 0..100) of an already sorted list; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary(values):
    """p50/p90/p99/max/mean of a list of seconds, in milliseconds."""
    values = sorted(values)
    if not values:
        return None

    def ms(seconds):
        return round(seconds * 1000, 3)

    return {"n": len(values), "p50": ms(percentile(values, 50)), "p90": ms(percentile(values, 90)),
            "p99": ms(percentile(values, 99)), "max": ms(values[-1]), "mean": ms(sum(values) / len(values))}


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


class Histogram:
    """Delays at 0.1 ms resolution up to 10 s (beyond: counted in the last bucket), mergeable."""

    RESOLUTION = 10_000  # buckets per second
    SIZE = 100_000

    def __init__(self):
        self.counts = [0] * (self.SIZE + 1)
        self.n = 0
        self.max = 0.0

    def add(self, seconds):
        index = int(seconds * self.RESOLUTION)
        self.counts[index if 0 <= index < self.SIZE else (0 if index < 0 else self.SIZE)] += 1
        self.n += 1
        if seconds > self.max:
            self.max = seconds

    def percentile_ms(self, q):
        if not self.n:
            return None
        target = max(1, math.ceil(q / 100 * self.n))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= target:
                return round((index + 1) * 1000 / self.RESOLUTION, 3)  # upper edge of the bucket
        return None

    def summary(self):
        if not self.n:
            return None
        return {"n": self.n, "p50": self.percentile_ms(50), "p90": self.percentile_ms(90),
                "p99": self.percentile_ms(99), "p999": self.percentile_ms(99.9), "max": round(self.max * 1000, 3)}

"""Per-key limits: the counters' arithmetic on SQLite AND PostgreSQL, the 429 and the headers."""

import threading
import time

import pytest

from responses_proxy.keys.limits import KeyLimits, duration, rate_headers, refusal
from responses_proxy.store import limits as store
from responses_proxy.store import usage as usage_store
from tests.helpers import built_usage_row

LEASE = 10.0
# 01:00 UTC, at the start of a lease period: the arithmetic below crosses neither a day nor a
# period by accident.
NOW = 20833 * 86400.0 + 3600.0


def admit(engine, now=NOW, key_id="key_a", **limits):
    return store.admit(engine, key_id, now, LEASE, **limits)


def key(rpm=None, concurrency=None, daily_tokens=None, key_id="key_a"):
    return {"id": key_id, "name": "k", "allowed_models": None, "rpm": rpm, "concurrency": concurrency,
            "daily_tokens": daily_tokens}


def finish(engine, tokens, now=NOW, key_id="key_a"):
    """A request of the key finished with ``tokens``: its usage row is written."""
    usage_store.insert_many(engine, [built_usage_row(now, key_id, total=tokens)])


def counts(engine, now=NOW, key_id="key_a"):
    return store.counts(store.read(engine, key_id), now, LEASE)


# --- requests per minute ---------------------------------------------------------------------------

def test_requests_per_minute_is_a_bucket_that_refills_continuously(engine):
    assert [admit(engine, rpm=3) is not None for _ in range(4)] == [True, True, True, False]
    # One request's share of the minute (20 s) later, exactly one more fits.
    assert admit(engine, NOW + 19.9, rpm=3) is None
    assert admit(engine, NOW + 20, rpm=3) is not None
    assert admit(engine, NOW + 20, rpm=3) is None
    # After a whole idle minute the bucket is full again.
    assert [admit(engine, NOW + 80, rpm=3) is not None for _ in range(4)] == [True, True, True, False]


def test_a_refused_request_changes_nothing(engine):
    admit(engine, rpm=1, concurrency=5, daily_tokens=100)
    before = store.read(engine, "key_a")
    assert admit(engine, rpm=1, concurrency=5, daily_tokens=100) is None
    assert store.read(engine, "key_a") == before


def test_keys_are_counted_apart(engine):
    assert admit(engine, rpm=1) is not None
    assert admit(engine, key_id="key_b", rpm=1) is not None
    assert admit(engine, rpm=1) is None


# --- requests in flight ------------------------------------------------------------------------------

def test_in_flight_counts_until_released(engine):
    first = admit(engine, concurrency=2)
    admit(engine, concurrency=2)
    assert admit(engine, concurrency=2) is None
    assert counts(engine).in_flight == 2

    store.release(engine, "key_a", first.lease_period, NOW + 1, LEASE)

    assert counts(engine, NOW + 1).in_flight == 1
    assert admit(engine, NOW + 1, concurrency=2) is not None
    assert admit(engine, NOW + 1, concurrency=2) is None


def test_a_count_nobody_renews_expires_within_two_leases(engine):
    admit(engine, concurrency=1)  # a worker that then died: never renewed, never released
    assert admit(engine, NOW + LEASE, concurrency=1) is None, "still counted in the next lease period"
    assert admit(engine, NOW + 2 * LEASE, concurrency=1) is not None


def test_a_renewed_request_stays_counted_and_is_released_from_its_new_period(engine):
    row = admit(engine, concurrency=1)
    period = row.lease_period
    for lease in range(1, 5):
        period = store.renew(engine, "key_a", period, 1, NOW + lease * LEASE, LEASE)
        assert period == store.period_of(NOW + lease * LEASE, LEASE)
        assert admit(engine, NOW + lease * LEASE + 1, concurrency=1) is None, f"lease {lease}"

    store.release(engine, "key_a", period, NOW + 4 * LEASE + 2, LEASE)

    assert admit(engine, NOW + 4 * LEASE + 2, concurrency=1) is not None


def test_a_late_release_of_an_expired_request_takes_nothing_from_live_ones(engine):
    stale = admit(engine, concurrency=2)
    live = admit(engine, NOW + 3 * LEASE, concurrency=2)
    store.release(engine, "key_a", stale.lease_period, NOW + 3 * LEASE, LEASE)
    assert counts(engine, NOW + 3 * LEASE).in_flight == 1
    store.release(engine, "key_a", live.lease_period, NOW + 3 * LEASE, LEASE)
    assert counts(engine, NOW + 3 * LEASE).in_flight == 0


def test_a_clock_behind_the_row_never_moves_it_back(engine):
    admit(engine, NOW + LEASE, concurrency=3)
    # Another host, a lease period behind, admits and releases: the row stays in its period.
    late = admit(engine, NOW, concurrency=3)
    assert late.lease_period == store.period_of(NOW + LEASE, LEASE)
    assert counts(engine, NOW + LEASE).in_flight == 2
    store.release(engine, "key_a", late.lease_period, NOW, LEASE)
    assert counts(engine, NOW + LEASE).in_flight == 1


def test_renewing_after_a_reset_counts_nothing(engine):
    row = admit(engine, concurrency=1)
    store.reset(engine, "key_a")
    assert store.renew(engine, "key_a", row.lease_period, 1, NOW + LEASE, LEASE) is None
    assert admit(engine, NOW + LEASE, concurrency=1) is not None


def test_concurrent_admissions_never_exceed_the_limit(engine):
    """Many workers asking at once for the last slots: exactly the limit gets in."""
    admitted = []
    start = threading.Barrier(12)

    def ask():
        start.wait()
        admitted.append(admit(engine, time.time(), concurrency=5) is not None)

    threads = [threading.Thread(target=ask) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(admitted) == [False] * 7 + [True] * 5


# --- tokens per day ---------------------------------------------------------------------------------

def test_the_daily_budget_counts_finished_tokens_of_the_utc_day(engine):
    for _ in range(2):
        row = admit(engine, daily_tokens=30)
        assert row is not None
        finish(engine, 19)
    assert counts(engine).tokens == 38
    assert admit(engine, daily_tokens=30) is None

    midnight = (store.day_of(NOW) + 1) * store.DAY
    assert admit(engine, midnight - 0.001, daily_tokens=30) is None
    assert admit(engine, midnight, daily_tokens=30) is not None
    assert counts(engine, midnight).tokens == 0


def test_a_request_admitted_under_the_budget_counts_all_its_tokens(engine):
    admit(engine, daily_tokens=30)
    finish(engine, 29)
    assert admit(engine, daily_tokens=30) is not None, "29 < 30: one more request"
    finish(engine, 500)
    assert counts(engine).tokens == 529
    assert admit(engine, daily_tokens=30) is None


def test_tokens_count_on_the_day_their_request_finished(engine):
    midnight = (store.day_of(NOW) + 1) * store.DAY
    finish(engine, 10, NOW)
    finish(engine, 20, midnight + 5)
    finish(engine, 40, NOW + 60)  # a row of the day before, written late: that day is over
    assert counts(engine, midnight + 10).tokens == 20


def test_tokens_count_for_every_key_so_a_budget_set_later_knows_the_day(engine):
    usage_store.insert_many(engine, [
        built_usage_row(NOW, "key_a", total=10), built_usage_row(NOW, "key_b", total=7),
        built_usage_row(NOW, "key_a", total=15), built_usage_row(NOW, "key_a", status=502, total=0),
        built_usage_row(NOW, "key_c", total=0)])
    assert (counts(engine).tokens, counts(engine, key_id="key_b").tokens) == (25, 7)
    assert admit(engine, daily_tokens=25) is None
    store.reset(engine, "key_a")
    assert admit(engine, daily_tokens=25) is not None


# --- the answer the client sees ------------------------------------------------------------------

@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (-3, "0s"), (0.0004, "0s"), (0.02, "20ms"), (0.9994, "999ms"), (1, "1s"), (8.64, "8.64s"),
    (60, "1m0s"), (360, "6m0s"), (3725.5, "1h2m5.5s"), (86399, "23h59m59s"),
])
def test_durations_are_written_as_openai_does(seconds, text):
    assert duration(seconds) == text


def test_headers_of_an_admitted_request():
    midnight = (store.day_of(NOW) + 1) * store.DAY
    counts = store.Counts(in_flight=0, tokens=19, bucket_full_at=NOW + 40)
    assert rate_headers(key(rpm=3, daily_tokens=30), counts, NOW) == {
        "x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "40s", "x-ratelimit-limit-tokens": "30",
        "x-ratelimit-remaining-tokens": "11", "x-ratelimit-reset-tokens": duration(midnight - NOW)}
    assert rate_headers(key(concurrency=2), counts, NOW) == {}


@pytest.mark.parametrize("limits, counts, message, retry_after", [
    pytest.param({"rpm": 3}, store.Counts(0, 0, NOW + 60),
                 "Rate limit reached for this API key on requests per min (RPM): Limit 3, Used 3, Requested 1. "
                 "Please try again in 20s.", "20", id="rpm"),
    pytest.param({"concurrency": 2}, store.Counts(2, 0, None),
                 "Rate limit reached for this API key on concurrent requests: Limit 2, In flight 2. "
                 "Please try again when one of them has finished.", "1", id="concurrency"),
    pytest.param({"daily_tokens": 30}, store.Counts(0, 38, None),
                 "Rate limit reached for this API key on tokens per day (TPD): Limit 30, Used 38. "
                 "Please try again in 23h0m0s.", "82800", id="tokens"),
    pytest.param({"rpm": 3, "concurrency": 2, "daily_tokens": 30}, store.Counts(2, 38, NOW + 60),
                 "Rate limit reached for this API key on tokens per day (TPD): Limit 30, Used 38. "
                 "Please try again in 23h0m0s.", "82800", id="the-longest-wait-names-it"),
])
def test_the_429(limits, counts, message, retry_after):
    error = refusal(key(**limits), counts, NOW)

    assert error.status == 429
    assert error.body() == {"error": {"message": message, "type": "rate_limit_exceeded",
                                      "code": "rate_limit_exceeded", "param": None}}
    assert error.headers["Retry-After"] == retry_after
    if "rpm" in limits:
        assert error.headers["x-ratelimit-remaining-requests"] == "0"
    if "daily_tokens" in limits:
        assert error.headers["x-ratelimit-remaining-tokens"] == "0"


def test_no_refusal_while_there_is_room():
    assert refusal(key(rpm=3, concurrency=2, daily_tokens=30), store.Counts(1, 29, NOW + 40), NOW) is None


# --- the service: leases renewed while requests run --------------------------------------------------

def test_a_key_without_limits_costs_no_statement(engine):
    limits = KeyLimits(engine, LEASE)
    assert limits.admit(key()) is None
    assert store.read_all(engine) == {}


def test_running_requests_keep_their_slot_across_lease_periods(engine):
    limits = KeyLimits(engine, 0.5)
    held = limits.admit(key(concurrency=1))
    deadline = time.monotonic() + 2.5  # five lease periods
    while time.monotonic() < deadline:
        with pytest.raises(Exception) as refused:
            limits.admit(key(concurrency=1))
        assert refused.value.code == "rate_limit_exceeded"
        time.sleep(0.1)

    held.release()

    again = limits.admit(key(concurrency=1))
    assert again is not None
    again.release()


def test_a_request_is_released_once(engine):
    limits = KeyLimits(engine, LEASE)
    first, second = limits.admit(key(concurrency=2)), limits.admit(key(concurrency=2))
    first.release()
    first.release()
    assert store.counts(store.read(engine, "key_a"), time.time(), LEASE).in_flight == 1
    second.release()

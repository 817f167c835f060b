"""The exchange settles its usage row, in-flight slot and turn once, on every path."""

import pytest
from sqlalchemy.exc import OperationalError

from responses_proxy.catalog.service import Catalog
from responses_proxy.errors import ApiError, DatabaseUnavailable, UpstreamError
from responses_proxy.metrics.service import Metrics
from responses_proxy.relay import SETTLE_FAILED, ClientGone
from responses_proxy.responses.exchange import Exchange
from responses_proxy.responses.service import settle


class Recorder:
    def __init__(self):
        self.rows = []

    def record(self, row):
        self.rows.append(dict(row))


class Slot:
    def __init__(self):
        self.released = 0

    def release(self):
        self.released += 1


class Turn:
    def __init__(self, fail_commit=False, fail_abort=False):
        self.commits, self.aborts = [], 0
        self.fail_commit, self.fail_abort = fail_commit, fail_abort

    def commit(self, items, account_id):
        self.commits.append((items, account_id))
        if isinstance(self.fail_commit, Exception):
            raise self.fail_commit
        if self.fail_commit:
            raise RuntimeError("database went away")

    def abort(self):
        self.aborts += 1
        if self.fail_abort:
            raise RuntimeError("database went away")


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def exchange(recorder):
    exchange = Exchange(recorder, "req_1", "key_1", metrics=Metrics(None, Catalog(None, None, 300)))
    exchange.describe({"model": "gpt-5.2", "stream": True})
    return exchange


def test_finish_settles_everything_once(exchange, recorder):
    slot, turn = Slot(), Turn()
    exchange.hold(slot)
    exchange.turn = turn
    exchange.finish(200, usage={"total_tokens": 19})
    exchange.finish(500, "server_error")
    exchange.fail(RuntimeError("late"))

    assert slot.released == 1
    assert turn.aborts == 1 and turn.commits == []  # never settled: nothing is added
    [row] = recorder.rows
    assert (row["status"], row["error_code"], row["total_tokens"], row["model"], row["stream"]) == \
        (200, None, 19, "gpt-5.2", True)


def test_holding_a_new_slot_releases_the_previous_one(exchange):
    first, second = Slot(), Slot()
    exchange.hold(first)
    exchange.hold(second)
    assert (first.released, second.released) == (1, 0)
    exchange.finish(200)
    assert (first.released, second.released) == (1, 1)


@pytest.mark.parametrize("error, status, code", [
    (UpstreamError("The upstream failed."), 502, "upstream_error"),
    (ApiError("Bad.", status=400, code="invalid_value"), 400, "invalid_value"),
    (ClientGone(), 499, "client_closed"),
    (GeneratorExit(), 499, "client_closed"),
    (UnicodeEncodeError("latin-1", "日本", 0, 1, "ordinal not in range"), 500, "server_error"),
    (KeyError("output"), 500, "server_error"),
    (OperationalError("SELECT 1", {}, ConnectionError("server closed the connection")), 503,
     "database_unavailable"),
])
def test_every_exception_finishes_with_its_status(exchange, recorder, error, status, code):
    slot, turn = Slot(), Turn()
    exchange.hold(slot)
    exchange.turn = turn
    exchange.fail(error)
    assert slot.released == 1 and turn.aborts == 1
    [row] = recorder.rows
    assert (row["status"], row["error_code"]) == (status, code)


def test_a_committed_turn_is_not_aborted_at_the_end(exchange):
    turn = Turn()
    exchange.turn = turn
    exchange.row["account_id"] = "acc_1"
    exchange.settle_turn(True, [{"type": "message"}])
    exchange.finish(200)
    # Stored as the items of the account that answered: only it can read their encrypted content.
    assert turn.commits == [([{"type": "message"}], "acc_1")] and turn.aborts == 0


def test_an_unfinished_answer_aborts_the_turn_when_settled(exchange):
    turn = Turn()
    exchange.turn = turn
    exchange.settle_turn(False, [])
    exchange.finish(200, "server_error")
    assert turn.commits == [] and turn.aborts == 1


def test_a_commit_that_fails_raises_and_is_not_retried(exchange):
    turn = Turn(fail_commit=True)
    exchange.turn = turn
    with pytest.raises(RuntimeError):
        exchange.settle_turn(True, [])
    exchange.finish(500, "server_error")
    assert len(turn.commits) == 1 and turn.aborts == 0


def test_the_usage_row_is_written_even_when_releasing_fails(exchange, recorder):
    exchange.turn = Turn(fail_abort=True)
    slot = Slot()
    exchange.hold(slot)
    exchange.finish(502, "upstream_error")
    assert slot.released == 1
    assert [(row["status"], row["error_code"]) for row in recorder.rows] == [(502, "upstream_error")]


class Finished:
    """A tracker whose answer finished."""

    def completed(self):
        return True

    def output_items(self):
        return [{"type": "message"}]


@pytest.mark.parametrize("failure, error, status", [
    (RuntimeError("a bug"), ApiError, 500),
    (OperationalError("INSERT", {}, ConnectionError("server closed the connection")), DatabaseUnavailable, 503),
])
def test_an_answer_that_cannot_be_stored_says_so_with_the_status_of_the_cause(exchange, failure, error, status):
    exchange.turn = Turn(fail_commit=failure)
    with pytest.raises(error) as raised:
        settle(exchange, raising=True)(Finished())
    assert (raised.value.status, raised.value.message) == (status, SETTLE_FAILED)

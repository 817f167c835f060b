"""Conversation storage and the item budget, without a server."""

import json
import time

import orjson
import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from responses_proxy.conversations import service
from responses_proxy.conversations.service import TurnLeases, within_budget
from responses_proxy.store import conversations as store
from responses_proxy.store import keys as key_store
from responses_proxy.store import make_engine, migrate
from tests.helpers import make_app


def rows(*turns):
    """Stored rows from turns written as lists of (type, call_id, text)."""
    out = []
    for number, items in enumerate(turns):
        for kind, call_id, text in items:
            out.append((number, kind, call_id, orjson.dumps({"type": kind, "call_id": call_id, "text": text})))
    return out


def msg(text):
    return ("message", None, text)


@pytest.mark.parametrize("stored, budget, kept, dropped", [
    (rows([msg("a"), msg("b")], [msg("c"), msg("d")]), 10, ["a", "b", "c", "d"], 0),
    (rows([msg("a"), msg("b")], [msg("c"), msg("d")]), 2, ["c", "d"], 2),
    # A turn is never split: 3 would fit "b c d" but "b" belongs with "a".
    (rows([msg("a"), msg("b")], [msg("c"), msg("d")]), 3, ["c", "d"], 2),
    (rows([msg("a")], [msg("b")], [msg("c")]), 0, [], 3),
    # The call is dropped, so its output (next turn) goes too.
    (rows([msg("q"), ("function_call", "c1", "call")], [("function_call_output", "c1", "out"), msg("answer")],
          [msg("later")]), 3, ["later"], 4),
    # The call and its output are both kept.
    (rows([msg("old")], [msg("q"), ("function_call", "c1", "call")], [("function_call_output", "c1", "out")]),
     3, ["q", "call", "out"], 1),
    # Outputs of custom tools are paired with their calls too.
    (rows([("custom_tool_call", "c9", "call")], [("custom_tool_call_output", "c9", "out"), msg("x")]),
     2, [], 3),
], ids=["fits", "drops-oldest-turn", "whole-turns-only", "zero-budget", "orphan-output-dropped",
        "pair-kept", "custom-tool-pair"])
def test_within_budget(stored, budget, kept, dropped):
    items, left_out = within_budget(stored, budget)
    assert [item["text"] for item in items] == kept
    assert left_out == dropped


@pytest.fixture
def big_conversation_app(tmp_path, upstream):
    app = make_app(tmp_path, upstream.base_url, CONVERSATION_MAX_ITEMS=10_000)
    yield app
    app.extensions["responses_proxy"].engine.dispose()


def test_a_conversation_of_thousands_of_items_loads_in_one_query(big_conversation_app, upstream, account):
    services = big_conversation_app.extensions["responses_proxy"]
    key = key_store.create(services.engine, "big")
    row, _ = store.create(services.engine, key["id"])
    for turn in range(50):
        store.append(services.engine, row["id"], [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"q{turn}.{n}"}]}
            for n in range(100)])

    statements = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if "conversation_items" in statement:
            statements.append(statement)

    event.listen(services.engine, "before_cursor_execute", count)
    try:
        reply = big_conversation_app.test_client().post(
            "/v1/responses", headers={"Authorization": f"Bearer {key['key']}"},
            json={"model": "gpt-5.2", "input": "one more", "conversation": row["id"]})
    finally:
        event.remove(services.engine, "before_cursor_execute", count)

    assert reply.status_code == 200, reply.get_data(as_text=True)
    reads = [statement for statement in statements if statement.lstrip().upper().startswith("SELECT")]
    writes = [statement for statement in statements if statement.lstrip().upper().startswith("INSERT")]
    assert len(reads) == 1, reads
    assert len(writes) == 1  # the new input and the answer, in one multi-row insert
    sent = upstream.response_requests()[-1]["body"]["input"]
    assert len(sent) == 5001
    assert sent[0]["content"][0]["text"] == "q0.0" and sent[-1]["content"][0]["text"] == "one more"
    assert reply.headers["X-Conversation-Items-Dropped"] == "0"


def test_items_are_stored_once_each(engine):
    row, _ = store.create(engine, "key_x", items=[{"role": "user", "content": "a"}])
    for turn in range(3):
        store.append(engine, row["id"], [{"role": "user", "content": f"t{turn}"}])
    assert store.count_items(engine, row["id"]) == 4
    loaded = store.load_history(engine, row["id"], 100)
    assert [json.loads(data)["content"] for _, _, _, data, _ in loaded] == ["a", "t0", "t1", "t2"]
    assert [turn for turn, *_ in loaded] == [0, 1, 2, 3]


def item(kind, text, **fields):
    return {"type": kind, "text": text, **fields}


def loaded_texts(rows):
    return [json.loads(data)["text"] for _, _, _, data, _ in rows]


def test_the_history_starts_at_the_latest_compaction_and_reads_only_the_budget(engine):
    row, _ = store.create(engine, "key_x", items=[item("message", "added"), item("reasoning", "r0")])
    store.append(engine, row["id"], [item("message", "q1"), item("reasoning", "r1")], account_id="acc_a")
    store.append(engine, row["id"], [item("message", "q2"), item("compaction", "c2")], account_id="acc_a")
    store.append(engine, row["id"], [item("message", "q3"), item("reasoning", "r3")], account_id="acc_b")
    store.append(engine, row["id"], [item("compaction", "c4")], account_id="acc_b")
    store.append(engine, row["id"], [item("message", "q5"), item("message", "a5")], account_id="acc_b")

    # The compaction item stands for everything before it.
    history = store.load_history(engine, row["id"], 100)
    assert loaded_texts(history) == ["c4", "q5", "a5"]
    assert [(kind, account) for _, kind, _, _, account in history] == [
        ("compaction", "acc_b"), ("message", "acc_b"), ("message", "acc_b")]
    assert store.count_history(engine, row["id"]) == 3
    # At most the budget, and one more: the oldest turn read may be cut.
    assert loaded_texts(store.load_history(engine, row["id"], 1)) == ["q5", "a5"]

    # As another account can read it: from the latest compaction it issued, without the
    # reasoning and compaction items of others; items of no known issuer are readable, unless not.
    assert loaded_texts(store.load_history(engine, row["id"], 100, readable_by="acc_a")) == [
        "c2", "q3", "q5", "a5"]
    assert store.count_history(engine, row["id"], readable_by="acc_a") == 4
    assert loaded_texts(store.load_history(engine, row["id"], 100, readable_by="acc_c")) == [
        "added", "r0", "q1", "q2", "q3", "q5", "a5"]
    assert loaded_texts(store.load_history(engine, row["id"], 100, readable_by="acc_c",
                                           unknown_readable=False)) == ["added", "q1", "q2", "q3", "q5", "a5"]


def test_the_history_is_one_query_that_reads_no_row_before_it(engine):
    """The newest rows only, found by index: the query plan never scans the conversation."""
    row, _ = store.create(engine, "key_x")
    for turn in range(30):
        store.append(engine, row["id"], [item("message", f"q{turn}"), item("compaction" if turn == 20 else
                                                                            "message", f"a{turn}")])
    statements = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "conversation_items" in statement:
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        history = store.load_history(engine, row["id"], 4)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert loaded_texts(history) == ["a27", "q28", "a28", "q29", "a29"]
    [(statement, parameters)] = statements
    assert "LIMIT" in statement.upper()
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            plan = " ".join(str(step[-1]) for step in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement,
                                                                          tuple(parameters)).all())
        assert "SCAN" not in plan.upper().replace("SCAN CONSTANT", ""), plan


def test_turn_lease_is_exclusive_and_released(engine):
    row, _ = store.create(engine, "key_x")
    assert store.acquire_turn(engine, row["id"], "one", 60)
    assert not store.acquire_turn(engine, row["id"], "two", 60)
    store.append(engine, row["id"], [{"role": "user", "content": "x"}], release_owner="one")
    assert store.acquire_turn(engine, row["id"], "two", 60)
    store.release_turn(engine, row["id"], "two")
    assert store.acquire_turn(engine, row["id"], "three", -1)  # an expired lease is taken over
    assert store.acquire_turn(engine, row["id"], "four", 60)


def test_a_release_the_database_refused_is_retried_until_it_goes_through(tmp_path, monkeypatch):
    engine = make_engine("sqlite:///" + str(tmp_path / "test.db"))
    try:
        migrate.upgrade(engine)
        row, _ = store.create(engine, "key_x")
        leases = TurnLeases(engine, 60)
        assert store.acquire_turn(engine, row["id"], "dying", 60)
        leases.hold("dying", row["id"])
        release = store.release_turn
        refusals = []

        def down_for_a_while(*args):
            if len(refusals) < 2:
                refusals.append(args)
                raise OperationalError("UPDATE", {}, ConnectionError("server closed the connection"))
            return release(*args)

        monkeypatch.setattr(service.store, "release_turn", down_for_a_while)
        leases.release("dying", row["id"])  # the database is down: no error, the turn ended anyway
        assert not store.acquire_turn(engine, row["id"], "next", 60)
        deadline = time.monotonic() + 3 * service.RELEASE_RETRY_SECONDS + 2
        while not store.acquire_turn(engine, row["id"], "next", 60):
            assert time.monotonic() < deadline, "still held a lease (60 s) after the database came back"
            time.sleep(0.05)
        assert len(refusals) == 2
    finally:
        engine.dispose()

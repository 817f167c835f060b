"""What a request sheds when its thread moves to another account (``responses.threads``),
without a server: the gateway end to end is in tests/e2e/test_moved_threads_e2e.py."""

import orjson
import pytest

from responses_proxy.items import account_bound, without_account_bound
from responses_proxy.responses.threads import Outbound, item_mark, names_unreadable_items, turn_state_of
from responses_proxy.upstream.client import upstream_headers

USER = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
REASONING = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB-x"}
COMPACTION = {"type": "compaction", "id": "cmp_1", "encrypted_content": "gAAAAB-y"}
STATE = "x-codex-turn-state"


class Exchange:
    def __init__(self):
        self.decisions = []

    def decide(self, event, **fields):
        self.decisions.append({"event": event, **fields})


@pytest.mark.parametrize("item, bound", [
    (REASONING, True),
    ({"type": "reasoning", "id": "rs_1", "summary": []}, True),  # only an id: looked up, and not found
    ({"type": "reasoning", "summary": [], "encrypted_content": "gAAAAB-x"}, True),
    ({"type": "reasoning", "summary": [{"type": "summary_text", "text": "a summary alone"}]}, False),
    (COMPACTION, True),
    ({"type": "compaction", "id": "cmp_2"}, True),
    ({"type": "compaction_trigger"}, False),
    (USER, False),
    ({"type": "function_call", "id": "fc_1", "call_id": "c", "name": "f", "arguments": "{}"}, False),
])
def test_which_items_only_their_account_can_read(item, bound):
    assert account_bound(item) is bound


def test_without_account_bound_copies_only_when_something_goes():
    items = [USER, USER]
    assert without_account_bound(items) == (items, 0) and without_account_bound(items)[0] is items
    assert without_account_bound([USER, REASONING, COMPACTION, USER]) == ([USER, USER], 2)


def body(*items, **fields):
    return {"model": "gpt-5.2", "input": [USER, *items], "stream": True, "store": False, **fields}


def test_a_thread_that_stays_sends_the_bytes_serialized_once():
    outbound = Outbound(body(REASONING), {"session_id": "s"})
    exchange = Exchange()
    prepared = outbound.prepare(exchange, "acc_a")
    assert prepared.payload is outbound.payload and prepared.headers is outbound.headers
    assert exchange.decisions == []


def test_a_moved_thread_drops_what_its_previous_account_issued():
    outbound = Outbound(body(REASONING, COMPACTION, USER), {})
    exchange = Exchange()
    prepared = outbound.prepare(exchange, "acc_b", moved_from="acc_a")
    assert orjson.loads(prepared.payload)["input"] == [USER, USER]
    assert exchange.decisions == [{"event": "moved", "account": "acc_b", "dropped": 2}]
    assert outbound.body["input"] == [USER, REASONING, COMPACTION, USER]  # the request itself is left alone
    # Nothing to drop: the same bytes.
    assert Outbound(body(), {}).prepare(Exchange(), "acc_b", moved_from="acc_a").payload == orjson.dumps(body())


def test_a_moved_thread_remembers_where_the_previous_accounts_items_end():
    later = {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAAAB-z"}
    moved = Outbound(body(REASONING, COMPACTION, USER), {}).prepare(Exchange(), "acc_b", moved_from="acc_a")
    assert moved.boundary == item_mark(COMPACTION)

    # Its client goes on sending them, followed by what the new account issued.
    outbound = Outbound(body(REASONING, COMPACTION, USER, later, USER), {})
    exchange = Exchange()
    prepared = outbound.prepare(exchange, "acc_b", boundary=moved.boundary)
    assert orjson.loads(prepared.payload)["input"] == [USER, USER, later, USER] and prepared.boundary is None
    assert exchange.decisions == [{"event": "dropped_earlier", "account": "acc_b", "dropped": 2}]
    # After a compaction the marked item is gone: what remains is the new account's.
    after = Outbound(body(later, USER), {})
    assert after.prepare(Exchange(), "acc_b", boundary=moved.boundary).payload is after.payload
    # An item without an id is marked by its content.
    assert item_mark({"type": "reasoning", "encrypted_content": "gAAAAB-z"}) != item_mark(later)


def test_a_turn_state_goes_to_its_issuer_only():
    request = body(client_metadata={STATE: "ts_1", "other": "kept"})
    outbound = Outbound(request, {"session_id": "s"}, turn_state="ts_1", owner="acc_a")
    exchange = Exchange()
    home = outbound.prepare(exchange, "acc_a")
    assert home.headers == {"session_id": "s", STATE: "ts_1"} and home.payload is outbound.payload
    elsewhere = outbound.prepare(exchange, "acc_b")
    assert elsewhere.headers == {"session_id": "s"}
    assert orjson.loads(elsewhere.payload)["client_metadata"] == {"other": "kept"}
    assert exchange.decisions == [{"event": "turn_state_dropped", "account": "acc_b", "issuer": "acc_a"}]
    # Of an unknown issuer: to no account.
    unknown = Outbound(body(), {}, turn_state="ts_2", owner=None).prepare(Exchange(), "acc_a")
    assert unknown.headers == {}


def test_a_refusal_of_unreadable_items_gives_one_request_without_them():
    outbound = Outbound(body(REASONING, USER), {"session_id": "s"})
    exchange = Exchange()
    prepared = outbound.prepare(exchange, "acc_a")
    retry = outbound.readable_only(exchange, "acc_a", prepared, 400)
    assert orjson.loads(retry.payload)["input"] == [USER, USER] and retry.headers == {"session_id": "s"}
    assert retry.boundary == item_mark(REASONING)  # the thread's next requests leave it out
    assert exchange.decisions == [{"event": "retry", "account": "acc_a", "status": 400, "dropped": 1}]
    assert outbound.readable_only(exchange, "acc_a", retry, 400) is None  # nothing left to leave out


@pytest.mark.parametrize("status, error, unreadable", [
    (400, {"message": "The encrypted content for item rs_1 could not be verified. Reason: Encrypted content could "
                      "not be decrypted or parsed.", "type": "invalid_request_error",
           "code": "invalid_encrypted_content"}, True),
    (400, {"message": "The encrypted content gAAA...DQ== could not be verified.", "code": None}, True),
    (404, {"message": "Item with id 'rs_1' not found. Items are not persisted when `store` is set to false. Try "
                      "again with `store` set to true, or remove this item from your input.", "param": "input"}, True),
    (400, {"message": "Invalid 'input[2].content'.", "code": "invalid_value"}, False),
    (404, {"message": "Not Found"}, False),
    (403, {"message": "The encrypted content for item rs_1 could not be verified."}, False),
])
def test_which_refusals_are_about_items_the_account_cannot_read(status, error, unreadable):
    assert names_unreadable_items(status, orjson.dumps({"error": error})) is unreadable


def test_the_turn_state_is_the_header_else_what_codex_echoes_in_client_metadata():
    assert turn_state_of({STATE: "ts_h"}, body(client_metadata={STATE: "ts_m"})) == "ts_h"
    assert turn_state_of({}, body(client_metadata={STATE: "ts_m"})) == "ts_m"
    assert turn_state_of({}, body(client_metadata="x")) is None and turn_state_of({}, body()) is None


def test_a_clients_turn_state_header_is_not_forwarded_as_such():
    headers = upstream_headers({"X-Codex-Turn-State": "ts_1", "x-codex-turn-metadata": "{}", "Accept": "*/*"}, "k")
    assert headers == {"x-codex-turn-metadata": "{}", "session_id": "k"}

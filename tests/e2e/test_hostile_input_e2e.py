"""Limits and shapes a hostile or broken client could send, through gunicorn.

Each is refused with a 400 envelope naming the param before anything reaches the upstream or
the database, the same on SQLite and PostgreSQL; none is a 500 or a silent change.
"""

import pytest
import requests
from sqlalchemy import select

from responses_proxy.items import MAX_JSON_DEPTH
from responses_proxy.store.tables import accounts, conversation_items, usage
from tests.e2e.helpers import error_of, query, request_id, wait_for
from tests.fake_upstream import Script
from tests.helpers import Gateway
from tests.test_hostile_input import STORING_ROUTES, UNSTORABLE, message


def post(gateway, path, body, timeout=30):
    return requests.post(gateway.url + path, headers={"Authorization": f"Bearer {gateway.key}"}, json=body,
                         timeout=timeout)


def refused(reply, param):
    assert reply.status_code == 400, reply.text
    error = error_of(reply)
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_request_error",
                                                              param), error
    return error


def test_a_conversation_id_followed_by_a_newline_starts_no_conversation(e2e, upstream):
    reply = post(e2e, "/v1/responses", {"model": "gpt-5.2", "input": "hi", "conversation": "conv_trailing\n"})
    assert "conv_" in refused(reply, "conversation")["message"]
    assert upstream.response_requests() == []
    assert requests.get(e2e.url + "/v1/conversations/conv_trailing%0A", timeout=10,
                        headers={"Authorization": f"Bearer {e2e.key}"}).status_code == 404


def codex_history(count):
    """``count`` input items as a long Codex session sends them (messages, calls, outputs)."""
    kinds = [
        lambda n: {"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"q{n}"}]},
        lambda n: {"type": "function_call", "call_id": f"call_{n}", "name": "shell", "arguments": "{}"},
        lambda n: {"type": "function_call_output", "call_id": f"call_{n - 1}", "output": "ok"},
    ]
    return [kinds[n % 3](n) for n in range(count)]


def test_input_items_are_bounded_by_the_default_setting(e2e, upstream):
    refusal = post(e2e, "/v1/responses", {"model": "gpt-5.2", "input": codex_history(20001)})
    assert refused(refusal, "input")["message"] == (
        "'input' holds 20001 items; this gateway accepts at most 20000 per request.")
    assert upstream.response_requests() == []

    accepted = post(e2e, "/v1/responses", {"model": "gpt-5.2", "input": codex_history(20000)})
    assert accepted.status_code == 200, accepted.text
    assert len(upstream.response_requests()[0]["body"]["input"]) == 20000


def nested(depth):
    value = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_conversation_items_nested_too_deeply_are_400_not_500(e2e, upstream):
    deep = {"type": "reasoning", "summary": nested(300)}
    created = post(e2e, "/v1/conversations", {"items": [deep]})
    assert "too deeply" in refused(created, "items")["message"]

    conversation = post(e2e, "/v1/conversations", {}).json()["id"]
    added = post(e2e, f"/v1/conversations/{conversation}/items", {"items": [deep]})
    refused(added, "items")


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000])
def test_a_body_nested_deeper_than_can_be_forwarded_is_400_not_500(e2e, upstream, depth):
    levels = depth - 1  # the body itself is the first
    raw = b'{"model": "gpt-5.2", "input": "hi", "client_metadata": ' + b"[" * levels + b"]" * levels + b"}"
    reply = requests.post(e2e.url + "/v1/responses", data=raw, timeout=30, headers={
        "Authorization": f"Bearer {e2e.key}", "Content-Type": "application/json"})
    assert "too deeply" in refused(reply, None)["message"]
    assert upstream.response_requests() == []


def test_a_conversation_turn_larger_than_the_item_budget_is_refused_not_sent(e2e, upstream):
    """CONVERSATION_MAX_ITEMS (default 1000) bounds what a turn sends, history included."""
    turn = {"model": "gpt-5.2", "input": codex_history(1001), "conversation": "conv_budget_e2e"}
    assert "at most 1000" in refused(post(e2e, "/v1/responses", turn), "input")["message"]
    assert upstream.response_requests() == []

    accepted = post(e2e, "/v1/responses", {**turn, "input": codex_history(1000)})
    assert accepted.status_code == 200, accepted.text
    assert accepted.headers["X-Conversation-Items-Dropped"] == "0"


@pytest.mark.parametrize("key", ["thread\r\nX-Injected: 1", " leading-space"], ids=["crlf", "leading-space"])
def test_a_prompt_cache_key_that_is_no_name_is_400_and_no_account_is_blamed(e2e, upstream, key):
    """Before, these became an upstream header unchecked: http.client refused them, which was
    taken for an unreachable upstream, so the request failed over and blamed every account."""
    reply = post(e2e, "/v1/responses", {"model": "gpt-5.2", "input": "hi", "prompt_cache_key": key})
    assert "printable characters" in refused(reply, "prompt_cache_key")["message"]
    assert upstream.response_requests() == []
    assert [row["last_error"] for row in query(e2e, select(accounts.c.last_error))] == [None]


def test_a_prompt_cache_key_is_scoped_to_its_api_key_upstream(e2e, upstream):
    """Any printable name works ("日本" used to be a 500 that leaked the account's slot), and
    two keys using the same name never share an upstream cache session."""
    other = e2e.create_key()
    for key in (e2e.key, other):
        reply = requests.post(e2e.url + "/v1/responses", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                              json={"model": "gpt-5.2", "input": "hi", "prompt_cache_key": "\u65e5\u672c"})
        assert reply.status_code == 200, reply.text
    first, second = upstream.response_requests()
    assert first["headers"]["session_id"] == first["body"]["prompt_cache_key"]
    assert second["headers"]["session_id"] == second["body"]["prompt_cache_key"]
    assert first["body"]["prompt_cache_key"] != second["body"]["prompt_cache_key"]
    assert [row["last_error"] for row in query(e2e, select(accounts.c.last_error))] == [None]


@pytest.fixture(params=["sqlite", "postgresql"])
def stored_gateway(request, upstream, tmp_path_factory):
    """A gateway of its own on each database: what it stores is what is tested."""
    env = {}
    if request.param == "postgresql":
        env["RESPONSES_PROXY_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    server = Gateway(tmp_path_factory.mktemp("stored"), upstream.base_url, env=env)
    with server.serving(last_refresh="2099-01-01T00:00:00Z"):
        yield server


def store_items(gateway, route, items, name):
    if route == "turn":
        return post(gateway, "/v1/responses", {"model": "gpt-5.2", "input": items, "conversation": f"conv_{name}"})
    if route == "create":
        return post(gateway, "/v1/conversations", {"items": items})
    conversation = post(gateway, "/v1/conversations", {}).json()["id"]
    return post(gateway, f"/v1/conversations/{conversation}/items", {"items": items})


def usage_rows(gateway, rid):
    """(status, model) of the usage rows of the request ``rid``, on the gateway's database."""
    engine = gateway.engine()
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(
                select(usage.c.status, usage.c.model).where(usage.c.request_id == rid))]
    finally:
        engine.dispose()


def test_what_would_not_fit_the_database_is_refused_alike_on_sqlite_and_postgresql(stored_gateway, upstream):
    """One gateway per database for all of it: starting one is what takes time."""
    for route in STORING_ROUTES:
        name = "input" if route == "turn" else "items"
        for case, items, where, fragment in UNSTORABLE:
            reply = store_items(stored_gateway, route, items, f"{route}-{case}")
            assert fragment in refused(reply, name + where)["message"], (route, case)
    assert upstream.response_requests() == []
    engine = stored_gateway.engine()
    try:
        with engine.connect() as conn:
            assert conn.execute(select(conversation_items.c.item_id)).all() == []
    finally:
        engine.dispose()

    longest = [message("m" * 100), {"type": "t" * 64},
               {"type": "function_call", "call_id": "c" * 200, "name": "f", "arguments": "{}"}]
    for route in STORING_ROUTES:
        longest[0] = message(route + "m" * (100 - len(route)))
        reply = store_items(stored_gateway, route, longest, f"longest-{route}")
        assert reply.status_code == 200, (route, reply.text)
    assert len(upstream.response_requests()) == 1  # the turn

    # The usage row's model column: the request is refused, and still recorded.
    for model in ("m" * 201, "gpt-5.2\x00"):
        rid = request_id()
        reply = requests.post(stored_gateway.url + "/v1/responses", json={"model": model, "input": "hi"}, timeout=30,
                              headers={"Authorization": f"Bearer {stored_gateway.key}", "X-Request-Id": rid})
        assert "at most 200 characters" in refused(reply, "model")["message"]
        assert wait_for(lambda rid=rid: usage_rows(stored_gateway, rid)) == [(400, None)]


def test_what_the_upstream_answers_is_stored_alike_on_sqlite_and_postgresql(stored_gateway, upstream):
    """Output items are not the client's to fix: a type or call id longer than their index
    columns, or holding a NUL, is stored (whole, in the item) on both databases, and the turn
    completes instead of failing at its commit."""
    odd_type = "custom_" + "t" * 90
    call_id = "call_" + "c" * 300 + "\x00"
    script = Script("gpt-5.2").start().message(["ok"])
    item = {"id": "ct_" + "i" * 120, "type": odd_type, "call_id": call_id, "input": "x"}
    script.items.append(item)
    upstream.push({"events": script.completed().events()})
    reply = post(stored_gateway, "/v1/responses", {"model": "gpt-5.2", "input": "hi", "conversation": "conv_odd1"})
    assert reply.status_code == 200, reply.text
    listed = requests.get(stored_gateway.url + "/v1/conversations/conv_odd1/items?order=asc", timeout=10,
                          headers={"Authorization": f"Bearer {stored_gateway.key}"}).json()["data"]
    assert [entry["type"] for entry in listed] == ["message", "message", odd_type]
    assert listed[2]["call_id"] == call_id and listed[2]["id"] != item["id"]  # an id of the gateway's
    upstream.reset()
    assert post(stored_gateway, "/v1/responses", {"model": "gpt-5.2", "input": "again",
                                                  "conversation": "conv_odd1"}).status_code == 200
    sent = upstream.response_requests()[0]["body"]["input"]
    assert [entry["type"] for entry in sent] == ["message", "message", odd_type, "message"]

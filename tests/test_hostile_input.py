"""What one request may carry: limits and shapes a hostile or broken client could send.

Each refusal is a 400 envelope naming the param, given before anything reaches the upstream
(an account is configured, so a request that slipped through WOULD reach the fake upstream)
or the database.
"""

import json
import uuid

import orjson
import pytest

from responses_proxy.errors import InvalidRequest
from responses_proxy.items import MAX_JSON_DEPTH, to_json
from responses_proxy.store import conversations as conversation_store
from responses_proxy.store import keys as key_store
from responses_proxy.store.accounts import upsert
from responses_proxy.upstream.credentials import parse_auth_json
from tests.fake_upstream import auth_json
from tests.helpers import make_app

URL = "/v1/responses"
MODEL = "gpt-5.2"
INVALID = "invalid_request_error"


@pytest.fixture(scope="module")
def hostile_app(fake_upstream, tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("hostile"), fake_upstream.base_url)
    services = app.extensions["responses_proxy"]
    upsert(services.engine, services.cipher, parse_auth_json(json.dumps(auth_json()).encode()))
    app.auth = {"Authorization": f"Bearer {key_store.create(services.engine, 'hostile')['key']}"}
    yield app
    services.engine.dispose()


@pytest.fixture
def send(hostile_app, upstream):
    """POST a JSON body to ``path`` of the module's app (fake upstream reset); returns the reply."""
    client = hostile_app.test_client()

    def post(body, path=URL):
        return client.post(path, json=body, headers=hostile_app.auth)

    return post


def refused(reply, param):
    """The error of a 400 reply about ``param``."""
    assert reply.status_code == 400, reply.get_data(as_text=True)
    error = reply.get_json()["error"]
    assert (error["type"], error["code"], error["param"]) == (INVALID, INVALID, param), error
    return error


@pytest.mark.parametrize("conversation", ["conv_abc\n", {"id": "conv_abc\n"}, "conv_abc\r\n"])
def test_a_conversation_id_followed_by_a_newline_is_refused(send, upstream, conversation):
    error = refused(send({"model": MODEL, "input": "hi", "conversation": conversation}), "conversation")
    assert error["message"] == ("Invalid value for 'conversation': expected 'conv_' followed by letters, "
                                "digits, '_' or '-'.")
    assert upstream.response_requests() == []


@pytest.fixture
def small_limits(tmp_path, upstream):
    """An app (one account, one key) that accepts at most 3 input items per request."""
    app = make_app(tmp_path, upstream.base_url, MAX_INPUT_ITEMS=3)
    services = app.extensions["responses_proxy"]
    upsert(services.engine, services.cipher, parse_auth_json(json.dumps(auth_json()).encode()))
    headers = {"Authorization": f"Bearer {key_store.create(services.engine, 'small')['key']}"}
    client = app.test_client()
    yield lambda body, path=URL: client.post(path, json=body, headers=headers)
    services.engine.dispose()


def user_items(count):
    return [{"role": "user", "content": f"item {number}"} for number in range(count)]


@pytest.mark.parametrize("field, path", [("input", URL), ("messages", URL), ("items", "/v1/conversations")])
def test_more_input_items_than_the_setting_allows_is_400(small_limits, upstream, field, path):
    body = {field: user_items(4)} if path != URL else {"model": MODEL, field: user_items(4)}

    error = refused(small_limits(body, path), field)

    assert error["message"] == f"'{field}' holds 4 items; this gateway accepts at most 3 per request."
    assert upstream.response_requests() == []


@pytest.mark.parametrize("field, path", [("input", URL), ("messages", URL), ("items", "/v1/conversations")])
def test_as_many_input_items_as_the_setting_allows_are_accepted(small_limits, upstream, field, path):
    body = {field: user_items(3)} if path != URL else {"model": MODEL, field: user_items(3)}
    reply = small_limits(body, path)
    assert reply.status_code == 200, reply.get_data(as_text=True)


def test_the_item_count_is_checked_before_the_items(small_limits, upstream):
    """A huge array is refused for its size before any of its items is looked at."""
    error = refused(small_limits({"model": MODEL, "input": ["not an item"] * 4}), "input")
    assert "holds 4 items" in error["message"]


def nested(depth):
    """An array nested ``depth`` levels deep (itself included)."""
    value = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_to_json_writes_what_orjson_can():
    value = {"input": nested(MAX_JSON_DEPTH - 1)}
    assert to_json(value) == orjson.dumps(value)


def test_to_json_refuses_deeper_nesting_as_the_clients_400():
    with pytest.raises(InvalidRequest) as caught:
        to_json({"input": nested(MAX_JSON_DEPTH)}, "input")
    assert (caught.value.status, caught.value.param) == (400, "input")
    assert caught.value.message == ("The request nests arrays and objects too deeply to be forwarded upstream "
                                    f"(at most {MAX_JSON_DEPTH} levels).")


def reasoning_item(depth):
    """An item nested ``depth`` levels deep (itself included)."""
    return {"type": "reasoning", "summary": nested(depth - 1)}


def conversation_count(app):
    with app.extensions["responses_proxy"].engine.connect() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM conversations").scalar()


def test_conversation_items_too_deep_to_send_later_are_refused(hostile_app, send, upstream):
    """A stored item goes upstream two levels down (body, input) on every later turn."""
    before = conversation_count(hostile_app)
    error = refused(send({"items": [reasoning_item(MAX_JSON_DEPTH - 1)]}, "/v1/conversations"), "items")
    assert "too deeply" in error["message"]
    assert conversation_count(hostile_app) == before

    created = send({"items": [reasoning_item(MAX_JSON_DEPTH - 2)]}, "/v1/conversations")
    assert created.status_code == 200, created.get_data(as_text=True)
    conversation = created.get_json()["id"]

    path = f"/v1/conversations/{conversation}/items"
    refused(send({"items": [reasoning_item(MAX_JSON_DEPTH - 1)]}, path), "items")
    engine = hostile_app.extensions["responses_proxy"].engine
    assert conversation_store.count_items(engine, conversation) == 1

    reply = send({"model": MODEL, "input": "next", "conversation": conversation})
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert upstream.response_requests()[0]["body"]["input"][0] == reasoning_item(MAX_JSON_DEPTH - 2)


@pytest.fixture
def small_budget(tmp_path, upstream):
    """An app (one account, one key) whose conversation turns send at most 3 items."""
    app = make_app(tmp_path, upstream.base_url, CONVERSATION_MAX_ITEMS=3)
    services = app.extensions["responses_proxy"]
    upsert(services.engine, services.cipher, parse_auth_json(json.dumps(auth_json()).encode()))
    headers = {"Authorization": f"Bearer {key_store.create(services.engine, 'budget')['key']}"}
    client = app.test_client()
    app.send = lambda body, path=URL: client.post(path, json=body, headers=headers)
    yield app
    services.engine.dispose()


def test_a_turn_whose_input_alone_exceeds_the_conversation_budget_is_400(small_budget, upstream):
    conversation = "conv_over_budget"
    error = refused(small_budget.send({"model": MODEL, "input": user_items(4), "conversation": conversation}),
                    "input")
    assert error["message"] == "The input holds 4 items; a conversation turn sends at most 3, its history included."
    assert upstream.response_requests() == []
    engine = small_budget.extensions["responses_proxy"].engine
    assert conversation_store.get(engine, conversation) is None

    reply = small_budget.send({"model": MODEL, "input": user_items(3), "conversation": conversation})
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert len(upstream.response_requests()[0]["body"]["input"]) == 3


PROMPT_CACHE_KEY_ERROR = ("Invalid value for 'prompt_cache_key': expected at most 256 printable characters, "
                          "not starting or ending with a space.")


@pytest.mark.parametrize("key", [
    "thread\r\nX-Injected: 1", "thread\n", "thread\r", " leading-space", "trailing-space ", "tab\there", "nul\x00",
    "del\x7f", "line\u2028separator", "x" * 257,
], ids=["crlf", "lf", "cr", "leading-space", "trailing-space", "tab", "nul", "del", "line-separator", "257-chars"])
def test_a_prompt_cache_key_that_is_no_header_value_is_refused(send, upstream, key):
    error = refused(send({"model": MODEL, "input": "hi", "prompt_cache_key": key}), "prompt_cache_key")
    assert error["message"] == PROMPT_CACHE_KEY_ERROR
    assert upstream.response_requests() == []


@pytest.mark.parametrize("key", ["0199a0b1-7c3e-7d2a-9f4e-5b6c7d8e9f00", "user 42 / session:7", "x" * 256, "~!",
                                 "caf\u00e9", "\u65e5\u672c"])
def test_a_printable_prompt_cache_key_goes_upstream_scoped_to_the_api_key(send, upstream, key):
    """Any printable name is accepted; upstream it becomes a UUID derived from it and the API
    key, a valid header value whatever the client sent (http.client refused "日本")."""
    reply = send({"model": MODEL, "input": "hi", "prompt_cache_key": key})
    assert reply.status_code == 200, reply.get_data(as_text=True)
    [sent] = upstream.response_requests()
    scoped = sent["headers"]["session_id"]
    assert str(uuid.UUID(scoped)) == scoped and scoped != key
    assert sent["body"]["prompt_cache_key"] == scoped


def message(item_id=None, text="hi"):
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return item if item_id is None else {"id": item_id, **item}


# (case id, items, the param after the array's name, what the message says)
UNSTORABLE = [
    ("id-over-100", [message("m" * 101)], "[0].id", "an item id is at most 100 characters"),
    ("type-over-64", [message(), {"type": "t" * 65}], "[1].type", "an item type is at most 64 characters"),
    ("call-id-over-200", [{"type": "function_call_output", "call_id": "c" * 201, "output": "ok"}], "[0].call_id",
     "a call id is at most 200 characters"),
    ("tool-call-id-over-200", [{"role": "tool", "tool_call_id": "c" * 201, "content": "ok"}], "[0].tool_call_id",
     "a call id is at most 200 characters"),
    ("nul-in-id", [message("msg\x00")], "[0].id", "NUL characters cannot be stored"),
    ("nul-in-type", [{"type": "reason\x00ing", "summary": []}], "[0].type", "NUL characters cannot be stored"),
    ("nul-in-call-id", [{"type": "function_call", "call_id": "c\x00", "name": "f", "arguments": "{}"}],
     "[0].call_id", "NUL characters cannot be stored"),
    ("slash-in-id", [message("msg/1")], "[0].id", "an item id cannot contain '/'"),
    ("duplicate-ids", [message("msg_1"), message("msg_2"), message("msg_1")], "[2].id",
     "[0] has the same id; the items of one request need ids of their own"),
]
STORING_ROUTES = ["turn", "create", "add"]


def store_items(send, route, items, name):
    """Send ``items`` to be stored by ``route``; returns (reply, the array's param name)."""
    if route == "turn":
        return send({"model": MODEL, "input": items, "conversation": f"conv_{name}"}), "input"
    if route == "create":
        return send({"items": items}, "/v1/conversations"), "items"
    conversation = send({}, "/v1/conversations").get_json()["id"]
    return send({"items": items}, f"/v1/conversations/{conversation}/items"), "items"


@pytest.mark.parametrize("route", STORING_ROUTES)
@pytest.mark.parametrize("case, items, where, fragment", UNSTORABLE, ids=[case[0] for case in UNSTORABLE])
def test_what_a_conversation_could_not_store_or_address_is_refused(send, upstream, route, case, items, where,
                                                                   fragment):
    reply, name = store_items(send, route, items, f"{route}-{case}")
    error = refused(reply, name + where)
    assert fragment in error["message"] and f"'{name}{where}'" in error["message"], error
    assert upstream.response_requests() == []


@pytest.mark.parametrize("route", STORING_ROUTES)
def test_the_longest_storable_values_are_stored_and_addressable(hostile_app, send, upstream, route):
    item_id = route + "m" * (100 - len(route))  # the module's app is shared: one id per route
    items = [message(item_id), {"type": "t" * 64},
             {"type": "function_call", "call_id": "c" * 200, "name": "f", "arguments": "{}"}]
    reply, _ = store_items(send, route, items, f"longest-{route}")
    assert reply.status_code == 200, reply.get_data(as_text=True)
    engine = hostile_app.extensions["responses_proxy"].engine
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT conversation_id FROM conversation_items WHERE item_id = ?",
                                      (item_id,)).scalars().all()
    [conversation] = stored
    fetched = hostile_app.test_client().get(f"/v1/conversations/{conversation}/items/{item_id}",
                                            headers=hostile_app.auth)
    assert fetched.status_code == 200 and fetched.get_json()["id"] == item_id


def test_without_a_conversation_nothing_is_stored_so_long_ids_go_upstream(send, upstream):
    reply = send({"model": MODEL, "input": [message("m" * 101), message("m" * 101)]})
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert [item["id"] for item in upstream.response_requests()[0]["body"]["input"]] == ["m" * 101] * 2


@pytest.mark.parametrize("messages, param", [
    ([{"role": "tool", "tool_call_id": "c" * 201, "content": "ok"}], "messages[0].tool_call_id"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"id": "call_1", "function": {"name": "f"}}, {"id": "c\x00", "function": {"name": "g"}}]}],
     "messages[1].tool_calls[1].id"),
], ids=["tool-call-id", "tool-calls-id"])
def test_the_call_ids_of_chat_messages_a_turn_stores_are_checked_too(send, upstream, messages, param):
    refused(send({"model": MODEL, "messages": messages, "conversation": "conv_chat_calls"}), param)
    assert upstream.response_requests() == []


@pytest.mark.parametrize("model", ["m" * 201, "gpt-5.2\x00"], ids=["201-chars", "nul"])
def test_a_model_name_the_usage_row_cannot_hold_is_refused(send, upstream, model):
    error = refused(send({"model": model, "input": "hi"}), "model")
    assert error["message"] == "Invalid value for 'model': a model name is at most 200 characters, without NUL."


def test_a_model_name_of_200_characters_is_looked_up_in_the_catalog(send, upstream):
    reply = send({"model": "m" * 200, "input": "hi"})
    assert reply.status_code == 400 and reply.get_json()["error"]["code"] == "model_not_found"

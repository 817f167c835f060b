"""What one request may carry: limits and shapes a hostile or broken client could send.

Each refusal is a 400 envelope naming the param, given before anything reaches the upstream
(an account is configured, so a request that slipped through WOULD reach the fake upstream)
or the database.
"""

import json

import orjson
import pytest

from responses_proxy.errors import InvalidRequest
from responses_proxy.items import MAX_JSON_DEPTH, to_json
from responses_proxy.store import conversations as conversation_store
from responses_proxy.store import keys as key_store
from responses_proxy.store.accounts import upsert
from responses_proxy.upstream.credentials import parse_auth_json
from tests.conftest import make_app
from tests.fake_upstream import auth_json

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


PROMPT_CACHE_KEY_ERROR = ("Invalid value for 'prompt_cache_key': expected at most 256 printable ASCII characters, "
                          "not starting or ending with a space.")


@pytest.mark.parametrize("key", [
    "thread\r\nX-Injected: 1", "thread\n", "thread\r", " leading-space", "trailing-space ", "tab\there", "nul\x00",
    "del\x7f", "caf\u00e9", "\u65e5\u672c", "x" * 257,
], ids=["crlf", "lf", "cr", "leading-space", "trailing-space", "tab", "nul", "del", "latin-1", "cjk", "257-chars"])
def test_a_prompt_cache_key_that_is_no_header_value_is_refused(send, upstream, key):
    error = refused(send({"model": MODEL, "input": "hi", "prompt_cache_key": key}), "prompt_cache_key")
    assert error["message"] == PROMPT_CACHE_KEY_ERROR
    assert upstream.response_requests() == []


@pytest.mark.parametrize("key", ["0199a0b1-7c3e-7d2a-9f4e-5b6c7d8e9f00", "user 42 / session:7", "x" * 256, "~!"])
def test_a_printable_ascii_prompt_cache_key_goes_upstream_as_the_session_id(send, upstream, key):
    reply = send({"model": MODEL, "input": "hi", "prompt_cache_key": key})
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert upstream.response_requests()[0]["headers"]["session_id"] == key

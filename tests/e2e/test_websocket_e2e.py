"""The Responses API over a WebSocket (``GET /v1/responses`` upgraded), through gunicorn.

Each ``response.create`` message goes the POST's way (validation, normalization, pool, relay,
usage row); the answer comes back one event per text message; ``previous_response_id``
continues the connection's latest response with the whole history sent upstream;
``generate: false`` is answered without an upstream request.
"""

import json
import re
import signal
import time

import pytest
import requests
from wsproto.extensions import PerMessageDeflate

from responses_proxy.store import keys as key_store
from tests.e2e.helpers import (
    ACCOUNT,
    auth,
    error_of,
    post,
    request_id,
    usage_row,
    wait_for,
)
from tests.fake_upstream import Script
from tests.helpers import Gateway, unique

MODEL = "gpt-5.2"
TOOL = {"type": "function", "name": "exec_command", "description": "Run a command",
        "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}
# What the Codex CLI's built-in provider adds to its message items; unknown to the API document.
PASSTHROUGH = {"internal_chat_message_metadata_passthrough": {"turn_id": "t-1", "source": {"kind": "user"}}}


def user(text, **extra):
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}], **extra}


def sent_text(payload):
    """An event's JSON exactly as the fake upstream writes it on its ``data:`` line."""
    return json.dumps(payload, separators=(",", ":"))


def log_lines(gateway, **match):
    """The gateway's JSON log lines whose fields include ``match``."""
    lines = []
    for line in gateway.log(None).splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if all(entry.get(name) == value for name, value in match.items()):
                lines.append(entry)
    return lines


def test_each_event_is_one_text_message_as_the_upstream_sent_it(connect, e2e, upstream):
    script = Script(MODEL).start().reasoning().message(["Hel", "lo \"there\"\n", " é 世界"]).function_call(
        "lookup", ['{"q":', '"x"}'], call_id="call_ws").completed()
    upstream.push({"events": script.events()}, account=ACCOUNT)
    ws = connect(e2e)
    ws.send({"type": "response.create", "model": MODEL, "input": "hi"})
    texts = [ws.receive_text() for _ in script.events()]
    assert texts == [sent_text(payload) for _, payload in script.events()]
    [sent] = upstream.response_requests()
    assert sent["body"]["stream"] is True and sent["body"]["store"] is False
    assert sent["body"]["input"] == [user("hi")]


def test_a_tool_round_trip_continues_with_previous_response_id(connect, e2e, upstream):
    call = Script(MODEL).start().reasoning().function_call(
        "exec_command", ['{"cmd":', '"ls"}'], call_id="call_1").completed()
    answer = Script(MODEL).start().message(["Two ", "files."]).completed()
    upstream.push({"events": call.events()}, account=ACCOUNT)
    upstream.push({"events": answer.events()}, account=ACCOUNT)
    ws = connect(e2e)
    question = user("List the files")

    first = ws.request({"model": MODEL, "input": [question], "tools": [TOOL], "stream": True})
    assert first[-1]["type"] == "response.completed"
    assert first[-1]["response"]["id"] == call.response_id
    output = {"type": "function_call_output", "call_id": "call_1", "output": "a.txt\nb.txt"}
    second = ws.request({"model": MODEL, "previous_response_id": call.response_id, "input": [output],
                         "tools": [TOOL]})
    assert [message["type"] for message in second] == [name for name, _ in answer.events()]
    assert second[-1]["response"]["output"] == answer.items

    first_sent, second_sent = upstream.response_requests()
    assert first_sent["body"]["input"] == [question]
    # The upstream is told everything: the question, the model's reasoning and call, the output.
    assert second_sent["body"]["input"] == [question, *call.items, output]
    assert "previous_response_id" not in second_sent["body"]
    assert second_sent["body"]["tools"] == [TOOL]


def test_a_chain_of_responses_sends_the_whole_history_each_time(connect, e2e, upstream):
    ws = connect(e2e)
    history = []
    previous = None
    for number in range(4):
        question = user(f"question {number}", **(PASSTHROUGH if number == 0 else {}))
        body = {"model": MODEL, "input": [question]}
        if previous:
            body["previous_response_id"] = previous
        completed = ws.request(body)[-1]
        assert completed["type"] == "response.completed", completed
        history.append(question)
        assert upstream.response_requests()[-1]["body"]["input"] == history
        history += completed["response"]["output"]
        previous = completed["response"]["id"]
    assert len(upstream.response_requests()) == 4
    # A string input continues the history too, as one user message.
    ws.request({"model": MODEL, "previous_response_id": previous, "input": "and a string"})
    assert upstream.response_requests()[-1]["body"]["input"] == [*history, user("and a string")]


def test_a_prewarm_costs_no_upstream_request_and_the_turn_continues_from_it(connect, e2e, upstream):
    connection = request_id()
    developer = {"type": "message", "role": "developer",
                 "content": [{"type": "input_text", "text": "You are a coding agent."}], **PASSTHROUGH}
    ws = connect(e2e, headers={"X-Request-Id": connection})

    prewarm = ws.request({"model": MODEL, "input": [developer], "tools": [TOOL], "stream": True, "store": False,
                          "generate": False})
    assert [message["type"] for message in prewarm] == ["response.created", "response.completed"]
    created, completed = (message["response"] for message in prewarm)
    assert re.fullmatch(r"resp_[0-9a-f]{48}", completed["id"]) and created["id"] == completed["id"]
    assert completed["status"] == "completed" and completed["output"] == [] and completed["model"] == MODEL
    assert "usage" not in completed  # nothing was used, and Codex reads a usage only when present
    assert upstream.response_requests() == []

    turn = ws.request({"model": MODEL, "previous_response_id": completed["id"], "input": [user("hello")],
                       "tools": [TOOL]})
    assert turn[-1]["type"] == "response.completed"
    [sent] = upstream.response_requests()
    assert sent["body"]["input"] == [developer, user("hello")]

    warm, real = usage_row(e2e, connection + ".1"), usage_row(e2e, connection + ".2")
    assert warm["status"] == 200 and warm["account_id"] is None and warm["model"] == MODEL
    assert (warm["input_tokens"], warm["output_tokens"], warm["total_tokens"]) == (0, 0, 0)
    assert real["status"] == 200 and real["account_id"] and real["total_tokens"] == 19
    [line] = log_lines(e2e, request_id=connection + ".1")
    assert line["decisions"] == [{"event": "prewarm"}] and line["transport"] == "websocket"


def test_a_prewarm_is_checked_like_a_request(connect, e2e, upstream):
    ws = connect(e2e, key=e2e.create_key(allowed_models=["gpt-4.1"]))
    [error] = ws.request({"model": MODEL, "input": "hi", "generate": False})
    assert error == {"type": "error", "status": 403, "error": {
        "message": f"This API key does not have access to model '{MODEL}'", "type": "invalid_request_error",
        "code": "model_not_allowed", "param": "model"}}
    [error] = connect(e2e).request({"model": "no-such-model", "input": "hi", "generate": False})
    assert error["status"] == 400 and error["error"]["code"] == "model_not_found"


def not_found(response_id):
    return {"type": "error", "status": 400, "error": {
        "message": f"Previous response with id '{response_id}' not found.", "type": "invalid_request_error",
        "code": "previous_response_not_found", "param": "previous_response_id"}}


def test_an_unknown_previous_response_id_is_an_error_message_and_the_connection_goes_on(connect, e2e, upstream):
    other = connect(e2e)
    elsewhere = other.request({"model": MODEL, "input": "on another connection"})[-1]["response"]["id"]
    ws = connect(e2e)
    assert ws.request({"model": MODEL, "previous_response_id": "resp_unknown", "input": "x"}) == [
        not_found("resp_unknown")]
    # Responses are the connection's own.
    assert ws.request({"model": MODEL, "previous_response_id": elsewhere, "input": "x"}) == [not_found(elsewhere)]
    first = ws.request({"model": MODEL, "input": "one"})[-1]["response"]["id"]
    second = ws.request({"model": MODEL, "previous_response_id": first, "input": "two"})[-1]["response"]["id"]
    # Only the latest response is kept: an older one has expired.
    assert ws.request({"model": MODEL, "previous_response_id": first, "input": "x"}) == [not_found(first)]
    assert ws.request({"model": MODEL, "previous_response_id": second, "input": "three"})[-1]["type"] == \
        "response.completed"
    assert len(upstream.response_requests()) == 4


@pytest.mark.parametrize("message, status, param, text", [
    ("not json", 400, None, "The message is not valid JSON: "),
    (b"\x00\x01binary", 400, None, "Binary messages are not accepted: send each request as a JSON text message."),
    ("[1, 2]", 400, None, 'The message is not a JSON object: send {"type": "response.create", ...}.'),
    ({"model": MODEL, "input": "x"}, 400, "type", "Missing required parameter: 'type'."),
    ({"type": "response.cancel", "model": MODEL, "input": "x"}, 400, "type",
     "Invalid value for 'type': 'response.cancel'; the only message type is 'response.create'."),
    ({"type": "response.create", "model": MODEL, "input": "x", "generate": "no"}, 400, "generate",
     "Invalid type for 'generate': expected a boolean, but got a string instead."),
    ({"type": "response.create", "model": MODEL, "input": "x", "previous_response_id": 7}, 400,
     "previous_response_id", "Invalid type for 'previous_response_id': expected a string, but got an integer "
                             "instead."),
    ({"type": "response.create", "model": MODEL, "previous_response_id": "resp_x",
      "messages": [{"role": "user", "content": "x"}]}, 400, "messages",
     "'previous_response_id' continues with 'input' items; 'messages' cannot be used with it."),
], ids=["bad-json", "binary", "not-an-object", "no-type", "unknown-type", "generate", "previous-type",
        "previous-with-messages"])
def test_a_malformed_message_gets_an_error_and_the_connection_stays_usable(connect, e2e, upstream, message, status,
                                                                            param, text):
    ws = connect(e2e)
    ws.send(message)
    [error] = ws.answer()
    assert error["type"] == "error" and error["status"] == status
    assert error["error"]["param"] == param and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith(text), error
    assert ws.request({"model": MODEL, "input": "still here?"})[-1]["type"] == "response.completed"
    assert len(upstream.response_requests()) == 1


@pytest.mark.parametrize("body", [
    {"model": MODEL, "input": "x", "tools": [{"type": "code_interpreter"}]},
    {"model": MODEL, "input": [{"type": "message", "role": "robot", "content": "x"}]},
    {"model": MODEL},
    {"model": MODEL, "input": "x", "store": True},
    {"model": MODEL, "input": "x", "include": ["everything"]},
    {"model": MODEL, "input": "x", "conversation": "conv_" + "a" * 8, "previous_response_id": "resp_x"},
], ids=["tool-type", "role", "no-input", "store", "include", "previous-with-conversation"])
def test_a_request_is_validated_exactly_as_a_post(connect, e2e, upstream, body):
    ws = connect(e2e)
    [error] = ws.request(body)
    reply = post(e2e, body)
    assert error == {"type": "error", "status": reply.status_code, "error": error_of(reply)}
    assert error["status"] == 400 and error["error"]["param"]
    assert ws.request({"model": MODEL, "input": "after the error"})[-1]["type"] == "response.completed"


def test_messages_sent_while_an_answer_streams_wait_their_turn(connect, e2e, upstream):
    slow = Script(MODEL).start().message(["a", "b", "c"]).completed()
    fast = Script(MODEL).start().message(["d"]).completed()
    upstream.push({"events": slow.events(), "delay": 0.1}, account=ACCOUNT)
    upstream.push({"events": fast.events()}, account=ACCOUNT)
    ws = connect(e2e)
    ws.send({"type": "response.create", "model": MODEL, "input": "first"})
    ws.send({"type": "response.create", "model": MODEL, "input": "second"})
    first, second = ws.answer(), ws.answer()
    assert {message["response"]["id"] for message in first if "response" in message} == {slow.response_id}
    assert {message["response"]["id"] for message in second if "response" in message} == {fast.response_id}
    assert [request["body"]["input"] for request in upstream.response_requests()] == [[user("first")],
                                                                                      [user("second")]]


@pytest.mark.parametrize("stall_at", [4, 0], ids=["mid-stream", "before-the-first-event"])
def test_a_client_that_hangs_up_closes_the_upstream_request(connect, e2e, upstream, stall_at):
    script = Script(MODEL).start().message(["never", " sent"]).completed()
    upstream.push({"events": script.events(), "stall_at": stall_at, "stall": 30}, account=ACCOUNT)
    connection = request_id()
    ws = connect(e2e, headers={"X-Request-Id": connection})
    ws.send({"type": "response.create", "model": MODEL, "input": "hi"})
    received = [ws.receive() for _ in range(stall_at)]
    assert [message["type"] for message in received] == [name for name, _ in script.events()[:stall_at]]
    if not stall_at:
        wait_for(lambda: upstream.response_requests(), timeout=5)
    ws.close()
    hung_up = time.time()
    closed = wait_for(lambda: list(upstream.closed_early), timeout=8)
    assert closed, "the gateway kept the upstream request open after its client went away"
    assert closed[0]["response_id"] == script.response_id
    assert closed[0]["time"] - hung_up < 8  # long before the 30 s stall would have ended it
    row = usage_row(e2e, connection + ".1")
    assert row["status"] == 499 and row["error_code"] == "client_closed"
    assert wait_for(lambda: log_lines(e2e, message="websocket", request_id=connection))[0]["ended"] in (
        "client gone", "client closed")


def test_a_large_event_arrives_intact(connect, e2e, upstream):
    """Frame lengths of every size class (7-bit, 16-bit, 64-bit), written whole."""
    big = "".join(chr(0x41 + i % 26) for i in range(300_000)) + " é 世界 🌍"
    events = Script(MODEL).start().message(["x" * 200, "y" * 70_000, big, "end"]).completed().events()
    upstream.push({"events": events}, account=ACCOUNT)
    ws = connect(e2e)
    ws.send({"type": "response.create", "model": MODEL, "input": "long"})
    assert [ws.receive_text() for _ in events] == [sent_text(payload) for _, payload in events]


def test_a_conversation_turn_over_a_websocket(connect, e2e, upstream):
    conversation = "conv_" + unique()
    ws = connect(e2e)
    first = ws.request({"model": MODEL, "input": "first", "conversation": conversation})
    second = ws.request({"model": MODEL, "input": "second", "conversation": conversation})
    assert second[-1]["type"] == "response.completed"
    sent = upstream.response_requests()[-1]["body"]["input"]
    assert sent == [user("first"), *first[-1]["response"]["output"], user("second")]
    items = requests.get(f"{e2e.url}/v1/conversations/{conversation}/items", headers=auth(e2e.key),
                         params={"order": "asc"}, timeout=10).json()["data"]
    assert [item["role"] for item in items] == ["user", "assistant", "user", "assistant"]
    # A conversation keeps its history itself: its responses are not continued by id.
    assert ws.request({"model": MODEL, "input": "x", "previous_response_id": second[-1]["response"]["id"]}) == [
        not_found(second[-1]["response"]["id"])]


def test_one_usage_row_and_log_line_per_request(connect, e2e, upstream):
    connection = request_id()
    ws = connect(e2e, headers={"X-Request-Id": connection})
    warm = ws.request({"model": MODEL, "input": "warm", "generate": False})[-1]["response"]["id"]
    ws.request({"model": MODEL, "input": "turn", "previous_response_id": warm})
    ws.send("{")
    ws.answer()
    ws.request({"model": MODEL, "input": "x", "previous_response_id": "resp_gone"})
    ws.request({"model": MODEL, "input": "again"})
    ws.close()
    statuses = [usage_row(e2e, f"{connection}.{number}")["status"] for number in range(1, 6)]
    assert statuses == [200, 200, 400, 400, 200]
    assert usage_row(e2e, f"{connection}.6", timeout=0.5) is None
    lines = [line for line in log_lines(e2e, message="response") if line["request_id"].startswith(connection)]
    assert [line["transport"] for line in lines] == ["websocket"] * 5
    [closed] = wait_for(lambda: log_lines(e2e, message="websocket", request_id=connection))
    assert closed["requests"] == 5 and closed["ended"] == "client closed"
    # A POST says its own transport.
    reply = requests.post(e2e.url + "/v1/responses", json={"model": MODEL, "input": "by post"}, timeout=10,
                          headers={**auth(e2e.key), "X-Request-Id": connection + "-post"})
    assert reply.status_code == 200, reply.text
    assert log_lines(e2e, request_id=connection + "-post")[0]["transport"] == "http"


def test_the_key_is_checked_before_the_upgrade(connect, e2e, upstream):
    ws = connect(e2e, key=False)
    assert ws.status == 401
    assert ws.error() == {"message": "Missing API key: send it as 'Authorization: Bearer <key>'.",
                          "type": "invalid_request_error", "code": "invalid_api_key", "param": None}
    ws = connect(e2e, key="sk-rp-not-a-key")
    assert ws.status == 401 and ws.error()["code"] == "invalid_api_key"


def test_a_key_revoked_during_the_connection_ends_it(connect, e2e, upstream):
    row = e2e.create_key_row()
    ws = connect(e2e, key=row["key"])
    assert ws.request({"model": MODEL, "input": "hi"})[-1]["type"] == "response.completed"
    engine = e2e.engine()
    try:
        assert key_store.revoke(engine, row["id"])
    finally:
        engine.dispose()
    [error] = ws.request({"model": MODEL, "input": "hi again"})
    assert error == {"type": "error", "status": 401, "error": {
        "message": "Incorrect API key provided, or the key was revoked.", "type": "invalid_request_error",
        "code": "invalid_api_key", "param": None}}
    assert ws.wait_closed() == (1008, "The API key is no longer valid.")
    assert len(upstream.response_requests()) == 1


def test_compression_is_declined(connect, e2e, upstream):
    ws = connect(e2e, extensions=[PerMessageDeflate()])
    assert ws.status == 101
    assert ws.extensions == [] and "sec-websocket-extensions" not in ws.headers
    assert ws.request({"model": MODEL, "input": "hi"})[-1]["type"] == "response.completed"


def test_a_plain_get_is_still_a_405(e2e, upstream):
    reply = requests.get(e2e.url + "/v1/responses", headers=auth(e2e.key), timeout=10)
    assert reply.status_code == 405 and set(reply.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
    assert error_of(reply)["code"] == "method_not_allowed"


def test_unknown_fields_of_items_reach_the_upstream_unchanged(connect, e2e, upstream):
    """What the Codex CLI's built-in provider puts on its items passes through, by POST and
    over a WebSocket."""
    items = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "rules"}],
         **PASSTHROUGH},
        user("hi", id="msg_in_1", **PASSTHROUGH),
        {"type": "function_call", "call_id": "call_9", "name": "exec_command", "arguments": "{}",
         "status": "completed", "x_future_field": [1, {"a": None}]},
        {"type": "function_call_output", "call_id": "call_9", "output": "ok", "x_future_field": True},
    ]
    reply = post(e2e, {"model": MODEL, "input": items, "stream": True})
    assert reply.status_code == 200, reply.text
    ws = connect(e2e)
    assert ws.request({"model": MODEL, "input": items})[-1]["type"] == "response.completed"
    by_post, by_websocket = upstream.response_requests()
    assert by_post["body"]["input"] == items
    assert by_websocket["body"]["input"] == items


@pytest.fixture(scope="module")
def tuned(fake_upstream, tmp_path_factory):
    """A gateway with fast pings, a short connection age and small messages."""
    server = Gateway(tmp_path_factory.mktemp("ws-tuned"), fake_upstream.base_url, workers=1,
                     env={"RESPONSES_PROXY_WEBSOCKET_PING_SECONDS": "0.3",
                          "RESPONSES_PROXY_WEBSOCKET_MAX_AGE_SECONDS": "2.5",
                          "RESPONSES_PROXY_MAX_BODY_BYTES": "8192"})
    with server.serving():
        yield server


def test_pings_keep_a_connection_that_answers_them(connect, tuned, upstream):
    ws = connect(tuned)
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        with pytest.raises(TimeoutError):
            ws.receive_text(timeout=0.2)  # only pings come, and are answered
    assert ws.pings >= 2
    assert ws.request({"model": MODEL, "input": "still open"})[-1]["type"] == "response.completed"


def test_a_connection_that_does_not_answer_pings_is_closed(connect, tuned, upstream):
    ws = connect(tuned, answer_pings=False)
    assert ws.wait_closed(timeout=5) == (1008, "Ping/Pong timeout")


def test_a_message_over_the_size_limit_closes_the_connection(connect, tuned, upstream):
    ws = connect(tuned)
    ws.send({"type": "response.create", "model": MODEL, "input": "x" * 10_000})
    assert ws.wait_closed() == (1009, "Message is too big")
    assert upstream.response_requests() == []


def test_an_old_connection_is_closed_between_two_answers(connect, tuned, upstream):
    """An answer that outlives the age limit ends whole; the connection closes after it."""
    script = Script(MODEL).start().message(list("abcdefghij")).completed()
    upstream.push({"events": script.events(), "delay": 0.3}, account=ACCOUNT)
    connection = request_id()
    ws = connect(tuned, headers={"X-Request-Id": connection})
    answer = ws.request({"model": MODEL, "input": "take your time"})
    assert [message["type"] for message in answer] == [name for name, _ in script.events()]
    assert ws.wait_closed() == (1000, "The connection reached its age limit; open a new one.")
    assert usage_row(tuned, connection + ".1")["status"] == 200
    assert wait_for(lambda: log_lines(tuned, message="websocket", request_id=connection))[0]["ended"] == "age limit"


def test_websockets_turned_off_answer_426(connect, fake_upstream, tmp_path, upstream):
    server = Gateway(tmp_path, fake_upstream.base_url, workers=1, env={"RESPONSES_PROXY_WEBSOCKETS": "off"})
    server.start()
    try:
        server.import_account()
        key = server.create_key()
        ws = connect(server, key=key)
        assert ws.status == 426
        assert ws.error() == {
            "message": "WebSockets are turned off on this gateway: send the request as POST /v1/responses.",
            "type": "invalid_request_error", "code": "websockets_disabled", "param": None}
        reply = requests.get(server.url + "/v1/responses", headers=auth(key), timeout=10)
        assert reply.status_code == 405
        reply = requests.post(server.url + "/v1/responses", headers=auth(key), json={"model": MODEL, "input": "hi"},
                              timeout=10)
        assert reply.status_code == 200, reply.text
    finally:
        server.stop()


def test_a_stopping_gateway_closes_its_websockets_between_answers(connect, fake_upstream, tmp_path, upstream):
    """Idle sessions are closed at once, an answer under way first ends whole; the worker then
    exits long before its graceful timeout."""
    server = Gateway(tmp_path, fake_upstream.base_url, workers=1, env={"RESPONSES_PROXY_GRACEFUL_TIMEOUT": "60"})
    server.start()
    try:
        server.import_account()
        key = server.create_key()
        script = Script(MODEL).start().message(list("abcdef")).completed()
        upstream.push({"events": script.events(), "delay": 0.3}, account=ACCOUNT)
        idle, busy = connect(server, key=key), connect(server, key=key)
        busy.send({"type": "response.create", "model": MODEL, "input": "a slow one"})
        assert busy.receive()["type"] == "response.created"
        stopped = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert idle.wait_closed() == (1001, "The server is going away; open a new connection.")
        answer = busy.answer()
        assert answer[-1]["type"] == "response.completed" and len(answer) == len(script.events()) - 1
        assert busy.wait_closed() == (1001, "The server is going away; open a new connection.")
        server.process.wait(timeout=30)
        assert time.monotonic() - stopped < 30
    finally:
        server.stop()

"""Upstream trouble as the client sees it: a real status and the JSON envelope before the
stream starts, a ``response.failed`` event after, and never a hang.

This module runs its own gateway (a 2 s upstream read timeout) and gives every test exactly one
fresh account, so a cooldown or an error history never leaks into the next test.
"""

import time
from datetime import UTC, datetime

import openai
import pytest
import requests

from tests.e2e.helpers import auth, error_of, events_of, post, remove_accounts, stream, usage_row
from tests.fake_upstream import Script
from tests.helpers import Gateway, unique

READ_TIMEOUT = 2
BODY = {"model": "gpt-5.2", "input": "hi"}


@pytest.fixture(scope="module")
def gateway(fake_upstream, tmp_path_factory):
    server = Gateway(tmp_path_factory.mktemp("errors-gateway"), fake_upstream.base_url,
                     env={"RESPONSES_PROXY_KEEPALIVE_SECONDS": "1",
                          "RESPONSES_PROXY_UPSTREAM_READ_TIMEOUT": str(READ_TIMEOUT)})
    server.start()
    server.key = server.create_key()
    yield server
    server.stop()


@pytest.fixture
def account(gateway, upstream):
    """The one account of the gateway for this test: its ChatGPT account id."""
    remove_accounts(gateway)
    account_id = "acct-" + unique()
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    gateway.import_account(account_id=account_id, last_refresh=now)
    return account_id


def send(gateway, streaming, body=BODY, timeout=20):
    return post(gateway, {**body, "stream": streaming}, timeout=timeout)


STREAMING = pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])


@STREAMING
def test_upstream_401_is_a_502(gateway, upstream, account, streaming):
    for _ in range(3):  # whatever the gateway retries (a token refresh), the upstream keeps refusing
        upstream.push({"status": 401, "body": {"detail": "Could not validate your token."}}, account=account)
    reply = send(gateway, streaming)
    assert reply.status_code == 502, reply.text
    error = error_of(reply)
    assert error["type"] == "upstream_error"
    assert error["code"] == "upstream_error"
    assert upstream.response_requests()


@STREAMING
@pytest.mark.parametrize("reset", ["resets_in_seconds", "resets_at"])
def test_upstream_usage_limit_is_a_429_with_the_reset_time(gateway, upstream, account, streaming, reset):
    message = "You have hit your usage limit."
    before = time.time()
    when = {"resets_in_seconds": 120} if reset == "resets_in_seconds" else {"resets_at": int(before) + 120}
    upstream.push({"status": 429, "body": {"error": {"type": "usage_limit_reached", "message": message,
                                                     **when}}}, account=account)
    reply = send(gateway, streaming)
    assert reply.status_code == 429, reply.text
    error = error_of(reply)
    assert error["type"] == "usage_limit_reached"
    assert error["code"] == "usage_limit_reached"
    assert isinstance(error["resets_at"], int)
    assert before + 100 <= error["resets_at"] <= time.time() + 125
    assert 100 <= error["resets_in_seconds"] <= 121
    assert 100 <= int(reply.headers["Retry-After"]) <= 121
    assert len(upstream.response_requests()) == 1

    # The account now cools down: the next request is told the same, without asking upstream.
    reply = send(gateway, streaming)
    assert reply.status_code == 429, reply.text
    error = error_of(reply)
    assert error["code"] == "usage_limit_reached"
    assert before + 100 <= error["resets_at"] <= time.time() + 125
    assert 100 <= int(reply.headers["Retry-After"]) <= 121
    assert len(upstream.response_requests()) == 1


@STREAMING
def test_upstream_500_is_a_502(gateway, upstream, account, streaming):
    for _ in range(3):
        upstream.push({"status": 500, "body": {"detail": "Internal error"}}, account=account)
    reply = send(gateway, streaming)
    assert reply.status_code == 502, reply.text
    error = error_of(reply)
    assert error["type"] == "upstream_error"
    assert error["code"] == "upstream_error"


@STREAMING
def test_an_upstream_html_error_page_is_never_quoted(gateway, upstream, account, streaming):
    """A proxy in front of the upstream answers 502 with its HTML page: the client hears what
    happened, in one line, without the markup."""
    page = "<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>"
    for _ in range(3):
        upstream.push({"status": 502, "page": page}, account=account)
    reply = send(gateway, streaming)
    assert reply.status_code == 502, reply.text
    error = error_of(reply)
    assert error["code"] == "upstream_error"
    assert "HTTP 502 Bad Gateway" in error["message"]
    assert "<" not in error["message"] and "nginx" not in error["message"]


@STREAMING
def test_upstream_400_passes_its_message_on(gateway, upstream, account, streaming):
    upstream.push({"status": 400, "body": {"detail": "Unsupported parameter: x"}}, account=account)
    reply = send(gateway, streaming, {**BODY, "x": 1})
    assert reply.status_code == 400, reply.text
    error = error_of(reply)
    assert error["message"] == "Unsupported parameter: x"
    assert error["type"] == "invalid_request_error"
    assert len(upstream.response_requests()) == 1
    assert upstream.response_requests()[0]["body"]["x"] == 1  # unknown fields pass through


@STREAMING
def test_upstream_silent_before_its_headers_is_a_502(gateway, upstream, account, streaming):
    upstream.push({"header_delay": READ_TIMEOUT + 2}, account=account)
    started = time.monotonic()
    reply = send(gateway, streaming)
    assert reply.status_code == 502, reply.text
    assert error_of(reply)["code"] == "upstream_error"
    assert time.monotonic() - started < READ_TIMEOUT + 10


@STREAMING
def test_no_account_is_a_503(gateway, upstream, streaming):
    remove_accounts(gateway)
    reply = send(gateway, streaming)
    assert reply.status_code == 503, reply.text
    assert error_of(reply)["code"] == "no_accounts"
    assert upstream.response_requests() == []


@STREAMING
def test_upstream_closing_before_any_event_is_a_502(gateway, upstream, account, streaming):
    upstream.push({"cut_after": 0}, account=account)
    reply = send(gateway, streaming)
    assert reply.status_code == 502, reply.text
    assert error_of(reply)["code"] == "upstream_error"


def test_upstream_ending_without_a_final_event(gateway, upstream, account):
    """The upstream finishes its body cleanly but never says completed: not a success."""
    script = Script("gpt-5.2").start().message(["half"])
    upstream.push({"events": script.events()}, account=account)
    reply, frames = stream(gateway, BODY, deadline_seconds=10)
    received = events_of(frames)
    assert received[-1].name == "response.failed", [frame.name for frame in received]
    assert received[-1].data["response"]["id"] == script.response_id
    assert received[-1].data["response"]["error"]["message"]

    upstream.push({"events": Script("gpt-5.2").start().message(["half"]).events()}, account=account)
    reply = send(gateway, False)
    assert reply.status_code == 502, reply.text
    assert error_of(reply)["code"] == "upstream_error"


def test_upstream_cut_mid_way_is_a_502_without_streaming(gateway, upstream, account):
    upstream.push({"events": Script("gpt-5.2").start().message(["a", "b"]).completed().events(),
                   "cut_after": 5}, account=account)
    reply = send(gateway, False)
    assert reply.status_code == 502, reply.text
    assert error_of(reply)["code"] == "upstream_error"


def test_upstream_silent_mid_stream_ends_with_response_failed(gateway, upstream, account):
    script = Script("gpt-5.2").start().message(["a", "b"]).completed()
    upstream.push({"events": script.events(), "stall_at": 3, "stall": READ_TIMEOUT + 6}, account=account)
    started = time.monotonic()
    reply, frames = stream(gateway, BODY, read_timeout=10, deadline_seconds=READ_TIMEOUT + 5)
    received = events_of(frames)
    assert [frame.name for frame in received[:3]] == [name for name, _ in script.events()[:3]]
    assert received[-1].name == "response.failed", [frame.name for frame in received]
    assert received[-1].data["response"]["id"] == script.response_id
    assert received[-1].data["response"]["error"]["message"]
    assert time.monotonic() - started < READ_TIMEOUT + 5


def test_upstream_silent_mid_way_is_a_502_without_streaming(gateway, upstream, account):
    upstream.push({"events": Script("gpt-5.2").start().message(["a"]).completed().events(),
                   "stall_at": 3, "stall": READ_TIMEOUT + 6}, account=account)
    started = time.monotonic()
    reply = send(gateway, False)
    assert reply.status_code == 502, reply.text
    assert error_of(reply)["code"] == "upstream_error"
    assert time.monotonic() - started < READ_TIMEOUT + 5


def test_upstream_error_event_mid_stream_is_relayed_and_ends_the_stream(gateway, upstream, account):
    events = Script("gpt-5.2").start().events()
    events.append(("error", {"type": "error", "code": "server_error", "message": "Something broke.",
                             "sequence_number": len(events)}))
    upstream.push({"events": events}, account=account)
    reply, frames = stream(gateway, BODY, deadline_seconds=10)
    received = events_of(frames)
    assert received[-1].name in ("error", "response.failed"), [frame.name for frame in received]
    assert "Something broke." in str(received[-1].data)


def test_sdk_sees_the_errors_as_its_exception_types(gateway, upstream, account):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0, timeout=20) as client:
        check_sdk_errors(client, upstream, account)


def check_sdk_errors(client, upstream, account):
    upstream.push({"status": 500, "body": {"detail": "boom"}}, account=account)
    with pytest.raises(openai.InternalServerError) as failure:
        client.responses.create(model="gpt-5.2", input="hi")
    assert failure.value.status_code == 502
    assert failure.value.code == "upstream_error"

    upstream.push({"status": 400, "body": {"detail": "Unsupported parameter: x"}}, account=account)
    with pytest.raises(openai.BadRequestError) as failure:
        client.responses.create(model="gpt-5.2", input="hi", stream=True)
    assert failure.value.status_code == 400
    assert "Unsupported parameter: x" in failure.value.message

    with pytest.raises(openai.BadRequestError) as failure:
        client.responses.create(model="gpt-5.2", input="hi", store=True)
    assert failure.value.param == "store"

    upstream.push({"status": 429, "body": {"error": {"type": "usage_limit_reached", "message": "limit",
                                                     "resets_in_seconds": 120}}}, account=account)
    with pytest.raises(openai.RateLimitError) as failure:
        client.responses.create(model="gpt-5.2", input="hi")
    assert failure.value.code == "usage_limit_reached"
    assert failure.value.response.headers["Retry-After"]


def test_invalid_key_is_a_401(gateway, upstream):
    reply = requests.post(gateway.url + "/v1/responses", headers=auth("sk-rp-wrong"), json=BODY, timeout=10)
    assert reply.status_code == 401
    assert error_of(reply)["code"] == "invalid_api_key"


# -- the same over a WebSocket: an error message with the status a POST would have had, before
# the first event; after it, the same response.failed event.


def test_websocket_usage_limit_is_a_429_error_message_with_the_reset_time(gateway, upstream, account, connect):
    before = time.time()
    upstream.push({"status": 429, "body": {"error": {"type": "usage_limit_reached", "message": "You hit it.",
                                                     "resets_at": int(before) + 120}}},
                  account=account)
    ws = connect(gateway, headers={"X-Request-Id": "req-ws-limit-" + unique()})
    [error] = ws.request(BODY)
    assert error["type"] == "error" and error["status"] == 429
    assert {key: error["error"][key] for key in ("type", "code", "param")} == {
        "type": "usage_limit_reached", "code": "usage_limit_reached", "param": None}
    assert error["error"]["message"]
    assert before + 100 <= error["error"]["resets_at"] <= time.time() + 125
    assert 100 <= int(error["headers"]["Retry-After"]) <= 121
    # The connection goes on; the account cools down, as for a POST.
    [error] = ws.request(BODY)
    assert error["status"] == 429 and error["error"]["code"] == "usage_limit_reached"
    assert len(upstream.response_requests()) == 1


def test_websocket_upstream_500_is_a_502_error_message(gateway, upstream, account, connect):
    for _ in range(3):
        upstream.push({"status": 500, "body": {"detail": "Internal error"}}, account=account)
    [error] = connect(gateway).request(BODY)
    assert error["status"] == 502
    assert error["error"]["type"] == "upstream_error" and error["error"]["code"] == "upstream_error"


def test_websocket_no_account_is_a_503_error_message(gateway, upstream, connect):
    remove_accounts(gateway)
    connection = "req-ws-none-" + unique()
    [error] = connect(gateway, headers={"X-Request-Id": connection}).request(BODY)
    assert error["status"] == 503 and error["error"]["code"] == "no_accounts"
    assert usage_row(gateway, connection + ".1")["status"] == 503


@pytest.mark.parametrize("behaviour", [{"cut_after": 3}, {"stall_at": 3, "stall": READ_TIMEOUT + 6}],
                         ids=["cut", "silent"])
def test_websocket_upstream_failing_mid_stream_ends_with_response_failed(gateway, upstream, account, connect,
                                                                          behaviour):
    script = Script("gpt-5.2").start().message(["a", "b"]).completed()
    upstream.push({"events": script.events(), **behaviour}, account=account)
    ws = connect(gateway)
    answer = ws.request(BODY, timeout=READ_TIMEOUT + 8)
    assert [message["type"] for message in answer[:3]] == [name for name, _ in script.events()[:3]]
    assert len(answer) == 4 and answer[-1]["type"] == "response.failed"
    assert answer[-1]["response"]["id"] == script.response_id
    assert answer[-1]["response"]["error"]["message"]
    # A failed response is not one to continue from.
    [error] = ws.request({**BODY, "previous_response_id": script.response_id})
    assert error["error"]["code"] == "previous_response_not_found"

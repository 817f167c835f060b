"""``x-codex-turn-state`` through gunicorn: the upstream's turn state reaches the client (a
response header, or a ``response.metadata`` event over a WebSocket), its echo goes back to the
account that issued it, and never to another one."""

import time

import pytest
import requests

from tests.e2e.helpers import ACCOUNT, auth, post, request_id, wait_for
from tests.e2e.test_pool import LIMITED, ask, served_by
from tests.e2e.test_websocket_e2e import log_lines
from tests.fake_upstream import TURN_STATE

MODEL = "gpt-5.2"


def user(text):
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def carrying(gateway, state, body, request=None):
    """``POST /v1/responses`` with the turn state a client echoes (``request``: its request id)."""
    headers = {**auth(gateway.key), TURN_STATE: state, **({"X-Request-Id": request} if request else {})}
    return requests.post(gateway.url + "/v1/responses", headers=headers, json=body, timeout=20)


def decisions(gateway, request):
    """The decisions in the log line of the request sent with ``X-Request-Id: request``."""
    [line] = wait_for(lambda: log_lines(gateway, message="response", request_id=request))
    return line["decisions"]


def issued(upstream):
    [(state, account)] = upstream.turn_states
    return state, account


@pytest.mark.parametrize("streaming", [True, False], ids=["sse", "json"])
def test_the_upstreams_turn_state_is_a_response_header_and_its_echo_goes_upstream(e2e, upstream, streaming):
    upstream.push({"turn_state": True}, account=ACCOUNT)
    body = {"model": MODEL, "input": [user("start a turn")], "prompt_cache_key": "turn-thread", "stream": streaming}
    reply = post(e2e, body, stream=streaming)
    assert reply.status_code == 200
    reply.content  # noqa: B018 (read to its end)
    state, _ = issued(upstream)
    assert reply.headers[TURN_STATE] == state
    assert TURN_STATE not in upstream.response_requests()[0]["headers"]

    again = carrying(e2e, state, {**body, "stream": False})
    assert again.status_code == 200, again.text
    assert TURN_STATE not in again.headers  # the upstream issued none this time
    assert upstream.response_requests()[-1]["headers"][TURN_STATE] == state


def test_over_a_websocket_the_turn_state_is_a_metadata_event_echoed_in_client_metadata(connect, e2e, upstream):
    upstream.push({"turn_state": True}, account=ACCOUNT)
    ws = connect(e2e)
    first = ws.request({"model": MODEL, "input": [user("start a turn")]})
    state, _ = issued(upstream)
    assert first[0] == {"type": "response.metadata", "headers": {TURN_STATE: state}}
    assert [message["type"] for message in first[1:]][0] == "response.created"

    metadata = {"x-codex-turn-metadata": "{}", TURN_STATE: state}
    second = ws.request({"model": MODEL, "input": [user("go on")], "client_metadata": metadata,
                         "previous_response_id": first[-1]["response"]["id"]})
    assert second[0]["type"] == "response.created"  # no new turn state: no metadata event
    sent = upstream.response_requests()[-1]
    assert sent["headers"][TURN_STATE] == state
    assert sent["body"]["client_metadata"] == metadata


def test_a_turn_state_the_gateway_never_saw_issued_is_sent_to_no_account(e2e, upstream):
    request = request_id()
    reply = carrying(e2e, "ts_forged", {"model": MODEL, "input": "hi",
                                        "client_metadata": {TURN_STATE: "ts_forged", "kept": "1"}}, request)
    assert reply.status_code == 200, reply.text
    sent = upstream.response_requests()[-1]
    assert TURN_STATE not in sent["headers"] and sent["body"]["client_metadata"] == {"kept": "1"}
    made = decisions(e2e, request)
    assert {"event": "turn_state_dropped", "account": made[0]["account"], "issuer": None} in made


@pytest.mark.parametrize("where", [True, "event"], ids=["header", "metadata-event"])
def test_requests_carrying_a_turn_state_go_to_the_account_that_issued_it(make_gateway, upstream, where):
    gateway = make_gateway(2)
    upstream.push({"turn_state": where})  # whichever account serves it
    assert ask(gateway, input="start a turn")[0] == 200
    state, issuer = issued(upstream)

    # Without a cache key or history to stick to, requests go to the account that served fewer
    # lately; carrying the turn state, each goes back to its issuer, whichever worker takes it.
    for number in range(8):
        reply = carrying(gateway, state, {"model": MODEL, "input": f"in the turn {number}"})
        assert reply.status_code == 200, reply.text
    carried = upstream.response_requests()[1:]
    assert {request["headers"]["chatgpt-account-id"] for request in carried} == {issuer}
    assert all(request["headers"][TURN_STATE] == state for request in carried)
    upstream.requests.clear()
    for number in range(4):
        assert ask(gateway, input=f"another {number}")[0] == 200
    assert served_by(upstream)[issuer] < 4  # the same requests without it: balanced away


def test_a_turn_state_is_dropped_while_its_issuer_cannot_serve_and_followed_again_after(make_gateway, upstream):
    """A turn that starts on one account and has to move on: its turn state is never shown to
    the other account, and it goes back to its issuer once that one serves again."""
    gateway = make_gateway(2)
    upstream.push({"turn_state": True})
    body = {"model": MODEL, "input": "start", "prompt_cache_key": "moving-turn"}
    assert ask(gateway, **body)[0] == 200
    state, issuer = issued(upstream)
    other = "acct-1" if issuer == "acct-0" else "acct-0"

    upstream.push({**LIMITED, "body": {"error": {**LIMITED["body"]["error"], "resets_in_seconds": 2}}},
                  account=issuer)
    request = request_id()
    reply = carrying(gateway, state, body, request)
    assert reply.status_code == 200, reply.text
    limited, moved = upstream.response_requests()[-2:]
    assert limited["headers"]["chatgpt-account-id"] == issuer and limited["headers"][TURN_STATE] == state
    assert moved["headers"]["chatgpt-account-id"] == other and TURN_STATE not in moved["headers"]
    ids = {row["chatgpt_account_id"]: row["id"] for row in gateway.rows}
    assert {"event": "turn_state_dropped", "account": ids[other], "issuer": ids[issuer]} in decisions(gateway, request)

    time.sleep(2.5)  # the issuer's cooldown ends: the turn goes back there
    reply = carrying(gateway, state, body)
    assert reply.status_code == 200, reply.text
    back = upstream.response_requests()[-1]
    assert back["headers"]["chatgpt-account-id"] == issuer and back["headers"][TURN_STATE] == state

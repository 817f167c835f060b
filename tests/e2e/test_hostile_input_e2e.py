"""Limits and shapes a hostile or broken client could send, through gunicorn.

Each is refused with a 400 envelope naming the param before anything reaches the upstream or
the database, the same on SQLite and PostgreSQL; none is a 500 or a silent change.
"""

import requests

from tests.e2e.conftest import error_of


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

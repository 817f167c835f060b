"""Threads that move between accounts, through gunicorn (two workers, two accounts).

The fake upstream refuses what another account issued (reasoning and compaction content) and
items reduced to an id. A thread stays on its account while that one serves; when it must move,
the turn still succeeds: the new account gets the request without what it cannot read, and a
conversation sends the stored history that account can read.
"""

import pytest
import requests

from responses_proxy.store import accounts as account_store
from tests.e2e.helpers import ACCOUNT, auth, request_id, wait_for
from tests.e2e.test_conversations import all_items, texts
from tests.e2e.test_pool import LIMITED
from tests.e2e.test_websocket_e2e import log_lines
from tests.fake_upstream import ISSUED, Script

MODEL = "gpt-5.2"
TRIGGER = {"type": "compaction_trigger"}
INCLUDE = ["reasoning.encrypted_content"]


def user(text):
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def reasoned(text):
    """An answer with reasoning bound to the account that serves it."""
    return {"events": Script(MODEL).start().reasoning(encrypted_content=ISSUED).message([text]).completed().events()}


def send(gateway, body, request=None):
    headers = {**auth(gateway.key), **({"X-Request-Id": request} if request else {})}
    reply = requests.post(gateway.url + "/v1/responses", headers=headers, json={"model": MODEL, **body}, timeout=20)
    assert reply.status_code == 200, reply.text
    return reply.json()


def served(upstream):
    return upstream.response_requests()[-1]["headers"]["chatgpt-account-id"]


def decisions(gateway, request):
    [line] = wait_for(lambda: log_lines(gateway, message="response", request_id=request))
    return line["decisions"]


def account_ids(gateway):
    return {row["chatgpt_account_id"]: row["id"] for row in gateway.rows}


def other_than(account):
    return "acct-1" if account == "acct-0" else "acct-0"


def set_status(gateway, account, status):
    engine = gateway.engine()
    try:
        account_store.set_status(engine, account_ids(gateway)[account], status)
    finally:
        engine.dispose()


def make_it_move(gateway, upstream, account, how):
    """``account`` cannot serve the next request: over its usage limit (found by that request
    itself: a failover), cooling down (known before), disabled, or needing a new login."""
    if how == "usage-limit":
        upstream.push({**LIMITED, "body": {"error": {**LIMITED["body"]["error"], "resets_in_seconds": 60}}},
                      account=account)
    elif how == "cooling-down":
        engine = gateway.engine()
        try:
            account_store.set_cooldown(engine, account_ids(gateway)[account], 4e9, "usage limit")
        finally:
            engine.dispose()
    else:
        set_status(gateway, account, how)


@pytest.mark.parametrize("how", ["usage-limit", "cooling-down", "disabled", "needs_relogin"])
def test_a_moved_thread_leaves_behind_what_only_its_account_could_read(make_gateway, upstream, how):
    gateway = make_gateway(2)
    thread = {"prompt_cache_key": "moving-thread", "include": INCLUDE}
    upstream.push(reasoned("One."))
    first = send(gateway, {**thread, "input": [user("q1")]})["output"]
    home = served(upstream)
    reasoning, answer = first
    [compaction] = send(gateway, {**thread, "input": [user("q1"), *first, TRIGGER]})["output"]
    assert served(upstream) == home and compaction["type"] == "compaction"

    make_it_move(gateway, upstream, home, how)
    request = request_id()
    upstream.push(reasoned("Moved."), account=other_than(home))
    moved = send(gateway, {**thread, "input": [user("q1"), reasoning, answer, compaction, user("q2")]}, request)
    assert served(upstream) == other_than(home)
    # Its reasoning and its compaction meant something to the first account only.
    assert upstream.response_requests()[-1]["body"]["input"] == [user("q1"), answer, user("q2")]
    ids = account_ids(gateway)
    made = decisions(gateway, request)
    assert {"event": "moved", "account": ids[other_than(home)], "dropped": 2} in made
    assert {"event": "account", "account": ids[other_than(home)], "affinity": "moved", "from": ids[home]} in made

    # The thread now lives on the other account. Its client still sends what the first account
    # issued, which is left out, on every worker; what the new account issued goes back to it.
    for number in range(4):
        request = request_id()
        before = len(upstream.response_requests())
        history = [user("q1"), reasoning, answer, compaction, user("q2"), *moved["output"], user(f"q{number}")]
        send(gateway, {**thread, "input": history}, request)
        [sent] = upstream.response_requests()[before:]  # no refusal, no retry
        assert sent["headers"]["chatgpt-account-id"] == other_than(home)
        assert sent["body"]["input"] == [user("q1"), answer, user("q2"), *moved["output"], user(f"q{number}")]
        assert {"event": "dropped_earlier", "account": ids[other_than(home)], "dropped": 2} in \
            decisions(gateway, request)


def test_a_thread_seen_for_the_first_time_is_retried_once_without_another_accounts_items(make_gateway, upstream):
    gateway = make_gateway(2)
    upstream.push(reasoned("Elsewhere."))
    reasoning, answer = send(gateway, {"input": [user("q1")], "include": INCLUDE})["output"]
    issuer = served(upstream)
    set_status(gateway, issuer, "disabled")

    # A client brings a history from another gateway, or one whose affinity has expired: the
    # gateway cannot know where its reasoning came from, so it sends it, and the account says.
    request = request_id()
    send(gateway, {"input": [user("q1"), reasoning, answer, user("q2")], "prompt_cache_key": "new-here"}, request)
    refused, retried = upstream.response_requests()[-2:]
    assert refused["headers"]["chatgpt-account-id"] == retried["headers"]["chatgpt-account-id"] == other_than(issuer)
    assert refused["body"]["input"] == [user("q1"), reasoning, answer, user("q2")]
    assert retried["body"]["input"] == [user("q1"), answer, user("q2")]
    ids = account_ids(gateway)
    assert {"event": "retry", "account": ids[other_than(issuer)], "status": 400, "dropped": 1} in \
        decisions(gateway, request)

    # The client sends that reasoning again with the thread's next request: left out at once.
    request = request_id()
    send(gateway, {"input": [user("q1"), reasoning, answer, user("q2"), user("q3")], "prompt_cache_key": "new-here"},
         request)
    [sent] = upstream.response_requests()[3:]
    assert sent["body"]["input"] == [user("q1"), answer, user("q2"), user("q3")]
    assert {"event": "dropped_earlier", "account": ids[other_than(issuer)], "dropped": 1} in \
        decisions(gateway, request)


def test_an_item_reduced_to_its_id_is_retried_without_it(e2e, upstream):
    request = request_id()
    gone = {"type": "reasoning", "id": "rs_gone", "summary": [{"type": "summary_text", "text": "hmm"}]}
    send(e2e, {"input": [user("q1"), gone, user("q2")]}, request)
    refused, retried = upstream.response_requests()
    assert refused["body"]["input"][1] == gone
    assert retried["body"]["input"] == [user("q1"), user("q2")]
    assert retried["headers"]["chatgpt-account-id"] == ACCOUNT
    made = decisions(e2e, request)
    assert [decision for decision in made if decision["event"] == "retry"] == [
        {"event": "retry", "account": made[0]["account"], "status": 404, "dropped": 1}]


def test_other_refusals_are_final_and_a_retry_is_made_once(e2e, upstream):
    upstream.push({"status": 400, "body": {"error": {"message": "Invalid 'input'.", "type": "invalid_request_error",
                                                       "code": "invalid_value", "param": "input"}}}, account=ACCOUNT)
    gone = {"type": "reasoning", "id": "rs_gone_too", "summary": []}
    reply = requests.post(e2e.url + "/v1/responses", headers=auth(e2e.key),
                          json={"model": MODEL, "input": [user("q1")]}, timeout=20)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_value"
    assert len(upstream.response_requests()) == 1

    # The request without the item refused as well: that answer is the client's.
    upstream.push({"status": 400, "body": {"error": {"message": "Still wrong.", "code": "invalid_value"}}},
                  account=ACCOUNT)
    reply = requests.post(e2e.url + "/v1/responses", headers=auth(e2e.key),
                          json={"model": MODEL, "input": [user("another thread"), gone]}, timeout=20)
    assert reply.status_code == 400 and reply.json()["error"]["message"] == "Still wrong."
    assert len(upstream.response_requests()) == 3


def conversation_turn(gateway, conversation, items, request=None):
    return send(gateway, {"conversation": conversation, "input": items, "include": INCLUDE}, request)


def test_a_moved_conversation_sends_the_history_the_new_account_can_read(make_gateway, upstream):
    gateway = make_gateway(2)
    reply = requests.post(gateway.url + "/v1/conversations", headers=auth(gateway.key), json={}, timeout=10)
    conversation = reply.json()["id"]
    upstream.push(reasoned("One."))
    conversation_turn(gateway, conversation, [user("first")])
    home = served(upstream)
    [compaction] = conversation_turn(gateway, conversation, [TRIGGER])["output"]
    conversation_turn(gateway, conversation, [user("after")])
    assert served(upstream) == home
    assert texts(upstream.response_requests()[-1]["body"]["input"]) == ["after"]  # the compaction, then it

    make_it_move(gateway, upstream, home, "usage-limit")
    request = request_id()
    upstream.push(reasoned("Two."), account=other_than(home))
    conversation_turn(gateway, conversation, [user("moved")], request)
    sent = upstream.response_requests()[-1]
    assert sent["headers"]["chatgpt-account-id"] == other_than(home)
    # The compaction cannot be read there: the history from before it goes instead, without
    # the first account's reasoning.
    assert [item["type"] for item in sent["body"]["input"]] == ["message"] * 5
    assert texts(sent["body"]["input"]) == ["first", "One.", "after", "Hello from the fake upstream.", "moved"]
    made = decisions(gateway, request)
    assert {"event": "moved", "account": account_ids(gateway)[other_than(home)], "dropped": 1, "history": 4} in made

    # The next turn stays there, and what that account issued (its reasoning) goes with it.
    conversation_turn(gateway, conversation, [user("again")])
    sent = upstream.response_requests()[-1]
    assert sent["headers"]["chatgpt-account-id"] == other_than(home)
    assert [item["type"] for item in sent["body"]["input"]] == ["message"] * 5 + ["reasoning", "message", "message"]
    assert upstream.issuer_of(sent["body"]["input"][5]["encrypted_content"]) == other_than(home)
    # The conversation keeps everything, wherever it is served.
    assert [item["type"] for item in all_items(gateway, conversation)] == [
        "message", "reasoning", "message", "compaction", "message", "message", "message", "reasoning", "message",
        "message", "message"]
    assert compaction["id"] in [item["id"] for item in all_items(gateway, conversation)]


def test_a_conversation_item_of_unknown_issuer_is_retried_without(make_gateway, upstream):
    gateway = make_gateway(2)
    upstream.push(reasoned("Elsewhere."))
    reasoning, answer = send(gateway, {"input": [user("q1")], "include": INCLUDE})["output"]
    issuer = served(upstream)
    set_status(gateway, issuer, "disabled")
    reply = requests.post(gateway.url + "/v1/conversations", headers=auth(gateway.key),
                          json={"items": [user("q1"), reasoning, answer]}, timeout=10)
    conversation = reply.json()["id"]

    request = request_id()
    conversation_turn(gateway, conversation, [user("q2")], request)
    refused, retried = upstream.response_requests()[-2:]
    assert len(refused["body"]["input"]) == 4
    assert retried["body"]["input"] == [user("q1"), answer, user("q2")]
    assert {"event": "retry", "account": account_ids(gateway)[other_than(issuer)], "status": 400, "dropped": 1,
            "history": 2} in decisions(gateway, request)

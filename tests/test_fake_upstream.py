"""The fake Codex backend binds what the real one binds to an account: encrypted content,
compaction items, turn states. The gateway's tests of moved threads rely on these refusals."""

import json

import pytest
import requests

from tests.fake_upstream import ISSUED, OPAQUE, TURN_STATE, Script, auth_json


def post(upstream, body, account="acct-a", headers=None):
    return requests.post(upstream.base_url + "/codex/responses", json=body, timeout=10, headers={
        "Authorization": "Bearer " + auth_json(account_id=account)["tokens"]["access_token"],
        "chatgpt-account-id": account, **(headers or {})})


def events(reply):
    assert reply.status_code == 200, reply.text
    return [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: ")]


def done_items(reply):
    return [event["item"] for event in events(reply) if event["type"] == "response.output_item.done"]


def body(*items, **extra):
    return {"model": "gpt-5.2", "store": False, "stream": True,
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                      *items], **extra}


def issued_reasoning(upstream, account):
    upstream.push({"events": Script().start().reasoning(encrypted_content=ISSUED).message(["ok"])
                   .completed().events()}, account=account)
    [reasoning, _] = done_items(post(upstream, body(), account))
    return reasoning


def test_issued_content_names_its_account_and_is_the_same_wherever_the_stream_repeats_it(upstream):
    upstream.push({"events": Script().start().reasoning(encrypted_content=ISSUED).completed().events()},
                  account="acct-a")
    answer = events(post(upstream, body(), "acct-a"))
    done = [event["item"] for event in answer if event["type"] == "response.output_item.done"]
    completed = answer[-1]["response"]["output"]
    assert done[0]["encrypted_content"] == completed[0]["encrypted_content"] != ISSUED
    assert upstream.issuer_of(done[0]["encrypted_content"]) == "acct-a"


def test_content_of_another_account_could_not_be_verified(upstream):
    reasoning = issued_reasoning(upstream, "acct-a")
    assert post(upstream, body(reasoning), "acct-a").status_code == 200

    refused = post(upstream, body(reasoning), "acct-b")
    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "message": f"The encrypted content for item {reasoning['id']} could not be verified. Reason: Encrypted "
                   "content could not be decrypted or parsed.",
        "type": "invalid_request_error", "param": None, "code": "invalid_encrypted_content"}
    # Content no account issued (the captured fixtures') passes anywhere, as before.
    assert post(upstream, body({**reasoning, "encrypted_content": OPAQUE}), "acct-b").status_code == 200


@pytest.mark.parametrize("item", [
    {"type": "reasoning", "id": "rs_gone", "summary": []},
    {"type": "reasoning", "id": "rs_gone", "summary": [], "encrypted_content": None},
    {"type": "compaction", "id": "rs_gone"},
    {"type": "item_reference", "id": "rs_gone"},
], ids=["reasoning-without-content", "reasoning-null-content", "compaction-without-content", "reference"])
def test_an_id_without_its_content_is_not_found_when_nothing_is_stored(upstream, item):
    refused = post(upstream, body(item))
    assert refused.status_code == 404
    assert refused.json()["error"]["message"] == (
        "Item with id 'rs_gone' not found. Items are not persisted when `store` is set to false. Try again with "
        "`store` set to true, or remove this item from your input.")
    assert upstream.response_requests()[-1]["body"]["input"][-1] == item
    # A reasoning item with neither id nor content (a summary alone) is fine.
    assert post(upstream, body({"type": "reasoning", "summary": []})).status_code == 200


def test_a_refusal_leaves_the_scripted_behaviour_for_the_next_request(upstream):
    upstream.push({"events": Script().start().message(["kept"]).completed().events()}, account="acct-b")
    reasoning = issued_reasoning(upstream, "acct-a")
    assert post(upstream, body(reasoning), "acct-b").status_code == 400
    [message] = done_items(post(upstream, body(), "acct-b"))
    assert message["content"][0]["text"] == "kept"


def test_a_compaction_trigger_gets_one_compaction_item_bound_to_the_account(upstream):
    answer = events(post(upstream, body({"type": "compaction_trigger"}), "acct-a"))
    assert [event["type"] for event in answer] == [
        "response.created", "response.in_progress", "response.output_item.done", "response.completed"]
    compaction = answer[2]["item"]
    assert compaction["type"] == "compaction" and compaction["id"].startswith("cmp_")
    assert set(compaction) == {"type", "id", "encrypted_content"}
    assert upstream.issuer_of(compaction["encrypted_content"]) == "acct-a"
    assert answer[-1]["response"]["output"] == [compaction]

    assert post(upstream, body(compaction), "acct-a").status_code == 200
    refused = post(upstream, body(compaction), "acct-b")
    assert refused.status_code == 400 and f"for item {compaction['id']} " in refused.json()["error"]["message"]


@pytest.mark.parametrize("where", [True, "event"], ids=["header", "metadata-event"])
def test_a_turn_state_is_issued_when_scripted_and_refused_by_other_accounts(upstream, where):
    assert TURN_STATE not in post(upstream, body()).headers  # not by default
    upstream.push({"turn_state": where}, account="acct-a")
    reply = post(upstream, body(), "acct-a")
    [(state, account)] = upstream.turn_states
    assert account == "acct-a"
    if where == "event":
        metadata = [event for event in events(reply) if event["type"] == "response.metadata"]
        assert metadata == [{"type": "response.metadata", "headers": {TURN_STATE: state}}]
        assert TURN_STATE not in reply.headers
    else:
        assert reply.headers[TURN_STATE] == state

    assert post(upstream, body(), "acct-a", headers={TURN_STATE: state}).status_code == 200
    for refused in (post(upstream, body(), "acct-b", headers={TURN_STATE: state}),
                    post(upstream, body(client_metadata={TURN_STATE: state}), "acct-b"),
                    post(upstream, body(), "acct-a", headers={TURN_STATE: "ts_made-up"})):
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_turn_state"


def test_a_behaviour_scripted_for_an_input_goes_to_that_request_first_on_any_account(upstream):
    marked = {"model": "gpt-5.2", "input": [{"type": "message", "role": "user",
                                            "content": [{"type": "input_text", "text": "mark-1"}]}]}
    upstream.push({"status": 503}, account=("input", "mark-1"))
    upstream.push({"status": 502}, account="acct-a")

    assert post(upstream, body(), "acct-b").status_code == 200  # another input: not its behaviour
    assert post(upstream, marked, "acct-a").status_code == 503  # before the account's own
    assert post(upstream, marked, "acct-a").status_code == 502
    assert post(upstream, marked, "acct-a").status_code == 200

"""What a Responses request sticks to an account by (``responses.affinity.affinity_key``)."""

import pytest

from responses_proxy.responses.affinity import affinity_key

SYSTEM = {"role": "developer", "content": "You are a coding agent."}


def turn(text, role="user"):
    return {"role": role, "content": text}


@pytest.mark.parametrize("body, follow", [
    ({"prompt_cache_key": "thread-1", "input": "hi"}, True),
    ({"conversation": "conv_1", "input": "hi"}, True),
    ({"conversation": {"id": "conv_1"}, "input": "hi"}, True),
    ({"input": "hi"}, False),  # a one-shot request: nothing cached to reuse
    ({"input": [turn("hi")]}, False),
    ({"input": [SYSTEM, turn("hi")]}, False),  # the system prompt is not a turn
    ({"input": [turn("hi"), turn("hello", "assistant"), turn("more")]}, True),
    ({"messages": [turn("be brief", "system"), turn("hi")]}, False),
    ({"messages": [turn("hi"), turn("hello", "assistant"), turn("more")]}, True),
])
def test_which_requests_follow_their_key(body, follow):
    key, follows = affinity_key("key_1", body)
    assert follows is follow
    assert len(key) == 64 and int(key, 16) >= 0, "a SHA-256 digest: the table never holds client data"


def test_the_turns_of_one_conversation_share_a_key():
    first = {"instructions": "be brief", "input": [SYSTEM, turn("hi")]}
    later = {"instructions": "be brief", "input": [SYSTEM, turn("hi"), turn("hello", "assistant"), turn("more")]}
    assert affinity_key("key_1", first)[0] == affinity_key("key_1", later)[0]
    assert affinity_key("key_1", {"prompt_cache_key": "t", "input": "a"})[0] == \
        affinity_key("key_1", {"prompt_cache_key": "t", "input": "b"})[0]
    assert affinity_key("key_1", {"conversation": "conv_1", "input": "a"})[0] == \
        affinity_key("key_1", {"conversation": {"id": "conv_1"}, "input": "b"})[0]


@pytest.mark.parametrize("one, other", [
    ({"prompt_cache_key": "t"}, {"prompt_cache_key": "u"}),
    ({"input": [turn("hi")], "instructions": "a"}, {"input": [turn("hi")], "instructions": "b"}),
    ({"input": [turn("hi")]}, {"input": [turn("hello")]}),
    ({"prompt_cache_key": "conv_1"}, {"conversation": "conv_1"}),  # one name space per kind of key
])
def test_different_conversations_have_different_keys(one, other):
    assert affinity_key("key_1", one)[0] != affinity_key("key_1", other)[0]


def test_keys_of_different_api_keys_never_meet():
    body = {"prompt_cache_key": "thread-1"}
    assert affinity_key("key_1", body)[0] != affinity_key("key_2", body)[0]

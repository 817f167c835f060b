"""normalize.to_upstream: a validated client body in, the Codex backend's body out.

One table: (client body, the whole upstream body). Every case also checks that the client's
body was not mutated.
"""

import copy

import pytest

from responses_proxy.responses.normalize import to_upstream

MODEL = "gpt-5.2"


def upstream(input_items, instructions="", **fields):
    return {"model": MODEL, "input": input_items, "instructions": instructions, **fields, "stream": True,
            "store": False}


def user_text(text):
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def assistant_text(text):
    return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}


def chat(*messages, **fields):
    return {"model": MODEL, "messages": list(messages), **fields}


def inp(value, **fields):
    return {"model": MODEL, "input": value, **fields}


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{\"tz\":\"UTC\"}"}}

CASES = [
    # string input
    pytest.param(inp("Hello"), upstream([user_text("Hello")]), id="string-input"),
    pytest.param(inp(""), upstream([user_text("")]), id="empty-string-input"),

    # messages -> instructions + items
    pytest.param(chat({"role": "system", "content": "You are a math tutor."}, {"role": "user", "content": "15*23?"}),
                 upstream([user_text("15*23?")], "You are a math tutor."), id="system-to-instructions"),
    pytest.param(chat({"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}),
                 upstream([user_text("Hi")], "Be brief."), id="developer-to-instructions"),
    pytest.param(chat({"role": "system", "content": "One."}, {"role": "user", "content": "Hi"},
                      {"role": "developer", "content": "Two."}),
                 upstream([user_text("Hi")], "One.\n\nTwo."), id="system-and-developer-joined"),
    pytest.param(chat({"role": "system", "content": "From messages."}, {"role": "user", "content": "Hi"},
                      instructions="From instructions."),
                 upstream([user_text("Hi")], "From instructions.\n\nFrom messages."), id="instructions-come-first"),
    pytest.param(chat({"role": "system", "content": [{"type": "text", "text": "Part one."},
                                                     {"type": "text", "text": "Part two."}]},
                      {"role": "user", "content": "Hi"}),
                 upstream([user_text("Hi")], "Part one.\nPart two."), id="system-content-parts"),
    pytest.param(chat({"role": "user", "content": "Hi"}, instructions="Only these."),
                 upstream([user_text("Hi")], "Only these."), id="instructions-without-system-message"),
    pytest.param(chat({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                      {"role": "user", "content": "Bye"}),
                 upstream([user_text("Hi"), assistant_text("Hello!"), user_text("Bye")]),
                 id="assistant-text-to-output-text"),
    pytest.param(chat({"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]}),
                 upstream([assistant_text("Hello!")]), id="assistant-text-part-to-output-text"),
    pytest.param(chat({"role": "user", "content": "Time?"},
                      {"role": "assistant", "content": None, "tool_calls": [CALL]},
                      {"role": "tool", "tool_call_id": "call_1", "content": "12:00"}),
                 upstream([user_text("Time?"),
                           {"type": "function_call", "call_id": "call_1", "name": "get_time",
                            "arguments": "{\"tz\":\"UTC\"}"},
                           {"type": "function_call_output", "call_id": "call_1", "output": "12:00"}]),
                 id="tool-calls-and-tool-message"),
    pytest.param(chat({"role": "assistant", "content": "Checking.", "tool_calls": [
                          CALL, {"id": "call_2", "type": "function", "function": {"name": "noop"}}]}),
                 upstream([assistant_text("Checking."),
                           {"type": "function_call", "call_id": "call_1", "name": "get_time",
                            "arguments": "{\"tz\":\"UTC\"}"},
                           {"type": "function_call", "call_id": "call_2", "name": "noop", "arguments": ""}]),
                 id="assistant-text-then-several-tool-calls"),
    pytest.param(chat({"role": "tool", "tool_call_id": "call_9", "content": None}),
                 upstream([{"type": "function_call_output", "call_id": "call_9", "output": ""}]),
                 id="tool-message-without-content"),
    pytest.param(chat({"role": "user", "content": [
                          {"type": "text", "text": "What is this?"},
                          {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "high"}},
                          {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                          {"type": "image_url", "image_url": "https://example.com/b.png"}]}),
                 upstream([{"type": "message", "role": "user", "content": [
                     {"type": "input_text", "text": "What is this?"},
                     {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "high"},
                     {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "auto"},
                     {"type": "input_image", "image_url": "https://example.com/b.png", "detail": "auto"}]}]),
                 id="chat-parts-to-input-parts"),

    # input items
    pytest.param(inp([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]),
                 upstream([user_text("Hi"), assistant_text("Hello")]), id="easy-messages-get-type-and-parts"),
    pytest.param(inp([{"type": "message", "role": "assistant", "content": [{"type": "input_text", "text": "Hi"}]}]),
                 upstream([assistant_text("Hi")]), id="assistant-input-text-to-output-text"),
    pytest.param(inp([{"role": "developer", "content": "Rules."}, {"role": "user", "content": "Hi"}]),
                 upstream([{"type": "message", "role": "developer",
                            "content": [{"type": "input_text", "text": "Rules."}]}, user_text("Hi")]),
                 id="developer-item-stays-in-input"),
    pytest.param(inp([{"role": "tool", "tool_call_id": "call_3", "content": "done"}]),
                 upstream([{"type": "function_call_output", "call_id": "call_3", "output": "done"}]),
                 id="tool-item-to-function-call-output"),
    pytest.param(inp([{"role": "tool", "tool_call_id": "call_4", "content": [{"type": "text", "text": "a"}]}]),
                 upstream([{"type": "function_call_output", "call_id": "call_4",
                            "output": [{"type": "input_text", "text": "a"}]}]),
                 id="tool-item-with-parts"),
    pytest.param(inp("Hi", instructions="Be terse."), upstream([user_text("Hi")], "Be terse."),
                 id="instructions-with-input-kept"),
    pytest.param(inp([{"role": "user", "content": [{"type": "text", "text": "Look"},
                                                   {"type": "image_url", "image_url": {"url": "u"}}]}]),
                 upstream([{"type": "message", "role": "user", "content": [
                     {"type": "input_text", "text": "Look"},
                     {"type": "input_image", "image_url": "u", "detail": "auto"}]}]),
                 id="chat-parts-in-input-items"),
    pytest.param(inp([{"type": "input_text", "text": "Look at"}, {"type": "input_image", "image_url": "u"}]),
                 upstream([{"type": "message", "role": "user", "content": [
                     {"type": "input_text", "text": "Look at"}, {"type": "input_image", "image_url": "u"}]}]),
                 id="loose-parts-become-one-user-message"),
    pytest.param(inp([{"role": "assistant", "content": "Hi", "reasoning_content": "hmm",
                       "reasoning_details": [{"text": "hmm"}], "tool_calls": [CALL], "function_call": {"name": "f"}}]),
                 upstream([assistant_text("Hi")]), id="strip-chat-fields-from-message"),
    pytest.param(inp([{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}",
                       "reasoning_content": "x", "function_call": {"name": "f"}}]),
                 upstream([{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]),
                 id="strip-chat-fields-from-other-items"),
    pytest.param(inp([{"type": "reasoning", "id": "rs_1", "summary": [], "content": None,
                       "encrypted_content": "gAAA", "reasoning_details": []}]),
                 upstream([{"type": "reasoning", "id": "rs_1", "summary": [], "content": None,
                            "encrypted_content": "gAAA"}]),
                 id="reasoning-item-keeps-its-content-null"),
    pytest.param(inp([{"type": "message", "role": "user", "id": "msg_1", "content": [
                         {"type": "input_text", "text": "Hi"}]},
                      {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "shell", "arguments": "{}",
                       "status": "completed"},
                      {"type": "function_call_output", "call_id": "c1", "output": "ok"}]),
                 upstream([{"type": "message", "role": "user", "id": "msg_1",
                            "content": [{"type": "input_text", "text": "Hi"}]},
                           {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "shell",
                            "arguments": "{}", "status": "completed"},
                           {"type": "function_call_output", "call_id": "c1", "output": "ok"}]),
                 id="codex-items-unchanged"),

    # tools
    pytest.param(inp("Hi", tools=[{"type": "web_search_preview", "search_context_size": "low"},
                                  {"type": "function", "name": "f"}]),
                 upstream([user_text("Hi")], tools=[{"type": "web_search", "search_context_size": "low"},
                                                    {"type": "function", "name": "f"}]),
                 id="web-search-preview-tool"),
    pytest.param(inp("Hi", tools=[{"type": "web_search_preview"}], tool_choice={"type": "web_search_preview"}),
                 upstream([user_text("Hi")], tools=[{"type": "web_search"}], tool_choice={"type": "web_search"}),
                 id="web-search-preview-tool-choice"),
    pytest.param(inp([{"type": "additional_tools", "tools": [{"type": "web_search_preview"}, {"type": "custom",
                                                                                              "name": "patch"}]}]),
                 upstream([{"type": "additional_tools", "tools": [{"type": "web_search"},
                                                                  {"type": "custom", "name": "patch"}]}]),
                 id="web-search-preview-in-additional-tools"),
    pytest.param(inp("Hi", tools=[{"type": "namespace", "name": "mcp"}, {"type": "tool_search"}], tool_choice="auto"),
                 upstream([user_text("Hi")], tools=[{"type": "namespace", "name": "mcp"}, {"type": "tool_search"}],
                          tool_choice="auto"),
                 id="other-tools-unchanged"),

    # top-level fields
    pytest.param(inp("Hi", safety_identifier="s", prompt_cache_retention="24h", temperature=0.5,
                     max_output_tokens=10),
                 upstream([user_text("Hi")]), id="stripped-fields"),
    pytest.param(inp("Hi", conversation="conv_1", previous_response_id=None, truncation=None),
                 upstream([user_text("Hi")]), id="gateway-fields-never-forwarded"),
    pytest.param({**chat({"role": "user", "content": "Hi"}), "input": None},
                 upstream([user_text("Hi")]), id="messages-never-forwarded"),
    pytest.param(inp("Hi", stream=False, store=None), upstream([user_text("Hi")]), id="stream-true-store-false"),
    pytest.param(inp("Hi", instructions=None), upstream([user_text("Hi")]), id="null-instructions-empty"),
    pytest.param(inp("Hi", reasoning={"effort": "high", "summary": "auto"}, include=["reasoning.encrypted_content"],
                     text={"verbosity": "low"}, prompt_cache_key="t1", client_metadata={"a": 1},
                     parallel_tool_calls=True, brand_new_field=[1, {"x": None}]),
                 upstream([user_text("Hi")], reasoning={"effort": "high", "summary": "auto"},
                          include=["reasoning.encrypted_content"], text={"verbosity": "low"}, prompt_cache_key="t1",
                          client_metadata={"a": 1}, parallel_tool_calls=True, brand_new_field=[1, {"x": None}]),
                 id="other-fields-pass-through"),
]


@pytest.mark.parametrize("body, expected", CASES)
def test_to_upstream(body, expected):
    before = copy.deepcopy(body)

    result = to_upstream(body)

    assert result == expected
    assert body == before


def test_result_shares_no_changed_structure_with_the_body():
    """Changing the upstream body afterwards (e.g. prepending history) leaves the client's alone."""
    body = inp([{"role": "assistant", "content": "Hi", "reasoning_content": "r"}],
               tools=[{"type": "web_search_preview"}])
    before = copy.deepcopy(body)

    result = to_upstream(body)
    result["input"].insert(0, user_text("earlier"))
    result["input"][1]["content"].append({"type": "output_text", "text": "more"})
    result["tools"][0]["type"] = "changed"

    assert body == before

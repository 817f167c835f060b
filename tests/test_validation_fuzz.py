"""Validation and normalization fed arbitrary JSON (property-based, hypothesis).

Whatever a client sends, checking it ends in a loaded body or the API's own ``InvalidRequest``
(a 400 envelope), never another exception (a 500). What passes is normalized without raising
and without touching the client's body. Bodies are built from the words and keys the rules
look at, so that the deep rules are reached and many bodies pass; the runs are derandomized
(the same examples every run, in CI too) and bounded to a few seconds.
"""

import copy

from hypothesis import event, given, settings
from hypothesis import strategies as st

from responses_proxy.conversations.schemas import ADD_ITEMS, LIST_ITEMS, UPDATE, CreateConversationSchema
from responses_proxy.errors import InvalidRequest
from responses_proxy.items import MAX_JSON_DEPTH, check_items, check_storable, check_tools, normalize_input, to_json
from responses_proxy.responses.normalize import to_upstream
from responses_proxy.responses.schemas import ResponsesRequestSchema
from responses_proxy.validation import load

PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=200)

WORDS = ["user", "assistant", "system", "developer", "tool", "wizard", "message", "function", "function_call",
         "function_call_output", "additional_tools", "input_file", "input_text", "input_image", "text", "image_url",
         "reasoning", "web_search", "web_search_preview", "file_search", "custom", "auto", "none", "required",
         "json_schema", "json_object", "reasoning.encrypted_content", "conv_abc", "conv_abc\n", "call_1", "msg_1",
         "msg/1", "{param}", "a\x00b", "", "x" * 201]
TOOL_TYPES = ["function", "web_search", "web_search_preview", "namespace", "custom", "file_search",
              "code_interpreter", "image_generation", 7, None]
KEYS = ["type", "role", "content", "id", "call_id", "tool_call_id", "output", "tools", "name", "file_id", "text",
        "image_url", "url", "detail", "function", "tool_calls", "arguments", "format", "schema", "strict",
        "parameters", "description", "reasoning_content", "summary", "verbosity", "effort"]
TOP_KEYS = ["model", "input", "messages", "instructions", "tools", "tool_choice", "parallel_tool_calls", "reasoning",
            "text", "stream", "include", "conversation", "previous_response_id", "store", "truncation",
            "prompt_cache_key", "metadata", "temperature", "max_output_tokens", "safety_identifier",
            "prompt_cache_retention", "items", "client_metadata"]

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=6) | st.sampled_from(WORDS))
values = st.recursive(scalars, lambda children: st.lists(children, max_size=4) | st.dictionaries(
    st.sampled_from(KEYS) | st.text(max_size=4), children, max_size=5), max_leaves=25)
parts = st.fixed_dictionaries({"type": st.sampled_from(["input_text", "text", "input_file", "image_url", "x"])},
                              optional={"text": st.text(max_size=5), "file_id": st.none() | st.just("f"),
                                        "image_url": st.just("u") | st.fixed_dictionaries({"url": st.just("u")})})
# What stands where an object is expected.
junk = st.text(max_size=3) | st.none() | st.integers() | st.booleans() | st.lists(st.none(), max_size=1)
content = st.lists(parts | junk, min_size=1, max_size=3) | st.lists(parts, max_size=3) | junk
message_items = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]), "content": content},
    optional={"type": st.just("message"), "tool_call_id": st.sampled_from(["call_1", "c" * 201]),
              "id": st.sampled_from(["msg_1", "msg_2", "m" * 101, "msg/1"]), "reasoning_content": st.just("r")})
other_items = st.fixed_dictionaries(
    {"type": st.sampled_from(["reasoning", "function_call", "function_call_output", "input_text", "additional_tools",
                              "custom_tool_call"])},
    optional={"call_id": st.sampled_from(["call_1", "c\x00"]),
              "output": st.text(max_size=3) | st.lists(parts | junk, max_size=3),
              "tools": st.lists(st.fixed_dictionaries({"type": st.sampled_from(TOOL_TYPES)}), max_size=2),
              "id": st.sampled_from(["fc_1", "msg_1"]), "text": st.text(max_size=3), "function_call": values})
items = st.lists(message_items | other_items | junk | values, max_size=6)
tool = st.fixed_dictionaries({"type": st.sampled_from(TOOL_TYPES)},
                             optional={"name": st.sampled_from(["f", "", 1]), "parameters": values})
tools = st.lists(tool, max_size=3)
crafted = {
    "input": st.text(max_size=5) | items, "messages": st.lists(message_items, max_size=3), "tools": tools,
    "tool_choice": st.sampled_from(["auto", "sometimes"]) | values, "conversation": st.sampled_from(WORDS) | values,
    "include": st.lists(st.sampled_from(["reasoning.encrypted_content", "everything", 1]), max_size=2),
    "prompt_cache_key": st.sampled_from(WORDS),
    "text": st.fixed_dictionaries({"format": st.fixed_dictionaries({"type": st.sampled_from(WORDS)})}) | values}
bodies = st.fixed_dictionaries({"model": st.sampled_from(["gpt-5.2", "m" * 201]) | values},
                               optional={**dict.fromkeys(TOP_KEYS[1:], values), **crafted})
# Bodies as clients send them, right or nearly: most pass, so what passes is exercised too.
usual = {"tools": tools, "tool_choice": st.sampled_from(["auto", "none", "required"]),
         "include": st.lists(st.just("reasoning.encrypted_content"), max_size=1),
         "prompt_cache_key": st.sampled_from(["thread-1", "0199a0b1"]), "stream": st.booleans(),
         "conversation": st.sampled_from(["conv_abc", "conv_x-1"]), "instructions": st.text(max_size=5) | st.none(),
         "reasoning": st.fixed_dictionaries({}, optional={"effort": st.just("high"), "summary": st.just("auto")}),
         "text": st.fixed_dictionaries({"format": st.fixed_dictionaries({"type": st.just("json_object")})}),
         "client_metadata": values, "temperature": st.floats(0, 2)}
plausible = st.fixed_dictionaries({"model": st.just("gpt-5.2"), "input": st.lists(
    message_items | other_items | junk, min_size=1, max_size=5)}, optional=usual) | st.fixed_dictionaries(
    {"model": st.just("gpt-5.2"), "messages": st.lists(message_items, min_size=1, max_size=4)}, optional=usual)
anything = values | st.dictionaries(st.sampled_from(TOP_KEYS), values, max_size=6) | bodies | plausible

REQUEST = ResponsesRequestSchema(max_input_items=5)
CREATE = CreateConversationSchema(max_items=5)


def loaded_or_refused(schema, body):
    """``load``'s result, or None when it refused the body with a 400 envelope."""
    try:
        loaded = load(schema, body)
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.message and (exc.param is None or isinstance(exc.param, str))
        event(f"{type(schema).__name__} refused")
        return None
    event(f"{type(schema).__name__} loaded")
    return loaded


def check_responses_body(body):
    before = copy.deepcopy(body)

    loaded = loaded_or_refused(REQUEST, body)

    assert body == before
    if loaded is None:
        return
    # The loaded body is the client's: same fields, same order, the same arrays (not copies).
    assert loaded == body and list(loaded) == list(body)
    assert all(loaded[key] is body[key] for key in ("input", "tools") if isinstance(body.get(key), list))
    upstream = to_upstream(loaded)
    assert body == before
    assert isinstance(upstream["input"], list) and all(isinstance(item, dict) for item in upstream["input"])
    assert upstream["stream"] is True and upstream["store"] is False and isinstance(upstream["instructions"], str)


@PROPERTY
@given(anything)
def test_any_json_as_a_responses_body_is_loaded_or_refused(body):
    check_responses_body(body)


@PROPERTY
@given(plausible)
def test_a_responses_body_as_clients_send_them_is_loaded_or_refused_and_normalized(body):
    check_responses_body(body)


@PROPERTY
@given(anything)
def test_a_conversations_body_is_loaded_or_refused_and_its_items_normalized(body):
    if isinstance(body, dict) and "input" in body:
        body = {"items": body["input"], **{key: value for key, value in body.items() if key != "input"}}
    before = copy.deepcopy(body)
    for schema in (CREATE, UPDATE, ADD_ITEMS):
        loaded = loaded_or_refused(schema, body)
        if loaded is not None and schema is not UPDATE:
            normalize_input(loaded.get("items") or [])
        assert body == before


@PROPERTY
@given(st.dictionaries(st.sampled_from(["limit", "after", "order", "include", "x"]),
                       st.text(max_size=4) | st.sampled_from(["1", "100", "101", "0", "-3", "asc", "desc"])))
def test_a_query_string_is_loaded_or_refused(query):
    loaded = loaded_or_refused(LIST_ITEMS, query)
    if loaded is not None:
        assert 1 <= loaded["limit"] <= 100 and loaded["order"] in ("asc", "desc")


@PROPERTY
@given(st.lists(message_items | other_items | junk | values, max_size=6), st.lists(tool | junk | values, max_size=4))
def test_the_fast_checks_take_anything(items_, tools_):
    try:
        check_items(items_, "items")
        check_storable(items_, "items")  # of items check_items accepted
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.param.startswith("items[")
    try:
        check_tools(tools_)
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.param.startswith("tools[")


def nested(depth):
    value = []
    for _ in range(depth - 1):
        value = [value]
    return value


@PROPERTY
@given(st.integers(min_value=1, max_value=1024))
def test_to_json_writes_or_refuses_any_depth_a_body_can_have(depth):
    try:
        assert to_json(nested(depth)) == b"[" * depth + b"]" * depth
        assert depth <= MAX_JSON_DEPTH
    except InvalidRequest as exc:
        assert exc.status == 400 and depth > MAX_JSON_DEPTH

"""The contract of ``POST /v1/responses``: one marshmallow schema, every rule of the API document.

Each failure names the problem and the ``param`` it is about (``tools[2].type``,
``input[0].content[1].file_id``...). Unknown top-level fields pass through untouched; new
client fields must not break clients. The input items and the tools are checked by the fast
loops of ``items`` (see ``validation``) once every field has its type.
"""

from marshmallow import ValidationError, fields, validate, validates_schema

from ..items import (
    FILE_ID_ERROR,
    MESSAGE_ROLES,
    ROLE_ERROR,
    UNSUPPORTED_TOOL_TYPES,
    check_items,
    check_storable,
    check_tools,
    is_conversation_id,
    stored_string_problem,
)
from ..services import services
from ..validation import (
    EXPECTED,
    Array,
    Boolean,
    Integer,
    Nested,
    Number,
    Object,
    Passthrough,
    String,
    StringOrArray,
    StringOrList,
    StringOrObject,
    check_sizes,
    field,
    load,
    nested_list,
    quoted,
)

TOOL_CHOICE_MODES = ("none", "auto", "required")
TEXT_FORMAT_TYPES = ("text", "json_object", "json_schema")
PROMPT_CACHE_KEY_MAX = 256
# Printable text: no control characters or line separators, no space at either end.
PROMPT_CACHE_KEY = rf"\A(?!\s)[^\x00-\x1f\x7f-\x9f\u2028\u2029]{{0,{PROMPT_CACHE_KEY_MAX}}}(?<!\s)\Z"
INCLUDE_VALUES = (
    "code_interpreter_call.outputs",
    "computer_call_output.output.image_url",
    "file_search_call.results",
    "message.input_image.image_url",
    "message.output_text.logprobs",
    "reasoning.encrypted_content",
    "web_search_call.action.sources",
)


class ReasoningSchema(Passthrough):
    effort = field(String, "a string")
    summary = field(String, "a string")


class TextFormatSchema(Passthrough):
    type = field(String, "a string", required=True, allow_none=False, validate=validate.OneOf(
        TEXT_FORMAT_TYPES, error="Invalid value for '{{param}}': '{input}'; "
                                 "supported values are 'text', 'json_object' and 'json_schema'."))
    name = field(String, "a string")
    schema = field(Object, "an object")
    strict = field(Boolean, "a boolean")
    description = field(String, "a string")

    @validates_schema(skip_on_field_errors=True)
    def check_json_schema(self, data, **kwargs):
        if data["type"] == "json_schema":
            if not data.get("name"):
                raise ValidationError("A json_schema format needs a 'name'.", "name")
            if data.get("schema") is None:
                raise ValidationError("A json_schema format needs a 'schema' object.", "schema")


class TextSchema(Passthrough):
    verbosity = field(String, "a string")
    format = Nested(TextFormatSchema, "an object")


class FunctionSchema(Passthrough):
    name = field(String, "a string", required=True, allow_none=False)
    arguments = field(String, "a string")


class ToolCallSchema(Passthrough):
    id = field(String, "a string", required=True, allow_none=False)
    type = field(String, "a string")
    function = Nested(FunctionSchema, "an object", required=True, allow_none=False)


class ContentPartSchema(Passthrough):
    # An absent type reads "expected a string", as it does for the parts of input items.
    type = field(String, "a string", EXPECTED + "a string", required=True, allow_none=False)

    @validates_schema(skip_on_field_errors=True)
    def check_file(self, data, **kwargs):
        if data["type"] == "input_file" and data.get("file_id") is not None:
            raise ValidationError(FILE_ID_ERROR, "file_id")


class MessageSchema(Passthrough):
    role = field(String, "a string", required=True, allow_none=False,
                 validate=validate.OneOf(MESSAGE_ROLES, error=ROLE_ERROR))
    content = field(StringOrList, "a string or an array of content parts",
                    cls_or_instance=Nested(ContentPartSchema, "an object", allow_none=False))
    tool_call_id = field(String, "a string")
    tool_calls = nested_list(ToolCallSchema, "an object")

    @validates_schema(skip_on_field_errors=True)
    def check_tool_message(self, data, **kwargs):
        if data["role"] == "tool" and not data.get("tool_call_id"):
            raise ValidationError("A tool message needs the 'tool_call_id' of the call it answers.",
                                  "tool_call_id")


def check_storable_messages(messages):
    """The call ids of chat messages, stored as the call_id of the items they become."""
    for index, message in enumerate(messages):
        calls = [(f"messages[{index}].tool_calls[{position}].id", call["id"])
                 for position, call in enumerate(message.get("tool_calls") or ())]
        for param, call_id in [(f"messages[{index}].tool_call_id", message.get("tool_call_id")), *calls]:
            problem = stored_string_problem(call_id, "call_id") if isinstance(call_id, str) else None
            if problem is not None:
                raise ValidationError(problem, param)


def check_tool_choice(choice):
    if isinstance(choice, str):
        if choice not in TOOL_CHOICE_MODES:
            raise ValidationError(
                f"Invalid value for '{{param}}': '{choice}'; expected {quoted(TOOL_CHOICE_MODES)} or an object.")
        return
    kind = choice.get("type")
    if not isinstance(kind, str):
        raise ValidationError({"type": [EXPECTED + "a string"]})
    if kind in UNSUPPORTED_TOOL_TYPES:
        raise ValidationError({"type": [f"Tool type '{kind}' is not supported"]})
    if kind == "function" and not isinstance(choice.get("name"), str):
        raise ValidationError({"name": ["A function tool_choice needs the 'name' of the function."]})


def check_conversation(conversation):
    if isinstance(conversation, dict):
        if not isinstance(conversation.get("id"), str):
            raise ValidationError({"id": [EXPECTED + "a string"]})
        conversation = conversation["id"]
    if not is_conversation_id(conversation):
        raise ValidationError(
            "Invalid value for '{param}': expected 'conv_' followed by letters, digits, '_' or '-'.")


class ResponsesRequestSchema(Passthrough):
    """The body of ``POST /v1/responses``; ``max_input_items`` is ``RESPONSES_PROXY_MAX_INPUT_ITEMS``."""

    def __init__(self, max_input_items, **kwargs):
        super().__init__(**kwargs)
        self.max_input_items = max_input_items

    def load(self, data, **kwargs):
        # Sizes first, before anything walks the arrays (a pre_load hook costs more than the check).
        check_sizes(data, ("input", "messages"), self.max_input_items)
        return super().load(data, **kwargs)

    # The usage row's column holds 200 characters, and no NUL on PostgreSQL.
    model = field(String, "a string", required=True, allow_none=False, validate=validate.Regexp(
        r"\A[^\x00]{0,200}\Z", error="Invalid value for 'model': a model name is at most 200 characters, without NUL."))
    input = field(StringOrArray, "a string or an array of input items")
    messages = nested_list(MessageSchema, "an object")
    instructions = field(String, "a string")
    tools = field(Array, "an array")
    tool_choice = field(StringOrObject, "a string or an object", validate=check_tool_choice)
    parallel_tool_calls = field(Boolean, "a boolean")
    reasoning = Nested(ReasoningSchema, "an object")
    text = Nested(TextSchema, "an object")
    stream = field(Boolean, "a boolean")
    include = field(fields.List, "an array", cls_or_instance=field(String, "a string", allow_none=False,
                    validate=validate.OneOf(INCLUDE_VALUES, error=(
                        "Invalid value for '{{param}}': unknown include value '{input}'. "
                        f"Supported values: {quoted(INCLUDE_VALUES)}."))))
    conversation = field(StringOrObject, "a string or an object with an 'id'", validate=check_conversation)
    previous_response_id = field(fields.Raw, "a string")
    store = field(Boolean, "a boolean", validate=validate.Equal(
        False, error="'store' must be false or omitted: responses are not stored."))
    # Any value but null is refused.
    truncation = field(fields.Raw, "a string", validate=validate.Equal(None, error="'truncation' is not supported."))
    # A name, not a payload: upstream it becomes a key of its own, scoped to the API key.
    prompt_cache_key = field(String, "a string", validate=validate.Regexp(
        PROMPT_CACHE_KEY, error=f"Invalid value for 'prompt_cache_key': expected at most {PROMPT_CACHE_KEY_MAX} "
                                "printable characters, not starting or ending with a space."))
    metadata = field(Object, "an object")
    # Stripped before forwarding, but a wrong type is still the client's mistake to hear about.
    temperature = field(Number, "a number")
    max_output_tokens = field(Integer, "an integer")
    safety_identifier = field(String, "a string")
    prompt_cache_retention = field(String, "a string")

    @validates_schema(skip_on_field_errors=True)
    def check_request(self, data, **kwargs):
        if data.get("tools"):
            check_tools(data["tools"])
        has_input = data.get("input") is not None
        has_messages = data.get("messages") is not None
        if has_input and has_messages:
            raise ValidationError("Provide either 'input' or 'messages', not both.", "messages")
        if not has_input and not has_messages:
            raise ValidationError("Missing required parameter: 'input' (or 'messages').", "input")
        if isinstance(data.get("input"), list):
            check_items(data["input"])
        if data.get("previous_response_id") is not None:
            if data.get("conversation") is not None:
                raise ValidationError(
                    "'conversation' and 'previous_response_id' cannot be used together; "
                    "use 'conversation' for multi-turn context.", "previous_response_id")
            raise ValidationError(
                "'previous_response_id' is not supported: responses are not stored. "
                "Use 'conversation' for multi-turn context.", "previous_response_id")
        if data.get("conversation") is not None:
            # The turn's input is stored with the conversation.
            if has_input:
                if isinstance(data["input"], list):
                    check_storable(data["input"])
            else:
                check_storable_messages(data["messages"])


def validate_request(body):
    """The loaded body (see ``validation.load``), or ``InvalidRequest``; the app's schema knows
    its limits."""
    return load(services().request_schema, body)

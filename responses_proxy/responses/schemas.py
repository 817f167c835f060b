"""The contract of ``POST /v1/responses``: one marshmallow schema, every rule of the API document.

Each failure names the problem and the ``param`` it is about (``tools[2].type``,
``input[0].content[1].file_id``...). Unknown top-level fields pass through untouched; new
client fields must not break clients. Input items are checked by a plain loop in a schema
validator rather than nested schemas: a Codex history holds hundreds of items. Tools too, by a
field that gives the errors a nested schema would: a Codex request carries a dozen on every turn.
"""

from marshmallow import ValidationError, fields, validates_schema

from ..items import CONVERSATION_ID, MESSAGE_ROLES, UNSUPPORTED_TOOL_TYPES, check_items, check_parts, check_tool
from ..validation import (
    EXPECTED,
    MISSING,
    Array,
    Boolean,
    Integer,
    Nested,
    Number,
    Object,
    Passthrough,
    String,
    StringOrArray,
    StringOrObject,
    field,
    load,
    nested_list,
    quoted,
)

TOOL_CHOICE_MODES = ("none", "auto", "required")
TEXT_FORMAT_TYPES = ("text", "json_object", "json_schema")
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
    type = field(String, "a string", required=True, allow_none=False)
    name = field(String, "a string")
    schema = field(Object, "an object")
    strict = field(Boolean, "a boolean")
    description = field(String, "a string")

    @validates_schema
    def check_type(self, data, **kwargs):
        if data["type"] not in TEXT_FORMAT_TYPES:
            raise ValidationError(
                f"Invalid value for '{{param}}': '{data['type']}'; "
                "supported values are 'text', 'json_object' and 'json_schema'.",
                "type")
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


class MessageSchema(Passthrough):
    role = field(String, "a string", required=True, allow_none=False)
    content = field(StringOrArray, "a string or an array of content parts")
    tool_call_id = field(String, "a string")
    tool_calls = nested_list(ToolCallSchema, "an object")

    @validates_schema(skip_on_field_errors=True)
    def check_message(self, data, **kwargs):
        role = data["role"]
        if role not in MESSAGE_ROLES:
            raise ValidationError(
                f"Invalid value for '{{param}}': '{role}'; expected one of {quoted(MESSAGE_ROLES)}.", "role")
        if role == "tool" and not data.get("tool_call_id"):
            raise ValidationError("A tool message needs the 'tool_call_id' of the call it answers.",
                                  "tool_call_id")
        if isinstance(data.get("content"), list):
            check_parts(data["content"], "content")


class Tools(Array):
    """An array of tool objects, each checked as a nested schema with these fields and
    ``check_tool`` would check it, with the same errors, in a plain loop."""

    # (name, JSON types, expected) of a tool's typed fields, in the order their errors are reported;
    # ``type`` is required, the others may be null.
    FIELDS = (("type", (str,), "a string"), ("name", (str,), "a string"), ("description", (str,), "a string"),
              ("parameters", (dict,), "an object"), ("strict", (bool,), "a boolean"))

    def _deserialize(self, value, attr, data, **kwargs):
        super()._deserialize(value, attr, data, **kwargs)
        for index, tool in enumerate(value):
            errors = tool_errors(tool)
            if errors:
                raise ValidationError({index: errors})
        return value


def tool_errors(tool):
    """What a nested tool schema reports about ``tool``: marshmallow's error messages, or None."""
    if tool is None:
        return [EXPECTED + "an object"]
    if not isinstance(tool, dict):
        return {"_schema": [EXPECTED + "an object"]}
    errors = {}
    for name, types, expected in Tools.FIELDS:
        value = tool.get(name)
        if value is None:
            if name == "type":
                errors[name] = [MISSING if name not in tool else EXPECTED + expected]
        elif not isinstance(value, types):
            errors[name] = [EXPECTED + expected]
    if errors:
        return errors
    try:
        check_tool(tool, "")
    except ValidationError as exc:
        return {exc.field_name: exc.messages}
    return None


class ResponsesRequestSchema(Passthrough):
    model = field(String, "a string", required=True, allow_none=False)
    input = field(StringOrArray, "a string or an array of input items")
    messages = nested_list(MessageSchema, "an object")
    instructions = field(String, "a string")
    tools = field(Tools, "an array")
    tool_choice = field(StringOrObject, "a string or an object")
    parallel_tool_calls = field(Boolean, "a boolean")
    reasoning = Nested(ReasoningSchema, "an object")
    text = Nested(TextSchema, "an object")
    stream = field(Boolean, "a boolean")
    include = field(fields.List, "an array", cls_or_instance=field(String, "a string", allow_none=False))
    conversation = field(StringOrObject, "a string or an object with an 'id'")
    previous_response_id = field(fields.Raw, "a string")
    store = field(Boolean, "a boolean")
    truncation = field(fields.Raw, "a string")
    prompt_cache_key = field(String, "a string")
    metadata = field(Object, "an object")
    # Stripped before forwarding, but a wrong type is still the client's mistake to hear about.
    temperature = field(Number, "a number")
    max_output_tokens = field(Integer, "an integer")
    safety_identifier = field(String, "a string")
    prompt_cache_retention = field(String, "a string")

    @validates_schema(skip_on_field_errors=True)
    def check_request(self, data, **kwargs):
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
        if data.get("store") is True:
            raise ValidationError("'store' must be false or omitted: responses are not stored.", "store")
        if data.get("truncation") is not None:
            raise ValidationError("'truncation' is not supported.", "truncation")
        conversation = data.get("conversation")
        if isinstance(conversation, dict):
            if not isinstance(conversation.get("id"), str):
                raise ValidationError("expected a string", "conversation.id")
            conversation = conversation["id"]
        if conversation is not None and not CONVERSATION_ID.match(conversation):
            raise ValidationError("Invalid value for '{param}': expected 'conv_' followed by letters, digits, "
                                  "'_' or '-'.", "conversation")
        choice = data.get("tool_choice")
        if isinstance(choice, str) and choice not in TOOL_CHOICE_MODES:
            raise ValidationError(
                f"Invalid value for '{{param}}': '{choice}'; expected {quoted(TOOL_CHOICE_MODES)} or an object.",
                "tool_choice")
        if isinstance(choice, dict):
            check_tool_choice(choice)
        for index, value in enumerate(data.get("include") or ()):
            if value not in INCLUDE_VALUES:
                raise ValidationError(
                    f"Invalid value for '{{param}}': unknown include value '{value}'. "
                    f"Supported values: {quoted(INCLUDE_VALUES)}.",
                    f"include[{index}]")


def check_tool_choice(choice):
    kind = choice.get("type")
    if not isinstance(kind, str):
        raise ValidationError("expected a string", "tool_choice.type")
    if kind in UNSUPPORTED_TOOL_TYPES:
        raise ValidationError(f"Tool type '{kind}' is not supported", "tool_choice.type")
    if kind == "function" and not isinstance(choice.get("name"), str):
        raise ValidationError("A function tool_choice needs the 'name' of the function.", "tool_choice.name")


REQUEST_SCHEMA = ResponsesRequestSchema()


def validate_request(body):
    """Check a parsed JSON body; returns it (unchanged) or raises ``InvalidRequest``."""
    return load(REQUEST_SCHEMA, body)



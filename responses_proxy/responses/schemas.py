"""The contract of ``POST /v1/responses``: one marshmallow schema, every rule of the API document.

Each failure names the problem and the ``param`` it is about (``tools[2].type``,
``input[0].content[1].file_id``...). Unknown top-level fields pass through untouched; new
client fields must not break clients. Input items are checked by a plain loop in a schema
validator rather than nested schemas: a Codex history holds hundreds of items.
"""

from marshmallow import INCLUDE, Schema, ValidationError, fields, validates_schema

from ..errors import InvalidRequest

UNSUPPORTED_TOOL_TYPES = frozenset((
    "file_search", "code_interpreter", "computer_use", "computer_use_preview", "image_generation"))
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
MESSAGE_ROLES = ("user", "assistant", "system", "developer", "tool")

# Marshmallow messages are phrased "expected ..." and completed with what was received.
EXPECTED = "expected "
MISSING = "missing"


class Strict:
    """Field mixin: accept exactly one JSON type (marshmallow would coerce "true" or 1)."""

    json_types: tuple = ()

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, self.json_types) or (isinstance(value, bool) and bool not in self.json_types):
            raise self.make_error("invalid")
        return value


def field(kind, expected, **kwargs):
    kwargs.setdefault("allow_none", True)
    messages = {"invalid": EXPECTED + expected, "required": MISSING, "null": EXPECTED + expected}
    return kind(error_messages=messages, **kwargs)


class String(Strict, fields.Raw):
    json_types = (str,)


class Boolean(Strict, fields.Raw):
    json_types = (bool,)


class Number(Strict, fields.Raw):
    json_types = (int, float)


class Integer(Strict, fields.Raw):
    json_types = (int,)


class Object(Strict, fields.Raw):
    json_types = (dict,)


class Array(Strict, fields.Raw):
    json_types = (list,)


class StringOrArray(Strict, fields.Raw):
    json_types = (str, list)


class StringOrObject(Strict, fields.Raw):
    json_types = (str, dict)


class Nested(fields.Nested):
    def __init__(self, schema, expected, **kwargs):
        kwargs.setdefault("allow_none", True)
        super().__init__(schema, error_messages={"type": EXPECTED + expected, "null": EXPECTED + expected},
                         **kwargs)


def nested_list(schema, expected_item, **kwargs):
    return field(fields.List, "an array", cls_or_instance=Nested(schema, expected_item, allow_none=False),
                 **kwargs)


class Passthrough(Schema):
    error_messages = {"type": EXPECTED + "an object"}

    class Meta:
        unknown = INCLUDE


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
                f"Invalid value for '{{param}}': '{data['type']}'; supported values are 'text', 'json_object' and 'json_schema'.",
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
            raise ValidationError(f"Invalid value for '{{param}}': '{role}'; expected one of {quoted(MESSAGE_ROLES)}.", "role")
        if role == "tool" and not data.get("tool_call_id"):
            raise ValidationError("A tool message needs the 'tool_call_id' of the call it answers.",
                                  "tool_call_id")
        if isinstance(data.get("content"), list):
            check_parts(data["content"], "content")


class ToolSchema(Passthrough):
    type = field(String, "a string", required=True, allow_none=False)
    name = field(String, "a string")
    description = field(String, "a string")
    parameters = field(Object, "an object")
    strict = field(Boolean, "a boolean")

    @validates_schema(skip_on_field_errors=True)
    def check_tool(self, data, **kwargs):
        check_tool(data, "")


class ResponsesRequestSchema(Passthrough):
    model = field(String, "a string", required=True, allow_none=False)
    input = field(StringOrArray, "a string or an array of input items")
    messages = nested_list(MessageSchema, "an object")
    instructions = field(String, "a string")
    tools = nested_list(ToolSchema, "an object")
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
            check_input_items(data["input"])
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
        if isinstance(conversation, dict) and not isinstance(conversation.get("id"), str):
            raise ValidationError("expected a string", "conversation.id")
        choice = data.get("tool_choice")
        if isinstance(choice, str) and choice not in TOOL_CHOICE_MODES:
            raise ValidationError(
                f"Invalid value for '{{param}}': '{choice}'; expected {quoted(TOOL_CHOICE_MODES)} or an object.", "tool_choice")
        if isinstance(choice, dict):
            check_tool_choice(choice)
        for index, value in enumerate(data.get("include") or ()):
            if value not in INCLUDE_VALUES:
                raise ValidationError(
                    f"Invalid value for '{{param}}': unknown include value '{value}'. Supported values: {quoted(INCLUDE_VALUES)}.",
                    f"include[{index}]")


def check_tool(tool, path):
    prefix = path + "." if path else ""
    kind = tool["type"]
    if kind in UNSUPPORTED_TOOL_TYPES:
        raise ValidationError(f"Tool type '{kind}' is not supported", prefix + "type")
    if kind == "function" and not tool.get("name"):
        raise ValidationError("A function tool needs a 'name'.", prefix + "name")


def check_tool_choice(choice):
    kind = choice.get("type")
    if not isinstance(kind, str):
        raise ValidationError("expected a string", "tool_choice.type")
    if kind in UNSUPPORTED_TOOL_TYPES:
        raise ValidationError(f"Tool type '{kind}' is not supported", "tool_choice.type")
    if kind == "function" and not isinstance(choice.get("name"), str):
        raise ValidationError("A function tool_choice needs the 'name' of the function.", "tool_choice.name")


def check_input_items(items):
    for index, item in enumerate(items):
        path = f"input[{index}]"
        if not isinstance(item, dict):
            raise ValidationError("expected an object", path)
        kind = item.get("type")
        role = item.get("role")
        if kind is not None and not isinstance(kind, str):
            raise ValidationError("expected a string", path + ".type")
        if kind is None and role is None:
            raise ValidationError("Each input item needs a 'type' or a 'role'.", path)
        if role is not None and kind in (None, "message"):
            check_message_item(item, path)
        elif kind == "input_file":
            check_part(item, path)
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise ValidationError("A function_call_output needs the 'call_id' of its call.", path + ".call_id")
        elif kind == "additional_tools":
            tools = item.get("tools")
            if tools is not None:
                if not isinstance(tools, list):
                    raise ValidationError("expected an array", path + ".tools")
                for position, tool in enumerate(tools):
                    tool_path = f"{path}.tools[{position}]"
                    if not isinstance(tool, dict):
                        raise ValidationError("expected an object", tool_path)
                    if not isinstance(tool.get("type"), str):
                        raise ValidationError("expected a string", tool_path + ".type")
                    check_tool(tool, tool_path)


def check_message_item(item, path):
    role = item["role"]
    if not isinstance(role, str):
        raise ValidationError("expected a string", path + ".role")
    if role not in MESSAGE_ROLES:
        raise ValidationError(f"Invalid value for '{{param}}': '{role}'; expected one of {quoted(MESSAGE_ROLES)}.", path + ".role")
    content = item.get("content")
    if content is None:
        if role in ("user", "system", "developer"):
            raise ValidationError(f"A {role} message needs 'content'.", path + ".content")
    elif isinstance(content, list):
        check_parts(content, path + ".content")
    elif not isinstance(content, str):
        raise ValidationError("expected a string or an array of content parts", path + ".content")
    if role == "tool" and not isinstance(item.get("tool_call_id") or item.get("call_id"), str):
        raise ValidationError("A tool message needs the 'tool_call_id' of the call it answers.",
                              path + ".tool_call_id")


def check_parts(parts, path):
    for index, part in enumerate(parts):
        check_part(part, f"{path}[{index}]")


def check_part(part, path):
    if not isinstance(part, dict):
        raise ValidationError("expected an object", path)
    kind = part.get("type")
    if not isinstance(kind, str):
        raise ValidationError("expected a string", path + ".type")
    if kind == "input_file" and part.get("file_id") is not None:
        raise ValidationError(
            "input_file.file_id is not supported: send the file inline with 'file_data' or by 'file_url'.",
            path + ".file_id")


def quoted(values):
    return ", ".join(f"'{value}'" for value in values)


REQUEST_SCHEMA = ResponsesRequestSchema()


def validate_request(body):
    """Check a parsed JSON body; returns it (unchanged) or raises ``InvalidRequest``."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, but got {describe(body)}.")
    try:
        REQUEST_SCHEMA.load(body)
    except ValidationError as exc:
        param, message = first_error(exc.messages)
        raise InvalidRequest(explain(param, message, lookup(body, param)), param=param) from None
    return body


def first_error(messages, path=""):
    """The first (param, message) of marshmallow's nested error dict."""
    if isinstance(messages, list):
        first = messages[0]
        return (path or None, first) if isinstance(first, str) else first_error(first, path)
    key, value = next(iter(messages.items()))
    if key == "_schema":
        return first_error(value, path)
    if isinstance(key, int):
        return first_error(value, f"{path}[{key}]")
    return first_error(value, f"{path}.{key}" if path else key)


def explain(param, message, value):
    """The envelope's message: type errors say what came instead; rules may name ``{param}``."""
    if message == MISSING:
        return f"Missing required parameter: '{param}'."
    if message.startswith(EXPECTED):
        return f"Invalid type for '{param}': {message}, but got {describe(value)} instead."
    return message.replace("{param}", param or "")


_MISSING_VALUE = object()


def lookup(body, param):
    """The value at a param path like ``tools[2].function.name`` (for error messages)."""
    value = body
    if not param:
        return value
    for token in param.replace("[", ".[").split("."):
        if not token:
            continue
        try:
            value = value[int(token[1:-1])] if token.startswith("[") else value[token]
        except (KeyError, IndexError, TypeError, ValueError):
            return _MISSING_VALUE
    return value


def describe(value):
    if value is _MISSING_VALUE:
        return "nothing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"

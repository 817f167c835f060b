"""How the gateway checks what clients send, and how every refusal is worded.

Bodies and query strings are loaded by marshmallow schemas and the views use the loaded data.
Fields accept exactly one JSON type (no coercion of "true" or 1), allowed values are field
validators, rules across fields are ``validates_schema`` methods. ``load`` turns the first
problem into one ``InvalidRequest`` naming its ``param`` (``tools[2].type``) and what was wrong.

The input items and tools of a request are checked by plain loops instead (``items``): a Codex
request carries its whole history and a dozen tools on every turn, and a schema per element
costs some 40 times as much (10 ms for a history of 600 items). Those loops word their refusals
with ``refusal``, so both read the same.
"""

from marshmallow import INCLUDE, Schema, ValidationError, fields

from .errors import InvalidRequest

# Type errors are phrased "expected ..." and completed with what was received.
EXPECTED = "expected "
MISSING = "missing"
# The value of a param the body does not have (it is described as "nothing").
ABSENT = object()


class Strict:
    """Field mixin: accept exactly one JSON type (marshmallow would coerce "true" or 1)."""

    json_types: tuple = ()

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, self.json_types) or (isinstance(value, bool) and bool not in self.json_types):
            raise self.make_error("invalid")
        return value

    def _validate(self, value):
        # marshmallow chains the validators anew on every call (even none) to gather all their
        # errors; only the first is ever reported, so the first to raise is enough.
        for validator in self.validators:
            validator(value)


def field(kind, expected, missing=MISSING, **kwargs):
    """A ``kind`` field whose type errors say it expected ``expected`` (and, when absent while
    required, ``missing``)."""
    kwargs.setdefault("allow_none", True)
    messages = {"invalid": EXPECTED + expected, "required": missing, "null": EXPECTED + expected}
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


class StringOrList(fields.List):
    """A string, or an array whose elements the inner field loads (message content)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class Nested(fields.Nested):
    def __init__(self, schema, expected, **kwargs):
        kwargs.setdefault("allow_none", True)
        super().__init__(schema, error_messages={"type": EXPECTED + expected, "null": EXPECTED + expected},
                         **kwargs)


def nested_list(schema, expected_item, **kwargs):
    return field(fields.List, "an array", cls_or_instance=Nested(schema, expected_item, allow_none=False),
                 **kwargs)


class Passthrough(Schema):
    """An object whose unknown fields are kept: new client fields must not break clients."""

    error_messages = {"type": EXPECTED + "an object"}

    class Meta:
        unknown = INCLUDE

    def load(self, data, **kwargs):
        """The loaded object in the client's key order (marshmallow puts declared fields first and
        unknown ones in any order); values no field changes are the client's own, not copies."""
        loaded = super().load(data, **kwargs)
        return {key: loaded[key] for key in data}


def check_sizes(data, names, limit):
    """Refuse, before anything walks them, arrays among ``data[names]`` longer than ``limit``."""
    for name in names:
        value = data.get(name)
        if isinstance(value, list) and len(value) > limit:
            raise ValidationError(
                f"'{name}' holds {len(value)} items; this gateway accepts at most {limit} per request.", name)


def quoted(values):
    return ", ".join(f"'{value}'" for value in values)


def load(schema, data):
    """``data`` (a parsed body, or a query string's dict) loaded by ``schema``, or the
    ``InvalidRequest`` about its first problem."""
    if not isinstance(data, dict):
        raise InvalidRequest(f"The request body must be a JSON object, but got {describe(data)}.")
    try:
        return schema.load(data)
    except ValidationError as exc:
        param, message = first_error(exc.normalized_messages())
        raise refusal(param, message, lookup(data, param)) from None


def refusal(param, message, value=ABSENT):
    """The ``InvalidRequest`` for ``message`` about ``param`` (whose value is ``value``)."""
    return InvalidRequest(explain(param, message, value), param=param)


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
            return ABSENT
    return value


def describe(value):
    if value is ABSENT:
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

"""Validation shared by every request schema: strict JSON types, and marshmallow's errors as
one envelope naming the ``param`` (``tools[2].type``) and what was wrong with it."""

from marshmallow import INCLUDE, Schema, ValidationError, fields

from .errors import InvalidRequest

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


def quoted(values):
    return ", ".join(f"'{value}'" for value in values)



def load(schema, body):
    """Validate ``body`` with ``schema``; returns the body unchanged or raises ``InvalidRequest``."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, but got {describe(body)}.")
    try:
        schema.load(body)
    except ValidationError as exc:
        param, message = first_error(exc.messages)
        raise InvalidRequest(explain(param, message, lookup(body, param)), param=param) from None
    return body


def load_query(schema, args):
    """Validate a query string (strings coerced by the schema's fields); returns the loaded dict."""
    try:
        return schema.load(args.to_dict())
    except ValidationError as exc:
        param, message = first_error(exc.messages)
        raise InvalidRequest(explain(param, message, args.get(param)), param=param) from None


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

"""Input items: the shapes the Responses and Conversations APIs share.

Both take arrays of input items (a response's ``input``, a conversation's ``items``), check
them by the same rules, store and send them in the same normalized form, and name
conversations the same way. Both API packages depend on this module, never on each other.

The checks are the fast validator of ``validation``'s docstring: plain loops over the items
and tools of a request, which raise the ``InvalidRequest`` a schema would have led to, worded
by ``validation.refusal``.
"""

import operator
import re

import orjson

from .errors import InvalidRequest
from .store.conversations import COMPACTION
from .validation import ABSENT, EXPECTED, MISSING, quoted, refusal

# "conv_" and up to 95 letters, digits, "_" or "-": the id column holds 100 characters.
CONVERSATION_ID = re.compile(r"conv_[A-Za-z0-9_-]{1,95}")
UNSUPPORTED_TOOL_TYPES = frozenset((
    "file_search", "code_interpreter", "computer_use", "computer_use_preview", "image_generation"))
MESSAGE_ROLES = ("user", "assistant", "system", "developer", "tool")
# Refusals that the schemas of chat messages give too (``validate.OneOf`` fills in ``input``).
ROLE_ERROR = "Invalid value for '{{param}}': '{input}'; expected one of " + quoted(MESSAGE_ROLES) + "."
FILE_ID_ERROR = "input_file.file_id is not supported: send the file inline with 'file_data' or by 'file_url'."
# (name, JSON type, expected) of the fields a tool may have (or leave null), in the order their
# errors are reported after its required ``type``.
OPTIONAL_TOOL_FIELDS = (("name", str, "a string"), ("description", str, "a string"),
                        ("parameters", dict, "an object"), ("strict", bool, "a boolean"))
# orjson reads JSON nested up to 1024 levels deep but writes at most this many: a body nested
# deeper parses, yet can be neither forwarded nor stored.
MAX_JSON_DEPTH = 254
# The columns of conversation_items (store/tables.py) that hold an item's own strings, with
# their length and how an error names them: longer values do not fit (PostgreSQL refuses them
# where SQLite takes them). A tool message's tool_call_id is stored as its call_id.
STORED_STRINGS = {"id": (100, "an item id"), "type": (64, "an item type"), "call_id": (200, "a call id"),
                  "tool_call_id": (200, "a call id")}
# Chat-format leftovers that the Responses API has no place for inside input items.
CHAT_ONLY_ITEM_FIELDS = frozenset(("reasoning_content", "reasoning_details", "tool_calls", "function_call"))
CONTENT_PART_TYPES = frozenset(("input_text", "input_image", "input_file", "input_audio"))
# Remote compaction: an input ending with the trigger is answered with one compaction item,
# which stands for the history before it from then on (the store starts a turn's history there).
COMPACTION_TRIGGER = "compaction_trigger"


def is_conversation_id(value):
    """Whether the whole of ``value`` is a conversation id (``match`` with ``$`` would also take
    one followed by a newline)."""
    return CONVERSATION_ID.fullmatch(value) is not None


def conversation_id_of(value):
    """The id from a validated request's ``conversation`` (a string or ``{"id": ...}``)."""
    return value.get("id") if isinstance(value, dict) else value


# -- checks ---------------------------------------------------------------------------------------
# A check returns None, or the problem it found as (where, message, value): ``where`` is the
# param relative to what was checked (".content[1].type"), ``message`` is worded for
# ``validation.refusal``, ``value`` is what the param holds (for type errors). The param path
# is built only for the problem reported, never for the hundreds of items that are fine.

def check_items(items, path="input"):
    """Raise ``InvalidRequest`` about the first input item of ``items`` that breaks a rule;
    ``path`` is the param the array is (``input``, a conversation's ``items``)."""
    for index, item in enumerate(items):
        problem = item_problem(item)
        if problem is not None:
            raise refusal(f"{path}[{index}]{problem[0]}", problem[1], problem[2])


def check_tools(tools, path="tools"):
    """Raise ``InvalidRequest`` about the first tool of a request's ``tools`` that breaks a rule."""
    for index, tool in enumerate(tools):
        problem = tool_problem(tool)
        if problem is not None:
            raise refusal(f"{path}[{index}]{problem[0]}", problem[1], problem[2])


def item_problem(item):
    if not isinstance(item, dict):
        return "", EXPECTED + "an object", item
    kind = item.get("type")
    if kind is None:
        if item.get("role") is None:
            return "", "Each input item needs a 'type' or a 'role'.", ABSENT
        return message_problem(item)
    if not isinstance(kind, str):
        return ".type", EXPECTED + "a string", kind
    if kind == "message":
        if item.get("role") is None:
            return ".role", MISSING, ABSENT
        return message_problem(item)
    check = ITEM_CHECKS.get(kind)
    return None if check is None else check(item)


def message_problem(item):
    role = item["role"]
    if not isinstance(role, str):
        return ".role", EXPECTED + "a string", role
    if role not in MESSAGE_ROLES:
        return ".role", ROLE_ERROR.format(input=role), ABSENT
    content = item.get("content")
    if content is None:
        if role in ("user", "system", "developer"):
            return ".content", f"A {role} message needs 'content'.", ABSENT
    elif isinstance(content, list):
        problem = parts_problem(content)
        if problem is not None:
            return under(".content", problem)
    elif not isinstance(content, str):
        return ".content", EXPECTED + "a string or an array of content parts", content
    if role == "tool" and not isinstance(item.get("tool_call_id") or item.get("call_id"), str):
        return ".tool_call_id", "A tool message needs the 'tool_call_id' of the call it answers.", ABSENT
    return None


def function_call_output_problem(item):
    if not isinstance(item.get("call_id"), str):
        return ".call_id", "A function_call_output needs the 'call_id' of its call.", ABSENT
    if isinstance(item.get("output"), list):
        problem = parts_problem(item["output"])
        if problem is not None:
            return under(".output", problem)
    return None


def additional_tools_problem(item):
    """The tools an ``additional_tools`` item brings (newer Codex models send them in ``input``)."""
    tools = item.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        return ".tools", EXPECTED + "an array", tools
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            problem = "", EXPECTED + "an object", tool
        elif not isinstance(tool.get("type"), str):
            problem = ".type", EXPECTED + "a string", tool.get("type", ABSENT)
        else:
            problem = tool_rule_problem(tool)
        if problem is not None:
            return under(f".tools[{index}]", problem)
    return None


def parts_problem(parts):
    for index, part in enumerate(parts):
        problem = part_problem(part)
        if problem is not None:
            return under(f"[{index}]", problem)
    return None


def part_problem(part):
    if not isinstance(part, dict):
        return "", EXPECTED + "an object", part
    kind = part.get("type")
    if not isinstance(kind, str):
        return ".type", EXPECTED + "a string", part.get("type", ABSENT)
    if kind == "input_file" and part.get("file_id") is not None:
        return ".file_id", FILE_ID_ERROR, ABSENT
    return None


ITEM_CHECKS = {"input_file": part_problem, "function_call_output": function_call_output_problem,
               "additional_tools": additional_tools_problem}


def tool_problem(tool):
    if not isinstance(tool, dict):
        return "", EXPECTED + "an object", tool
    kind = tool.get("type")
    if not isinstance(kind, str):
        return ".type", EXPECTED + "a string" if "type" in tool else MISSING, kind
    for name, types, expected in OPTIONAL_TOOL_FIELDS:
        value = tool.get(name)
        if value is not None and not isinstance(value, types):
            return f".{name}", EXPECTED + expected, value
    return tool_rule_problem(tool)


def tool_rule_problem(tool):
    kind = tool["type"]
    if kind in UNSUPPORTED_TOOL_TYPES:
        return ".type", f"Tool type '{kind}' is not supported", ABSENT
    if kind == "function" and not tool.get("name"):
        return ".name", "A function tool needs a 'name'.", ABSENT
    return None


def under(prefix, problem):
    """``problem`` of something found at ``prefix`` inside what is being checked."""
    return prefix + problem[0], problem[1], problem[2]


# -- what a conversation stores -------------------------------------------------------------------

def check_storable(items, path="input"):
    """Raise ``InvalidRequest`` about the first of ``items`` (already checked by ``check_items``)
    a conversation could not store the same on SQLite and PostgreSQL, or address afterwards:
    strings too long for their column, NUL characters, an id with a '/' (the item routes could
    not name it) or the id of an earlier item of the same request."""
    first_with_id = {}
    for index, item in enumerate(items):
        for name in STORED_STRINGS:
            value = item.get(name)
            problem = stored_string_problem(value, name) if isinstance(value, str) else None
            if problem is not None:
                raise refusal(f"{path}[{index}].{name}", problem)
        item_id = item.get("id")
        if isinstance(item_id, str) and item_id:
            if "/" in item_id:
                raise refusal(f"{path}[{index}].id", "Invalid value for '{param}': an item id cannot contain '/'.")
            earlier = first_with_id.setdefault(item_id, index)
            if earlier != index:
                raise refusal(f"{path}[{index}].id", f"Invalid value for '{{param}}': {path}[{earlier}] has the "
                                                     "same id; the items of one request need ids of their own.")


def check_added(items, path="items"):
    """Raise ``InvalidRequest`` about a ``compaction_trigger`` among items added to a conversation
    directly: it asks a response for a compaction, and is nothing a history could hold."""
    for index, item in enumerate(items):
        if item.get("type") == COMPACTION_TRIGGER:
            raise refusal(f"{path}[{index}].type", "Invalid value for '{param}': a compaction_trigger asks a "
                                                   "response for a compaction item; a conversation does not store it.")


def stored_string_problem(value, name):
    """What keeps ``value`` out of the column of the item field ``name`` (see STORED_STRINGS)."""
    limit, what = STORED_STRINGS[name]
    if len(value) > limit:
        return f"Invalid value for '{{param}}': {what} is at most {limit} characters."
    if "\x00" in value:
        return "Invalid value for '{param}': NUL characters cannot be stored."
    return None


# -- JSON out -------------------------------------------------------------------------------------

def to_json(value, param=None):
    """``value`` as JSON (``orjson.dumps``); nesting too deep to write is the client's 400, not a
    500. Serialize the upstream body with this before anything is sent (a walk of every body
    to measure its depth would cost more than the serialization itself)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        if "Recursion limit" not in str(exc):
            raise
        raise InvalidRequest(f"The request nests arrays and objects too deeply to be forwarded upstream "
                             f"(at most {MAX_JSON_DEPTH} levels).", param=param) from None


def check_sendable(items, param):
    """Refuse normalized items that could not be sent once they are in an upstream body's
    ``input`` (two levels down): what a conversation stores is sent on its later turns."""
    to_json({"input": items}, param)


# -- what only one upstream account can read -------------------------------------------------------
# The backend encrypts reasoning and compaction items for the account that produced them: any
# other account refuses them (400 "could not be verified"), and a reasoning item reduced to its
# id is looked up among stored items, which do not exist with ``store: false`` (404). The store
# knows these types too: it reads a turn's history by them.


def account_bound(item):
    """Whether only the account that issued ``item`` can take it back: a compaction item, or a
    reasoning item with encrypted content or an id."""
    kind = item.get("type")
    if kind == "reasoning":
        return item.get("encrypted_content") is not None or item.get("id") is not None
    return kind == COMPACTION


def without_account_bound(items):
    """(items, how many were left out) without the account-bound ones (``items`` itself when none is)."""
    kept = [item for item in items if not account_bound(item)]
    if len(kept) == len(items):
        return items, 0
    return kept, len(items) - len(kept)


# -- normalization --------------------------------------------------------------------------------
# Pure functions over dicts: an item is copied only when something in it changes, so a long
# Codex history costs a loop, not a deep copy, and the client's body is never mutated.

def normalize_input(value):
    if isinstance(value, str):
        return [user_text_message(value)]
    items = []
    loose_parts = []  # content parts given at top level are one user message together
    for item in value:
        if item.get("type") in CONTENT_PART_TYPES and "role" not in item:
            loose_parts.append(item)
            continue
        if loose_parts:
            items.append({"type": "message", "role": "user", "content": loose_parts})
            loose_parts = []
        items.append(normalize_item(item))
    if loose_parts:
        items.append({"type": "message", "role": "user", "content": loose_parts})
    return items


def normalize_item(item):
    role = item.get("role")
    if role is not None and item.get("type", "message") == "message":
        if role == "tool":
            return tool_result(item.get("tool_call_id") or item.get("call_id"), item.get("content"))
        content = item.get("content")
        parts = normalize_content(role, content)
        if parts is content and "type" in item and CHAT_ONLY_ITEM_FIELDS.isdisjoint(item):
            return item  # already a Responses message, as the Codex CLI sends them
        message = strip_chat_fields(item)
        message["type"] = "message"
        message["content"] = parts
        return message
    if item.get("type") == "additional_tools" and isinstance(item.get("tools"), list):
        tools = normalize_tools(item["tools"])
        if tools is not item["tools"]:
            item = {**item, "tools": tools}
    if not CHAT_ONLY_ITEM_FIELDS.isdisjoint(item):
        return strip_chat_fields(item)
    return item


def strip_chat_fields(item):
    return {key: value for key, value in item.items() if key not in CHAT_ONLY_ITEM_FIELDS}


def normalize_content(role, content):
    """Message content as Responses parts: assistant text is ``output_text``, the rest input parts.
    A list none of whose parts changes is returned as it is."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "output_text" if role == "assistant" else "input_text", "text": content}]
    parts = [normalize_part(role, part) for part in content]
    return content if all(map(operator.is_, parts, content)) else parts


def normalize_part(role, part):
    kind = part.get("type")
    if role == "assistant":
        if kind in ("text", "input_text"):
            return {**part, "type": "output_text"}
        return part
    if kind == "text":
        return {**part, "type": "input_text"}
    if kind == "image_url":
        image = part.get("image_url")
        converted = {"type": "input_image"}
        if isinstance(image, dict):
            converted["image_url"] = image.get("url")
            if image.get("detail"):
                converted["detail"] = image["detail"]
        else:
            converted["image_url"] = image
        converted.setdefault("detail", "auto")
        return converted
    return part


def user_text_message(text):
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def tool_result(call_id, content):
    return {"type": "function_call_output", "call_id": call_id, "output": tool_output(content)}


def tool_output(content):
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return [normalize_part("user", part) for part in content]


def normalize_tools(tools):
    """``web_search_preview`` tools as ``web_search``; a list without one is returned as it is."""
    if not any(tool.get("type") == "web_search_preview" for tool in tools):
        return tools
    return [{**tool, "type": "web_search"} if tool.get("type") == "web_search_preview" else tool for tool in tools]

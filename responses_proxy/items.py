"""Input items: the shapes the Responses and Conversations APIs share.

Both take arrays of input items (a response's ``input``, a conversation's ``items``), check
them by the same rules, store and send them in the same normalized form, and name
conversations the same way. Both API packages depend on this module, never on each other.
"""

import re

from marshmallow import ValidationError

from .validation import quoted

CONVERSATION_ID = re.compile(r"^conv_[A-Za-z0-9_-]{1,95}$")
UNSUPPORTED_TOOL_TYPES = frozenset((
    "file_search", "code_interpreter", "computer_use", "computer_use_preview", "image_generation"))
MESSAGE_ROLES = ("user", "assistant", "system", "developer", "tool")
# Chat-format leftovers that the Responses API has no place for inside input items.
CHAT_ONLY_ITEM_FIELDS = ("reasoning_content", "reasoning_details", "tool_calls", "function_call")
CONTENT_PART_TYPES = frozenset(("input_text", "input_image", "input_file", "input_audio"))


def conversation_id_of(value):
    """The id from a validated request's ``conversation`` (a string or ``{"id": ...}``)."""
    return value.get("id") if isinstance(value, dict) else value


# -- checks ---------------------------------------------------------------------------------------

def check_items(items, path="input"):
    for index, item in enumerate(items):
        item_path = f"{path}[{index}]"
        if not isinstance(item, dict):
            raise ValidationError("expected an object", item_path)
        kind = item.get("type")
        role = item.get("role")
        if kind is not None and not isinstance(kind, str):
            raise ValidationError("expected a string", item_path + ".type")
        if kind is None and role is None:
            raise ValidationError("Each input item needs a 'type' or a 'role'.", item_path)
        if kind == "message" and role is None:
            raise ValidationError("missing", item_path + ".role")
        if role is not None and kind in (None, "message"):
            check_message_item(item, item_path)
        elif kind == "input_file":
            check_part(item, item_path)
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise ValidationError("A function_call_output needs the 'call_id' of its call.",
                                      item_path + ".call_id")
            if isinstance(item.get("output"), list):
                check_parts(item["output"], item_path + ".output")
        elif kind == "additional_tools":
            tools = item.get("tools")
            if tools is not None:
                if not isinstance(tools, list):
                    raise ValidationError("expected an array", item_path + ".tools")
                for position, tool in enumerate(tools):
                    tool_path = f"{item_path}.tools[{position}]"
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
        raise ValidationError(
            f"Invalid value for '{{param}}': '{role}'; expected one of {quoted(MESSAGE_ROLES)}.", path + ".role")
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


def check_tool(tool, path):
    prefix = path + "." if path else ""
    kind = tool["type"]
    if kind in UNSUPPORTED_TOOL_TYPES:
        raise ValidationError(f"Tool type '{kind}' is not supported", prefix + "type")
    if kind == "function" and not tool.get("name"):
        raise ValidationError("A function tool needs a 'name'.", prefix + "name")


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
        message = strip_chat_fields(item)
        message["type"] = "message"
        message["content"] = normalize_content(role, item.get("content"))
        return message
    if item.get("type") == "additional_tools" and isinstance(item.get("tools"), list):
        item = {**item, "tools": normalize_tools(item["tools"])}
    if any(field in item for field in CHAT_ONLY_ITEM_FIELDS):
        return strip_chat_fields(item)
    return item


def strip_chat_fields(item):
    return {key: value for key, value in item.items() if key not in CHAT_ONLY_ITEM_FIELDS}


def normalize_content(role, content):
    """Message content as Responses parts: assistant text is ``output_text``, the rest input parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "output_text" if role == "assistant" else "input_text", "text": content}]
    return [normalize_part(role, part) for part in content]


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
    return [{**tool, "type": "web_search"} if tool.get("type") == "web_search_preview" else tool for tool in tools]

"""Turn a validated client body into what the Codex backend accepts.

Pure functions over dicts: no I/O, and the client's body is never mutated (an item is copied
only when something in it changes, so a long Codex history costs a loop, not a deep copy).
"""

# Top-level fields the upstream refuses: dropped before forwarding.
STRIPPED_FIELDS = ("safety_identifier", "prompt_cache_retention", "temperature", "max_output_tokens")
# Handled by the gateway itself (or refused by validation): never forwarded.
GATEWAY_FIELDS = ("conversation", "previous_response_id", "truncation", "messages")
# Chat-format leftovers that the Responses API has no place for inside input items.
CHAT_ONLY_ITEM_FIELDS = ("reasoning_content", "reasoning_details", "tool_calls", "function_call")

CONTENT_PART_TYPES = frozenset(("input_text", "input_image", "input_file", "input_audio"))


def to_upstream(body):
    """The upstream body for a validated request body."""
    out = {key: value for key, value in body.items()
           if key not in STRIPPED_FIELDS and key not in GATEWAY_FIELDS}
    instructions = body.get("instructions") or ""
    if body.get("messages") is not None:
        system_text, items = messages_to_items(body["messages"])
        if system_text:
            instructions = f"{instructions}\n\n{system_text}" if instructions else system_text
        out["input"] = items
    else:
        out["input"] = normalize_input(body["input"])
    out["instructions"] = instructions
    if body.get("tools"):
        out["tools"] = normalize_tools(body["tools"])
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "web_search_preview":
        out["tool_choice"] = {**choice, "type": "web_search"}
    out["stream"] = True
    out["store"] = False
    return out


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


def messages_to_items(messages):
    """Chat-format messages as (system text, input items).

    System and developer messages become instructions; an assistant's ``tool_calls`` become
    ``function_call`` items, so the ``function_call_output`` of the following tool message has
    its call upstream.
    """
    system_parts = []
    items = []
    for message in messages:
        role = message["role"]
        content = message.get("content")
        if role in ("system", "developer"):
            text = content_text(content)
            if text:
                system_parts.append(text)
        elif role == "tool":
            items.append(tool_result(message.get("tool_call_id"), content))
        else:
            parts = normalize_content(role, content)
            if parts:
                items.append({"type": "message", "role": role, "content": parts})
            if role == "assistant":
                for call in message.get("tool_calls") or ():
                    function = call.get("function") or {}
                    items.append({"type": "function_call", "call_id": call.get("id"),
                                  "name": function.get("name"), "arguments": function.get("arguments") or ""})
    return "\n\n".join(system_parts), items


def content_text(content):
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part["text"] for part in content if isinstance(part.get("text"), str))


def normalize_tools(tools):
    return [{**tool, "type": "web_search"} if tool.get("type") == "web_search_preview" else tool for tool in tools]

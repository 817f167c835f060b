"""Turn a validated client body into what the Codex backend accepts.

Pure functions over dicts: no I/O, and the client's body is never mutated (the items
themselves are normalized by ``items``, as conversations store them).
"""

from ..items import normalize_content, normalize_input, normalize_tools, tool_result

# Top-level fields the upstream refuses: dropped before forwarding.
STRIPPED_FIELDS = ("safety_identifier", "prompt_cache_retention", "temperature", "max_output_tokens")
# Handled by the gateway itself (or refused by validation): never forwarded.
GATEWAY_FIELDS = ("conversation", "previous_response_id", "truncation", "messages")
NOT_FORWARDED = frozenset(STRIPPED_FIELDS + GATEWAY_FIELDS)


def to_upstream(body):
    """The upstream body for a validated request body."""
    out = {key: value for key, value in body.items() if key not in NOT_FORWARDED}
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

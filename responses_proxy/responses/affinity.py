"""What a Responses request sticks to an account by, so the upstream's prompt cache keeps hitting."""

import hashlib


def affinity_key(api_key_id, body):
    """(key, follow): what requests stick to an account by, hashed (the affinity table never
    holds client data), and whether this request should follow it.

    A client's ``prompt_cache_key`` always; otherwise a key derived from the API key and what
    stays the same across the turns of one conversation: its id, or the instructions and the
    first input item. A derived key is only followed once there is history to reuse (a second
    turn), so identical one-shot requests still spread over the pool.
    """
    if body.get("prompt_cache_key"):
        material, follow = f"{api_key_id}\x00pck\x00{body['prompt_cache_key']}", True
    else:
        conversation = body.get("conversation")
        if isinstance(conversation, dict):
            conversation = conversation.get("id")
        history = body.get("messages") if body.get("messages") is not None else body.get("input")
        if conversation:
            material, follow = f"{api_key_id}\x00conv\x00{conversation}", True
        else:
            first = history[:2] if isinstance(history, list) and body.get("messages") is not None else (
                history[0] if isinstance(history, list) and history else history)
            material = f"{api_key_id}\x00derived\x00{body.get('instructions') or ''}\x00{first!r}"
            turns = [item for item in history if not (isinstance(item, dict) and item.get("role") in (
                "system", "developer"))] if isinstance(history, list) else [history]
            follow = len(turns) > 1
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest(), follow


def turn_state_key(api_key_id, turn_state):
    """The affinity table's key for a turn state: hashed, and scoped to the API key (a turn state
    routes only the requests of the key it was given to)."""
    return hashlib.sha256(f"{api_key_id}\x00turn-state\x00{turn_state}".encode("utf-8", "surrogatepass")).hexdigest()

"""Conversations without Flask: ownership, turns, the item budget, the Conversations API."""

import secrets
import time

import orjson

from ..errors import Conflict, InvalidRequest, NotFound
from ..items import check_sendable, is_conversation_id
from ..store import conversations as store

# A turn holds the conversation for this long without a sign of life; a streaming turn
# renews it as it goes, so a crashed worker blocks the conversation for no longer than this.
TURN_LEASE_SECONDS = 120.0
# Items that answer a call from an earlier item: never sent without that call.
CALL_OUTPUT_TYPES = frozenset(("function_call_output", "custom_tool_call_output", "local_shell_call_output",
                               "computer_call_output", "mcp_approval_response", "tool_search_output"))


def not_found():
    return NotFound("conversation not found", param="conversation", code="conversation_not_found")


def within_budget(rows, budget):
    """The stored items to send: oldest turns dropped whole until at most ``budget`` remain,
    and never a call's output without its call. Returns (items, dropped count)."""
    turns = []
    for turn, kind, call_id, data in rows:
        if not turns or turns[-1][0] != turn:
            turns.append((turn, []))
        turns[-1][1].append((kind, call_id, data))
    total = sum(len(items) for _, items in turns)
    start = 0
    kept = total
    while kept > budget and start < len(turns):
        kept -= len(turns[start][1])
        start += 1
    while 0 < start < len(turns):
        calls = {call_id for _, items in turns[start:] for kind, call_id, _ in items
                 if call_id and kind not in CALL_OUTPUT_TYPES}
        orphaned = [index for index in range(start, len(turns)) for kind, call_id, _ in turns[index][1]
                    if kind in CALL_OUTPUT_TYPES and call_id and call_id not in calls]
        if not orphaned:
            break
        start = max(orphaned) + 1
    items = [orjson.loads(data) for _, items in turns[start:] for _, _, data in items]
    return items, total - len(items)


class Turn:
    """One request's hold on a conversation: its history, then commit or abort, once."""

    def __init__(self, engine, conversation_id, owner, history, dropped):
        self.engine = engine
        self.conversation_id = conversation_id
        self.owner = owner
        self.history = history
        self.dropped = dropped
        self._renewed = time.monotonic()
        self._done = False

    def keep_alive(self):
        if not self._done and time.monotonic() - self._renewed > TURN_LEASE_SECONDS / 4:
            self._renewed = time.monotonic()
            store.renew_turn(self.engine, self.conversation_id, self.owner, TURN_LEASE_SECONDS)

    def commit(self, new_items, output_items):
        """Append the turn's input and output in one transaction, releasing the lease."""
        if not self._done:
            self._done = True
            store.append(self.engine, self.conversation_id, list(new_items) + list(output_items),
                         release_owner=self.owner)

    def abort(self):
        """The turn failed or was cut off: the conversation stays exactly as it was."""
        if not self._done:
            self._done = True
            store.release_turn(self.engine, self.conversation_id, self.owner)


class ConversationService:
    def __init__(self, engine, config):
        self.engine = engine
        self.max_items = config["CONVERSATION_MAX_ITEMS"]

    def owned(self, key, conversation_id):
        row = store.get(self.engine, conversation_id) if is_conversation_id(conversation_id) else None
        if row is None or row["key_id"] != key["id"]:
            raise not_found()  # another key's conversation does not exist, as far as this key knows
        return row

    def begin_turn(self, key, conversation_id, new_item_count):
        """Hold the conversation for one turn (creating it for this key if the id is new)."""
        if new_item_count > self.max_items:
            # Leaving out all history would still send more than the budget: refused, not trimmed.
            raise InvalidRequest(f"The input holds {new_item_count} items; a conversation turn sends at most "
                                 f"{self.max_items}, its history included.", param="input")
        row = store.get(self.engine, conversation_id)
        if row is None:
            row, _ = store.create(self.engine, key["id"], conversation_id=conversation_id)
            row = row or store.get(self.engine, conversation_id)  # created concurrently
        if row["key_id"] != key["id"]:
            raise not_found()
        owner = secrets.token_hex(8)
        if not store.acquire_turn(self.engine, conversation_id, owner, TURN_LEASE_SECONDS):
            raise Conflict("Another turn of this conversation is in progress; retry when it has finished.",
                           param="conversation", code="conversation_busy")
        try:
            history, dropped = within_budget(store.load_items(self.engine, conversation_id),
                                             max(0, self.max_items - new_item_count))
        except Exception:
            store.release_turn(self.engine, conversation_id, owner)
            raise
        return Turn(self.engine, conversation_id, owner, history, dropped)

    # -- the Conversations API ------------------------------------------------------------

    def create(self, key, metadata, items):
        check_sendable(items, "items")
        row, stored = store.create(self.engine, key["id"], metadata, items)
        return conversation_object(row), [item_object(item_id, item) for item_id, item in stored]

    def get(self, key, conversation_id):
        return conversation_object(self.owned(key, conversation_id))

    def update(self, key, conversation_id, metadata):
        self.owned(key, conversation_id)
        return conversation_object(store.update_metadata(self.engine, conversation_id, metadata))

    def delete(self, key, conversation_id):
        self.owned(key, conversation_id)
        store.delete_conversation(self.engine, conversation_id)
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    def list_items(self, key, conversation_id, limit, after, order):
        self.owned(key, conversation_id)
        rows, has_more = store.list_items(self.engine, conversation_id, limit, after, order == "desc")
        if rows is None:
            raise NotFound(f"No item '{after}' in this conversation.", param="after", code="item_not_found")
        return item_list([item_object(item_id, orjson.loads(data)) for item_id, data in rows], has_more)

    def add_items(self, key, conversation_id, items):
        self.owned(key, conversation_id)
        check_sendable(items, "items")
        owner = secrets.token_hex(8)
        if not store.acquire_turn(self.engine, conversation_id, owner, TURN_LEASE_SECONDS):
            raise Conflict("A turn of this conversation is in progress; add items when it has finished.",
                           param="conversation", code="conversation_busy")
        try:
            stored = store.append(self.engine, conversation_id, items, release_owner=owner)
        except Exception:
            store.release_turn(self.engine, conversation_id, owner)
            raise
        return item_list([item_object(item_id, item) for item_id, item in stored], False)

    def get_item(self, key, conversation_id, item_id):
        self.owned(key, conversation_id)
        data = store.get_item(self.engine, conversation_id, item_id)
        if data is None:
            raise NotFound(f"No item '{item_id}' in this conversation.", param="item_id", code="item_not_found")
        return item_object(item_id, orjson.loads(data))

    def delete_item(self, key, conversation_id, item_id):
        row = self.owned(key, conversation_id)
        if not store.delete_item(self.engine, conversation_id, item_id):
            raise NotFound(f"No item '{item_id}' in this conversation.", param="item_id", code="item_not_found")
        return conversation_object(row)


def conversation_object(row):
    return {"id": row["id"], "object": "conversation", "created_at": int(row["created_at"]),
            "metadata": row["metadata"] or {}}


def item_object(item_id, item):
    return {**item, "id": item_id}


def item_list(items, has_more):
    return {"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": has_more}

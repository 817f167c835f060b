"""Conversations without Flask: ownership, turns, the item budget, the Conversations API."""

import logging
import os
import secrets
import threading
import time

import orjson

from ..errors import Conflict, InvalidRequest, NotFound, log_failure, unavailable
from ..items import check_sendable, is_conversation_id
from ..store import conversations as store

log = logging.getLogger(__name__)

# A turn holds its conversation for CONVERSATION_TURN_LEASE_SECONDS without a sign of life.
# Every process renews the leases of its open turns a few times per lease, however quiet the
# upstream is, so a process that died (or a host that went away) blocks its conversations for
# no longer than that. Adding items through the API holds the lease only for one transaction.
ITEMS_LEASE_SECONDS = 30.0
# A release the database refused (it was down) is tried again this often until it works or the
# lease ran out by itself: after a short outage the conversation is free at once, not a lease later.
RELEASE_RETRY_SECONDS = 1.0
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
    """One request's hold on a conversation: what to send upstream, then commit or abort, once.

    ``upstream`` is the request with the stored history before the new input. The gateway asks
    for reasoning's ``encrypted_content`` (it carries the model's thinking into the next turn);
    when the client did not ask for it, ``redact`` takes it out of what the client sees.
    """

    def __init__(self, leases, conversation_id, owner, upstream, new_items, dropped, redact, metrics):
        self.engine = leases.engine
        self._leases = leases
        self._metrics = metrics
        self.conversation_id = conversation_id
        self.owner = owner
        self.upstream = upstream
        self.new_items = new_items
        self.dropped = dropped
        self.redact = redact
        self._done = False

    def commit(self, output_items):
        """Append the turn's input and output in one transaction, releasing the lease. When that
        fails, the lease is released all the same and the conversation is left as it was."""
        if self._done:
            return
        self._done = True
        self._leases.forget(self.owner)
        try:
            store.append(self.engine, self.conversation_id, list(self.new_items) + list(output_items),
                         release_owner=self.owner)
        except BaseException:
            self._metrics.turn("failed")
            self._leases.release(self.owner, self.conversation_id)
            raise
        self._metrics.turn("committed")

    def abort(self):
        """The turn failed or was cut off: the conversation stays exactly as it was."""
        if not self._done:
            self._done = True
            self._metrics.turn("aborted")
            self._leases.release(self.owner, self.conversation_id)


class TurnLeases:
    """The turn leases this process holds, renewed together by one background loop, which also
    retries the releases the database could not take."""

    def __init__(self, engine, seconds):
        self.engine = engine
        self.seconds = seconds
        self._held = {}  # owner -> conversation id
        self._unreleased = {}  # owner -> (conversation id, time.monotonic() its lease ends by)
        self._wake = threading.Event()
        self._renewer = None
        self._pid = None

    def hold(self, owner, conversation_id):
        self._held[owner] = conversation_id
        self._keep_up()

    def forget(self, owner):
        self._held.pop(owner, None)

    def release(self, owner, conversation_id, seconds=None):
        """End ``owner``'s hold on the conversation. When the database fails, the release is
        retried in the background until it works or the lease (``seconds``, default a turn's)
        has run out by itself."""
        self._held.pop(owner, None)
        try:
            store.release_turn(self.engine, conversation_id, owner)
        except Exception as exc:
            if not unavailable(exc):
                raise
            log_failure(log, "could not release a conversation turn; retrying", exc, {"conversation": conversation_id})
            self._unreleased[owner] = (conversation_id, time.monotonic() + (seconds or self.seconds))
            self._keep_up()
            self._wake.set()

    def renew(self):
        if self._held:
            store.renew_turns(self.engine, list(self._held), self.seconds)

    def retry_releases(self):
        now = time.monotonic()
        for owner, (conversation_id, ends) in list(self._unreleased.items()):
            if ends > now:
                try:
                    store.release_turn(self.engine, conversation_id, owner)
                except Exception as exc:
                    if not unavailable(exc):
                        raise
                    return  # still down: the next round tries again
            del self._unreleased[owner]

    def _keep_up(self):
        if self._renewer is None or self._pid != os.getpid():
            # Started on first use, in the process that serves (a thread is a greenlet there).
            self._pid = os.getpid()
            self._renewer = threading.Thread(target=self._renew_forever, name="turn-leases", daemon=True)
            self._renewer.start()

    def _renew_forever(self):
        renew_at = time.monotonic() + self.seconds / 3
        while True:
            wait = renew_at - time.monotonic()
            self._wake.wait(max(0.0, min(wait, RELEASE_RETRY_SECONDS) if self._unreleased else wait))
            self._wake.clear()
            try:
                if self._unreleased:
                    self.retry_releases()
                if time.monotonic() >= renew_at:
                    renew_at = time.monotonic() + self.seconds / 3
                    self.renew()
            except Exception as exc:
                log_failure(log, "could not renew or release the leases of conversation turns", exc)


def without_encrypted(value):
    """A copy of an event or response without the ``encrypted_content`` of reasoning items."""
    if isinstance(value, dict):
        return {key: without_encrypted(item) for key, item in value.items() if key != "encrypted_content"}
    if isinstance(value, list):
        return [without_encrypted(item) for item in value]
    return value


class ConversationService:
    def __init__(self, engine, config, metrics):
        self.engine = engine
        self.metrics = metrics
        self.max_items = config["CONVERSATION_MAX_ITEMS"]
        self.leases = TurnLeases(engine, config["CONVERSATION_TURN_LEASE_SECONDS"])

    def owned(self, key, conversation_id):
        row = store.get(self.engine, conversation_id) if is_conversation_id(conversation_id) else None
        if row is None or row["key_id"] != key["id"]:
            raise not_found()  # another key's conversation does not exist, as far as this key knows
        return row

    def begin_turn(self, key, conversation_id, upstream):
        """Hold the conversation for one turn (creating it for this key if the id is new) and
        prepare the upstream request: the stored history, then the new input."""
        if len(upstream["input"]) > self.max_items:
            # Leaving out all history would still send more than the budget: refused, not trimmed.
            raise InvalidRequest(f"The input holds {len(upstream['input'])} items; a conversation turn sends at "
                                 f"most {self.max_items}, its history included.", param="input")
        row = store.get(self.engine, conversation_id)
        if row is None:
            row, _ = store.create(self.engine, key["id"], conversation_id=conversation_id)
            row = row or store.get(self.engine, conversation_id)  # created concurrently
        if row["key_id"] != key["id"]:
            raise not_found()
        owner = secrets.token_hex(8)
        if not store.acquire_turn(self.engine, conversation_id, owner, self.leases.seconds):
            self.metrics.conflict("turn")
            raise Conflict("Another turn of this conversation is in progress; retry when it has finished.",
                           param="conversation", code="conversation_busy")
        self.leases.hold(owner, conversation_id)
        new_items = upstream["input"]
        try:
            history, dropped = within_budget(store.load_items(self.engine, conversation_id),
                                             max(0, self.max_items - len(new_items)))
        except BaseException:
            self.leases.release(owner, conversation_id)
            raise
        prepared = dict(upstream, input=history + new_items)
        include = list(upstream.get("include") or ())
        redact = None
        if "reasoning.encrypted_content" not in include:
            prepared["include"] = include + ["reasoning.encrypted_content"]
            redact = without_encrypted
        return Turn(self.leases, conversation_id, owner, prepared, new_items, dropped, redact, self.metrics)

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
        if not store.acquire_turn(self.engine, conversation_id, owner, ITEMS_LEASE_SECONDS):
            self.metrics.conflict("items")
            raise Conflict("A turn of this conversation is in progress; add items when it has finished.",
                           param="conversation", code="conversation_busy")
        try:
            stored = store.append(self.engine, conversation_id, items, release_owner=owner)
        except Exception:
            self.leases.release(owner, conversation_id, ITEMS_LEASE_SECONDS)
            raise
        return item_list([item_object(item_id, item) for item_id, item in stored], False)

    def get_item(self, key, conversation_id, item_id):
        self.owned(key, conversation_id)
        data = store.get_item(self.engine, conversation_id, item_id)
        if data is None:
            raise NotFound(f"No item '{item_id}' in this conversation.", param="item_id", code="item_not_found")
        return item_object(item_id, orjson.loads(data))

    # -- retention ------------------------------------------------------------------------------

    def purge_key(self, key_id):
        """Delete every conversation of an API key; returns how many."""
        return store.purge_key(self.engine, key_id)

    def prune(self, days):
        """Delete conversations idle for more than ``days``; returns how many."""
        return store.prune(self.engine, time.time() - days * 86400)

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

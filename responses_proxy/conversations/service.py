"""Conversations without Flask: ownership, turns, the item budget, the Conversations API."""

import collections
import logging
import os
import secrets
import threading
import time

import orjson

from ..errors import Conflict, InvalidRequest, NotFound, log_failure, unavailable
from ..items import COMPACTION_TRIGGER, check_sendable, is_conversation_id, without_account_bound
from ..store import conversations as store
from ..store.conversations import ACCOUNT_BOUND_TYPES

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
    and never a call's output without its call. Returns (items, dropped count).

    ``rows`` are (turn, type, call_id, data, ...) in order; the first turn may be cut (the
    store reads one item more than the budget), it is then dropped."""
    turns = []
    for turn, kind, call_id, data, *_ in rows:
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


def history_of(engine, conversation_id, budget, readable_by=None, unknown_readable=True):
    """(items, dropped count, their rows) of the stored history a turn sends
    (``store.load_history``): ``dropped`` counts the items since the history's start that the
    budget left out."""
    rows = store.load_history(engine, conversation_id, budget, readable_by, unknown_readable)
    items, dropped = within_budget(rows, budget)
    if len(rows) > budget:  # older items exist that were not read: count them
        dropped = store.count_history(engine, conversation_id, readable_by, unknown_readable) - len(items)
    return items, dropped, rows[len(rows) - len(items):]  # the budget leaves out the oldest only


class Turn:
    """One request's hold on a conversation: what to send upstream, then commit or abort, once.

    ``upstream`` is the request with the stored history before the new input, as the account
    that served the conversation so far can read it. The gateway asks for reasoning's
    ``encrypted_content`` (it carries the model's thinking into the next turn); when the client
    did not ask for it, ``redact`` takes it out of what the client sees.

    Each stored item remembers the account that served its turn: reasoning and compaction items
    mean something to that account only. ``upstream_for`` prepares the request for an account
    that cannot read some of the history (the conversation moved).
    """

    def __init__(self, leases, conversation_id, owner, upstream, new_items, budget, dropped, issuers, redact,
                 metrics):
        self.engine = leases.engine
        self._leases = leases
        self._metrics = metrics
        self.conversation_id = conversation_id
        self.owner = owner
        self.upstream = upstream
        self.new_items = new_items
        self.budget = budget
        self.dropped = dropped
        # How many account-bound items of ``upstream``'s history each account issued (None: unknown).
        self.issuers = issuers
        self.redact = redact
        self._done = False

    def upstream_for(self, account_id, strict=False):
        """(request, what changed) for an account that cannot read all of ``upstream``, else None.

        The history is then read again as that account can read it: the reasoning and
        compaction items other accounts issued are left out, and when the latest compaction
        item is one of them, the history from before it is sent instead (within the budget).
        ``strict`` (after the upstream refused what it could not read) also leaves out the
        items of unknown issuer, and those of the new input.
        """
        readable = (account_id,) if strict else (account_id, None)
        unreadable = sum(count for issuer, count in self.issuers.items() if issuer not in readable)
        new_items = self.new_items
        if strict:
            new_items, left_out = without_account_bound(new_items)
            unreadable += left_out
        if not unreadable:
            return None
        history, self.dropped, _ = history_of(self.engine, self.conversation_id, self.budget, account_id,
                                              unknown_readable=not strict)
        self.new_items = new_items  # stored as sent
        return dict(self.upstream, input=history + new_items), {"dropped": unreadable, "history": len(history)}

    def commit(self, output_items, account_id=None):
        """Append the turn's input and output in one transaction, releasing the lease, as items
        of ``account_id`` (the account that answered). When that fails, the lease is released
        all the same and the conversation is left as it was."""
        if self._done:
            return
        self._done = True
        self._leases.forget(self.owner)
        try:
            store.append(self.engine, self.conversation_id, stored_input(self.new_items) + list(output_items),
                         release_owner=self.owner, account_id=account_id)
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


def stored_input(items):
    """What a turn's input adds to its conversation: all but ``compaction_trigger``, which asks
    for the compaction item and stands for nothing itself."""
    return [item for item in items if item.get("type") != COMPACTION_TRIGGER]


def without_encrypted(value):
    """A copy of an event or response without the ``encrypted_content`` of reasoning items (a
    compaction item's is the item itself: the client gets it whatever it included)."""
    if isinstance(value, dict):
        reasoning = value.get("type") == "reasoning"
        return {key: without_encrypted(item) for key, item in value.items()
                if not (reasoning and key == "encrypted_content")}
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
        budget = max(0, self.max_items - len(new_items))
        try:
            history, dropped, rows = history_of(self.engine, conversation_id, budget)
        except BaseException:
            self.leases.release(owner, conversation_id)
            raise
        issuers = collections.Counter(issuer for _, kind, _, _, issuer in rows if kind in ACCOUNT_BOUND_TYPES)
        prepared = dict(upstream, input=history + new_items)
        include = list(upstream.get("include") or ())
        redact = None
        if "reasoning.encrypted_content" not in include:
            prepared["include"] = include + ["reasoning.encrypted_content"]
            redact = without_encrypted
        return Turn(self.leases, conversation_id, owner, prepared, new_items, budget, dropped, issuers, redact,
                    self.metrics)

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

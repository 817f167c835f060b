"""What ties a thread to the upstream account that served it, and what it sheds when it moves.

The backend encrypts reasoning and compaction items for the account that produced them and
issues turn states (``x-codex-turn-state``) per account: any other account refuses them. A
thread (a prompt cache key, a conversation, a turn state) stays on its account while that one
can serve. When it must move (a cooldown, a disabled account, a failover), ``Outbound`` gives
the new account the request without what it could not read, and never another account's turn
state. The request is serialized again only then: a thread that stays pays nothing.
"""

import hashlib

from ..items import account_bound, to_json, without_account_bound
from ..upstream.client import TURN_STATE, upstream_error_fields


def turn_state_of(headers, body):
    """The turn state a request carries: its ``x-codex-turn-state`` header, or (over a WebSocket)
    what Codex echoes in ``client_metadata``."""
    value = headers.get(TURN_STATE)
    if value is None:
        metadata = body.get("client_metadata")
        if isinstance(metadata, dict):
            value = metadata.get(TURN_STATE)
    return value


def names_unreadable_items(status, raw):
    """Whether an upstream refusal is about input items this account cannot read: encrypted
    content another account issued (400), or an item reduced to its id (404: nothing is stored)."""
    message, error = upstream_error_fields(raw)
    message = message or ""
    if status == 400:
        return error.get("code") == "invalid_encrypted_content" or "could not be verified" in message
    return status == 404 and message.startswith("Item with id ")


def item_mark(item):
    """What names an account-bound item in the affinity table: the SHA-256 of its id (of its
    content when it has none)."""
    name = item.get("id") or item.get("encrypted_content") or ""
    return hashlib.sha256(str(name).encode("utf-8", "surrogatepass")).hexdigest()


def last_bound_mark(items):
    """The mark of the last account-bound item of ``items``, or None."""
    return next((item_mark(item) for item in reversed(items) if account_bound(item)), None)


def without_bound_until(items, mark):
    """(items, how many were left out) without the account-bound items up to the one ``mark``
    names: those came from the accounts the thread moved away from. Nothing is left out when
    that item is no longer there (after a compaction, what remains is the new account's)."""
    for index in range(len(items) - 1, -1, -1):
        item = items[index]
        if account_bound(item) and item_mark(item) == mark:
            head, dropped = without_account_bound(items[:index + 1])
            return head + items[index + 1:], dropped
    return items, 0


def without_turn_state(body):
    metadata = body.get("client_metadata")
    if isinstance(metadata, dict) and TURN_STATE in metadata:
        return dict(body, client_metadata={name: value for name, value in metadata.items() if name != TURN_STATE})
    return body


class Prepared:
    """The request as one account gets it: body, its bytes, headers, and when the thread moves
    to that account, the ``boundary`` to remember for its next requests."""

    __slots__ = ("body", "payload", "headers", "boundary")

    def __init__(self, body, payload, headers, boundary=None):
        self.body = body
        self.payload = payload
        self.headers = headers
        self.boundary = boundary


class Outbound:
    """The upstream request of one exchange, serialized once, and how it changes per account.

    ``turn`` is the conversation turn (its stored items know their issuers); ``turn_state`` the
    one the client carried and ``owner`` the account that issued it (None: unknown, so it is
    sent to no account).
    """

    __slots__ = ("body", "payload", "headers", "turn", "turn_state", "owner")

    def __init__(self, body, headers, turn=None, turn_state=None, owner=None):
        self.body = body
        self.payload = to_json(body)
        self.headers = headers
        self.turn = turn
        self.turn_state = turn_state
        self.owner = owner

    def prepare(self, exchange, account_id, moved_from=None, boundary=None):
        """The request for ``account_id``. ``moved_from`` is the account the thread's items
        came from when it is another one (client-side history: what the client sends back was
        issued there); ``boundary`` the mark of the last item of an earlier account, when the
        thread moved to ``account_id`` before (the client still sends that account's items). A
        conversation knows the issuer of each stored item itself."""
        body = self.body
        mark = None
        if self.turn is not None:
            changed = self.turn.upstream_for(account_id)
            if changed is not None:
                body, change = changed
                exchange.decide("moved", account=account_id, **change)
        elif moved_from is not None:
            mark = last_bound_mark(body["input"])
            items, dropped = without_account_bound(body["input"])
            exchange.decide("moved", account=account_id, dropped=dropped)
            if dropped:
                body = dict(body, input=items)
        elif boundary is not None:
            items, dropped = without_bound_until(body["input"], boundary)
            if dropped:
                exchange.decide("dropped_earlier", account=account_id, dropped=dropped)
                body = dict(body, input=items)
        body, headers = self._turn_state(exchange, body, account_id)
        return Prepared(body, self.payload if body is self.body else to_json(body), headers, mark)

    def readable_only(self, exchange, account_id, prepared, status):
        """``prepared`` without the account-bound items, after the upstream answered ``status``
        for them (the gateway could not know that they were another account's: a thread seen
        for the first time); None when there are none to leave out. Its ``boundary`` marks the
        last of them, for the thread's next requests."""
        mark = None
        if self.turn is not None:
            changed = self.turn.upstream_for(account_id, strict=True)
            if changed is None:
                return None
            body, change = changed
            body, _ = self._turn_state(None, body, account_id)
        else:
            items, dropped = without_account_bound(prepared.body["input"])
            if not dropped:
                return None
            body, change = dict(prepared.body, input=items), {"dropped": dropped}
            # The client will send them again: its next requests leave them out at once.
            mark = last_bound_mark(prepared.body["input"])
        exchange.decide("retry", account=account_id, status=status, **change)
        return Prepared(body, to_json(body), prepared.headers, mark)

    def _turn_state(self, exchange, body, account_id):
        """(body, headers): the turn state goes to the account that issued it, and only there."""
        if self.turn_state is None:
            return body, self.headers
        if self.owner == account_id:
            return body, {**self.headers, TURN_STATE: self.turn_state}
        if exchange is not None:
            exchange.decide("turn_state_dropped", account=account_id, issuer=self.owner)
        return without_turn_state(body), self.headers

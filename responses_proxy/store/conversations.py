"""Conversations: ordered items, each stored once, and a one-turn-at-a-time lease."""

import hashlib
import secrets
import time

import orjson
from sqlalchemy import Integer, bindparam, delete, func, insert, or_, select, update

from . import take_lease, write
from .tables import conversation_items, conversations

# The item types a conversation's history is read by: a compaction item stands for everything
# before it, and these only mean something to the account that issued them.
COMPACTION = "compaction"
ACCOUNT_BOUND_TYPES = ("reasoning", COMPACTION)

ID_PREFIXES = {"message": "msg", "function_call_output": "fco", "function_call": "fc", "reasoning": "rs"}


def new_conversation_id():
    return "conv_" + secrets.token_hex(24)


def item_id_for(item):
    existing = item.get("id")
    if isinstance(existing, str) and 0 < len(existing) <= 100 and "\x00" not in existing and "/" not in existing:
        return existing
    return f"{ID_PREFIXES.get(item.get('type'), 'item')}_{secrets.token_hex(24)}"


def indexed(value, limit):
    """What an index column holds of an item's field: the value when it fits the column (and
    PostgreSQL's text, which takes no NUL), else a digest, the same for the same value (so a
    call and its output still pair up). The item itself is stored whole in ``data``."""
    if not isinstance(value, str):
        return None
    if len(value) <= limit and "\x00" not in value:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:limit - 7]


def get(engine, conversation_id):
    with engine.connect() as conn:
        return conn.execute(select(conversations).where(conversations.c.id == conversation_id)).mappings().first()


def create(engine, key_id, metadata=None, items=(), conversation_id=None):
    """A new conversation owned by ``key_id`` (its initial items as turn 0); returns
    (row, stored items), or (None, []) when the id is already taken."""
    now = time.time()
    conversation_id = conversation_id or new_conversation_id()
    with write(engine) as conn:
        taken = conn.execute(select(conversations.c.id).where(conversations.c.id == conversation_id)).scalar()
        if taken:
            return None, []
        conn.execute(insert(conversations).values(
            id=conversation_id, key_id=key_id, metadata=metadata or {}, created_at=now, updated_at=now,
            next_position=0, next_turn=0))
        stored = _append(conn, conversation_id, items, now) if items else []
        row = conn.execute(select(conversations).where(conversations.c.id == conversation_id)).mappings().one()
    return row, stored


def update_metadata(engine, conversation_id, metadata):
    with write(engine) as conn:
        conn.execute(update(conversations).where(conversations.c.id == conversation_id).values(
            metadata=metadata, updated_at=time.time()))
        return conn.execute(select(conversations).where(conversations.c.id == conversation_id)).mappings().first()


def delete_conversation(engine, conversation_id):
    with write(engine) as conn:
        conn.execute(delete(conversation_items).where(conversation_items.c.conversation_id == conversation_id))
        return conn.execute(delete(conversations).where(conversations.c.id == conversation_id)).rowcount == 1


def acquire_turn(engine, conversation_id, owner, lease):
    """Take the conversation's turn lease; False while another turn holds a live one."""
    return take_lease(engine, conversations, conversation_id, conversations.c.busy_until,
                      conversations.c.busy_owner, owner, lease)


def renew_turns(engine, owners, lease):
    """Extend the turn leases held by ``owners`` (one statement for all of a process's turns)."""
    with write(engine) as conn:
        conn.execute(update(conversations).where(conversations.c.busy_owner.in_(owners)).values(
            busy_until=time.time() + lease))


def release_turn(engine, conversation_id, owner):
    with write(engine) as conn:
        conn.execute(update(conversations).where(
            conversations.c.id == conversation_id, conversations.c.busy_owner == owner,
        ).values(busy_until=None, busy_owner=None))


class LeaseLost(Exception):
    """The turn's lease expired and another request took the conversation meanwhile."""


def append(engine, conversation_id, items, release_owner=None, account_id=None):
    """Append items as one new turn, atomically; with ``release_owner``, only while that owner
    still holds the turn lease (``LeaseLost`` otherwise, nothing written), releasing it in the
    same transaction. ``account_id``: the account that served the turn. Returns the stored
    items (with their ids)."""
    now = time.time()
    with write(engine) as conn:
        if release_owner:
            released = conn.execute(update(conversations).where(
                conversations.c.id == conversation_id, conversations.c.busy_owner == release_owner,
            ).values(busy_until=None, busy_owner=None)).rowcount
            if released != 1:
                raise LeaseLost(f"the turn lease of {conversation_id} was lost")
        return _append(conn, conversation_id, items, now, account_id)


def _append(conn, conversation_id, items, now, account_id=None):
    # Reserving the positions and the turn number is one UPDATE: concurrent appends never
    # collide, on SQLite or PostgreSQL.
    reserved = conn.execute(update(conversations).where(conversations.c.id == conversation_id).values(
        next_position=conversations.c.next_position + len(items), next_turn=conversations.c.next_turn + 1,
        updated_at=now,
    ).returning(conversations.c.next_position, conversations.c.next_turn)).one()
    first_position = reserved[0] - len(items)
    turn = reserved[1] - 1
    rows = []
    stored = []
    for offset, item in enumerate(items):
        item_id = item_id_for(item)
        rows.append({
            "conversation_id": conversation_id, "position": first_position + offset, "turn": turn,
            # Input items were checked up front; output items come from the upstream as they are.
            "item_id": item_id, "type": indexed(item.get("type"), 64), "call_id": indexed(item.get("call_id"), 200),
            "data": orjson.dumps(item).decode(), "created_at": now, "account_id": account_id,
        })
        stored.append((item_id, item))
    if rows:
        conn.execute(insert(conversation_items), rows)
    return stored


def _history(conversation_id, readable_by, unknown_readable):
    """The WHERE clause of the items a turn may send (see ``load_history``)."""
    columns = conversation_items.c
    in_conversation = columns.conversation_id == conversation_id
    readable = None
    if readable_by is not None:
        readable = columns.account_id == readable_by
        if unknown_readable:
            readable = or_(readable, columns.account_id.is_(None))
    latest = select(func.max(columns.position)).where(in_conversation, columns.type == COMPACTION)
    clauses = [in_conversation]
    if readable is not None:
        latest = latest.where(readable)
        clauses.append(or_(columns.type.is_(None), columns.type.not_in(ACCOUNT_BOUND_TYPES), readable))
    clauses.append(columns.position >= func.coalesce(latest.scalar_subquery(), -1))
    return clauses


def _history_query(where):
    columns = conversation_items.c
    return (select(columns.turn, columns.type, columns.call_id, columns.data, columns.account_id).where(*where)
            .order_by(columns.position.desc()).limit(bindparam("limit", type_=Integer)))


# Every turn of every conversation runs this one: built once.
HISTORY = _history_query(_history(bindparam("conversation_id"), None, True))


def load_history(engine, conversation_id, budget, readable_by=None, unknown_readable=True):
    """The stored items a turn can send, in order: [(turn, type, call_id, data, account_id)].

    The history starts at the latest compaction item (which stands for everything before it),
    and holds the newest ``budget + 1`` items at most: one more than fits says that older ones
    exist, and ``within_budget`` leaves out the oldest turn, the one that may be cut.

    With ``readable_by`` (an account id) it is what that account can read: from the latest
    compaction item it issued, without the reasoning and compaction items other accounts
    issued. Items of no known issuer (added through the Conversations API) count as readable
    unless ``unknown_readable`` is False.

    One query, on indexes: the items before the history, or older than the budget, are not read.
    """
    parameters = {"limit": budget + 1}
    if readable_by is None:
        query = HISTORY
        parameters["conversation_id"] = conversation_id
    else:
        query = _history_query(_history(conversation_id, readable_by, unknown_readable))
    with engine.connect() as conn:
        rows = conn.execute(query, parameters).all()
    rows.reverse()
    return rows


def count_history(engine, conversation_id, readable_by=None, unknown_readable=True):
    """How many items ``load_history`` would return without a budget (an index range count)."""
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(conversation_items).where(
            *_history(conversation_id, readable_by, unknown_readable))).scalar()


def list_items(engine, conversation_id, limit, after=None, descending=True):
    """A page of items: (rows of (item_id, data), has_more). ``after`` is an item id."""
    columns = conversation_items.c
    query = select(columns.item_id, columns.data).where(columns.conversation_id == conversation_id)
    with engine.connect() as conn:
        if after is not None:
            position = conn.execute(select(columns.position).where(
                columns.conversation_id == conversation_id, columns.item_id == after)).scalar()
            if position is None:
                return None, False
            query = query.where(columns.position < position if descending else columns.position > position)
        query = query.order_by(columns.position.desc() if descending else columns.position).limit(limit + 1)
        rows = conn.execute(query).all()
    return rows[:limit], len(rows) > limit


def get_item(engine, conversation_id, item_id):
    with engine.connect() as conn:
        return conn.execute(select(conversation_items.c.data).where(
            conversation_items.c.conversation_id == conversation_id,
            conversation_items.c.item_id == item_id).order_by(conversation_items.c.position)).scalar()


def delete_item(engine, conversation_id, item_id):
    with write(engine) as conn:
        return conn.execute(delete(conversation_items).where(
            conversation_items.c.conversation_id == conversation_id,
            conversation_items.c.item_id == item_id)).rowcount > 0


def purge_key(engine, key_id):
    """Delete every conversation of a key; returns how many."""
    with write(engine) as conn:
        owned = select(conversations.c.id).where(conversations.c.key_id == key_id)
        conn.execute(delete(conversation_items).where(conversation_items.c.conversation_id.in_(owned)))
        return conn.execute(delete(conversations).where(conversations.c.key_id == key_id)).rowcount


def prune(engine, older_than):
    """Delete conversations not updated since ``older_than``; returns how many."""
    with write(engine) as conn:
        stale = select(conversations.c.id).where(conversations.c.updated_at < older_than)
        conn.execute(delete(conversation_items).where(conversation_items.c.conversation_id.in_(stale)))
        return conn.execute(delete(conversations).where(conversations.c.updated_at < older_than)).rowcount


def count_items(engine, conversation_id):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(conversation_items).where(
            conversation_items.c.conversation_id == conversation_id)).scalar()


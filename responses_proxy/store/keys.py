"""API keys: random, shown once, stored as a SHA-256 digest."""

import hashlib
import secrets
import time

from sqlalchemy import and_, bindparam, insert, select, update

from . import write
from .accounts import VERSION_COLUMNS
from .tables import api_keys

KEY_PREFIX = "sk-rp-"


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def create(engine, name, allowed_models=None, rpm=None, concurrency=None, daily_tokens=None):
    """Store a new key and return its row with the plaintext ``key`` (the only time it exists)."""
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    row = {
        "id": "key_" + secrets.token_hex(8),
        "name": name,
        "key_hash": hash_key(plaintext),
        "key_prefix": plaintext[:10],
        "allowed_models": list(allowed_models) if allowed_models else None,
        "created_at": time.time(),
        "revoked_at": None,
        "rpm_limit": rpm,
        "concurrency_limit": concurrency,
        "daily_token_limit": daily_tokens,
    }
    with write(engine) as conn:
        conn.execute(insert(api_keys).values(**row))
    return public(row) | {"key": plaintext}


# Every API request needs its key and the accounts version (the pool's snapshot check): one
# statement reads both, one row always, the key's columns NULL when no unrevoked key matches.
_accounts_version = select(*VERSION_COLUMNS).subquery()
_FIND_ACTIVE = select(api_keys.c.id, api_keys.c.name, api_keys.c.allowed_models, api_keys.c.rpm_limit,
                      api_keys.c.concurrency_limit, api_keys.c.daily_token_limit,
                      *_accounts_version.c).select_from(
    _accounts_version.outerjoin(api_keys, and_(api_keys.c.key_hash == bindparam("key_hash"),
                                               api_keys.c.revoked_at.is_(None))))


def find_active(engine, plaintext):
    """The unrevoked key whose digest matches, or None."""
    return find_active_with_accounts_version(engine, plaintext)[0]


def find_active_with_accounts_version(engine, plaintext):
    """(``find_active``, ``accounts.version``), read in one round trip."""
    return find_active_by_hash(engine, hash_key(plaintext))


def find_active_by_hash(engine, key_hash):
    """``find_active_with_accounts_version`` for a key's digest."""
    with engine.connect() as conn:
        row = conn.execute(_FIND_ACTIVE, {"key_hash": key_hash}).one()
    key = {"id": row.id, "name": row.name, "allowed_models": row.allowed_models, "rpm": row.rpm_limit,
           "concurrency": row.concurrency_limit, "daily_tokens": row.daily_token_limit} if row.id is not None else None
    return key, (row.accounts_count, row.accounts_updated_at)


def list_all(engine):
    with engine.connect() as conn:
        rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at)).mappings().all()
    return [public(row) for row in rows]


def get(engine, key_id):
    with engine.connect() as conn:
        row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
    return public(row) if row is not None else None


# Option names (as the CLI and listings spell them) -> columns.
LIMIT_COLUMNS = {"rpm": "rpm_limit", "concurrency": "concurrency_limit", "daily_tokens": "daily_token_limit"}


def change(engine, key_id, changes):
    """Change an unrevoked key's name, allowed_models or limits (``changes`` names them as
    ``public`` does; None lifts a limit). Returns the key after, or None when there is no such key."""
    values = {LIMIT_COLUMNS.get(name, name): value for name, value in changes.items()}
    with write(engine) as conn:
        changed = conn.execute(update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                               .values(**values)).rowcount
        if changed != 1:
            return None
        return public(conn.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().one())


def revoke(engine, key_id):
    """Revoke a key; False when there is no such (unrevoked) key."""
    with write(engine) as conn:
        result = conn.execute(
            update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=time.time()))
    return result.rowcount == 1


def public(row):
    return {
        "id": row["id"],
        "name": row["name"],
        "prefix": row["key_prefix"],
        "allowed_models": row["allowed_models"],
        "created_at": row["created_at"],
        "revoked_at": row["revoked_at"],
        "rpm": row["rpm_limit"],
        "concurrency": row["concurrency_limit"],
        "daily_tokens": row["daily_token_limit"],
    }

"""Upstream accounts: their identity, encrypted tokens and health."""

import secrets
import time

import orjson
from sqlalchemy import case, delete, func, insert, or_, select, update

from . import renew_lease, take_lease, write
from .tables import accounts

ACTIVE, DISABLED, NEEDS_RELOGIN = "active", "disabled", "needs_relogin"


def upsert(engine, cipher, credentials):
    """Add the account, or update the tokens of the one with the same ChatGPT account id.

    Returns ``(row, created)``. One transaction: a failure leaves nothing half-written.
    """
    now = time.time()
    values = {
        "email": credentials["email"],
        "plan": credentials["plan"],
        "tokens": cipher.encrypt(orjson.dumps({
            "id_token": credentials["id_token"],
            "access_token": credentials["access_token"],
            "refresh_token": credentials["refresh_token"],
        })),
        "access_expires_at": credentials["access_expires_at"],
        "last_refresh": credentials["last_refresh"],
        "updated_at": now,
    }
    with write(engine) as conn:
        existing = conn.execute(
            select(accounts.c.id).where(accounts.c.chatgpt_account_id == credentials["chatgpt_account_id"])
        ).scalar()
        if existing:
            # New tokens mean a fresh login: the account serves again.
            conn.execute(update(accounts).where(accounts.c.id == existing).values(
                **values, status=ACTIVE, last_error=None, last_error_at=None))
            account_id, created = existing, False
        else:
            account_id, created = "acct_" + secrets.token_hex(8), True
            conn.execute(insert(accounts).values(
                id=account_id, chatgpt_account_id=credentials["chatgpt_account_id"], status=ACTIVE,
                created_at=now, **values))
        row = conn.execute(select(accounts).where(accounts.c.id == account_id)).mappings().one()
    return public(row), created


def remove(engine, account_id):
    with write(engine) as conn:
        return conn.execute(delete(accounts).where(accounts.c.id == account_id)).rowcount == 1


def tokens(cipher, row):
    return orjson.loads(cipher.decrypt(row["tokens"]))


def set_cooldown(engine, account_id, until, error):
    now = time.time()
    with write(engine) as conn:
        conn.execute(update(accounts).where(accounts.c.id == account_id).values(
            cooldown_until=until, last_error=error, last_error_at=now, updated_at=now))


def record_error(engine, account_id, error):
    now = time.time()
    with write(engine) as conn:
        conn.execute(update(accounts).where(accounts.c.id == account_id).values(
            last_error=error, last_error_at=now, updated_at=now))


def public(row):
    """An account as listings show it: everything but the tokens."""
    return {key: row[key] for key in (
        "id", "chatgpt_account_id", "email", "plan", "status", "cooldown_until", "access_expires_at",
        "last_refresh", "last_error", "last_error_at", "quota", "quota_checked_at", "created_at", "updated_at")}


_ALL_ROWS = select(accounts).order_by(accounts.c.created_at)


def all_rows(engine):
    with engine.connect() as conn:
        return conn.execute(_ALL_ROWS).mappings().all()


def read(engine, account_id):
    with engine.connect() as conn:
        return conn.execute(select(accounts).where(accounts.c.id == account_id)).mappings().first()


# What changes whenever any account row does: their number and the newest updated_at. Built
# once: statements are checked on every request, and building one costs more than running it.
VERSION_COLUMNS = (func.count().label("accounts_count"), func.max(accounts.c.updated_at).label("accounts_updated_at"))
_VERSION = select(*VERSION_COLUMNS)


def version(engine):
    """Changes whenever any account row does: (count, newest updated_at)."""
    with engine.connect() as conn:
        return tuple(conn.execute(_VERSION).one())


def set_status(engine, account_id, status):
    with write(engine) as conn:
        return conn.execute(update(accounts).where(accounts.c.id == account_id).values(
            status=status, updated_at=time.time())).rowcount == 1


def try_lock_refresh(engine, account_id, owner, hold_seconds):
    """Take the account's refresh lock unless another process holds a live one."""
    return take_lease(engine, accounts, account_id, accounts.c.refresh_lock_until, accounts.c.refresh_lock_owner,
                      owner, hold_seconds)


def renew_refresh(engine, account_id, owner, hold_seconds):
    """Keep holding the refresh lock; False when it is no longer ``owner``'s."""
    return renew_lease(engine, accounts, account_id, accounts.c.refresh_lock_until, accounts.c.refresh_lock_owner,
                       owner, hold_seconds)


def save_refreshed(engine, cipher, account_id, owner, tokens, access_expires_at):
    """Store rotated tokens, and release the lock if ``owner`` still holds it, in one statement.

    Stored even when the lock was lost meanwhile: the auth server has already retired the old
    refresh token, so the new one is the only login left. An account marked for a new login by
    a refresh that used the old token serves again. False when the account no longer exists.
    """
    now = time.time()
    mine = accounts.c.refresh_lock_owner == owner
    with write(engine) as conn:
        return conn.execute(update(accounts).where(accounts.c.id == account_id).values(
            tokens=cipher.encrypt(orjson.dumps(tokens)), access_expires_at=access_expires_at, last_refresh=now,
            refresh_lock_until=case((mine, None), else_=accounts.c.refresh_lock_until),
            refresh_lock_owner=case((mine, None), else_=accounts.c.refresh_lock_owner),
            status=case((accounts.c.status == NEEDS_RELOGIN, ACTIVE), else_=accounts.c.status),
            updated_at=now, last_error=None, last_error_at=None)).rowcount == 1


def release_refresh(engine, account_id, owner, error, status=None, used_tokens=None):
    """Give the refresh lock back, noting ``error``. ``status`` is only set while the stored tokens
    are still ``used_tokens`` (the ciphertext the failed refresh started from): a refresh that
    failed with an old token says nothing about the tokens another process stored since."""
    now = time.time()
    values = {"refresh_lock_until": None, "refresh_lock_owner": None, "updated_at": now}
    if error:
        values.update(last_error=error, last_error_at=now)
    if status:
        values["status"] = case((accounts.c.tokens == used_tokens, status), else_=accounts.c.status)
    with write(engine) as conn:
        conn.execute(update(accounts).where(
            accounts.c.id == account_id, accounts.c.refresh_lock_owner == owner).values(**values))


def claim_quota_check(engine, account_id, interval):
    """Claim the next quota poll of an account, so that one worker polls it per interval."""
    now = time.time()
    with write(engine) as conn:
        return conn.execute(update(accounts).where(
            accounts.c.id == account_id,
            or_(accounts.c.quota_checked_at.is_(None), accounts.c.quota_checked_at < now - interval),
        ).values(quota_checked_at=now)).rowcount == 1


def save_quota(engine, account_id, quota):
    with write(engine) as conn:
        conn.execute(update(accounts).where(accounts.c.id == account_id).values(
            quota=quota, updated_at=time.time()))

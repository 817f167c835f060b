"""The schema, as SQLAlchemy Core tables. Alembic migrations in ``migrations/`` create it.

Times are epoch seconds (float): cooldowns and usage windows are plain arithmetic, and the
same column works on SQLite and PostgreSQL.
"""

from sqlalchemy import (
                        JSON,
                        BigInteger,
                        Boolean,
                        Column,
                        Float,
                        ForeignKey,
                        Index,
                        Integer,
                        MetaData,
                        String,
                        Table,
                        Text,
)

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY; BigInteger elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")

api_keys = Table(
    "api_keys", metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),  # SHA-256 hex of the plaintext key
    Column("key_prefix", String(16), nullable=False),  # first characters, to recognise a key in listings
    Column("allowed_models", JSON, nullable=True),  # list of model slugs; NULL = every model
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    # Limits; NULL = none. Their counters are in ``key_counters``.
    Column("rpm_limit", Integer, nullable=True),
    Column("concurrency_limit", Integer, nullable=True),
    Column("daily_token_limit", BigInteger, nullable=True),
)

# What a key's limits are checked against: one row per limited key, changed by one statement per
# request, so every worker and host sees the same counts (see ``store/limits.py``).
key_counters = Table(
    "key_counters", metadata,
    Column("key_id", String(32), primary_key=True),
    # Requests per minute (GCRA): when the key's bucket of requests is full again.
    Column("bucket_full_at", Float, nullable=True),
    # Requests in flight, counted in the lease period their worker last renewed them in.
    Column("lease_period", BigInteger, nullable=False),
    Column("in_flight", Integer, nullable=False),
    Column("in_flight_previous", Integer, nullable=False),
    # Total tokens of the requests that finished on ``token_day`` (days since 1970-01-01, UTC).
    Column("token_day", Integer, nullable=False),
    Column("tokens", BigInteger, nullable=False),
)

accounts = Table(
    "accounts", metadata,
    Column("id", String(32), primary_key=True),
    Column("chatgpt_account_id", String(100), nullable=False, unique=True),
    Column("email", String(320), nullable=True),
    Column("plan", String(50), nullable=True),
    Column("tokens", Text, nullable=False),  # Fernet-encrypted JSON: id_token, access_token, refresh_token
    Column("access_expires_at", Float, nullable=True),
    Column("last_refresh", Float, nullable=True),
    Column("status", String(20), nullable=False, server_default="active"),  # active | disabled | needs_relogin
    Column("cooldown_until", Float, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_error_at", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # Only one process refreshes an account's tokens at a time (the refresh token rotates).
    Column("refresh_lock_until", Float, nullable=True),
    Column("refresh_lock_owner", String(64), nullable=True),
    # Plan windows from {base}/wham/usage: {"primary": {"used_percent", "resets_at"}, "secondary": {...}}
    Column("quota", JSON, nullable=True),
    Column("quota_checked_at", Float, nullable=True),
)

# prompt_cache_key (or a key derived from the conversation) -> the account that served it last.
affinity = Table(
    "affinity", metadata,
    Column("cache_key", String(64), primary_key=True),  # SHA-256 hex, never the client's key itself
    Column("account_id", String(32), nullable=False),
    Column("updated_at", Float, nullable=False),
    # After the key's thread moved: the last item the client sent that the previous account
    # issued (SHA-256 hex of its id), so that later requests leave out that account's items.
    Column("boundary", String(64), nullable=True),
    Index("ix_affinity_updated_at", "updated_at"),
)

# Requests in flight per account, as each worker last reported them.
worker_load = Table(
    "worker_load", metadata,
    Column("worker_id", String(64), primary_key=True),
    Column("account_id", String(32), primary_key=True),
    Column("in_flight", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)

conversations = Table(
    "conversations", metadata,
    Column("id", String(100), primary_key=True),
    Column("key_id", String(32), nullable=False),  # the API key that owns it
    Column("metadata", JSON, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("next_position", Integer, nullable=False, server_default="0"),
    Column("next_turn", Integer, nullable=False, server_default="0"),
    # One turn at a time: a lease taken by the request running a turn, renewed while it streams.
    Column("busy_until", Float, nullable=True),
    Column("busy_owner", String(64), nullable=True),
    Index("ix_conversations_key", "key_id"),
    Index("ix_conversations_updated_at", "updated_at"),
)

# Each item once, in order; ``turn`` groups what one request (or one items POST) added.
conversation_items = Table(
    "conversation_items", metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("conversation_id", String(100), ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("turn", Integer, nullable=False),
    Column("item_id", String(100), nullable=False),
    Column("type", String(64), nullable=True),
    Column("call_id", String(200), nullable=True),
    Column("data", Text, nullable=False),  # the item as JSON, exactly as sent upstream
    Column("created_at", Float, nullable=False),
    # The account that served the turn which added the item: only that account can read its
    # encrypted content. NULL when unknown (items added through the Conversations API).
    Column("account_id", String(32), nullable=True),
    Index("ix_conversation_items_position", "conversation_id", "position", unique=True),
    Index("ix_conversation_items_item", "conversation_id", "item_id"),
    # The latest compaction item of a conversation, without reading its other items.
    Index("ix_conversation_items_type", "conversation_id", "type", "position"),
)

# One row per host, written by each readiness check: a write that must commit to count.
readiness = Table(
    "readiness", metadata,
    Column("host", String(255), primary_key=True),
    Column("checked_at", Float, nullable=False),
)

usage = Table(
    "usage", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("created_at", Float, nullable=False),
    Column("request_id", String(64), nullable=True),
    Column("key_id", String(32), nullable=True),
    Column("account_id", String(32), nullable=True),
    Column("model", String(200), nullable=True),
    Column("stream", Boolean, nullable=False),
    Column("status", Integer, nullable=False),
    Column("input_tokens", Integer, nullable=True),
    Column("output_tokens", Integer, nullable=True),
    Column("total_tokens", Integer, nullable=True),
    Column("cached_tokens", Integer, nullable=True),
    Column("reasoning_tokens", Integer, nullable=True),
    Column("ttfb_ms", Float, nullable=True),
    Column("duration_ms", Float, nullable=False),
    Column("error_code", String(64), nullable=True),
    Index("ix_usage_created_at", "created_at"),
    Index("ix_usage_key_created", "key_id", "created_at"),
    Index("ix_usage_account_created", "account_id", "created_at"),
)

"""Every setting of the gateway, read from ``RESPONSES_PROXY_*`` environment variables.

``SETTINGS`` is the one list: the app reads it, ``flask --app wsgi settings`` prints it and
the README documents it. Gunicorn's own settings (bind, workers, ...) live in
``etc/gunicorn.conf.py`` because the master reads them before any app exists.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass

PREFIX = "RESPONSES_PROXY_"
# Former names still read (new name -> old name), so an upgrade keeps working deploys working.
RENAMED = {"ENCRYPTION_KEY": "SECRET_KEY"}
# Settings whose values are secrets: kept out of Flask's config (which extensions and debug pages
# read) and masked wherever settings are shown ("(set)").
SECRETS = frozenset({"ENCRYPTION_KEY", "METRICS_TOKEN", "ADMIN_TOKEN"})
ADMIN_TOKEN_MIN_LENGTH = 16


class ConfigError(ValueError):
    """A setting has a value the gateway cannot use; the message names the variable."""


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable
    default: object
    doc: str


def _str(value):
    return value


def _switch(value):
    lowered = value.strip().lower()
    if lowered in ("on", "1", "true", "yes"):
        return True
    if lowered in ("off", "0", "false", "no"):
        return False
    raise ValueError(f"expected on or off: {value!r}")


def _admin_token(value):
    # The login form takes guesses at network speed: a short token would fall to them.
    if len(value) < ADMIN_TOKEN_MIN_LENGTH:
        raise ValueError(f"must be at least {ADMIN_TOKEN_MIN_LENGTH} characters long")
    return value


def _positive(parse):
    def check(value):
        parsed = parse(value)
        if parsed < 0:
            raise ValueError(f"must not be negative: {value!r}")
        return parsed

    return check


def _at_least(minimum):
    def check(value):
        parsed = int(value)
        if parsed < minimum:
            raise ValueError(f"must be at least {minimum}: {value!r}")
        return parsed

    return check


def _above_zero(parse):
    def check(value):
        parsed = parse(value)
        if parsed <= 0:
            raise ValueError(f"must be above zero: {value!r}")
        return parsed

    return check


SETTINGS = (
    Setting("DATA_DIR", _str, "./var", "Directory for the SQLite database and the generated secret key."),
    Setting("DATABASE_URL", _str, None,
            "SQLAlchemy URL; default SQLite at DATA_DIR/responses-proxy.db. "
            "Use postgresql+psycopg://user@host/db to share state between hosts."),
    Setting("DATABASE_POOL_SIZE", _at_least(1), 5, "PostgreSQL: connections each worker keeps open."),
    Setting("DATABASE_MAX_OVERFLOW", _positive(int), 20,
            "PostgreSQL: connections a worker may open beyond its pool under load (closed again once idle): "
            "a worker holds at most DATABASE_POOL_SIZE + DATABASE_MAX_OVERFLOW."),
    Setting("DATABASE_CONNECT_TIMEOUT", _at_least(2), 5,
            "PostgreSQL: seconds to wait for a new connection before the request gets 503 database_unavailable."),
    Setting("DATABASE_STATEMENT_TIMEOUT", _positive(float), 30.0,
            "PostgreSQL: seconds a statement may run or wait for a lock, and a transaction may stay idle, "
            "before the server ends it (the request gets 503 database_unavailable; 0: no limit). Schema "
            "migrations are exempt."),
    Setting("ENCRYPTION_KEY", _str, None,
            "Key that encrypts upstream tokens at rest; default: generated once into DATA_DIR/secret.key "
            "(mode 0600). RESPONSES_PROXY_SECRET_KEY, its former name, is still read when this is unset."),
    Setting("ADMIN_TOKEN", _admin_token, None,
            "Token that opens the operator's status page (GET /status), as a bearer token or through its "
            "login form; at least 16 characters. Unset: the page is off (404)."),
    Setting("UPSTREAM_BASE_URL", _str, "https://chatgpt.com/backend-api",
            "Codex backend; requests go to {base}/codex/responses, models come from {base}/codex/models."),
    Setting("AUTH_BASE_URL", _str, "https://auth.openai.com",
            "OAuth server; token refresh is POST {base}/oauth/token."),
    Setting("ORIGINATOR", _str, "codex_cli_rs", "Value of the originator header sent upstream."),
    Setting("UPSTREAM_CONNECT_TIMEOUT", _positive(float), 10.0, "Seconds to connect to the upstream."),
    Setting("UPSTREAM_READ_TIMEOUT", _positive(float), 300.0,
            "Seconds the upstream may stay silent (before its headers, or between two chunks) "
            "before the request fails."),
    Setting("KEEPALIVE_SECONDS", _positive(float), 15.0,
            "A streaming client gets a ': keepalive' comment after this many silent seconds."),
    Setting("CLIENT_TIMEOUT", _positive(float), 60.0,
            "Seconds a client may take to accept a write of the answer or to send the next part of its "
            "request body; a client that stops reading is cut off and its upstream request closed (0: never)."),
    Setting("MAX_EVENT_BYTES", _at_least(1024), 16 * 1024 * 1024,
            "Largest upstream SSE line or event (a big tool call or image can take megabytes); "
            "a larger one fails that request as an upstream error."),
    Setting("MAX_BODY_BYTES", _positive(int), 64 * 1024 * 1024,
            "Largest accepted request body (413 above it), and WebSocket message (the connection is "
            "closed with 1009 above it)."),
    Setting("WEBSOCKETS", _switch, True,
            "on: GET /v1/responses upgrades to a WebSocket (the Codex CLI's transport); off: the upgrade "
            "is answered 426 and clients use POST."),
    Setting("WEBSOCKET_PING_SECONDS", _positive(float), 25.0,
            "A WebSocket gets a ping this often, and is closed when the previous one had no pong "
            "(0: no pings)."),
    Setting("WEBSOCKET_MAX_AGE_SECONDS", _positive(float), 3600.0,
            "A WebSocket older than this is closed between two responses; the client opens a new one "
            "(0: no limit)."),
    Setting("MAX_INPUT_ITEMS", _positive(int), 20000,
            "Most items one request may carry in `input` (or `messages`, or a new conversation's `items`); "
            "400 above it."),
    Setting("MODELS_CACHE_SECONDS", _positive(float), 300.0, "How long each worker keeps the upstream model catalog."),
    Setting("DEFAULT_COOLDOWN_SECONDS", _positive(float), 60.0,
            "Cooldown of an account whose usage-limit error names no reset time."),
    Setting("MAX_ATTEMPTS", _positive(int), 3,
            "How many accounts a request may try before the first byte reaches the client."),
    Setting("AFFINITY_TTL_SECONDS", _positive(float), 1800.0,
            "How long requests with the same prompt_cache_key (or conversation) keep going to the same account."),
    Setting("REFRESH_MARGIN_SECONDS", _positive(float), 300.0,
            "Access tokens are refreshed when they expire within this many seconds."),
    Setting("REFRESH_MAX_AGE_SECONDS", _positive(float), 8 * 86400.0,
            "Tokens last refreshed longer ago than this are refreshed before use (as the Codex CLI does)."),
    Setting("QUOTA_POLL_SECONDS", _positive(float), 300.0,
            "How often each account's plan windows are fetched from {base}/wham/usage (0: never)."),
    Setting("UPSTREAM_POOL_SIZE", _positive(int), 1000, "Upstream connections each worker keeps open for reuse."),
    Setting("CONVERSATION_MAX_ITEMS", _positive(int), 1000,
            "Most items of a conversation sent upstream per turn; the oldest turns are left out whole."),
    Setting("CONVERSATION_TURN_LEASE_SECONDS", _positive(float), 20.0,
            "How long a turn's hold on its conversation outlives the process serving it (renewed every "
            "third of it while the turn runs): after a crash, the conversation is free again this soon."),
    Setting("CONVERSATION_RETENTION_DAYS", _positive(float), 30.0,
            "`flask --app wsgi conversations prune` deletes conversations idle for longer than this."),
    Setting("USAGE_FLUSH_SECONDS", _positive(float), 1.0,
            "Usage rows are written in batches at most this far apart (0 writes each row at once)."),
    Setting("IN_FLIGHT_LEASE_SECONDS", _above_zero(float), 30.0,
            "A request counts against its key's concurrency limit in leases of this many seconds, which its "
            "worker renews while it runs: the requests of a worker that crashed stop counting within two leases."),
    Setting("READINESS_CACHE_SECONDS", _positive(float), 1.0,
            "How long each worker keeps the result of its readiness checks (GET /readyz); 0: check every probe."),
    Setting("LOG_LEVEL", _str, "INFO", "Level of the JSON log written to stderr."),
    Setting("METRICS_TOKEN", _str, None,
            "When set, GET /metrics answers only requests with 'Authorization: Bearer <this token>' "
            "(401 otherwise); when unset, /metrics is open. It never takes an API key."),
)


DEFAULTS = {setting.name: setting.default for setting in SETTINGS}


def load_config(environ=None, overrides=None):
    """Read every setting from ``environ`` (default: the process environment), then apply
    ``overrides`` (tests, embedding apps). A malformed value fails loudly here, at start-up,
    naming the variable.
    """
    environ = os.environ if environ is None else environ
    config = {}
    for setting in SETTINGS:
        raw = environ.get(PREFIX + setting.name)
        if not raw and setting.name in RENAMED:
            raw = environ.get(PREFIX + RENAMED[setting.name])
        if raw is None or raw == "":
            config[setting.name] = setting.default
            continue
        try:
            config[setting.name] = setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{PREFIX}{setting.name}: {exc}") from None
    config.update(overrides or {})
    return finish(config)


def finish(config):
    """Fill in the settings derived from others."""
    config["DATA_DIR"] = os.path.abspath(config["DATA_DIR"])
    if not config.get("DATABASE_URL"):
        config["DATABASE_URL"] = "sqlite:///" + os.path.join(config["DATA_DIR"], "responses-proxy.db")
    config["UPSTREAM_BASE_URL"] = config["UPSTREAM_BASE_URL"].rstrip("/")
    config["AUTH_BASE_URL"] = config["AUTH_BASE_URL"].rstrip("/")
    return config

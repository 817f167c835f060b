"""Every error the gateway returns, in the one OpenAI envelope.

``{"error": {"message", "type", "code", "param"}}`` with the HTTP status, or, once a stream
has started, the same object inside an SSE event. Raise an ``ApiError`` anywhere below a view;
the handler registered in ``register_error_handlers`` renders it.
"""

import logging

import orjson
from flask import Response
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

_SQLITE_ERROR = 1  # SQLite's generic error: a wrong statement or schema, not an unusable database

# What a client hears of an error nobody expected (the log has the details).
UNEXPECTED = "The server had an error while processing your request."
DATABASE_DOWN = "The gateway's database is unavailable; retry in a few seconds."


class ApiError(Exception):
    status = 500
    type = "server_error"
    code = "server_error"

    def __init__(self, message, *, param=None, code=None, type=None, status=None, headers=None, extra=None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if type is not None:
            self.type = type
        if status is not None:
            self.status = status
        self.headers = headers or {}
        # Fields beyond the four standard ones (e.g. ``resets_at`` of a usage limit).
        self.extra = extra or {}

    def body(self):
        error = {"message": self.message, "type": self.type, "code": self.code, "param": self.param}
        error.update(self.extra)
        return {"error": error}

    def response(self):
        return Response(orjson.dumps(self.body()), status=self.status, headers=self.headers,
                        mimetype="application/json")


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request_error"


class InvalidApiKey(ApiError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class ModelNotAllowed(ApiError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"

    def __init__(self, model):
        super().__init__(f"This API key does not have access to model '{model}'", param="model")


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class RequestTimeout(ApiError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class Conflict(ApiError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UsageLimitReached(ApiError):
    """Every usable account is over its usage limit (or the upstream said so).

    ``type`` and ``code`` are both ``usage_limit_reached`` and the body carries ``resets_at``:
    the Codex CLI then tells its user when to come back instead of retrying.
    """

    status = 429
    type = "usage_limit_reached"
    code = "usage_limit_reached"

    def __init__(self, message, *, resets_at=None, resets_in_seconds=None, plan_type=None):
        extra = {}
        headers = {}
        if resets_at is not None:
            extra["resets_at"] = int(resets_at)
        if resets_in_seconds is not None:
            seconds = max(0, int(resets_in_seconds + 0.999))
            extra["resets_in_seconds"] = seconds
            headers["Retry-After"] = str(seconds)
        if plan_type:
            extra["plan_type"] = plan_type
        super().__init__(message, headers=headers, extra=extra)


class RateLimitExceeded(ApiError):
    """The calling key is over one of its own limits (the operator's, not the upstream's):
    OpenAI's shape, so SDKs wait for ``Retry-After`` and try again."""

    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"


class UpstreamError(ApiError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class NoAccounts(ApiError):
    status = 503
    type = "server_error"
    code = "no_accounts"


class DatabaseUnavailable(ApiError):
    status = 503
    type = "server_error"
    code = "database_unavailable"

    def __init__(self, message=DATABASE_DOWN):
        super().__init__(message)


def unavailable(exc):
    """Whether ``exc`` says that the database cannot be used now (down, restarting, unreachable,
    too slow, out of connections, locked, full) rather than that a statement was wrong: the same
    work may succeed later."""
    if isinstance(exc, (InterfaceError, PoolTimeout)):
        return True
    if not isinstance(exc, OperationalError):
        return False
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return code is None or code & 0xFF != _SQLITE_ERROR

def log_failure(logger, message, exc, fields=None):
    """Log work that failed: one line while the database is unavailable (news once per try, not
    a stack trace per second during an outage), the traceback for anything else."""
    if unavailable(exc):
        logger.warning(message, extra={"fields": {**(fields or {}), "reason": describe_error(exc)}})
    else:
        logger.error(message, exc_info=exc, extra={"fields": fields or {}})



def describe_error(exc):
    """The first line of a database error, without the SQL and its parameters."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    return f"{type(original).__name__}: {lines[0] if lines else 'no detail'}"


def api_error(exc):
    """The ``ApiError`` that answers ``exc``: itself, ``DatabaseUnavailable`` for a failure of
    the database, else None (a bug: the caller answers ``UNEXPECTED``)."""
    if isinstance(exc, ApiError):
        return exc
    if unavailable(exc):
        return DatabaseUnavailable()
    return None


def http_exception_error(exc):
    """Flask/Werkzeug's own errors (404 route, 405 method, ...) in our envelope."""
    code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.code, "http_error")
    error = ApiError(exc.description or exc.name, status=exc.code, code=code,
                     type="invalid_request_error" if exc.code < 500 else "server_error")
    if exc.code == 405 and exc.valid_methods:
        error.headers["Allow"] = ", ".join(exc.valid_methods)
    return error


def register_error_handlers(app):
    @app.errorhandler(ApiError)
    def handle_api_error(exc):
        return exc.response()

    @app.errorhandler(HTTPException)
    def handle_http_exception(exc):
        return http_exception_error(exc).response()

    @app.errorhandler(Exception)
    def handle_unexpected(exc):
        error = api_error(exc)
        if error is None:
            log.exception("unhandled error")
            error = ApiError(UNEXPECTED)
        elif isinstance(error, DatabaseUnavailable):
            log_failure(log, "database unavailable", exc)
        return error.response()

"""API-key authentication: the first thing every API route does, before reading the body."""

import functools

from flask import current_app, g, request

from .errors import InvalidApiKey
from .store import keys


def authenticate(engine, header):
    """(the key row for an ``Authorization`` header value, the accounts version read with it),
    or ``InvalidApiKey``."""
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise InvalidApiKey("Missing API key: send it as 'Authorization: Bearer <key>'.")
    key, accounts_version = keys.find_active_with_accounts_version(engine, token)
    if key is None:
        raise InvalidApiKey("Incorrect API key provided, or the key was revoked.")
    return key, accounts_version


def require_api_key(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        services = current_app.extensions["responses_proxy"]
        g.api_key, accounts_version = authenticate(services.engine, request.headers.get("Authorization"))
        # The key's query also read the accounts version: the pool's check needs no query of its own.
        with services.pool.version_read(accounts_version):
            return view(*args, **kwargs)

    return wrapper

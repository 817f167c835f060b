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
        # The key's query also reads the accounts version: the pool's first check of this
        # request takes it from ``g.accounts_version`` instead of asking again.
        g.api_key, g.accounts_version = authenticate(current_app.extensions["responses_proxy"].engine,
                                                     request.headers.get("Authorization"))
        return view(*args, **kwargs)

    return wrapper

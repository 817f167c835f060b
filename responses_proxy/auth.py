"""API-key authentication: the first thing every API route does, before reading the body."""

import functools

from flask import current_app, g, request

from .errors import InvalidApiKey
from .store import keys


def authenticate(header):
    """The key row for an ``Authorization`` header value, or ``InvalidApiKey``."""
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise InvalidApiKey("Missing API key: send it as 'Authorization: Bearer <key>'.")
    key = keys.find_active(current_app.extensions["responses_proxy"].engine, token)
    if key is None:
        raise InvalidApiKey("Incorrect API key provided, or the key was revoked.")
    return key


def require_api_key(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        g.api_key = authenticate(request.headers.get("Authorization"))
        return view(*args, **kwargs)

    return wrapper

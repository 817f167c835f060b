"""API-key authentication: the first thing every API route does, before reading the body."""

import functools

from flask import g, request

from .services import services


def require_api_key(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        # The key's query also reads the accounts version: the pool's first check of this
        # request takes it from ``g.accounts_version`` instead of asking again.
        g.api_key, g.accounts_version = services().keys.authenticate(request.headers.get("Authorization"))
        return view(*args, **kwargs)

    return wrapper

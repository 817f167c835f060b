"""API-key authentication: the first thing every API route does, before reading the body."""

import functools

from flask import g, request

from .services import services


def require_api_key(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        shared = services()
        g.api_key, accounts_version = shared.keys.authenticate(request.headers.get("Authorization"))
        # The key's query also read the accounts version: the pool's check needs no query of its own.
        with shared.pool.version_read(accounts_version):
            return view(*args, **kwargs)

    return wrapper

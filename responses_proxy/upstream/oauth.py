"""Refreshing an account's OAuth tokens, the way the Codex CLI does."""

import time

import orjson
import requests

from .credentials import CredentialsError, jwt_claims

# The Codex CLI's public OAuth client: the refresh token was issued to it.
CODEX_CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
# Answers that mean the refresh token is dead: only a new login helps.
PERMANENT_ERRORS = frozenset((
    "invalid_grant", "refresh_token_expired", "refresh_token_reused", "refresh_token_invalidated",
    "invalid_client", "unauthorized_client"))


class RefreshFailed(Exception):
    def __init__(self, message, permanent):
        super().__init__(message)
        self.permanent = permanent


def refresh_tokens(session, auth_base_url, tokens, timeout=(10, 30)):
    """POST {auth}/oauth/token; returns the new token set (the old one's fields kept where the
    answer omits them) and the access token's expiry."""
    try:
        # Never redirected: following a 307 would post the refresh token to wherever it points.
        response = session.post(auth_base_url + "/oauth/token", timeout=timeout, allow_redirects=False, json={
            "client_id": CODEX_CLIENT_ID,
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "scope": "openid profile email",
        })
    except requests.RequestException as exc:
        raise RefreshFailed(f"token refresh failed: {type(exc).__name__}", permanent=False) from None
    if 300 <= response.status_code < 400:
        raise RefreshFailed(f"token refresh answered with a redirect (HTTP {response.status_code}), not followed",
                            permanent=False)
    try:
        body = orjson.loads(response.content) if response.content else {}
    except orjson.JSONDecodeError:
        body = {}
    if response.status_code != 200:
        code = body.get("error") if isinstance(body, dict) else None
        if isinstance(code, dict):
            code = code.get("code") or code.get("type")
        permanent = code in PERMANENT_ERRORS or (response.status_code == 401 and code is None)
        return_message = f"token refresh refused (HTTP {response.status_code}{', ' + code if code else ''})"
        raise RefreshFailed(return_message, permanent=permanent)
    if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
        raise RefreshFailed("token refresh answered without an access_token", permanent=False)
    fresh = {
        "id_token": body.get("id_token") or tokens.get("id_token"),
        "access_token": body["access_token"],
        "refresh_token": body.get("refresh_token") or tokens["refresh_token"],
    }
    try:
        expires = jwt_claims(fresh["access_token"]).get("exp")
    except CredentialsError:
        expires = None
    if not isinstance(expires, (int, float)) and isinstance(body.get("expires_in"), (int, float)):
        expires = time.time() + body["expires_in"]
    return fresh, float(expires) if isinstance(expires, (int, float)) else None

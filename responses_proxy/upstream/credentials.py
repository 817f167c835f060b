"""Reading the Codex CLI's ``auth.json`` and the claims inside its JWTs."""

import base64
import binascii
from datetime import datetime

import orjson

AUTH_CLAIM = "https://api.openai.com/auth"
PROFILE_CLAIM = "https://api.openai.com/profile"


class CredentialsError(ValueError):
    """The file is not a usable Codex CLI login; the message says what is wrong."""


def jwt_claims(token):
    """The payload of a JWT, unverified: the upstream verifies it, we only read ids and expiry."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error, orjson.JSONDecodeError, AttributeError):
        raise CredentialsError("is not a JWT") from None
    if not isinstance(claims, dict):
        raise CredentialsError("is not a JWT")
    return claims


def parse_auth_json(raw: bytes):
    """Validate a Codex CLI ``auth.json`` and return what an account row needs."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CredentialsError(f"not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise CredentialsError("expected a JSON object with a 'tokens' object")
    tokens = document.get("tokens")
    if not isinstance(tokens, dict):
        raise CredentialsError(
            "no 'tokens' object: this is not a ChatGPT login (log in with `codex login`, not an API key)")
    for field in ("id_token", "access_token", "refresh_token"):
        if not isinstance(tokens.get(field), str) or not tokens[field]:
            raise CredentialsError(f"tokens.{field} is missing or not a string")
    try:
        id_claims = jwt_claims(tokens["id_token"])
    except CredentialsError:
        raise CredentialsError("tokens.id_token is not a JWT") from None
    try:
        access_claims = jwt_claims(tokens["access_token"])
    except CredentialsError:
        raise CredentialsError("tokens.access_token is not a JWT") from None

    auth = id_claims.get(AUTH_CLAIM) or access_claims.get(AUTH_CLAIM) or {}
    if not isinstance(auth, dict):
        auth = {}
    profile = access_claims.get(PROFILE_CLAIM)
    profile = profile if isinstance(profile, dict) else {}
    account_id = tokens.get("account_id") or auth.get("chatgpt_account_id")
    if not isinstance(account_id, str) or not account_id:
        raise CredentialsError("no account id: neither tokens.account_id nor the id_token's chatgpt_account_id")
    email = id_claims.get("email") or profile.get("email")
    expires = access_claims.get("exp")
    return {
        "chatgpt_account_id": account_id,
        "email": email if isinstance(email, str) else None,
        "plan": auth.get("chatgpt_plan_type") if isinstance(auth.get("chatgpt_plan_type"), str) else None,
        "id_token": tokens["id_token"],
        "access_token": tokens["access_token"],
        "refresh_token": tokens["refresh_token"],
        "access_expires_at": float(expires) if isinstance(expires, (int, float)) else None,
        "last_refresh": parse_time(document.get("last_refresh")),
    }


def parse_time(value):
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise CredentialsError(f"last_refresh is not an ISO 8601 time: {value!r}") from None

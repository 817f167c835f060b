"""API keys without Flask: authentication on every request, and their administration."""

from ..errors import InvalidApiKey
from ..store import keys as store


class KeyService:
    def __init__(self, engine):
        self.engine = engine

    def authenticate(self, header):
        """(the key row for an ``Authorization`` header value, the accounts version read with
        it in the same query), or ``InvalidApiKey``."""
        token = bearer_token(header)
        if not token:
            raise InvalidApiKey("Missing API key: send it as 'Authorization: Bearer <key>'.")
        key, accounts_version = store.find_active_with_accounts_version(self.engine, token)
        if key is None:
            raise InvalidApiKey("Incorrect API key provided, or the key was revoked.")
        return key, accounts_version

    def create(self, name, allowed_models=None):
        """A new key: its row with the plaintext ``key``, the only time it exists."""
        return store.create(self.engine, name, allowed_models)

    def list(self):
        return store.list_all(self.engine)

    def revoke(self, key_id):
        """False when there is no such unrevoked key."""
        return store.revoke(self.engine, key_id)


def bearer_token(header):
    """The token of an ``Authorization: Bearer <token>`` header value ("" when it has none)."""
    scheme, _, token = (header or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""

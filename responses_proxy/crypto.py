"""Encryption at rest of the upstream tokens (Fernet: AES-128-CBC + HMAC-SHA256)."""

import base64
import binascii
import hashlib
import hmac
import os

from cryptography.fernet import Fernet, InvalidToken

KEY_FILE = "secret.key"


class TokenCipher:
    def __init__(self, key):
        self._fernet = Fernet(key)

    def encrypt(self, plaintext: bytes) -> str:
        return self._fernet.encrypt(plaintext).decode("ascii")

    def decrypt(self, token: str) -> bytes:
        try:
            return self._fernet.decrypt(token.encode("ascii"))
        except InvalidToken:
            raise ValueError(
                "stored tokens cannot be decrypted: RESPONSES_PROXY_ENCRYPTION_KEY (or DATA_DIR/secret.key) "
                "is not the key they were encrypted with") from None


def fernet_key(secret: str) -> bytes:
    """A Fernet key as given, or one derived from any other secret string."""
    raw = secret.encode("utf-8")
    try:
        if len(base64.urlsafe_b64decode(raw)) == 32 and len(raw) == 44:
            return raw
    except (binascii.Error, ValueError):
        pass
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest())


def load_or_create_key(data_dir: str) -> bytes:
    """The key in ``data_dir/secret.key``, created (mode 0600) by whichever process comes first.

    The new key is written to a private temporary file and hard-linked into place, so a
    concurrent reader never sees a half-written key and two creators never both win.
    """
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    path = os.path.join(data_dir, KEY_FILE)
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, Fernet.generate_key())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    with open(path, "rb") as handle:
        return fernet_key(handle.read().strip().decode("ascii"))


def encryption_key(config) -> bytes:
    """The key of the upstream tokens: the setting's, else the one in ``DATA_DIR/secret.key``."""
    if config.get("ENCRYPTION_KEY"):
        return fernet_key(config["ENCRYPTION_KEY"])
    return load_or_create_key(config["DATA_DIR"])


def cipher_for(config) -> TokenCipher:
    return TokenCipher(encryption_key(config))


def session_key(config) -> bytes:
    """The key Flask signs session cookies with (the status page's login): an HMAC of the admin
    token under the encryption key, with a label of its own. It is never the encryption key
    itself; a new admin token signs every session out; and a cookie lets no one test guesses
    of the token offline without the encryption key as well."""
    return hmac.new(encryption_key(config), b"responses-proxy session cookie\0" + config["ADMIN_TOKEN"].encode(),
                    hashlib.sha256).digest()

"""Who may see the status page: a request with the admin token as its bearer token, or a browser
that signed in with it through the page's form (a session cookie)."""

import hashlib
import hmac

from flask import request, session
from flask.sessions import SecureCookieSessionInterface

from ..errors import InvalidApiKey
from ..services import services

PATH = "/status"
COOKIE = "responses_proxy_status"
SIGNED_IN = "operator"


def on_status_path(path):
    return path == PATH or path.startswith(PATH + "/")


class StatusSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, kept to the status page.

    The cookie goes to the page's own paths only, is HttpOnly and SameSite=Strict, and Secure
    whenever the page was reached over https (gunicorn takes that from X-Forwarded-Proto when a
    proxy on the same host says so). Every other request (the API's) gets Flask's null session:
    no cookie is read, signed or set on the request path.
    """

    def open_session(self, app, request):
        if not on_status_path(request.path):
            return None
        return super().open_session(app, request)

    def get_cookie_name(self, app):
        return COOKIE

    def get_cookie_path(self, app):
        return request.script_root + PATH

    def get_cookie_secure(self, app):
        return request.is_secure

    def get_cookie_samesite(self, app):
        return "Strict"

    def get_cookie_httponly(self, app):
        return True


def token_matches(given):
    """Whether ``given`` is the admin token, in constant time (digests, so that not even the
    token's length shows in the timing)."""
    expected = services().settings["ADMIN_TOKEN"]
    return hmac.compare_digest(hashlib.sha256(given.encode("utf-8")).digest(),
                               hashlib.sha256(expected.encode("utf-8")).digest())


def signed_in():
    """How this request may see the page: "bearer", "session", or None (not at all). A wrong
    bearer token is an error, even with a valid cookie: a script should hear that its token is wrong."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token_matches(token.strip()):
            raise InvalidApiKey("Incorrect admin token provided.", headers={"WWW-Authenticate": "Bearer"})
        return "bearer"
    return "session" if session.get(SIGNED_IN) else None


def sign_in():
    session.clear()
    session[SIGNED_IN] = True


def sign_out():
    session.clear()

"""``/status``: the page (or its login form), the form's sign-in and sign-out, and
``/status/data.json``, the document the page refreshes itself from."""

from flask import Blueprint, jsonify, redirect, render_template, request, url_for

from ..errors import InvalidApiKey
from ..services import services
from .access import PATH, sign_in, sign_out, signed_in, token_matches
from .service import status_document

bp = Blueprint("status", __name__, template_folder="templates", static_folder="static",
               static_url_path=PATH + "/static")

# Seconds between two refreshes of an open page.
REFRESH_SECONDS = 5
# What a blank row of each table holds: the page's <template> rows, which its script clones
# when the number of rows changes, are rendered from these.
BLANK_ACCOUNT = {"quota": {"primary": {}, "secondary": {}}, "last_hour": {}, "last_day": {}}
BLANK_KEY = {"last_day": {}}
# Nothing but the app's own script and style, no framing: data that slipped past escaping could
# still not run.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@bp.after_request
def protect(response):
    response.headers.update(SECURITY_HEADERS)
    if request.endpoint != "status.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.get(PATH)
def page():
    access = signed_in()
    if access is None:
        return render_template("status/login.html")
    return render_template("status/page.html", doc=status_document(services()), with_session=access == "session",
                           blank_account=BLANK_ACCOUNT, blank_key=BLANK_KEY, refresh_seconds=REFRESH_SECONDS)


@bp.post(PATH)
def login():
    if not token_matches(request.form.get("token", "")):
        return render_template("status/login.html", error="That is not the admin token."), 401
    sign_in()
    return redirect(url_for(".page"), 303)


@bp.post(PATH + "/logout")
def logout():
    sign_out()
    return redirect(url_for(".page"), 303)


@bp.get(PATH + "/data.json")
def data():
    if signed_in() is None:
        raise InvalidApiKey("Missing admin token: sign in at /status, or send it as 'Authorization: Bearer <token>'.",
                            headers={"WWW-Authenticate": "Bearer"})
    return jsonify(status_document(services()))

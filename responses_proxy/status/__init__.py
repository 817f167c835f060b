"""The operator's status page: ``GET /status``, behind ``RESPONSES_PROXY_ADMIN_TOKEN``.

Without the token the page does not exist (every one of its routes is the usual 404), so a
gateway that never set one shows nothing it did not show before.
"""


def init_app(app):
    from ..crypto import session_key
    from ..services import EXTENSION
    from .access import StatusSessions
    from .views import bp

    settings = app.extensions[EXTENSION].settings
    if not settings["ADMIN_TOKEN"]:
        return
    app.secret_key = session_key(settings)
    app.session_interface = StatusSessions()
    app.register_blueprint(bp)

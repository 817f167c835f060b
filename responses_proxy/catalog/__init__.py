"""``GET /v1/models``: the upstream's model catalog, filtered by the caller's key."""


def init_app(app):
    from .views import bp

    app.register_blueprint(bp)

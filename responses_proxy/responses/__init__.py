"""``POST /v1/responses``: validation, normalization, the exchange with the upstream."""


def init_app(app):
    from .views import bp

    app.register_blueprint(bp)

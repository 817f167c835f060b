"""``GET /openapi.json``: the API as an OpenAPI 3.1 document, built from the marshmallow schemas."""


def init_app(app):
    from .views import bp

    app.register_blueprint(bp)

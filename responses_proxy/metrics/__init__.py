"""Prometheus metrics: ``GET /metrics``, and the count of every HTTP request."""


def init_app(app):
    from .views import bp, count_request

    app.after_request(count_request)
    app.register_blueprint(bp)

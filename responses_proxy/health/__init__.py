"""Probes for load balancers and orchestrators: ``/healthz`` (alive) and ``/readyz`` (can serve)."""


def init_app(app):
    from .views import bp

    app.register_blueprint(bp)

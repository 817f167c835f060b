"""Usage reports: ``flask --app wsgi usage`` for the operator, ``GET /v1/usage`` for a key's own."""


def init_app(app):
    from .cli import usage_report
    from .views import bp

    app.register_blueprint(bp)
    app.cli.add_command(usage_report)

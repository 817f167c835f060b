"""Server-side conversations: turns of ``POST /v1/responses`` and the Conversations API."""


def init_app(app):
    from .cli import conversations_cli
    from .views import bp

    app.register_blueprint(bp)
    app.cli.add_command(conversations_cli)

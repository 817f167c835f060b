"""API keys: what clients authenticate with, and the operator commands that manage them."""


def init_app(app):
    from .cli import keys_cli

    app.cli.add_command(keys_cli)

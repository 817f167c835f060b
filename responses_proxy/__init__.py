"""responses-proxy: an OpenAI Responses API gateway in front of a pool of Codex accounts."""

from flask import Flask

from .config import SECRETS, load_config
from .errors import register_error_handlers
from .services import EXTENSION, Services


def create_app(config=None):
    """Build the app: settings from the environment, overridden by ``config`` (tests, apps
    that embed this one), then each domain wires itself in."""
    # No static files: without a static folder Flask adds no /static route.
    app = Flask(__name__, static_folder=None)
    settings = configure_settings(app, config)
    configure_logging(app)
    app.extensions[EXTENSION] = Services(settings)
    register_error_handlers(app)
    register_domains(app)
    install_client_guard(app)
    return app


def configure_settings(app, overrides):
    settings = load_config(overrides=overrides)
    # Secrets (the key that encrypts upstream tokens, the metrics and admin tokens) stay out of
    # Flask's config, which extensions and debug pages read; the services keep the full settings.
    app.config.update({name: value for name, value in settings.items() if name not in SECRETS})
    return settings


def install_client_guard(app):
    from .server import ClientGuard

    guard = app.wsgi_app = ClientGuard(app.wsgi_app, app.config["CLIENT_TIMEOUT"])
    app.extensions[EXTENSION].metrics.watch_requests(guard)


def configure_logging(app):
    from .observability import configure_logging as configure

    configure(app.config["LOG_LEVEL"])


def register_domains(app):
    from . import (
        catalog,
        cli,
        conversations,
        health,
        keys,
        metrics,
        observability,
        openapi,
        pool,
        responses,
        status,
        usage,
    )

    for domain in (observability, metrics, health, keys, pool, responses, catalog, conversations, usage, openapi,
                   status, cli):
        domain.init_app(app)

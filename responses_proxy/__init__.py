"""responses-proxy: an OpenAI Responses API gateway in front of a pool of Codex accounts."""

from flask import Flask

from .config import load_config
from .errors import register_error_handlers


class Services:
    """What the views need, built once per process: ``app.extensions["responses_proxy"]``."""

    def __init__(self, config):
        from .catalog.service import Catalog
        from .conversations.schemas import CreateConversationSchema
        from .conversations.service import ConversationService
        from .crypto import cipher_for
        from .responses.schemas import ResponsesRequestSchema
        from .responses.service import ResponsesService
        from .store import make_engine
        from .store.recorder import UsageRecorder
        from .upstream.client import UpstreamClient
        from .upstream.pool import AccountPool

        self.settings = config
        self.engine = make_engine(config["DATABASE_URL"])
        self.cipher = cipher_for(config)
        self.client = UpstreamClient(config)
        self.recorder = UsageRecorder(self.engine, config["USAGE_FLUSH_SECONDS"])
        self.pool = AccountPool(self.engine, self.cipher, self.client, config)
        self.catalog = Catalog(self.client, self.pool, config["MODELS_CACHE_SECONDS"])
        self.conversations = ConversationService(self.engine, config)
        self.responses = ResponsesService(self.pool, self.client, self.catalog, self.recorder, self.conversations,
                                          config)
        # The request contracts whose limits are settings.
        self.request_schema = ResponsesRequestSchema(max_input_items=config["MAX_INPUT_ITEMS"])
        self.create_conversation_schema = CreateConversationSchema(max_items=config["MAX_INPUT_ITEMS"])


def create_app(config=None):
    """Build the app: settings from the environment, overridden by ``config`` (tests)."""
    app = Flask(__name__)
    settings = load_config(overrides=config)
    # Flask would sign its sessions with a SECRET_KEY: the token key stays out of Flask's config
    # (an app extending this one sets its own). Services keep the full settings.
    app.config.update({name: value for name, value in settings.items() if name != "SECRET_KEY"})
    configure_logging(app)
    app.extensions["responses_proxy"] = Services(settings)
    register_error_handlers(app)
    register_blueprints(app)
    register_cli(app)
    return app


def configure_logging(app):
    from .observability import configure_logging as configure

    configure(app.config["LOG_LEVEL"])


def register_blueprints(app):
    from . import observability
    from .catalog.views import bp as catalog_bp
    from .conversations.views import bp as conversations_bp
    from .responses.views import bp as responses_bp

    observability.init_app(app)
    app.register_blueprint(responses_bp)
    app.register_blueprint(catalog_bp)
    app.register_blueprint(conversations_bp)


def register_cli(app):
    from .cli import register

    register(app)

"""The objects the domains share, built once per process, and the one way to reach them."""

from flask import current_app

EXTENSION = "responses_proxy"


class Services:
    """Engine, cipher, upstream client, pool, key limits, the domain services and the open
    WebSocket sessions: ``services()``."""

    def __init__(self, config):
        from .catalog.service import Catalog
        from .conversations.schemas import CreateConversationSchema
        from .conversations.service import ConversationService
        from .crypto import cipher_for
        from .health.service import Readiness
        from .keys.limits import KeyLimits
        from .keys.service import KeyService
        from .metrics.service import Metrics
        from .pool import AccountPool
        from .pool.admin import AccountAdmin
        from .responses.schemas import ResponsesRequestSchema
        from .responses.service import ResponsesService
        from .responses.websocket import Sessions
        from .store import make_engine
        from .store.recorder import UsageRecorder
        from .upstream.client import UpstreamClient
        from .usage.service import UsageService

        self.settings = config
        self.engine = make_engine(config["DATABASE_URL"], config)
        self.cipher = cipher_for(config)
        self.client = UpstreamClient(config)
        self.recorder = UsageRecorder(self.engine, config["USAGE_FLUSH_SECONDS"])
        self.pool = AccountPool(self.engine, self.cipher, self.client, config)
        self.accounts = AccountAdmin(self.engine, self.cipher, self.pool)
        self.keys = KeyService(self.engine, config["IN_FLIGHT_LEASE_SECONDS"])
        self.limits = KeyLimits(self.engine, config["IN_FLIGHT_LEASE_SECONDS"])
        self.catalog = Catalog(self.client, self.pool, config["MODELS_CACHE_SECONDS"])
        self.metrics = Metrics(self.pool, self.catalog)
        self.conversations = ConversationService(self.engine, config, self.metrics)
        self.usage = UsageService(self.engine)
        self.readiness = Readiness(config["DATABASE_URL"], self.cipher, config["READINESS_CACHE_SECONDS"])
        self.responses = ResponsesService(self.pool, self.client, self.catalog, self.conversations, config)
        # The request contracts whose limits are settings.
        self.request_schema = ResponsesRequestSchema(max_input_items=config["MAX_INPUT_ITEMS"])
        self.create_conversation_schema = CreateConversationSchema(max_items=config["MAX_INPUT_ITEMS"])
        self.websockets = Sessions()


def services() -> Services:
    """The current app's services (inside a request or an app context)."""
    return current_app.extensions[EXTENSION]

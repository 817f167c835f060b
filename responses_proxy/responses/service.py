"""``POST /v1/responses`` without Flask: check, normalize, pick an account, relay.

Everything the request holds (its usage row, the account's in-flight slot, the conversation
turn) belongs to its ``Exchange``, which the caller builds and which settles it all on every
path; this service only decides and acts.
"""

import time
import uuid

from .. import relay
from ..errors import (
    ApiError,
    DatabaseUnavailable,
    InvalidRequest,
    ModelNotAllowed,
    UpstreamError,
    UsageLimitReached,
    unavailable,
)
from ..items import conversation_id_of, to_json
from ..upstream.client import UpstreamUnavailable, error_for_status, read_error_body, upstream_headers
from ..upstream.oauth import RefreshFailed
from .affinity import affinity_key
from .normalize import to_upstream

# Names derived per API key: the same client cache key under two keys is two upstream sessions.
_CACHE_KEY_SCOPE = uuid.UUID("6f1d7c55-3f0c-4f53-9a8e-2b1a4c7e9d10")


class AttemptFailed(Exception):
    """This account could not serve the request; the next one may (``error`` says why)."""

    def __init__(self, error):
        super().__init__(error.message)
        self.error = error


def scoped_cache_key(key_id, prompt_cache_key):
    """The upstream's prompt cache key for a client's, scoped to its API key: a UUID (the shape
    Codex itself sends), and always a valid header value whatever the client sent."""
    return str(uuid.uuid5(_CACHE_KEY_SCOPE, f"{key_id}\x00{prompt_cache_key}"))


class ResponsesService:
    def __init__(self, pool, client, catalog, conversations, config):
        self.pool = pool
        self.conversations = conversations
        self.client = client
        self.catalog = catalog
        self.keepalive = config["KEEPALIVE_SECONDS"]
        self.read_timeout = config["UPSTREAM_READ_TIMEOUT"]
        self.default_cooldown = config["DEFAULT_COOLDOWN_SECONDS"]
        self.max_attempts = config["MAX_ATTEMPTS"]
        self.max_event_bytes = config["MAX_EVENT_BYTES"]

    def check_model(self, key, model):
        allowed = key["allowed_models"]
        if allowed is not None and model not in allowed:
            raise ModelNotAllowed(model)
        if not self.catalog.knows(model):
            raise InvalidRequest(f"The model '{model}' does not exist. Check the available models at /v1/models.",
                                 param="model", code="model_not_found")

    def create(self, exchange, key, body, client=None, client_headers=None, accounts_version=None,
               relay_class=relay.SSERelay):
        """Serve a validated body: (response dict or a stream's body, extra headers).

        A streaming body is ``relay_class``'s (SSE unless the transport has its own framing).
        Raises the error that answers the request when no byte has gone out yet; the caller
        then fails the exchange. From the stream's body on, the relay finishes it.
        ``accounts_version`` is the one read with the API key (the pool's first check needs no
        query of its own).
        """
        self.check_model(key, body["model"])
        upstream = to_upstream(body)
        if body.get("prompt_cache_key"):
            upstream["prompt_cache_key"] = scoped_cache_key(key["id"], body["prompt_cache_key"])
        headers = {}
        if body.get("conversation") is not None:
            exchange.turn = self.conversations.begin_turn(key, conversation_id_of(body["conversation"]), upstream)
            upstream = exchange.turn.upstream
            headers["X-Conversation-Items-Dropped"] = str(exchange.turn.dropped)
        payload = to_json(upstream)
        affinity, follow = affinity_key(key["id"], body)
        response = self.open_upstream(exchange, payload, affinity, follow,
                                      upstream_headers(client_headers or {}, upstream.get("prompt_cache_key")),
                                      accounts_version)
        tracker = relay.Tracker(redact=exchange.turn.redact if exchange.turn is not None else None)
        if body.get("stream"):
            return self.stream(exchange, response, tracker, client, relay_class), headers
        return self.complete(exchange, response, tracker, client), headers

    # -- choosing an account and sending -----------------------------------------------------

    def open_upstream(self, exchange, payload, affinity, follow, headers, accounts_version=None):
        """Send the request to the first account that takes it; returns the 200 response.

        Nothing has reached the client yet, so a 429, a 401 that survives one token refresh,
        a 403, a 5xx or a connection failure moves on to the next account (at most
        ``MAX_ATTEMPTS``). Any other 4xx is about the request itself and is final.
        """
        tried = set()
        last_error = None
        while len(tried) < self.max_attempts:
            try:
                # The version read with the key serves the first choice only: a failover must see
                # what this request itself wrote meanwhile (a cooldown).
                account, decision = self.pool.choose(affinity, tried, follow=follow,
                                                     version=None if tried else accounts_version)
            except ApiError:
                if last_error is None:
                    raise
                break
            tried.add(account.id)
            exchange.decide(**decision)
            try:
                return self.attempt(exchange, account, payload, headers)
            except AttemptFailed as failed:
                last_error = failed.error
                exchange.decide("failover", account=account.id, reason=last_error.code)
                exchange.metrics.failover(last_error.code)
        if isinstance(last_error, UsageLimitReached):
            exhausted = self.pool.unavailable()
            raise exhausted if isinstance(exhausted, UsageLimitReached) else last_error
        raise last_error

    def attempt(self, exchange, account, payload, headers):
        """One account's try: refresh its token if due, send, and after a 401 refresh and resend once."""
        if self.pool.needs_refresh(account):
            account = self.refresh(exchange, account, "expiring", required=False)
        response = self.send(exchange, account, payload, headers)
        if response.status_code == 401:
            exchange.decide("upstream_status", account=account.id, status=401)
            read_error_body(response)  # to its end: the connection goes back to the pool
            account = self.refresh(exchange, account, "upstream 401", required=True)
            response = self.send(exchange, account, payload, headers)
        if response.status_code == 200:
            return response
        raise self.refused(exchange, account, response)

    def send(self, exchange, account, payload, headers):
        """POST to one account, holding its in-flight slot; returns the response whatever its
        status (the slot is kept only for a 200)."""
        exchange.hold(self.pool.begin(account.id))
        try:
            response = self.client.open_responses(account.credentials, payload, headers)
        except UpstreamUnavailable as exc:
            exchange.release_slot()
            exchange.metrics.upstream_unreachable(account.id)
            error = UpstreamError(f"The upstream is unreachable: {exc}.")
            self.pool.note_error(account, error.message)
            raise AttemptFailed(error) from None
        exchange.metrics.upstream_answered(account.id, response.status_code)
        if response.status_code == 200:
            exchange.row["account_id"] = account.id
        else:
            exchange.release_slot()
        return response

    def refused(self, exchange, account, response):
        """The error for an upstream answer other than 200: a failover, or final."""
        exchange.decide("upstream_status", account=account.id, status=response.status_code)
        error = error_for_status(response.status_code, read_error_body(response), self.default_cooldown)
        if isinstance(error, UsageLimitReached):
            self.pool.cool_down(account, error.extra["resets_at"], error.message)
            exchange.decide("cooldown", account=account.id, until=error.extra["resets_at"])
            exchange.metrics.cooldown(account.id)
            return AttemptFailed(error)
        if isinstance(error, UpstreamError):
            self.pool.note_error(account, error.message)
            return AttemptFailed(error)
        exchange.row["account_id"] = account.id
        return error

    def refresh(self, exchange, account, reason, required):
        """The account with fresh tokens, or ``AttemptFailed``.

        A refresh ahead of expiry that fails for a passing reason is not fatal while the
        current token still works; after an upstream 401 it is.
        """
        still_valid = account.access_expires_at is None or account.access_expires_at > time.time()
        try:
            fresh = self.pool.refresh(account, optional=still_valid and not required)
        except RefreshFailed as exc:
            exchange.decide("refresh_failed", account=account.id, reason=reason, error=str(exc),
                            permanent=exc.permanent)
            exchange.metrics.refresh("needs_relogin" if exc.permanent else "failed")
            if required or exc.permanent or not still_valid:
                raise AttemptFailed(UpstreamError(f"The upstream account could not be refreshed: {exc}.")) from None
            return account
        exchange.decide("refresh", account=account.id, reason=reason)
        exchange.metrics.refresh("ok")
        return fresh

    # -- relaying ------------------------------------------------------------------------------

    def events(self, response, client):
        try:
            return relay.EventSource(response, self.read_timeout, client, max_event_bytes=self.max_event_bytes)
        except BaseException:
            response.close()
            raise

    def stream(self, exchange, response, tracker, client, relay_class):
        source = self.events(response, client)
        stream = relay_class(source, tracker, exchange, self.keepalive, settle(exchange))
        try:
            first = stream.first(self.keepalive)
        except relay.ClientGone as exc:
            exchange.fail(exc)
            return []  # nobody is there to read it
        return stream.body(first)

    def complete(self, exchange, response, tracker, client):
        source = self.events(response, client)
        result = relay.fold(source, tracker, settle(exchange, raising=True))
        if tracker.redact is not None:
            result = tracker.redact(result)
        exchange.finish(200, tracker.error_code(), time.perf_counter() - exchange.started, relay.usage_of(result))
        return result


def settle(exchange, raising=False):
    """At the final event: the conversation turn keeps what a finished answer added."""

    def on_final(tracker):
        try:
            exchange.settle_turn(tracker.completed(), tracker.output_items())
        except Exception as exc:
            if raising:
                error = DatabaseUnavailable if unavailable(exc) else ApiError
                raise error(relay.SETTLE_FAILED) from None
            raise

    return on_final

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
from ..items import conversation_id_of
from ..upstream.client import TURN_STATE, UpstreamUnavailable, error_for_status, read_error_body, upstream_headers
from ..upstream.oauth import RefreshFailed
from .affinity import affinity_key, turn_state_key
from .normalize import to_upstream
from .threads import Outbound, names_unreadable_items, turn_state_of

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
        client_headers = client_headers or {}
        turn = None
        if body.get("conversation") is not None:
            turn = exchange.turn = self.conversations.begin_turn(key, conversation_id_of(body["conversation"]),
                                                                 upstream)
            upstream = turn.upstream
        turn_state = turn_state_of(client_headers, body)
        owner = None
        if isinstance(turn_state, str):
            owner = self.pool.owner_of(turn_state_key(key["id"], turn_state))
        outbound = Outbound(upstream, upstream_headers(client_headers, upstream.get("prompt_cache_key")), turn,
                            turn_state, owner)
        affinity, follow = affinity_key(key["id"], body)
        response = self.open_upstream(exchange, outbound, affinity, follow, accounts_version)
        headers = {}
        if turn is not None:
            headers["X-Conversation-Items-Dropped"] = str(turn.dropped)
        remember = TurnStates(self.pool, key["id"], exchange.row["account_id"])
        issued = response.headers.get(TURN_STATE)
        if issued is not None:
            remember(issued)
            headers[TURN_STATE] = issued
        tracker = relay.Tracker(redact=turn.redact if turn is not None else None, on_turn_state=remember)
        if body.get("stream"):
            return self.stream(exchange, response, tracker, client, relay_class), headers
        return self.complete(exchange, response, tracker, client), headers

    # -- choosing an account and sending -----------------------------------------------------

    def open_upstream(self, exchange, outbound, affinity, follow, accounts_version=None):
        """Send the request to the first account that takes it; returns the 200 response.

        Nothing has reached the client yet, so a 429, a 401 that survives one token refresh,
        a 403, a 5xx or a connection failure moves on to the next account (at most
        ``MAX_ATTEMPTS``). Any other 4xx is about the request itself and is final, but for a
        refusal of items the account cannot read (see ``attempt``).
        """
        tried = set()
        last_error = None
        while len(tried) < self.max_attempts:
            try:
                # The version read with the key serves the first choice only: a failover must see
                # what this request itself wrote meanwhile (a cooldown).
                account, decision = self.pool.choose(affinity, tried, follow=follow,
                                                     version=None if tried else accounts_version,
                                                     prefer=outbound.owner)
            except ApiError:
                if last_error is None:
                    raise
                break
            tried.add(account.id)
            exchange.decide(**decision)
            boundary = self.pool.boundary_of(affinity) if decision.get("affinity") == "hit" else None
            prepared = outbound.prepare(exchange, account.id, decision.get("from"), boundary)
            if prepared.boundary is not None:
                self.pool.set_boundary(affinity, account.id, prepared.boundary)
            try:
                return self.attempt(exchange, account, outbound, prepared, affinity)
            except AttemptFailed as failed:
                last_error = failed.error
                exchange.decide("failover", account=account.id, reason=last_error.code)
                exchange.metrics.failover(last_error.code)
        if isinstance(last_error, UsageLimitReached):
            exhausted = self.pool.unavailable()
            raise exhausted if isinstance(exhausted, UsageLimitReached) else last_error
        raise last_error

    def attempt(self, exchange, account, outbound, prepared, affinity=None):
        """One account's try: refresh its token if due, send, and after a 401 refresh and resend once.

        An account that refuses input items it cannot read (another account's encrypted
        content, an item reduced to its id) gets the request once more without them, and the
        thread of ``affinity`` leaves them out from then on.
        """
        if self.pool.needs_refresh(account):
            account = self.refresh(exchange, account, "expiring", required=False)
        response = self.send(exchange, account, prepared)
        if response.status_code == 401:
            exchange.decide("upstream_status", account=account.id, status=401)
            read_error_body(response)  # to its end: the connection goes back to the pool
            account = self.refresh(exchange, account, "upstream 401", required=True)
            response = self.send(exchange, account, prepared)
        if response.status_code == 200:
            return response
        status, raw = response.status_code, read_error_body(response)
        if status in (400, 404) and names_unreadable_items(status, raw):
            retry = outbound.readable_only(exchange, account.id, prepared, status)
            if retry is not None:
                response = self.send(exchange, account, retry)
                if response.status_code == 200:
                    if retry.boundary is not None:
                        self.pool.set_boundary(affinity, account.id, retry.boundary)
                    return response
                status, raw = response.status_code, read_error_body(response)
        raise self.refused(exchange, account, status, raw)

    def send(self, exchange, account, prepared):
        """POST to one account, holding its in-flight slot; returns the response whatever its
        status (the slot is kept only for a 200)."""
        exchange.hold(self.pool.begin(account.id))
        try:
            response = self.client.open_responses(account.credentials, prepared.payload, prepared.headers)
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

    def refused(self, exchange, account, status, raw):
        """The error for an upstream answer other than 200 (``raw``: its body): a failover, or final."""
        exchange.decide("upstream_status", account=account.id, status=status)
        error = error_for_status(status, raw, self.default_cooldown)
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


class TurnStates:
    """Remembers which account issued the turn states of one answer (the response header, or a
    ``response.metadata`` event), so that the requests echoing them go back there."""

    __slots__ = ("pool", "key_id", "account_id")

    def __init__(self, pool, key_id, account_id):
        self.pool = pool
        self.key_id = key_id
        self.account_id = account_id

    def __call__(self, turn_state):
        self.pool.remember_owner(turn_state_key(self.key_id, turn_state), self.account_id)


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

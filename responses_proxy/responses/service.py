"""``POST /v1/responses`` without Flask: check, normalize, pick an account, relay, record."""

import logging
import time

import orjson

from .. import relay
from ..errors import ApiError, InvalidRequest, ModelNotAllowed, UpstreamError, UsageLimitReached
from ..items import conversation_id_of
from ..upstream.client import UpstreamUnavailable, error_for_status, read_error_body, upstream_headers
from ..upstream.oauth import RefreshFailed
from ..upstream.pool import affinity_key
from .normalize import to_upstream

log = logging.getLogger("responses_proxy.request")


class RequestRecord:
    """What one request did: becomes its usage row and its structured log line."""

    def __init__(self, recorder, request_id, key_id, model=None, stream=False):
        self._recorder = recorder
        self.started = time.perf_counter()
        self.row = {"created_at": time.time(), "request_id": request_id, "key_id": key_id, "model": model,
                    "stream": stream, "account_id": None, "status": 200, "error_code": None, "ttfb_ms": None}
        self.decisions = []
        self._on_finish = []

    def on_finish(self, callback):
        self._on_finish.append(callback)

    def decide(self, event, **fields):
        self.decisions.append({"event": event, **fields})

    def finish(self, status, error_code=None, ttfb=None, response=None):
        row = self.row
        row["status"] = status
        row["error_code"] = error_code
        if ttfb is not None:
            row["ttfb_ms"] = round(ttfb * 1000, 3)
        row["duration_ms"] = round((time.perf_counter() - self.started) * 1000, 3)
        row.update(relay.usage_of(response))
        for callback in self._on_finish:
            callback()
        self._recorder.record(row)
        log.info("response", extra={"fields": {**row, "decisions": self.decisions}})


class ResponsesService:
    def __init__(self, pool, client, catalog, recorder, conversations, config):
        self.pool = pool
        self.conversations = conversations
        self.client = client
        self.catalog = catalog
        self.recorder = recorder
        self.keepalive = config["KEEPALIVE_SECONDS"]
        self.read_timeout = config["UPSTREAM_READ_TIMEOUT"]
        self.default_cooldown = config["DEFAULT_COOLDOWN_SECONDS"]
        self.max_attempts = config["MAX_ATTEMPTS"]

    def check_model(self, key, model):
        allowed = key["allowed_models"]
        if allowed is not None and model not in allowed:
            raise ModelNotAllowed(model)
        if not self.catalog.knows(model):
            raise InvalidRequest(f"The model '{model}' does not exist. Check the available models at /v1/models.",
                                 param="model", code="model_not_found")

    def create(self, key, body, record, client_socket=None, client_headers=None):
        """Serve a validated body: (response dict or SSE iterable, extra headers).

        The usage row and the conversation turn are settled when the answer ends, however
        it ends: at once for errors and JSON answers, when the stream closes for SSE.
        """
        turn = None
        try:
            self.check_model(key, body["model"])
            upstream = to_upstream(body)
            new_items = upstream["input"]
            strip_encrypted = False
            if body.get("conversation") is not None:
                turn = self.conversations.begin_turn(key, conversation_id_of(body["conversation"]), len(new_items))
                upstream["input"] = turn.history + new_items
                include = list(upstream.get("include") or ())
                if "reasoning.encrypted_content" not in include:
                    # Stored reasoning carries the model's thinking into the next turn.
                    upstream["include"] = include + ["reasoning.encrypted_content"]
                    strip_encrypted = True
            response = self.open_upstream(orjson.dumps(upstream), affinity_key(key["id"], body),
                                          upstream_headers(client_headers or {}, body.get("prompt_cache_key")),
                                          record)
        except BaseException as exc:
            if turn is not None:
                turn.abort()
            if isinstance(exc, ApiError):
                record.finish(exc.status, exc.code)
            raise
        headers = {"X-Conversation-Items-Dropped": str(turn.dropped)} if turn is not None else {}
        tracker = relay.Tracker(collect_items=turn is not None or not body.get("stream"),
                                strip_encrypted=strip_encrypted)
        if body.get("stream"):
            return self.stream(response, record, client_socket, tracker, turn, new_items), headers
        return self.complete(response, record, tracker, turn, new_items), headers

    def open_upstream(self, body, affinity, headers, record):
        """Send the request to the first account that takes it; returns the 200 response.

        Nothing has reached the client yet, so a 429, a 401 that survives one token refresh,
        a 403, a 5xx or a connection failure moves on to the next account (at most
        ``MAX_ATTEMPTS``). Any other 4xx is about the request itself and is final.
        """
        tried = set()
        last_error = None
        while len(tried) < self.max_attempts:
            try:
                account, decision = self.pool.choose(affinity[0], tried, follow=affinity[1])
            except ApiError:
                if last_error is None:
                    raise
                break
            tried.add(account.id)
            record.decide(**decision)
            if self.pool.needs_refresh(account):
                account, error = self.refresh(account, "expiring", record, required=False)
                if error:
                    last_error = error
                    continue
            response, error, status = self.send(account, body, headers, record)
            if status == 401:
                account, error = self.refresh(account, "upstream 401", record, required=True)
                if error is None:
                    response, error, status = self.send(account, body, headers, record)
            if response is not None:
                return response
            if isinstance(error, UsageLimitReached):
                self.pool.cool_down(account, error.extra["resets_at"], error.message)
                record.decide("cooldown", account=account.id, until=error.extra["resets_at"])
            elif isinstance(error, UpstreamError):
                self.pool.note_error(account, error.message)
            else:
                raise error
            last_error = error
            record.decide("failover", account=account.id, reason=error.code)
        if isinstance(last_error, UsageLimitReached):
            exhausted = self.pool.unavailable()
            raise exhausted if isinstance(exhausted, UsageLimitReached) else last_error
        raise last_error

    def send(self, account, body, headers, record):
        """One attempt: (200 response, None, 200) or (None, the ApiError it means, status)."""
        self.pool.begin(account.id)
        try:
            response = self.client.open_responses(account.credentials, body, headers)
        except UpstreamUnavailable as exc:
            self.pool.end(account.id)
            return None, UpstreamError(f"The upstream is unreachable: {exc}."), None
        if response.status_code == 200:
            record.row["account_id"] = account.id
            record.on_finish(lambda: self.pool.end(account.id))
            return response, None, 200
        self.pool.end(account.id)
        record.decide("upstream_status", account=account.id, status=response.status_code)
        error = error_for_status(response.status_code, read_error_body(response), self.default_cooldown)
        if not isinstance(error, (UsageLimitReached, UpstreamError)):
            record.row["account_id"] = account.id
        return None, error, response.status_code

    def refresh(self, account, reason, record, required):
        """(fresh account, None) or (account, the error that ends this account's attempt).

        A refresh ahead of expiry that fails for a passing reason is not fatal while the
        current token still works; after an upstream 401 it is.
        """
        still_valid = account.access_expires_at is None or account.access_expires_at > time.time()
        try:
            fresh = self.pool.refresh(account, optional=still_valid and not required)
        except RefreshFailed as exc:
            record.decide("refresh_failed", account=account.id, reason=reason, error=str(exc),
                          permanent=exc.permanent)
            if required or exc.permanent or not still_valid:
                return account, UpstreamError(f"The upstream account could not be refreshed: {exc}.")
            return account, None
        record.decide("refresh", account=account.id, reason=reason)
        return fresh, None

    def stream(self, response, record, client_socket, tracker, turn, new_items):
        def finish(sse):
            if sse.client_gone and tracker.terminal_name is None:
                record.finish(499, "client_closed", sse.ttfb)
            else:
                record.finish(200, tracker.error_code(), sse.ttfb, tracker.final_response())
            settle(turn, tracker, new_items)

        sse = relay.SSERelay(response, self.keepalive, self.read_timeout, finish, client_socket, record.started,
                             tracker, turn.keep_alive if turn is not None else None)
        try:
            first = sse.first(self.keepalive)
        except (ApiError, relay.ClientGone) as exc:
            if turn is not None:
                turn.abort()
            if isinstance(exc, ApiError):
                record.finish(exc.status, exc.code)
                raise
            record.finish(499, "client_closed")
            return []  # nobody is there to read it
        return sse.body(first)

    def complete(self, response, record, tracker, turn, new_items):
        try:
            tracker, result = relay.fold(response, self.read_timeout, tracker,
                                         turn.keep_alive if turn is not None else None)
        except ApiError as exc:
            if turn is not None:
                turn.abort()
            record.finish(exc.status, exc.code)
            raise
        record.finish(200, tracker.error_code(), time.perf_counter() - record.started, result)
        settle(turn, tracker, new_items)
        return result


def settle(turn, tracker, new_items):
    """A conversation turn keeps what a finished answer added; anything else adds nothing."""
    if turn is None:
        return
    if tracker.terminal_name in (b"response.completed", b"response.incomplete") and \
            (tracker.final_response() or {}).get("status") in ("completed", "incomplete"):
        turn.commit(new_items, tracker.output_items())
    else:
        turn.abort()

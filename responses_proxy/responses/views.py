from flask import Blueprint, Response, current_app, g, jsonify, request

from ..auth import require_api_key
from ..errors import ApiError
from ..relay import SSE_HEADERS, ClientGone
from ..requestbody import read_json_body
from ..server import CLIENT
from ..services import services
from . import websocket
from .exchange import Exchange
from .schemas import validate_request

bp = Blueprint("responses", __name__, url_prefix="/v1")


@bp.post("/responses")
@require_api_key
def create_response():
    shared = services()
    exchange = g.exchange = Exchange(shared.recorder, g.request_id, g.api_key["id"], metrics=shared.metrics)
    try:
        # Before the body is even read: a request over its key's limits costs little.
        exchange.admit(shared.limits.admit(g.api_key))
        body = validate_request(read_json_body(current_app.config["MAX_BODY_BYTES"]))
        exchange.describe(body)
        result, headers = shared.responses.create(exchange, g.api_key, body, request.environ.get(CLIENT),
                                                    request.headers, g.accounts_version)
    except ClientGone as exc:
        exchange.fail(exc)
        return Response(status=499)  # nobody is there to read it
    except BaseException as exc:
        exchange.fail(exc)
        raise
    if isinstance(result, dict):
        response = jsonify(result)
        response.headers.update(headers)
        return response
    # The relay yields bytes: no re-encoding layer between it and the server.
    return Response(result, headers={**SSE_HEADERS, **headers}, direct_passthrough=True)


# Matched only by a WebSocket upgrade: a plain GET is still the router's 405.
@bp.get("/responses", websocket=True)
def open_websocket():
    shared = services()
    if not shared.settings["WEBSOCKETS"]:
        # Codex falls back to POST at once on a 426; any other refusal costs it retries first.
        raise ApiError("WebSockets are turned off on this gateway: send the request as POST /v1/responses.",
                       status=426, code="websockets_disabled", type="invalid_request_error")
    shared.keys.authenticate(request.headers.get("Authorization"))
    return websocket.serve(shared, request, g.request_id)


@bp.after_request
def add_exchange_headers(response):
    """Every answer of an exchange, whatever path made it (JSON, stream, error), carries its
    headers (the key's rate limits)."""
    exchange = g.get("exchange")
    if exchange is not None:
        response.headers.update(exchange.headers)
    return response

import hmac
import time

from flask import Blueprint, Response, g, request
from prometheus_client.exposition import choose_encoder

from ..errors import InvalidApiKey
from ..keys.service import bearer_token
from ..services import services
from .service import UNMATCHED

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape():
    """Every worker's metrics summed, for Prometheus; with ``METRICS_TOKEN`` set, only for its bearer."""
    shared = services()
    expected = shared.settings["METRICS_TOKEN"]
    if expected:
        supplied = bearer_token(request.headers.get("Authorization"))
        if not supplied:
            raise refused("Missing metrics token: send it as 'Authorization: Bearer <token>'.")
        if not hmac.compare_digest(supplied.encode(), expected.encode()):
            raise refused("Incorrect metrics token.")
    # Prometheus text, or OpenMetrics for a scraper that asks for it.
    encoder, content_type = choose_encoder(request.headers.get("Accept"))
    return Response(encoder(shared.metrics.registry), headers={"Content-Type": content_type})


def refused(message):
    return InvalidApiKey(message, code="invalid_metrics_token", headers={"WWW-Authenticate": "Bearer"})


def count_request(response):
    """Count an answered request. A /v1/responses exchange counts its own when it ends (a stream
    ends long after this), and so does a WebSocket (101) for each of its requests."""
    if g.get("exchange") is None and response.status_code != 101:
        rule = request.url_rule
        services().metrics.request(rule.rule if rule is not None else UNMATCHED, request.method,
                                   response.status_code, time.perf_counter() - g.started)
    return response

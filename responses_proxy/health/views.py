"""``GET /healthz`` and ``GET /readyz``: no API key, nothing a client could misuse."""

from flask import Blueprint, jsonify

from ..services import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def health():
    """Liveness: the worker answers. Nothing else is checked: a database outage must not make
    an orchestrator restart workers that would come back to the same outage."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def ready():
    """Readiness: 200 when this instance can serve, 503 naming what stops it (``checks``)."""
    ready, report = services().readiness.report()
    response = jsonify(report)
    response.status_code = 200 if ready else 503
    response.headers["Cache-Control"] = "no-store"
    return response

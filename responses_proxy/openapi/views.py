from flask import Blueprint, current_app, jsonify

from ..services import services
from .document import build

bp = Blueprint("openapi", __name__)
CACHE = "responses_proxy.openapi"


@bp.get("/openapi.json")
def document():
    """The app's OpenAPI document, built once per process (it states the app's own limits)."""
    built = current_app.extensions.get(CACHE)
    if built is None:
        built = current_app.extensions[CACHE] = build(services())
    return jsonify(built)

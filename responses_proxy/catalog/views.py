from flask import Blueprint, current_app, g, jsonify

from ..auth import require_api_key
from ..errors import NotFound

bp = Blueprint("catalog", __name__)


@bp.get("/v1/models")
@require_api_key
def list_models():
    return jsonify(current_app.extensions["responses_proxy"].catalog.listing(g.api_key["allowed_models"]))


@bp.get("/v1/models/<path:model>")
@require_api_key
def get_model(model):
    for entry in current_app.extensions["responses_proxy"].catalog.listing(g.api_key["allowed_models"])["data"]:
        if entry["id"] == model:
            return jsonify(entry)
    raise NotFound(f"The model '{model}' does not exist or you do not have access to it.", param="model",
                   code="model_not_found")

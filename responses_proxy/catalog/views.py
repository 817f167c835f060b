from flask import Blueprint, g, jsonify

from ..auth import require_api_key
from ..errors import NotFound
from ..services import services

bp = Blueprint("catalog", __name__, url_prefix="/v1")


@bp.get("/models")
@require_api_key
def list_models():
    return jsonify(services().catalog.listing(g.api_key["allowed_models"]))


@bp.get("/models/<path:model>")
@require_api_key
def get_model(model):
    for entry in services().catalog.listing(g.api_key["allowed_models"])["data"]:
        if entry["id"] == model:
            return jsonify(entry)
    raise NotFound(f"The model '{model}' does not exist or you do not have access to it.", param="model",
                   code="model_not_found")

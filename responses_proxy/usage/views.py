"""``GET /v1/usage``: the calling key's own requests and tokens, over a window, by model/day/hour."""

from flask import Blueprint, g, jsonify, request

from ..auth import require_api_key
from ..services import services
from ..validation import load
from .schemas import USAGE_QUERY
from .service import METRICS

bp = Blueprint("usage", __name__, url_prefix="/v1")


@bp.get("/usage")
@require_api_key
def key_usage():
    query = load(USAGE_QUERY, request.args.to_dict(flat=False))
    groups = query["group_by"]
    rows = services().usage.report(query["since"], query["until"], groups, key_id=g.api_key["id"])
    return jsonify({
        "object": "usage",
        "key_id": g.api_key["id"],
        "since": round(query["since"], 3),
        "until": round(query["until"], 3),
        "group_by": groups,
        "data": [{**{name: row[name] for name in groups}, **{metric: row[metric] for metric in METRICS}}
                 for row in rows],
    })

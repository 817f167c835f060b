"""``GET /v1/usage``: the calling key's own requests and tokens, over a window, by model/day/hour."""

from flask import Blueprint, g, jsonify, request

from ..auth import require_api_key
from ..errors import InvalidRequest
from ..services import services
from .service import METRICS, WindowError, parse_groups, window

bp = Blueprint("usage", __name__, url_prefix="/v1")

PARAMS = ("since", "until", "group_by")
# A key sees its own usage only: grouping by key or account would tell it nothing of its own.
KEY_GROUPS = ("model", "day", "hour")


def single(name):
    values = request.args.getlist(name)
    if len(values) > 1:
        raise InvalidRequest(f"Invalid value for '{name}': give it once.", param=name)
    return values[0] if values else None


@bp.get("/usage")
@require_api_key
def key_usage():
    for name in request.args:
        if name not in PARAMS:
            raise InvalidRequest(f"Unrecognized query parameter: '{name}'. This endpoint takes "
                                 f"{', '.join(PARAMS)}.", param=name)
    try:
        groups = parse_groups(request.args.getlist("group_by"), KEY_GROUPS)
    except ValueError as exc:
        raise InvalidRequest(f"Invalid value for 'group_by': {exc}.", param="group_by") from None
    try:
        since = single("since")
        since, until = window("24h" if since is None else since, single("until"))
    except WindowError as exc:
        raise InvalidRequest(f"Invalid value for '{exc.name}': {exc}.", param=exc.name) from None
    rows = services().usage.report(since, until, groups, key_id=g.api_key["id"])
    return jsonify({
        "object": "usage",
        "key_id": g.api_key["id"],
        "since": round(since, 3),
        "until": round(until, 3),
        "group_by": groups,
        "data": [{**{name: row[name] for name in groups}, **{metric: row[metric] for metric in METRICS}}
                 for row in rows],
    })

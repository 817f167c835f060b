from flask import Blueprint, Response, current_app, g, jsonify, request

from ..auth import require_api_key
from ..errors import ApiError
from ..relay import SSE_HEADERS
from ..requestbody import read_json_body
from .schemas import validate_request
from .service import RequestRecord

bp = Blueprint("responses", __name__)


@bp.post("/v1/responses")
@require_api_key
def create_response():
    service = current_app.extensions["responses_proxy"].responses
    record = RequestRecord(service.recorder, g.request_id, g.api_key["id"])
    try:
        body = validate_request(read_json_body(current_app.config["MAX_BODY_BYTES"]))
    except ApiError as exc:
        record.finish(exc.status, exc.code)
        raise
    record.row["model"] = body["model"]
    record.row["stream"] = bool(body.get("stream"))
    result, headers = service.create(g.api_key, body, record, request.environ.get("gunicorn.socket"),
                                     request.headers, g.accounts_version)
    if isinstance(result, dict):
        response = jsonify(result)
        response.headers.update(headers)
        return response
    # The relay yields bytes: no re-encoding layer between it and the server.
    return Response(result, headers={**SSE_HEADERS, **headers}, direct_passthrough=True)

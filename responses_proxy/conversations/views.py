from flask import Blueprint, current_app, g, jsonify, request

from ..auth import require_api_key
from ..items import normalize_input
from ..requestbody import read_json_body
from ..services import services
from ..validation import load
from . import schemas

bp = Blueprint("conversations", __name__, url_prefix="/v1/conversations")


def service():
    return services().conversations


def create_schema():
    return services().create_conversation_schema


def body(schema, optional=False):
    if optional and not request.content_length and request.headers.get("Transfer-Encoding") is None:
        return {}
    return load(schema, read_json_body(current_app.config["MAX_BODY_BYTES"]))


@bp.post("")
@require_api_key
def create_conversation():
    data = body(create_schema(), optional=True)
    conversation, _ = service().create(g.api_key, data.get("metadata"), normalize_input(data.get("items") or []))
    return jsonify(conversation)


@bp.get("/<conversation_id>")
@require_api_key
def get_conversation(conversation_id):
    return jsonify(service().get(g.api_key, conversation_id))


@bp.post("/<conversation_id>")
@require_api_key
def update_conversation(conversation_id):
    service().owned(g.api_key, conversation_id)
    return jsonify(service().update(g.api_key, conversation_id, body(schemas.UPDATE)["metadata"]))


@bp.delete("/<conversation_id>")
@require_api_key
def delete_conversation(conversation_id):
    return jsonify(service().delete(g.api_key, conversation_id))


@bp.get("/<conversation_id>/items")
@require_api_key
def list_items(conversation_id):
    query = load(schemas.LIST_ITEMS, request.args.to_dict())
    return jsonify(service().list_items(g.api_key, conversation_id, query["limit"], query["after"], query["order"]))


@bp.post("/<conversation_id>/items")
@require_api_key
def add_items(conversation_id):
    service().owned(g.api_key, conversation_id)
    items = normalize_input(body(schemas.ADD_ITEMS)["items"])
    return jsonify(service().add_items(g.api_key, conversation_id, items))


@bp.get("/<conversation_id>/items/<item_id>")
@require_api_key
def get_item(conversation_id, item_id):
    return jsonify(service().get_item(g.api_key, conversation_id, item_id))


@bp.delete("/<conversation_id>/items/<item_id>")
@require_api_key
def delete_item(conversation_id, item_id):
    return jsonify(service().delete_item(g.api_key, conversation_id, item_id))

"""The OpenAPI document: every route, its request schema (the marshmallow schema that validates
it, converted by apispec), its answers and the statuses of its errors."""

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from ..conversations import schemas as conversation_schemas
from ..usage import schemas as usage_schemas
from ..validation import Strict, StringOrList
from . import schemas

JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number", dict: "object", list: "array"}
# Every error status the gateway answers with, and what it means.
ERRORS = {
    400: ("BadRequest", "The request is invalid: `message` says what, `param` where."),
    401: ("Unauthorized", "The API key is missing, wrong or revoked."),
    403: ("Forbidden", "This API key may not use the model (`model_not_allowed`)."),
    404: ("NotFound", "No such object for this API key."),
    408: ("RequestTimeout", "The request body stopped arriving before it was complete (`request_timeout`)."),
    409: ("Conflict", "Another turn of this conversation is in progress (`conversation_busy`); retry when "
                      "it has finished."),
    413: ("PayloadTooLarge", "The request body is over `RESPONSES_PROXY_MAX_BODY_BYTES` (`request_too_large`)."),
    426: ("UpgradeRequired", "WebSockets are turned off, or the server cannot take the connection over: "
                             "send the request as `POST /v1/responses`."),
    429: ("UsageLimitReached", "Every upstream account is over its usage limit (`usage_limit_reached`, with "
                               "`resets_at` and `Retry-After`)."),
    502: ("BadGateway", "The upstream failed, refused the gateway's credentials or could not be reached "
                        "(`upstream_error`)."),
    503: ("ServiceUnavailable", "No upstream account can serve (`no_accounts`: none configured, or all "
                                "disabled or in need of a new login)."),
}
SSE_DESCRIPTION = (
    "With `\"stream\": true`: server-sent events as the upstream sends them, `event: <type>` then "
    "`data: <one-line JSON>`, and a `: keepalive` comment while the upstream is silent. An error after "
    "the first event is an `event: response.failed` (or `event: error`), then the stream ends.")
# OpenAPI 3.1 reads the schema of an event stream as that of each event.
SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "description": "The event's type (`response.output_text.delta`...)."},
        "data": {"type": "string", "description": "The event: one line of JSON, as the upstream sent it.",
                 "contentMediaType": "application/json",
                 "contentSchema": {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}},
    },
    "required": ["data"],
}
WEBSOCKET_DESCRIPTION = (
    "The Responses API over a WebSocket (the Codex CLI's transport); a plain GET is answered 405. "
    "After the upgrade, each text message `{\"type\": \"response.create\", ...}` is one request with the "
    "body of `POST /v1/responses` (always streaming), plus `previous_response_id` (continues the "
    "connection's latest response) and `generate: false` (answered at once, nothing sent upstream). "
    "Each event of the answer comes back as one text message; an error before the first event is a message "
    "`{\"type\": \"error\", \"status\": <the POST's status>, \"error\": {...}}`. OpenAPI cannot describe "
    "the messages themselves: `x-websocket-messages` names their schemas.")


def strict_types(self, field, ret, **kwargs):
    """The JSON types of the gateway's own fields, which accept exactly those (marshmallow
    sees a Raw field). A field whose default is None takes null only as absence (a query string)."""
    if isinstance(field, StringOrList):
        types = ["string", "array"]
    elif isinstance(field, Strict):
        types = [JSON_TYPES[kind] for kind in field.json_types if not (kind is int and float in field.json_types)]
    else:
        return {}
    if field.load_default is None:
        ret.pop("default", None)  # absence, which a query string cannot spell as null
    elif field.allow_none:
        types.append("null")
    return {"type": types[0] if len(types) == 1 else types}


def ecma_pattern(self, field, ret, **kwargs):
    """A Python pattern's anchors in the regular expressions of JSON Schema (ECMA 262)."""
    pattern = ret.get("pattern")
    if pattern is None:
        return {}
    if pattern.startswith("\\A"):
        pattern = "^" + pattern[2:]
    if pattern.endswith("\\Z"):
        pattern = pattern[:-2] + "$"
    return {"pattern": pattern}


def errors(*statuses):
    return {str(status): ERRORS[status][0] for status in statuses}


def json_answer(schema, description):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def path_parameter(name, description):
    return {"in": "path", "name": name, "required": True, "schema": {"type": "string"}, "description": description}


CONVERSATION_ID = path_parameter("conversation_id", "A conversation id (`conv_...`) of this API key.")
ITEM_ID = path_parameter("item_id", "An item id of the conversation.")


def json_body(schema, examples, required=True):
    """A JSON request body; ``examples``: {name: value}."""
    return {"required": required, "content": {"application/json": {
        "schema": schema, "examples": {name: {"value": value} for name, value in examples.items()}}}}


def build(shared):
    """The document of the app whose ``services`` are ``shared`` (its request schemas carry its limits)."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="responses-proxy", version="v1", openapi_version="3.1.0", plugins=[plugin],
        info={"description": "An OpenAI Responses API gateway in front of a pool of ChatGPT Codex accounts. "
                             "Every error is the OpenAI envelope `{\"error\": {\"message\", \"type\", \"code\", "
                             "\"param\"}}`; every answer carries `X-Request-Id`."},
        security=[{"bearer": []}])
    plugin.converter.add_attribute_function(strict_types)
    plugin.converter.add_attribute_function(ecma_pattern)

    components = spec.components
    components.security_scheme("bearer", {"type": "http", "scheme": "bearer",
                                          "description": "An API key: `flask --app wsgi keys create`."})
    components.security_scheme("metricsToken", {"type": "http", "scheme": "bearer",
                                                "description": "RESPONSES_PROXY_METRICS_TOKEN, when it is set."})
    components.schema("ErrorEnvelope", schema=schemas.ErrorEnvelopeSchema)
    for status, (name, description) in ERRORS.items():
        answer = json_answer("ErrorEnvelope", description)
        if status == 429:
            answer["headers"] = {"Retry-After": {"description": "Seconds until an account is usable again.",
                                                 "schema": {"type": "integer"}}}
        components.response(name, answer)
    components.schema("ResponsesRequest", schema=shared.request_schema)
    components.schema("CreateConversationRequest", schema=shared.create_conversation_schema)
    components.schema("UpdateConversationRequest", schema=conversation_schemas.UPDATE)
    components.schema("AddItemsRequest", schema=conversation_schemas.ADD_ITEMS)
    components.schema("Response", schema=schemas.ResponseSchema)
    components.schema("ItemList", schema=schemas.ItemListSchema)
    components.schema("Conversation", schema=schemas.ConversationSchema)

    spec.path("/v1/responses", operations={
        "post": {
            "summary": "Create a response",
            "description": "Validated, normalized and sent to an upstream account; the answer is relayed as "
                           "it comes (streaming) or folded into one response object.",
            "operationId": "createResponse",
            "requestBody": json_body("ResponsesRequest", {
                "text": {"model": "gpt-5.2", "input": "Say hello."},
                "streaming": {"model": "gpt-5.2", "input": "Count to three.", "stream": True},
                "conversation": {"model": "gpt-5.2", "input": "Remember: blue.", "conversation": "conv_example"}}),
            "responses": {
                "200": {
                    "description": "The response object, or its events. " + SSE_DESCRIPTION,
                    "headers": {"X-Conversation-Items-Dropped": {
                        "description": "With `conversation`: how many stored items were left out of the turn "
                                       "(the oldest turns, whole).", "schema": {"type": "integer"}}},
                    "content": {"application/json": {"schema": "Response"},
                                "text/event-stream": {"schema": SSE_EVENT}},
                },
                **errors(400, 401, 403, 404, 408, 409, 413, 429, 502, 503),
            },
        },
        "get": {
            "summary": "Create responses over a WebSocket",
            "description": WEBSOCKET_DESCRIPTION,
            "operationId": "openResponsesWebSocket",
            "parameters": [
                {"in": "header", "name": "Upgrade", "required": True, "schema": {"enum": ["websocket"]}},
                {"in": "header", "name": "Connection", "required": True, "schema": {"enum": ["Upgrade"]}},
                {"in": "header", "name": "Sec-WebSocket-Key", "required": True, "schema": {"type": "string"}},
                {"in": "header", "name": "Sec-WebSocket-Version", "required": True, "schema": {"enum": ["13"]}},
            ],
            "x-websocket-messages": {"request": {"$ref": "#/components/schemas/ResponsesRequest"},
                                     "error": {"$ref": "#/components/schemas/ErrorEnvelope"}},
            "responses": {
                "101": {"description": "Switching Protocols: the connection is a WebSocket from here on."},
                "405": {"description": "A GET without the WebSocket upgrade.",
                        "content": {"application/json": {"schema": "ErrorEnvelope"}}},
                **errors(400, 401, 426),
            },
        },
    })
    spec.path("/v1/models", operations={"get": {
        "summary": "List the models this API key may use",
        "operationId": "listModels",
        "responses": {"200": json_answer(schemas.ModelListSchema, "The upstream's catalog (cached), filtered by "
                                                                  "the key's allowed models."), **errors(401)},
    }})
    spec.path("/v1/models/{model}", operations={"get": {
        "summary": "One model",
        "operationId": "getModel",
        "parameters": [path_parameter("model", "A model slug.")],
        "responses": {"200": json_answer(schemas.ModelSchema, "The model."), **errors(401, 404)},
    }})
    spec.path("/v1/conversations", operations={"post": {
        "summary": "Create a conversation",
        "operationId": "createConversation",
        "requestBody": json_body("CreateConversationRequest", {"metadata": {"metadata": {"topic": "demo"}}},
                                 required=False),
        "responses": {"200": json_answer("Conversation", "The new conversation."), **errors(400, 401, 408, 413)},
    }})
    spec.path("/v1/conversations/{conversation_id}", operations={
        "get": {"summary": "A conversation", "operationId": "getConversation", "parameters": [CONVERSATION_ID],
                "responses": {"200": json_answer("Conversation", "The conversation."), **errors(401, 404)}},
        "post": {"summary": "Update a conversation's metadata", "operationId": "updateConversation",
                 "parameters": [CONVERSATION_ID],
                 "requestBody": json_body("UpdateConversationRequest", {"metadata": {"metadata": {"topic": "demo"}}}),
                 "responses": {"200": json_answer("Conversation", "The conversation."),
                               **errors(400, 401, 404, 408, 413)}},
        "delete": {"summary": "Delete a conversation and its items", "operationId": "deleteConversation",
                   "parameters": [CONVERSATION_ID],
                   "responses": {"200": json_answer(schemas.ConversationDeletedSchema, "Deleted."),
                                 **errors(401, 404)}},
    })
    spec.path("/v1/conversations/{conversation_id}/items", operations={
        "get": {"summary": "List a conversation's items", "operationId": "listConversationItems",
                "parameters": [CONVERSATION_ID, {"in": "query", "schema": conversation_schemas.LIST_ITEMS}],
                "responses": {"200": json_answer("ItemList", "A page of items."), **errors(400, 401, 404)}},
        "post": {"summary": "Add items to a conversation", "operationId": "addConversationItems",
                 "parameters": [CONVERSATION_ID],
                 "requestBody": json_body("AddItemsRequest", {"message": {"items": [
                     {"type": "message", "role": "user", "content": "Remember this."}]}}),
                 "responses": {"200": json_answer("ItemList", "The items added, with their ids."),
                               **errors(400, 401, 404, 408, 409, 413)}},
    })
    spec.path("/v1/conversations/{conversation_id}/items/{item_id}", operations={
        "get": {"summary": "A conversation item", "operationId": "getConversationItem",
                "parameters": [CONVERSATION_ID, ITEM_ID],
                "responses": {"200": json_answer(schemas.ItemSchema, "The item."), **errors(401, 404)}},
        "delete": {"summary": "Delete a conversation item", "operationId": "deleteConversationItem",
                   "parameters": [CONVERSATION_ID, ITEM_ID],
                   "responses": {"200": json_answer("Conversation", "The conversation the item was in."),
                                 **errors(401, 404)}},
    })
    spec.path("/v1/usage", operations={"get": {
        "summary": "The calling key's own usage",
        "description": "Requests, errors and tokens of the calling key (nobody else's) over a window, "
                       "in total or by model, day and/or hour.",
        "operationId": "getUsage",
        "parameters": [{"in": "query", "schema": usage_schemas.USAGE_QUERY}],
        "responses": {"200": json_answer(schemas.UsageSchema, "The key's usage."), **errors(400, 401, 503)},
    }})
    spec.path("/healthz", operations={"get": {
        "summary": "Liveness: the worker answers", "operationId": "health", "security": [],
        "description": "Checks nothing else: a database outage must not make an orchestrator restart workers.",
        "responses": {"200": json_answer(schemas.HealthSchema, "Alive.")},
    }})
    spec.path("/readyz", operations={"get": {
        "summary": "Readiness: whether this instance can serve", "operationId": "ready", "security": [],
        "description": "The database takes writes, the schema is current, the account tokens decrypt with "
                       "the configured key, and an account can serve.",
        "responses": {"200": json_answer(schemas.ReadinessSchema, "Ready."),
                      "503": json_answer(schemas.ReadinessSchema, "Not ready: `checks` says what is wrong.")},
    }})
    spec.path("/metrics", operations={"get": {
        "summary": "Prometheus metrics, summed over the server's workers", "operationId": "metrics",
        "description": "No API key: open, or behind RESPONSES_PROXY_METRICS_TOKEN when it is set.",
        "security": [{}, {"metricsToken": []}],
        "responses": {
            "200": {"description": "The Prometheus text format, or OpenMetrics when the scraper asks for it.",
                    "content": {"text/plain": {"schema": {"type": "string"}},
                                "application/openmetrics-text": {"schema": {"type": "string"}}}},
            "401": {"description": "RESPONSES_PROXY_METRICS_TOKEN is set and the request does not carry it.",
                    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": "ErrorEnvelope"}}},
        },
    }})
    spec.path("/openapi.json", operations={"get": {
        "summary": "This document", "operationId": "openapi", "security": [],
        "responses": {"200": {"description": "The OpenAPI document.",
                              "content": {"application/json": {"schema": {"type": "object"}}}}},
    }})
    return spec.to_dict()

"""GET /openapi.json: a valid OpenAPI 3.1 document that covers every route the app serves."""

import re

import pytest
from openapi_spec_validator import validate

from responses_proxy import create_app

# Flask's converters (``<path:model>``) as OpenAPI path templates (``{model}``).
CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


@pytest.fixture
def document(client):
    reply = client.get("/openapi.json")
    assert reply.status_code == 200
    return reply.json


def served_operations(app):
    return {(CONVERTER.sub(r"{\1}", rule.rule), method.lower())
            for rule in app.url_map.iter_rules() for method in rule.methods - {"HEAD", "OPTIONS"}}


def documented_operations(document):
    return {(path, method) for path, operations in document["paths"].items() for method in operations}


def test_every_route_the_app_serves_is_documented_and_nothing_else(app, document):
    assert served_operations(app) == documented_operations(document)


def test_a_route_added_by_an_extending_app_is_missing_from_the_document(tmp_path, upstream):
    """What the test above catches: a new route without its documentation."""
    app = create_app({"DATA_DIR": str(tmp_path), "UPSTREAM_BASE_URL": upstream.base_url, "ENCRYPTION_KEY": "k"})
    app.add_url_rule("/v1/extra/<thing_id>", "extra", lambda thing_id: "")
    try:
        document = app.test_client().get("/openapi.json").json
        assert served_operations(app) - documented_operations(document) == {("/v1/extra/{thing_id}", "get")}
    finally:
        app.extensions["responses_proxy"].engine.dispose()


def test_the_document_is_valid_openapi_3_1(document):
    validate(document)
    assert document["openapi"] == "3.1.0"


def test_it_needs_no_api_key_and_declares_bearer_keys(document):
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "An API key: `flask --app wsgi keys create`."}
    assert document["security"] == [{"bearer": []}]
    for path in ("/healthz", "/openapi.json"):
        assert document["paths"][path]["get"]["security"] == []
    assert document["paths"]["/metrics"]["get"]["security"] == [{}, {"metricsToken": []}]


def test_every_error_answer_is_the_envelope(document):
    responses = document["components"]["responses"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if int(status) < 400 or path in ("/healthz", "/readyz"):  # probes answer with a report
                    continue
                answer = responses[answer["$ref"].rsplit("/", 1)[1]] if "$ref" in answer else answer
                assert answer["content"] == {"application/json": {"schema": {
                    "$ref": "#/components/schemas/ErrorEnvelope"}}}, (path, method, status)
    envelope = document["components"]["schemas"]["ErrorEnvelope"]
    assert envelope["required"] == ["error"] and envelope["additionalProperties"] is False
    assert set(document["components"]["schemas"]["Error"]["required"]) == {"message", "type", "code", "param"}


def test_the_statuses_of_create_response(document):
    answers = document["paths"]["/v1/responses"]["post"]["responses"]

    assert set(answers) == {"200", "400", "401", "403", "404", "408", "409", "413", "429", "502", "503"}
    assert set(answers["200"]["content"]) == {"application/json", "text/event-stream"}
    # OpenAPI 3.1 reads an event stream's schema as each event's: {event, data}.
    event = answers["200"]["content"]["text/event-stream"]["schema"]
    assert event["type"] == "object" and event["required"] == ["data"]
    assert event["properties"]["data"]["contentMediaType"] == "application/json"
    assert document["components"]["responses"]["UsageLimitReached"]["headers"]["Retry-After"]
    websocket = document["paths"]["/v1/responses"]["get"]
    assert set(websocket["responses"]) == {"101", "400", "401", "405", "426"}


def test_request_schemas_say_what_the_validation_accepts(document):
    request = document["components"]["schemas"]["ResponsesRequest"]
    properties = request["properties"]

    assert request["required"] == ["model"] and request["additionalProperties"] is True
    assert properties["model"] == {"type": "string", "pattern": "^[^\\x00]{0,200}$"}
    assert properties["input"]["type"] == ["string", "array", "null"]
    assert properties["stream"]["type"] == ["boolean", "null"]
    assert properties["temperature"]["type"] == ["number", "null"]
    assert properties["store"]["enum"] == [False, None]
    assert properties["truncation"]["enum"] == [None]
    assert properties["include"]["items"]["enum"][0] == "code_interpreter_call.outputs"
    assert properties["reasoning"]["anyOf"] == [{"$ref": "#/components/schemas/Reasoning"}, {"type": "null"}]
    assert properties["prompt_cache_key"]["pattern"].startswith("^(?!\\s)")
    message = document["components"]["schemas"]["Message"]
    assert message["properties"]["content"]["type"] == ["string", "array", "null"]
    assert message["properties"]["role"]["enum"] == ["user", "assistant", "system", "developer", "tool"]


def test_query_parameters_of_the_item_list(document):
    parameters = {parameter["name"]: parameter
                  for parameter in document["paths"]["/v1/conversations/{conversation_id}/items"]["get"]["parameters"]}

    assert parameters["limit"]["schema"] == {"type": "integer", "default": 20, "minimum": 1, "maximum": 100}
    assert parameters["order"]["schema"] == {"type": "string", "default": "desc", "enum": ["asc", "desc"]}
    assert parameters["after"]["schema"] == {"type": "string"}
    assert parameters["conversation_id"]["in"] == "path"

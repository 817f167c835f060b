"""Fuzzing the API from its own OpenAPI document (schemathesis), against gunicorn and the fake upstream.

Every documented operation gets the document's examples, then requests generated from its
schemas, valid and not, a bounded and repeatable number of them. Each answer must be one the
document lists (status, content type, headers, body schema), no server error but the
documented 502/503, and every error the OpenAI envelope.
"""

import tempfile
from datetime import timedelta

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from responses_proxy import create_app
from tests.e2e.helpers import auth
from tests.helpers import Gateway

# Per operation and generation mode (valid, invalid data): small, so the whole run takes seconds.
MAX_EXAMPLES = 12
# No request may take longer: the answers here come from the fake upstream in milliseconds.
DEADLINE = timedelta(seconds=10)
ENVELOPE_FIELDS = {"message", "type", "code", "param"}


@pytest.fixture(scope="module")
def gateway(fake_upstream, tmp_path_factory):
    server = Gateway(tmp_path_factory.mktemp("fuzz"), fake_upstream.base_url)
    with server.serving():
        yield server


def served_document():
    """The document the app serves with the default settings, as the gateway below runs (the
    operations to test are known when the tests are collected, before any gateway runs)."""
    with tempfile.TemporaryDirectory() as data_dir:
        app = create_app({"DATA_DIR": data_dir, "ENCRYPTION_KEY": "fuzz"})
        try:
            return app.test_client().get("/openapi.json").json
        finally:
            app.extensions["responses_proxy"].engine.dispose()


DOCUMENT = served_document()
schema = schemathesis.openapi.from_dict(DOCUMENT)
schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True, database="none")


@schemathesis.check
def only_documented_server_errors(ctx, response, case):
    if response.status_code >= 500 and response.status_code not in (502, 503):
        raise AssertionError(f"Server error {response.status_code}: {response.text[:500]}")


@schemathesis.check
def errors_are_the_envelope(ctx, response, case):
    if response.status_code < 400 or case.path == "/healthz":
        return
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) >= ENVELOPE_FIELDS, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


CHECKS = [only_documented_server_errors, errors_are_the_envelope, status_code_conformance,
          content_type_conformance, response_headers_conformance, response_schema_conformance,
          negative_data_rejection]


def test_the_gateway_serves_the_document_fuzzed(gateway):
    assert requests.get(gateway.url + "/openapi.json", timeout=10).json() == DOCUMENT


# The WebSocket upgrade is left out: an accepted upgrade takes the connection over, which an
# HTTP client cannot follow (tests/e2e/test_websocket_e2e.py speaks WebSocket to it).
@schema.exclude(method="GET", path="/v1/responses").parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=DEADLINE, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case, gateway, fake_upstream):
    fake_upstream.reset()
    response = case.call(base_url=gateway.url, headers=auth(gateway.key), timeout=DEADLINE.total_seconds())
    case.validate_response(response, checks=CHECKS, headers=auth(gateway.key))

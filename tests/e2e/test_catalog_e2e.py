"""/v1/models, model restrictions, unknown routes and the health check, through gunicorn."""

import openai
import requests

from tests.e2e.helpers import auth, error_of, post
from tests.fake_upstream import MODELS


def test_models_lists_the_upstream_catalog_in_the_openai_shape(e2e, upstream):
    reply = requests.get(e2e.url + "/v1/models", headers=auth(e2e.key), timeout=10)
    assert reply.status_code == 200
    document = reply.json()
    assert document["object"] == "list"
    assert sorted(entry["id"] for entry in document["data"]) == sorted(MODELS)
    for entry in document["data"]:
        assert entry["object"] == "model"
        assert isinstance(entry["created"], int)
        assert isinstance(entry["owned_by"], str)


def test_models_are_filtered_by_the_keys_allowed_models(e2e, upstream):
    key = e2e.create_key(allowed_models=["gpt-4.1", "gpt-5.2", "not-in-the-catalog"])
    reply = requests.get(e2e.url + "/v1/models", headers=auth(key), timeout=10)
    assert reply.status_code == 200
    assert sorted(entry["id"] for entry in reply.json()["data"]) == ["gpt-4.1", "gpt-5.2"]
    with openai.OpenAI(base_url=e2e.url + "/v1", api_key=key, max_retries=0, timeout=10) as client:
        assert sorted(model.id for model in client.models.list()) == ["gpt-4.1", "gpt-5.2"]
        assert client.models.retrieve("gpt-4.1").id == "gpt-4.1"
        try:
            client.models.retrieve("gpt-5.2-codex")
        except openai.NotFoundError as failure:
            assert failure.status_code == 404
        else:
            raise AssertionError("a model outside allowed_models was retrievable")


def test_a_model_outside_allowed_models_is_refused(e2e, upstream):
    key = e2e.create_key(allowed_models=["gpt-4.1"])
    for streaming in (False, True):
        reply = post(e2e, {"model": "gpt-5.2", "input": "hi", "stream": streaming}, key=key)
        assert reply.status_code == 403, reply.text
        error = error_of(reply)
        assert error["message"] == "This API key does not have access to model 'gpt-5.2'"
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "model_not_allowed"
    assert upstream.response_requests() == []


def test_models_needs_a_key(e2e):
    reply = requests.get(e2e.url + "/v1/models", timeout=10)
    assert reply.status_code == 401
    assert error_of(reply)["code"] == "invalid_api_key"


def test_unknown_routes_are_json_404s(e2e):
    for method, path in (("GET", "/v1/nothing-here"), ("POST", "/v1/chat/completions"), ("GET", "/")):
        reply = requests.request(method, e2e.url + path, headers=auth(e2e.key), timeout=10)
        assert reply.status_code == 404, (method, path)
        error = error_of(reply)
        assert error["code"] == "not_found"


def test_wrong_method_is_a_json_405(e2e):
    reply = requests.get(e2e.url + "/v1/responses", headers=auth(e2e.key), timeout=10)
    assert reply.status_code == 405
    assert error_of(reply)["code"] == "method_not_allowed"
    assert "POST" in reply.headers["Allow"]


def test_healthz(e2e):
    reply = requests.get(e2e.url + "/healthz", timeout=10)
    assert reply.status_code == 200
    assert reply.json()["status"] == "ok"

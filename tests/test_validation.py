"""POST /v1/responses validation, as a user sees it through the HTTP API.

Every refusal is checked for its status, the four envelope fields, a message that names the
problem, and that nothing was sent upstream (an account is configured, so a request that
slipped through validation WOULD reach the fake upstream). The accepted table holds the body
shapes real clients send (Codex CLI, SDKs) that must never be refused.
"""

import copy
import io
import json
import os

import pytest

from responses_proxy.responses.service import scoped_cache_key
from responses_proxy.store import keys as key_store
from responses_proxy.store.accounts import upsert
from responses_proxy.upstream.credentials import parse_auth_json
from tests.fake_upstream import auth_json
from tests.helpers import make_app

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
URL = "/v1/responses"
MODEL = "gpt-5.2"
INVALID = "invalid_request_error"
DROP = object()


def changed(result, changes):
    """``result`` with ``changes`` applied (``DROP`` removes a field)."""
    for key, value in changes.items():
        if value is DROP:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def body(**changes):
    """A valid minimal body with ``changes`` applied."""
    return changed({"model": MODEL, "input": "Hello"}, changes)


def user(content):
    return {"role": "user", "content": content}


def tools(*kinds):
    """Tools of the given types, valid in every other respect (function tools have a name)."""
    return [{"type": kind, "name": f"tool_{index}"} if kind == "function" else {"type": kind}
            for index, kind in enumerate(kinds)]


def case(case_id, request_body, param, *fragments, status=400, code=INVALID, type=INVALID, exact=None):
    return pytest.param(request_body, status, type, code, param, fragments, exact, id=case_id)


def error_of(reply):
    document = reply.get_json()
    assert isinstance(document, dict) and set(document) == {"error"}, reply.get_data(as_text=True)
    error = document["error"]
    assert {"message", "type", "code", "param"} <= set(error), error
    return error


@pytest.fixture(scope="module")
def shared_app(fake_upstream, tmp_path_factory):
    """One app (one account, one key) for the big tables: building an app per case is what
    would make them slow. Tests that change keys or the catalog use the per-test fixtures."""
    app = make_app(tmp_path_factory.mktemp("validation"), fake_upstream.base_url)
    services = app.extensions["responses_proxy"]
    upsert(services.engine, services.cipher, parse_auth_json(json.dumps(auth_json()).encode()))
    created = key_store.create(services.engine, "tables")
    app.auth = {"Authorization": f"Bearer {created['key']}"}
    app.key_id = created["id"]
    yield app
    services.engine.dispose()


@pytest.fixture
def shared(shared_app, upstream):
    """(test client, auth headers) of the shared app, with a freshly reset fake upstream."""
    return shared_app.test_client(), shared_app.auth


def scoped(upstream_body, key_id, request_body):
    """The upstream body as the test expects it, once the prompt cache key is known to have been
    scoped to the API key (a client's key is never shared across API keys upstream)."""
    if request_body.get("prompt_cache_key"):
        assert upstream_body["prompt_cache_key"] == scoped_cache_key(key_id, request_body["prompt_cache_key"])
        return {**upstream_body, "prompt_cache_key": request_body["prompt_cache_key"]}
    return upstream_body


REFUSED = [
    # model
    case("model-missing", body(model=DROP), "model", "Missing required parameter", "'model'"),
    case("model-null", body(model=None), "model", "'model'", "string", "null"),
    case("model-number", body(model=5), "model", "'model'", "string", "integer"),
    case("model-unknown", body(model="gpt-0-imaginary"), "model", "gpt-0-imaginary", "/v1/models",
         code="model_not_found"),

    # input / messages
    case("input-and-messages", body(messages=[user("Hi")]), "messages", "'input'", "'messages'", "not both"),
    case("neither-input-nor-messages", body(input=DROP), "input", "Missing required parameter", "'input'",
         "'messages'"),
    case("input-null-no-messages", body(input=None), "input", "Missing required parameter", "'input'"),
    case("input-number", body(input=42), "input", "'input'", "string or an array", "integer"),
    case("input-object", body(input={"role": "user", "content": "Hi"}), "input", "'input'",
         "string or an array", "object"),
    case("input-boolean", body(input=True), "input", "'input'", "string or an array", "boolean"),
    case("input-item-not-object", body(input=["Hi"]), "input[0]", "'input[0]'", "object", "string"),
    case("input-item-type-not-string", body(input=[{"type": 7}]), "input[0].type", "'input[0].type'",
         "string", "integer"),
    case("input-item-without-type-or-role", body(input=[{"content": "Hi"}]), "input[0]", "'type'", "'role'"),
    case("input-item-role-unknown", body(input=[{"role": "wizard", "content": "Hi"}]), "input[0].role",
         "'input[0].role'", "'wizard'", "'user'"),
    case("input-item-role-not-string", body(input=[{"role": 1, "content": "Hi"}]), "input[0].role",
         "'input[0].role'", "string"),
    case("input-user-message-without-content", body(input=[{"role": "user"}]), "input[0].content",
         "user message", "'content'"),
    case("input-message-content-number", body(input=[user(3)]), "input[0].content", "'input[0].content'",
         "string or an array", "integer"),
    case("input-content-part-not-object", body(input=[user(["Hi"])]), "input[0].content[0]",
         "'input[0].content[0]'", "object", "string"),
    case("input-content-part-without-type", body(input=[user([{"text": "Hi"}])]), "input[0].content[0].type",
         "'input[0].content[0].type'", "string"),
    case("input-tool-message-without-call-id", body(input=[{"role": "tool", "content": "42"}]),
         "input[0].tool_call_id", "tool message", "'tool_call_id'"),
    case("function-call-output-without-call-id", body(input=[{"type": "function_call_output", "output": "42"}]),
         "input[0].call_id", "function_call_output", "'call_id'"),

    # input_file.file_id, wherever a file part can appear
    case("file-id-in-message", body(input=[user([{"type": "input_text", "text": "Read this"},
                                                 {"type": "input_file", "file_id": "file-abc"}])]),
         "input[0].content[1].file_id", "input_file.file_id", "not supported"),
    case("file-id-bare-item", body(input=[{"type": "input_file", "file_id": "file-abc"}]),
         "input[0].file_id", "input_file.file_id", "not supported"),
    case("file-id-in-second-item", body(input=[user("Hi"), {"type": "input_file", "file_id": "file-abc"}]),
         "input[1].file_id", "input_file.file_id", "not supported"),
    case("file-id-in-chat-message", body(input=DROP, messages=[user([{"type": "input_file", "file_id": "f"}])]),
         "messages[0].content[0].file_id", "input_file.file_id", "not supported"),
    case("message-item-without-role",
         body(input=[{"type": "message", "content": [{"type": "input_file", "file_id": "file-abc"}]}]),
         "input[0].role", "Missing required parameter", "input[0].role"),
    case("file-id-in-function-call-output",
         body(input=[{"type": "function_call_output", "call_id": "call_1",
                      "output": [{"type": "input_file", "file_id": "file-abc"}]}]),
         "input[0].output[0].file_id", "input_file.file_id", "not supported"),

    # messages (chat format)
    case("messages-not-array", body(input=DROP, messages="Hi"), "messages", "'messages'", "array", "string"),
    case("messages-item-not-object", body(input=DROP, messages=["Hi"]), "messages[0]", "'messages[0]'",
         "object", "string"),
    case("messages-role-missing", body(input=DROP, messages=[{"content": "Hi"}]), "messages[0].role",
         "Missing required parameter", "'messages[0].role'"),
    case("messages-role-unknown", body(input=DROP, messages=[{"role": "robot", "content": "Hi"}]),
         "messages[0].role", "'robot'"),
    case("messages-content-number", body(input=DROP, messages=[user(1)]), "messages[0].content",
         "'messages[0].content'", "integer"),
    case("messages-tool-without-call-id", body(input=DROP, messages=[{"role": "tool", "content": "42"}]),
         "messages[0].tool_call_id", "tool message", "'tool_call_id'"),
    case("messages-tool-call-without-id",
         body(input=DROP, messages=[{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]),
         "messages[0].tool_calls[0].id", "Missing required parameter", "'messages[0].tool_calls[0].id'"),
    case("messages-tool-call-without-function-name",
         body(input=DROP, messages=[{"role": "assistant", "tool_calls": [{"id": "c1", "function": {}}]}]),
         "messages[0].tool_calls[0].function.name", "Missing required parameter",
         "'messages[0].tool_calls[0].function.name'"),

    # tools
    *[case(f"tool-{kind}-unsupported", body(tools=tools("function", "web_search", kind)), "tools[2].type",
           exact=f"Tool type '{kind}' is not supported")
      for kind in ("file_search", "code_interpreter", "computer_use", "computer_use_preview", "image_generation")],
    case("tool-unsupported-first", body(tools=tools("file_search")), "tools[0].type",
         exact="Tool type 'file_search' is not supported"),
    case("tool-in-additional-tools-unsupported",
         body(input=[{"type": "additional_tools", "tools": tools("function", "code_interpreter")}, user("Hi")]),
         "input[0].tools[1].type", exact="Tool type 'code_interpreter' is not supported"),
    case("additional-tools-not-array", body(input=[{"type": "additional_tools", "tools": {"type": "function"}}]),
         "input[0].tools", "'input[0].tools'", "array"),
    case("additional-tools-item-not-object", body(input=[{"type": "additional_tools", "tools": ["web_search"]}]),
         "input[0].tools[0]", "'input[0].tools[0]'", "object"),
    case("additional-tools-function-without-name",
         body(input=[{"type": "additional_tools", "tools": [{"type": "function"}]}]),
         "input[0].tools[0].name", "function tool", "'name'"),
    case("tools-not-array", body(tools={"type": "function", "name": "f"}), "tools", "'tools'", "array", "object"),
    case("tool-not-object", body(tools=["web_search"]), "tools[0]", "'tools[0]'", "object", "string"),
    case("tool-without-type", body(tools=[{"name": "f"}]), "tools[0].type", "Missing required parameter",
         "'tools[0].type'"),
    case("tool-type-not-string", body(tools=[{"type": 1}]), "tools[0].type", "'tools[0].type'", "string"),
    case("function-tool-without-name", body(tools=[{"type": "function", "parameters": {}}]), "tools[0].name",
         "function tool", "'name'"),
    case("tool-parameters-not-object", body(tools=[{"type": "function", "name": "f", "parameters": "{}"}]),
         "tools[0].parameters", "'tools[0].parameters'", "object", "string"),
    case("tool-strict-not-boolean", body(tools=[{"type": "function", "name": "f", "strict": "yes"}]),
         "tools[0].strict", "'tools[0].strict'", "boolean", "string"),

    # tool_choice
    case("tool-choice-unknown-mode", body(tool_choice="sometimes"), "tool_choice", "'tool_choice'", "'sometimes'",
         "'auto'"),
    case("tool-choice-number", body(tool_choice=1), "tool_choice", "'tool_choice'", "string or an object"),
    case("tool-choice-array", body(tool_choice=["auto"]), "tool_choice", "'tool_choice'", "array"),
    case("tool-choice-object-without-type", body(tool_choice={"name": "f"}), "tool_choice.type",
         "'tool_choice.type'", "string"),
    case("tool-choice-unsupported-type", body(tool_choice={"type": "code_interpreter"}), "tool_choice.type",
         exact="Tool type 'code_interpreter' is not supported"),
    case("tool-choice-function-without-name", body(tool_choice={"type": "function"}), "tool_choice.name",
         "'name'"),

    # include
    case("include-unknown-value", body(include=["reasoning.encrypted_content", "everything"]), "include[1]",
         "'everything'", "reasoning.encrypted_content"),
    case("include-unknown-first", body(include=["file_search_call.result"]), "include[0]",
         "'file_search_call.result'"),
    case("include-not-array", body(include="reasoning.encrypted_content"), "include", "'include'", "array"),
    case("include-item-not-string", body(include=[1]), "include[0]", "'include[0]'", "string", "integer"),

    # conversation / previous_response_id / store / truncation
    case("conversation-and-previous-response-id", body(conversation="conv_1", previous_response_id="resp_1"),
         "previous_response_id", "'conversation'", "'previous_response_id'", "together"),
    case("previous-response-id-alone", body(previous_response_id="resp_1"), "previous_response_id",
         "'previous_response_id'", "not supported", "'conversation'"),
    case("conversation-number", body(conversation=5), "conversation", "'conversation'", "integer"),
    case("conversation-object-without-id", body(conversation={"name": "x"}), "conversation.id",
         "'conversation.id'", "string"),
    case("store-true", body(store=True), "store", "'store'", "false"),
    case("store-string", body(store="false"), "store", "'store'", "boolean", "string"),
    *[case(f"truncation-{json.dumps(value)}", body(truncation=value), "truncation", "'truncation'", "not supported")
      for value in ("auto", "disabled", "", False, {"type": "auto"})],

    # text.format
    case("text-not-object", body(text="json"), "text", "'text'", "object", "string"),
    case("text-format-not-object", body(text={"format": "json_object"}), "text.format", "'text.format'",
         "object", "string"),
    case("text-format-type-missing", body(text={"format": {"name": "x"}}), "text.format.type",
         "Missing required parameter", "'text.format.type'"),
    case("text-format-type-invalid", body(text={"format": {"type": "xml"}}), "text.format.type", "'xml'",
         "'json_schema'"),
    case("json-schema-without-name", body(text={"format": {"type": "json_schema", "schema": {"type": "object"}}}),
         "text.format.name", "json_schema", "'name'"),
    case("json-schema-without-schema", body(text={"format": {"type": "json_schema", "name": "answer"}}),
         "text.format.schema", "json_schema", "'schema'"),
    case("json-schema-schema-not-object",
         body(text={"format": {"type": "json_schema", "name": "a", "schema": "{}"}}), "text.format.schema",
         "'text.format.schema'", "object"),
    case("json-schema-strict-not-boolean",
         body(text={"format": {"type": "json_schema", "name": "a", "schema": {}, "strict": "true"}}),
         "text.format.strict", "'text.format.strict'", "boolean"),

    # wrong JSON types of the typed fields (no coercion of "true" or 1)
    case("stream-string", body(stream="true"), "stream", "'stream'", "boolean", "string"),
    case("stream-integer", body(stream=1), "stream", "'stream'", "boolean", "integer"),
    case("parallel-tool-calls-integer", body(parallel_tool_calls=1), "parallel_tool_calls",
         "'parallel_tool_calls'", "boolean", "integer"),
    case("instructions-array", body(instructions=["Be brief"]), "instructions", "'instructions'", "string",
         "array"),
    case("reasoning-string", body(reasoning="high"), "reasoning", "'reasoning'", "object", "string"),
    case("reasoning-effort-integer", body(reasoning={"effort": 1}), "reasoning.effort", "'reasoning.effort'",
         "string", "integer"),
    case("reasoning-summary-boolean", body(reasoning={"summary": True}), "reasoning.summary",
         "'reasoning.summary'", "string", "boolean"),
    case("text-verbosity-integer", body(text={"verbosity": 2}), "text.verbosity", "'text.verbosity'", "string"),
    case("prompt-cache-key-integer", body(prompt_cache_key=123), "prompt_cache_key", "'prompt_cache_key'",
         "string", "integer"),
    case("metadata-array", body(metadata=["a"]), "metadata", "'metadata'", "object", "array"),
    case("temperature-string", body(temperature="hot"), "temperature", "'temperature'", "number", "string"),
    case("temperature-boolean", body(temperature=True), "temperature", "'temperature'", "number", "boolean"),
    case("max-output-tokens-float", body(max_output_tokens=1.5), "max_output_tokens", "'max_output_tokens'",
         "integer", "number"),
    case("max-output-tokens-string", body(max_output_tokens="100"), "max_output_tokens", "'max_output_tokens'",
         "integer", "string"),
    case("safety-identifier-integer", body(safety_identifier=1), "safety_identifier", "'safety_identifier'",
         "string"),
    case("prompt-cache-retention-integer", body(prompt_cache_retention=24), "prompt_cache_retention",
         "'prompt_cache_retention'", "string"),

    case("conversation-id-malformed", body(conversation="my conversation"), "conversation", "'conversation'",
         "conv_"),
    case("conversation-object-id-malformed", body(conversation={"id": "abc"}), "conversation", "'conversation'",
         "conv_"),
]


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("request_body, status, error_type, code, param, fragments, exact", REFUSED)
def test_refused_body(shared, upstream, request_body, status, error_type, code, param, fragments, exact, streaming):
    """A streaming request refused before its first byte gets the same real status and JSON."""
    client, auth = shared
    if streaming:
        request_body = {"stream": True, **request_body}
    reply = client.post(URL, json=request_body, headers=auth)

    assert reply.status_code == status, reply.get_data(as_text=True)
    assert reply.mimetype == "application/json"
    error = error_of(reply)
    assert (error["type"], error["code"], error["param"]) == (error_type, code, param)
    if exact is not None:
        assert error["message"] == exact
    for fragment in fragments:
        assert fragment in error["message"]
    assert upstream.response_requests() == []


# Bodies that are not a JSON object at all: (raw bytes, content type, message fragments).
RAW_REFUSED = [
    pytest.param(b'[{"model": "gpt-5.2", "input": "Hi"}]', "application/json", ("JSON object", "array"),
                 id="array"),
    pytest.param(b'"Hello"', "application/json", ("JSON object", "string"), id="string"),
    pytest.param(b"42", "application/json", ("JSON object", "integer"), id="number"),
    pytest.param(b"null", "application/json", ("JSON object", "null"), id="null"),
    pytest.param(b"true", "application/json", ("JSON object", "boolean"), id="boolean"),
    pytest.param(b'{"model": "gpt-5.2", "input": "Hi"', "application/json", ("not valid JSON",),
                 id="truncated-json"),
    pytest.param(b"{'model': 'gpt-5.2'}", "application/json", ("not valid JSON",), id="single-quotes"),
    pytest.param(b'{"model": "gpt-5.2", "input": "Hi",}', "application/json", ("not valid JSON",),
                 id="trailing-comma"),
    pytest.param(b"\xff\xfe{}", "application/json", ("not valid JSON",), id="not-utf8"),
    pytest.param(b"", "application/json", ("empty",), id="empty"),
    pytest.param(b"  \n ", "application/json", ("empty",), id="whitespace-only"),
    pytest.param(b"model=gpt-5.2&input=Hi", "application/x-www-form-urlencoded",
                 ("Content-Type", "application/x-www-form-urlencoded", "application/json"), id="form-urlencoded"),
    pytest.param(b'{"model": "gpt-5.2", "input": "Hi"}', "text/plain", ("Content-Type", "text/plain"),
                 id="text-plain-even-with-json-body"),
    pytest.param(b"--x\r\n\r\n--x--", "multipart/form-data; boundary=x", ("Content-Type", "multipart/form-data"),
                 id="multipart"),
]


@pytest.mark.parametrize("raw, content_type, fragments", RAW_REFUSED)
def test_refused_raw_body(shared, upstream, raw, content_type, fragments):
    client, auth = shared
    reply = client.post(URL, data=raw, content_type=content_type, headers=auth)

    assert reply.status_code == 400, reply.get_data(as_text=True)
    error = error_of(reply)
    assert (error["type"], error["code"], error["param"]) == (INVALID, INVALID, None)
    for fragment in fragments:
        assert fragment in error["message"]
    assert upstream.response_requests() == []


# --- authentication: before the body is even read -------------------------------------------------

def revoked_key(services):
    created = key_store.create(services.engine, "old")
    assert key_store.revoke(services.engine, created["id"])
    return created["key"]


AUTH_CASES = [
    pytest.param(lambda services: None, "Missing API key", id="no-header"),
    pytest.param(lambda services: "Bearer ", "Missing API key", id="bearer-without-key"),
    pytest.param(lambda services: "Basic dXNlcjpwYXNz", "Missing API key", id="basic-scheme"),
    pytest.param(lambda services: key_store.create(services.engine, "k")["key"], "Missing API key",
                 id="key-without-bearer"),
    pytest.param(lambda services: "Bearer sk-rp-not-a-real-key", "Incorrect API key", id="unknown-key"),
    pytest.param(lambda services: "Bearer " + revoked_key(services), "revoked", id="revoked-key"),
]

BODIES_FOR_AUTH = [
    pytest.param(json.dumps(body()).encode(), "application/json", id="valid-body"),
    pytest.param(b"{not json", "application/json", id="invalid-json"),
    pytest.param(json.dumps(body(store=True)).encode(), "application/json", id="invalid-body"),
    pytest.param(b"model=x", "application/x-www-form-urlencoded", id="wrong-content-type"),
]


@pytest.mark.parametrize("raw, content_type", BODIES_FOR_AUTH)
@pytest.mark.parametrize("make_header, fragment", AUTH_CASES)
def test_invalid_api_key_is_401_whatever_the_body(shared_app, upstream, make_header, fragment, raw, content_type):
    client = shared_app.test_client()
    header = make_header(shared_app.extensions["responses_proxy"])
    headers = {} if header is None else {"Authorization": header}

    reply = client.post(URL, data=raw, content_type=content_type, headers=headers)

    assert reply.status_code == 401, reply.get_data(as_text=True)
    error = error_of(reply)
    assert (error["type"], error["code"], error["param"]) == (INVALID, "invalid_api_key", None)
    assert fragment in error["message"]
    assert upstream.response_requests() == []


def test_bearer_scheme_is_case_insensitive(client, api_key, account, upstream):
    reply = client.post(URL, json=body(), headers={"Authorization": f"bearer {api_key}"})
    assert reply.status_code == 200, reply.get_data(as_text=True)


def test_revoking_a_key_locks_it_out_at_once(client, services, auth, account, upstream):
    assert client.post(URL, json=body(), headers=auth).status_code == 200
    key_id = key_store.list_all(services.engine)[0]["id"]
    assert key_store.revoke(services.engine, key_id)

    reply = client.post(URL, json=body(), headers=auth)

    assert reply.status_code == 401
    assert error_of(reply)["code"] == "invalid_api_key"
    assert len(upstream.response_requests()) == 1


# --- allowed_models --------------------------------------------------------------------------------

@pytest.fixture
def restricted_auth(services):
    created = key_store.create(services.engine, "restricted", ["gpt-5.2-codex", "gpt-4.1"])
    return {"Authorization": f"Bearer {created['key']}"}


@pytest.mark.parametrize("model", ["gpt-5.2", "gpt-5.1-codex-mini", "gpt-0-imaginary"])
def test_model_outside_allowed_models_is_403(client, restricted_auth, account, upstream, model):
    reply = client.post(URL, json=body(model=model, stream=True), headers=restricted_auth)

    assert reply.status_code == 403, reply.get_data(as_text=True)
    error = error_of(reply)
    assert (error["type"], error["code"], error["param"]) == (INVALID, "model_not_allowed", "model")
    assert error["message"] == f"This API key does not have access to model '{model}'"
    assert upstream.response_requests() == []


def test_allowed_model_goes_through(client, restricted_auth, account, upstream):
    reply = client.post(URL, json=body(model="gpt-4.1"), headers=restricted_auth)

    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert [request["body"]["model"] for request in upstream.response_requests()] == ["gpt-4.1"]


def test_validation_comes_before_the_model_check(client, restricted_auth, account, upstream):
    reply = client.post(URL, json=body(model="gpt-5.2", store=True), headers=restricted_auth)
    assert reply.status_code == 400
    assert error_of(reply)["param"] == "store"


# --- body size -------------------------------------------------------------------------------------

LIMIT = 200


@pytest.fixture
def small_app(tmp_path, upstream):
    app = make_app(tmp_path, upstream.base_url, MAX_BODY_BYTES=LIMIT)
    services = app.extensions["responses_proxy"]
    upsert(services.engine, services.cipher, parse_auth_json(json.dumps(auth_json()).encode()))
    app.key = key_store.create(services.engine, "small")["key"]
    yield app
    services.engine.dispose()


def sized_body(size):
    """A valid JSON body of exactly ``size`` bytes."""
    empty = json.dumps(body(input="")).encode()
    raw = json.dumps(body(input="x" * (size - len(empty)))).encode()
    assert len(raw) == size
    return raw


def test_body_over_the_limit_is_413_and_closes_the_connection(small_app, upstream):
    client = small_app.test_client()
    reply = client.post(URL, data=sized_body(LIMIT + 1), content_type="application/json",
                        headers={"Authorization": f"Bearer {small_app.key}"})

    assert reply.status_code == 413, reply.get_data(as_text=True)
    assert reply.headers["Connection"] == "close"
    error = error_of(reply)
    assert (error["type"], error["code"], error["param"]) == (INVALID, "request_too_large", None)
    assert str(LIMIT) in error["message"]
    assert upstream.response_requests() == []


def test_chunked_body_over_the_limit_is_413(small_app, upstream):
    """No Content-Length (chunked upload): the limit is enforced while reading."""
    client = small_app.test_client()
    reply = client.post(URL, input_stream=io.BytesIO(sized_body(LIMIT * 3)), content_type="application/json",
                        headers={"Authorization": f"Bearer {small_app.key}"},
                        environ_overrides={"wsgi.input_terminated": True})

    assert reply.status_code == 413, reply.get_data(as_text=True)
    assert reply.headers["Connection"] == "close"
    assert error_of(reply)["code"] == "request_too_large"
    assert upstream.response_requests() == []


def test_body_exactly_at_the_limit_is_accepted(small_app, upstream):
    client = small_app.test_client()
    reply = client.post(URL, data=sized_body(LIMIT), content_type="application/json",
                        headers={"Authorization": f"Bearer {small_app.key}"})
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert len(upstream.response_requests()) == 1


class StalledBody:
    """A request body whose client stopped sending: the server's socket timeout fires."""

    def read(self, size=-1):
        raise TimeoutError("timed out")


def test_body_that_stops_arriving_is_408(small_app, upstream):
    reply = small_app.test_client().post(URL, content_type="application/json",
                                         headers={"Authorization": f"Bearer {small_app.key}"},
                                         environ_overrides={"wsgi.input": StalledBody(),
                                                            "wsgi.input_terminated": True})

    assert reply.status_code == 408, reply.get_data(as_text=True)
    error = error_of(reply)
    assert (error["type"], error["code"], error["param"]) == (INVALID, "request_timeout", None)
    assert error["message"] == "The request body stopped arriving before it was complete."
    assert upstream.response_requests() == []


def test_oversized_body_without_key_is_401_not_413(small_app, upstream):
    reply = small_app.test_client().post(URL, data=sized_body(LIMIT * 2), content_type="application/json")
    assert reply.status_code == 401
    assert error_of(reply)["code"] == "invalid_api_key"


# --- accepted bodies: what real clients send must never be refused --------------------------------

DEVELOPER_PROMPT = {"type": "message", "role": "developer",
                    "content": [{"type": "input_text", "text": "You are Codex, a coding agent."}]}
USER_TURN = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List the files."}]}
FUNCTION_TOOL = {"type": "function", "name": "shell", "description": "Run a command", "strict": False,
                 "parameters": {"type": "object", "properties": {"command": {"type": "array",
                                                                             "items": {"type": "string"}}},
                                "required": ["command"], "additionalProperties": False}}
CODEX_TOOLS = [
    FUNCTION_TOOL,
    {"type": "web_search"},
    {"type": "namespace", "name": "mcp__docs", "description": "Docs server",
     "tools": [{"type": "function", "name": "search", "parameters": {"type": "object", "properties": {}}}]},
    {"type": "custom", "name": "apply_patch", "description": "Apply a patch",
     "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
    {"type": "tool_search"},
]
REASONING_ITEM = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Looking."}],
                  "content": None, "encrypted_content": "gAAAAB-opaque"}
FUNCTION_CALL = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "shell",
                 "arguments": "{\"command\":[\"ls\"]}", "status": "completed"}
FUNCTION_OUTPUT = {"type": "function_call_output", "call_id": "call_1", "output": "README.md\nsetup.py\n"}


def codex_body(**changes):
    result = {
        "model": "gpt-5.2-codex",
        "instructions": None,
        "input": [DEVELOPER_PROMPT, USER_TURN],
        "tools": CODEX_TOOLS,
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199a0b1-thread-id",
        "client_metadata": {"x-codex-turn": "1"},
        "text": {"verbosity": "low"},
    }
    result.pop("instructions")
    return changed(result, changes)


def forwarded_as_is(request_body):
    """What the upstream must get for a body that needs no normalization (but its string input)."""
    forwarded = {**request_body, "instructions": request_body.get("instructions") or "", "stream": True,
                 "store": False}
    if isinstance(forwarded["input"], str):
        forwarded["input"] = [{"type": "message", "role": "user",
                               "content": [{"type": "input_text", "text": forwarded["input"]}]}]
    return forwarded


def accept(case_id, request_body, expected=None):
    return pytest.param(request_body, expected or forwarded_as_is(request_body), id=case_id)


ACCEPTED = [
    accept("codex-cli-first-turn", codex_body()),
    accept("codex-cli-tool-round-trip",
           codex_body(input=[DEVELOPER_PROMPT, USER_TURN, REASONING_ITEM, FUNCTION_CALL, FUNCTION_OUTPUT])),
    accept("codex-cli-reasoning-effort-only", codex_body(reasoning={"effort": "high"})),
    accept("codex-cli-remote-compaction",
           codex_body(input=[DEVELOPER_PROMPT, USER_TURN, REASONING_ITEM, FUNCTION_CALL, FUNCTION_OUTPUT,
                             {"type": "compaction_trigger"}])),
    accept("codex-cli-after-a-compaction",
           codex_body(input=[DEVELOPER_PROMPT, USER_TURN,
                             {"type": "compaction", "id": "cmp_1", "encrypted_content": "gAAAAB-opaque"}])),
    accept("codex-cli-additional-tools-item",
           codex_body(tools=DROP, input=[DEVELOPER_PROMPT, {"type": "additional_tools", "tools": CODEX_TOOLS},
                                         USER_TURN])),
    accept("developer-message-in-input", body(input=[DEVELOPER_PROMPT, USER_TURN])),
    accept("items-with-id", body(input=[{**USER_TURN, "id": "msg_1"},
                                        {"type": "message", "role": "assistant", "id": "msg_2",
                                         "content": [{"type": "output_text", "text": "Done."}]}])),
    accept("reasoning-item-content-null", body(input=[USER_TURN, REASONING_ITEM])),
    accept("function-call-with-status-and-string-output", body(input=[USER_TURN, FUNCTION_CALL, FUNCTION_OUTPUT])),
    accept("include-reasoning-encrypted-content", body(include=["reasoning.encrypted_content"])),
    accept("include-every-allowed-value", body(include=[
        "code_interpreter_call.outputs", "computer_call_output.output.image_url", "file_search_call.results",
        "message.input_image.image_url", "message.output_text.logprobs", "reasoning.encrypted_content",
        "web_search_call.action.sources"])),
    *[accept(f"tool-{tool['type']}", body(tools=[tool])) for tool in CODEX_TOOLS],
    accept("tool-web-search-preview", body(tools=[{"type": "web_search_preview"}]),
           forwarded_as_is(body(tools=[{"type": "web_search"}]))),
    accept("additional-tools-web-search-preview",
           body(input=[{"type": "additional_tools", "tools": [{"type": "web_search_preview"}]}, USER_TURN]),
           forwarded_as_is(body(input=[{"type": "additional_tools", "tools": [{"type": "web_search"}]},
                                       USER_TURN]))),
    accept("client-metadata-object", body(client_metadata={"session": "abc", "nested": {"a": [1, 2]}})),
    accept("text-verbosity", body(text={"verbosity": "high"})),
    accept("text-format-text", body(text={"format": {"type": "text"}})),
    accept("text-format-json-object", body(text={"format": {"type": "json_object"}})),
    accept("text-format-json-schema", body(text={"format": {
        "type": "json_schema", "name": "languages", "strict": True,
        "schema": {"type": "object", "properties": {"name": {"type": "string"}}}}})),
    accept("reasoning-summary-auto", body(reasoning={"summary": "auto"})),
    accept("reasoning-effort-and-summary", body(reasoning={"effort": "high", "summary": "concise"})),
    accept("prompt-cache-key", body(prompt_cache_key="thread-42")),
    accept("instructions", body(instructions="You are a helpful coding assistant.")),
    accept("tool-choice-none", body(tools=[FUNCTION_TOOL], tool_choice="none")),
    accept("tool-choice-required", body(tools=[FUNCTION_TOOL], tool_choice="required")),
    accept("tool-choice-function-object", body(tools=[FUNCTION_TOOL],
                                               tool_choice={"type": "function", "name": "shell"})),
    accept("parallel-tool-calls", body(parallel_tool_calls=True)),
    accept("store-false", body(store=False)),
    accept("metadata-object", body(metadata={"user": "u1"})),
    accept("unknown-top-level-fields", body(user="u-1", service_tier="auto", top_logprobs=0,
                                            some_future_field={"nested": [1, "two"]})),
    accept("input-file-inline-data", body(input=[user([{"type": "input_file", "filename": "a.txt",
                                                        "file_data": "data:text/plain;base64,aGk="}])]),
           forwarded_as_is(body(input=[{"type": "message", "role": "user",
                                        "content": [{"type": "input_file", "filename": "a.txt",
                                                     "file_data": "data:text/plain;base64,aGk="}]}]))),
    accept("input-file-null-file-id", body(input=[user([{"type": "input_file", "file_id": None,
                                                         "file_url": "https://example.com/a.pdf"}])]),
           forwarded_as_is(body(input=[{"type": "message", "role": "user",
                                        "content": [{"type": "input_file", "file_id": None,
                                                     "file_url": "https://example.com/a.pdf"}]}]))),
    accept("stripped-fields", body(temperature=0.2, max_output_tokens=100, safety_identifier="u-hash",
                                   prompt_cache_retention="24h"), forwarded_as_is(body())),
    accept("null-optional-fields",
           body(instructions=None, tool_choice=None, parallel_tool_calls=None, reasoning=None, text=None,
                include=None, conversation=None, previous_response_id=None, store=None, truncation=None,
                prompt_cache_key=None, metadata=None, temperature=None, max_output_tokens=None,
                messages=None),
           lambda sent: (sent["instructions"] == "" and sent["stream"] is True and sent["store"] is False
                         and sent["input"] == forwarded_as_is(body())["input"] and sent["model"] == MODEL
                         and not {"conversation", "previous_response_id", "truncation", "messages", "temperature",
                                  "max_output_tokens"} & set(sent))),
    accept("messages-instead-of-input",
           body(input=DROP, messages=[{"role": "system", "content": "You are a math tutor."},
                                      {"role": "user", "content": "What is 15 * 23?"}]),
           {"model": MODEL, "instructions": "You are a math tutor.", "stream": True, "store": False,
            "input": [{"type": "message", "role": "user",
                       "content": [{"type": "input_text", "text": "What is 15 * 23?"}]}]}),
    accept("string-input", body(input="Explain quantum entanglement"),
           {"model": MODEL, "instructions": "", "stream": True, "store": False,
            "input": [{"type": "message", "role": "user",
                       "content": [{"type": "input_text", "text": "Explain quantum entanglement"}]}]}),
]


@pytest.mark.parametrize("request_body, expected_upstream", ACCEPTED)
def test_accepted_body(shared, upstream, request_body, expected_upstream):
    client, auth = shared
    sent = copy.deepcopy(request_body)

    reply = client.post(URL, json=request_body, headers=auth)
    data = reply.get_data()  # drains a stream to its end

    assert reply.status_code == 200, data.decode("utf-8", "replace")
    if request_body.get("stream"):
        assert reply.mimetype == "text/event-stream"
        assert b"event: response.completed" in data
    else:
        assert reply.get_json()["status"] == "completed"
    [received] = upstream.response_requests()
    forwarded = scoped(received["body"], shared[0].application.key_id, request_body)
    if callable(expected_upstream):
        assert expected_upstream(forwarded), forwarded
    else:
        assert forwarded == expected_upstream
    assert request_body == sent


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/vnd.openai+json"])
def test_json_content_type_variants_are_accepted(client, auth, account, upstream, content_type):
    reply = client.post(URL, data=json.dumps(body()), content_type=content_type, headers=auth)
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert len(upstream.response_requests()) == 1


def test_chunked_body_within_the_limit_is_read(client, auth, account, upstream):
    reply = client.post(URL, input_stream=io.BytesIO(json.dumps(body(input="chunked")).encode()),
                        content_type="application/json", headers=auth,
                        environ_overrides={"wsgi.input_terminated": True})
    assert reply.status_code == 200, reply.get_data(as_text=True)
    [received] = upstream.response_requests()
    assert received["body"]["input"][0]["content"][0]["text"] == "chunked"


RECORDED_CODEX_REQUESTS = sorted(
    os.path.join(FIXTURES, name) for name in os.listdir(FIXTURES) if name.startswith("codex_cli_request"))


@pytest.mark.parametrize("path", RECORDED_CODEX_REQUESTS, ids=os.path.basename)
def test_recorded_codex_cli_request_is_forwarded_unchanged(client, auth, account, upstream, services, api_key,
                                                           path):
    with open(path, "rb") as handle:
        recorded = json.load(handle)
    upstream.models.append(recorded["model"])  # whatever model the capture used is in the catalog

    reply = client.post(URL, json=recorded, headers=auth)
    data = reply.get_data()

    assert reply.status_code == 200, data.decode("utf-8", "replace")
    assert b"event: response.completed" in data
    [received] = upstream.response_requests()
    key_id = key_store.find_active(services.engine, api_key)["id"]
    assert scoped(received["body"], key_id, recorded) == forwarded_as_is(recorded)

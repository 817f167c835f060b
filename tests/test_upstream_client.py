"""The upstream HTTP client (against a real HTTP server; the catalog with ``responses``), the
mapping of upstream error statuses to what the gateway's client sees, auth.json parsing and the
model catalog parser."""

import base64
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import responses

from responses_proxy.catalog.service import parse_models
from responses_proxy.config import load_config
from responses_proxy.errors import ApiError, UpstreamError, UsageLimitReached
from responses_proxy.upstream import client as client_module
from responses_proxy.upstream.client import (
    UpstreamClient,
    UpstreamUnavailable,
    error_for_status,
    read_error_body,
    upstream_headers,
)
from responses_proxy.upstream.credentials import CredentialsError, parse_auth_json
from tests.fake_upstream import auth_json, jwt

BASE = "https://chatgpt.test/backend-api"
RESPONSES_URL = BASE + "/codex/responses"
MODELS_URL = BASE + "/codex/models"
CREDENTIALS = {"access_token": "access-token-abc", "chatgpt_account_id": "acct-123"}
BODY = b'{"model":"gpt-5.2","input":[],"stream":true,"store":false,"instructions":""}'
SSE = b'event: response.created\ndata: {"type":"response.created"}\n\n'


@pytest.fixture
def upstream_client(tmp_path):
    return UpstreamClient(load_config(environ={}, overrides={
        "DATA_DIR": str(tmp_path), "UPSTREAM_BASE_URL": BASE + "/", "UPSTREAM_CONNECT_TIMEOUT": 3.0,
        "UPSTREAM_READ_TIMEOUT": 45.0}))


@pytest.fixture
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


# --- the request ----------------------------------------------------------------------------------

class Recorder(ThreadingHTTPServer):
    """A real HTTP server that records each request and answers what ``answers`` says next:
    (status, body, headers, seconds to wait first); 200 with an SSE event when none is left."""

    daemon_threads = True

    def __init__(self):
        self.requests = []
        self.answers = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(handler):
                body = handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
                self.requests.append((handler.path, handler.headers, body))
                status, data, headers, wait = self.answers.pop(0) if self.answers else (200, SSE, {}, 0)
                time.sleep(wait)
                handler.send_response(status)
                for name, value in {"Content-Type": "text/event-stream", **headers}.items():
                    handler.send_header(name, value)
                handler.send_header("Content-Length", str(len(data)))
                handler.end_headers()
                handler.wfile.write(data)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/backend-api"


@pytest.fixture
def recorder():
    server = Recorder()
    yield server
    server.shutdown()
    server.server_close()


def client_for(tmp_path, base_url, **overrides):
    return UpstreamClient(load_config(environ={}, overrides={
        "DATA_DIR": str(tmp_path), "UPSTREAM_BASE_URL": base_url, "UPSTREAM_CONNECT_TIMEOUT": 3.0,
        "UPSTREAM_READ_TIMEOUT": 45.0, **overrides}))


def test_open_responses_sends_the_codex_headers(tmp_path, recorder):
    client = client_for(tmp_path, recorder.base_url + "/")
    client_headers = {"X-Codex-Beta-Features": "remote_compaction_v2", "x-openai-internal-codex-responses-lite": "true",
                      "Authorization": "Bearer client-key", "thread-id": "t-1", "User-Agent": "codex"}
    reply = client.open_responses(CREDENTIALS, BODY, upstream_headers(client_headers, "thread-1"))

    assert reply.status_code == 200 and reply.content == SSE
    [(path, headers, body)] = recorder.requests
    assert path == "/backend-api/codex/responses"
    assert headers["Authorization"] == "Bearer access-token-abc"
    assert headers["chatgpt-account-id"] == "acct-123"
    assert headers["originator"] == "codex_cli_rs"
    assert headers["Accept"] == "text/event-stream"
    assert headers["Accept-Encoding"] == "identity"
    assert headers["Content-Type"] == "application/json"
    assert headers["session_id"] == "thread-1"
    # The Codex client's own feature headers go through; its key and other headers do not.
    assert headers["X-Codex-Beta-Features"] == "remote_compaction_v2"
    assert headers["x-openai-internal-codex-responses-lite"] == "true"
    assert "thread-id" not in headers and headers["User-Agent"] == "responses-proxy/1.0"
    assert body == BODY, "the body goes out byte for byte"


def test_open_responses_without_session_and_custom_originator(tmp_path, recorder):
    client = client_for(tmp_path, recorder.base_url, ORIGINATOR="my_gateway")
    client.open_responses(CREDENTIALS, BODY).close()

    [(_, headers, _)] = recorder.requests
    assert headers["originator"] == "my_gateway"
    assert "session_id" not in headers
    assert "Cookie" not in headers


def test_cookies_the_upstream_sets_are_sent_back(tmp_path, recorder):
    client = client_for(tmp_path, recorder.base_url)
    recorder.answers.append((200, SSE, {"Set-Cookie": "__cf_bm=abc123; Path=/; HttpOnly"}, 0))
    read_error_body(client.open_responses(CREDENTIALS, BODY))
    read_error_body(client.open_responses(CREDENTIALS, BODY))
    assert "Cookie" not in recorder.requests[0][1]
    assert recorder.requests[1][1]["Cookie"] == "__cf_bm=abc123"


def test_connections_are_reused(tmp_path, recorder):
    client = client_for(tmp_path, recorder.base_url)
    ports = set()
    for _ in range(3):
        reply = client.open_responses(CREDENTIALS, BODY)
        ports.add(reply.raw._connection.sock.getsockname()[1])
        read_error_body(reply)
    assert len(ports) == 1


@pytest.mark.parametrize("status", [400, 401, 429, 500, 503])
def test_open_responses_returns_error_statuses_without_raising(tmp_path, recorder, status):
    client = client_for(tmp_path, recorder.base_url)
    recorder.answers.append((status, b'{"detail": "nope"}', {"Content-Type": "application/json"}, 0))
    reply = client.open_responses(CREDENTIALS, BODY)
    assert reply.status_code == status
    assert read_error_body(reply) == b'{"detail": "nope"}'


def test_a_refused_connection_raises_upstream_unavailable(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = client_for(tmp_path, f"http://127.0.0.1:{port}")
    with pytest.raises(UpstreamUnavailable, match="could not connect"):
        client.open_responses(CREDENTIALS, BODY)


def test_an_upstream_slower_than_the_read_timeout_raises_upstream_unavailable(tmp_path, recorder):
    client = client_for(tmp_path, recorder.base_url, UPSTREAM_READ_TIMEOUT=0.2)
    recorder.answers.append((200, SSE, {}, 1.0))
    with pytest.raises(UpstreamUnavailable, match="in time"):
        client.open_responses(CREDENTIALS, BODY)


def test_a_tls_failure_raises_upstream_unavailable(tmp_path, recorder):
    client = client_for(tmp_path, recorder.base_url.replace("http://", "https://"))
    with pytest.raises(UpstreamUnavailable, match="connect"):
        client.open_responses(CREDENTIALS, BODY)


def test_a_connection_closed_without_an_answer_raises_upstream_unavailable(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def hang_up():
            connection, _ = listener.accept()
            connection.recv(65536)
            connection.close()

        threading.Thread(target=hang_up, daemon=True).start()
        client = client_for(tmp_path, f"http://127.0.0.1:{listener.getsockname()[1]}")
        with pytest.raises(UpstreamUnavailable, match="upstream"):
            client.open_responses(CREDENTIALS, BODY)


def test_one_session_per_process(upstream_client, monkeypatch):
    first = upstream_client.session
    assert upstream_client.session is first
    monkeypatch.setattr(client_module.os, "getpid", lambda: -12345)  # as after a fork
    assert upstream_client.session is not first


def test_get_models(upstream_client, mocked):
    mocked.add(responses.GET, MODELS_URL, json={"models": [{"slug": "gpt-5.2"}]})

    document = upstream_client.get_models(CREDENTIALS, "0.169.0")

    assert document == {"models": [{"slug": "gpt-5.2"}]}
    request = mocked.calls[0].request
    assert request.params == {"client_version": "0.169.0"}
    assert request.headers["Authorization"] == "Bearer access-token-abc"
    assert request.headers["chatgpt-account-id"] == "acct-123"


@pytest.mark.parametrize("reply", [
    pytest.param({"status": 500, "json": {"detail": "down"}}, id="500"),
    pytest.param({"status": 200, "body": "<html>not json</html>"}, id="not-json"),
    pytest.param({"body": requests.ConnectionError("refused")}, id="refused"),
])
def test_get_models_failures_raise_upstream_unavailable(upstream_client, mocked, reply):
    mocked.add(responses.GET, MODELS_URL, **reply)
    with pytest.raises(UpstreamUnavailable):
        upstream_client.get_models(CREDENTIALS, "0.169.0")


# --- error statuses -------------------------------------------------------------------------------

def raw(document):
    return json.dumps(document).encode()


def check_envelope(error):
    document = json.loads(error.response().get_data())
    assert set(document) == {"error"}
    assert {"message", "type", "code", "param"} <= set(document["error"])
    return document["error"]


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_502(status):
    error = error_for_status(status, raw({"detail": "Could not validate your token."}), 60)

    assert isinstance(error, UpstreamError)
    assert (error.status, error.type, error.code) == (502, "upstream_error", "upstream_error")
    assert f"HTTP {status}" in error.message
    check_envelope(error)


@pytest.mark.parametrize("status, body, fragment", [
    pytest.param(500, raw({"detail": "Internal error"}), "Internal error", id="500-detail"),
    pytest.param(502, b"<html><body><h1>502 Bad gateway</h1>nginx</body></html>", "(HTTP 502 Bad Gateway).",
                 id="502-html"),
    pytest.param(502, b"<!DOCTYPE html>\n<html><body>" + b"x" * 5000 + b"</body></html>", "(HTTP 502 Bad Gateway).",
                 id="502-long-html"),
    pytest.param(502, b"Traceback (most recent call last):\n  File ...\nKeyError: 'x'", "(HTTP 502 Bad Gateway).",
                 id="502-trace"),
    pytest.param(503, raw({"error": {"message": "Overloaded", "type": "server_error"}}), "Overloaded",
                 id="503-error-object"),
    pytest.param(504, b"", "HTTP 504", id="504-empty"),
])
def test_upstream_failures_are_502_never_500(status, body, fragment):
    error = error_for_status(status, body, 60)

    assert isinstance(error, UpstreamError)
    assert (error.status, error.type, error.code) == (502, "upstream_error", "upstream_error")
    assert f"HTTP {status}" in error.message and fragment in error.message
    # A page or a trace from whatever answered is never quoted to the client.
    assert "<" not in error.message and "nginx" not in error.message and "Traceback" not in error.message
    check_envelope(error)


def test_usage_limit_with_resets_at():
    resets_at = int(time.time()) + 600
    error = error_for_status(429, raw({"error": {
        "type": "usage_limit_reached", "message": "The usage limit has been reached", "plan_type": "plus",
        "resets_at": resets_at}}), 60)

    assert isinstance(error, UsageLimitReached)
    assert (error.status, error.type, error.code) == (429, "usage_limit_reached", "usage_limit_reached")
    body = check_envelope(error)
    assert body["message"] == "The usage limit has been reached"
    assert body["resets_at"] == resets_at
    assert 599 <= body["resets_in_seconds"] <= 600
    assert body["plan_type"] == "plus"
    assert 599 <= int(error.response().headers["Retry-After"]) <= 600


def test_usage_limit_with_resets_in_seconds():
    before = time.time()
    error = error_for_status(429, raw({"error": {"type": "usage_limit_reached", "message": "Limit",
                                                 "resets_in_seconds": 120}}), 60)

    body = check_envelope(error)
    assert body["resets_in_seconds"] == 120
    assert int(before) + 119 <= body["resets_at"] <= int(time.time()) + 121
    assert error.response().headers["Retry-After"] == "120"


@pytest.mark.parametrize("body", [
    pytest.param(raw({"error": {"type": "usage_limit_reached", "message": "Limit"}}), id="no-reset-fields"),
    pytest.param(raw({"error": {"type": "usage_limit_reached", "resets_at": 1000}}), id="resets-at-in-the-past"),
    pytest.param(raw({"error": {"type": "usage_limit_reached", "resets_in_seconds": "soon"}}), id="not-a-number"),
    pytest.param(raw({"detail": "Too many requests"}), id="detail-only"),
    pytest.param(b"rate limited", id="plain-text"),
    pytest.param(b"", id="empty"),
])
def test_usage_limit_without_reset_uses_the_default_cooldown(body):
    before = time.time()
    error = error_for_status(429, body, 90)

    assert isinstance(error, UsageLimitReached)
    assert (error.status, error.type, error.code) == (429, "usage_limit_reached", "usage_limit_reached")
    envelope = check_envelope(error)
    assert envelope["resets_in_seconds"] == 90
    assert int(before) + 89 <= envelope["resets_at"] <= int(time.time()) + 91
    assert error.response().headers["Retry-After"] == "90"
    assert envelope["message"]


@pytest.mark.parametrize("status, body, message, param, code", [
    pytest.param(400, raw({"detail": "Unsupported parameter: 'foo'"}), "Unsupported parameter: 'foo'", None,
                 "upstream_rejected", id="detail-string"),
    pytest.param(400, raw({"error": {"message": "Invalid value for 'input[0].role'.", "type": "invalid_request_error",
                                     "param": "input[0].role", "code": "invalid_value"}}),
                 "Invalid value for 'input[0].role'.", "input[0].role", "invalid_value", id="error-object"),
    pytest.param(400, raw({"detail": {"message": "Model not supported", "code": "model_not_supported"}}),
                 "Model not supported", None, "model_not_supported", id="detail-object"),
    pytest.param(400, b"Bad request: stream must be true", "Bad request: stream must be true", None,
                 "upstream_rejected", id="plain-text"),
    pytest.param(404, raw({"detail": "Not Found"}), "Not Found", None, "upstream_rejected", id="404"),
    pytest.param(422, raw({"error": {"message": "Unprocessable"}}), "Unprocessable", None, "upstream_rejected",
                 id="422"),
])
def test_request_refused_by_upstream_keeps_status_message_and_param(status, body, message, param, code):
    error = error_for_status(status, body, 60)

    assert isinstance(error, ApiError) and not isinstance(error, (UpstreamError, UsageLimitReached))
    envelope = check_envelope(error)
    assert error.status == status
    assert envelope == {"message": message, "type": "invalid_request_error", "code": code, "param": param}


def test_request_refused_without_a_message():
    envelope = check_envelope(error_for_status(400, b"", 60))
    assert envelope["message"] == "The upstream rejected the request (HTTP 400 Bad Request)."


def test_read_error_body_is_bounded(tmp_path, recorder):
    recorder.answers.append((500, b"x" * (1024 * 1024), {}, 0))
    reply = client_for(tmp_path, recorder.base_url).open_responses(CREDENTIALS, BODY)
    data = read_error_body(reply)
    assert 64 * 1024 <= len(data) < 1024 * 1024


# --- auth.json ------------------------------------------------------------------------------------

def encoded(document):
    return json.dumps(document).encode()


def test_parse_auth_json():
    document = auth_json(account_id="acct-9", email="me@example.com", plan="pro", refresh_token="rt-9",
                         last_refresh="2026-11-01T00:00:00Z")
    before = time.time()

    parsed = parse_auth_json(encoded(document))

    assert parsed["chatgpt_account_id"] == "acct-9"
    assert (parsed["email"], parsed["plan"]) == ("me@example.com", "pro")
    assert (parsed["id_token"], parsed["access_token"], parsed["refresh_token"]) == (
        document["tokens"]["id_token"], document["tokens"]["access_token"], "rt-9")
    assert before + 3590 <= parsed["access_expires_at"] <= time.time() + 3610
    assert parsed["last_refresh"] == 1793491200.0  # 2026-11-01T00:00:00Z


def test_parse_auth_json_account_id_from_the_id_token():
    document = auth_json(account_id="acct-from-claim")
    document["tokens"].pop("account_id")
    assert parse_auth_json(encoded(document))["chatgpt_account_id"] == "acct-from-claim"


def test_parse_auth_json_email_from_the_access_token_profile():
    document = auth_json()
    document["tokens"]["id_token"] = jwt({"https://api.openai.com/auth": {"chatgpt_account_id": "acct-fake-1"}})
    document["tokens"]["access_token"] = jwt({"exp": 2000000000,
                                              "https://api.openai.com/profile": {"email": "p@example.com"}})
    parsed = parse_auth_json(encoded(document))
    assert (parsed["email"], parsed["access_expires_at"]) == ("p@example.com", 2000000000.0)


def test_parse_auth_json_optional_fields():
    document = auth_json(expires_in=-3600)  # an expired token is refreshed later, not refused
    document.pop("last_refresh")
    parsed = parse_auth_json(encoded(document))
    assert parsed["last_refresh"] is None
    assert parsed["access_expires_at"] < time.time()


def with_tokens(**changes):
    document = auth_json()
    document["tokens"] = {**document["tokens"], **changes}
    for name, value in changes.items():
        if value is ...:
            del document["tokens"][name]
    return encoded(document)


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


BAD_AUTH_JSON = [
    pytest.param(b"{", "not valid JSON", id="not-json"),
    pytest.param(b"", "not valid JSON", id="empty"),
    pytest.param(b"[]", "JSON object", id="array"),
    pytest.param(encoded({"OPENAI_API_KEY": "sk-abc", "tokens": None}), "API key", id="api-key-only"),
    pytest.param(encoded({"tokens": "abc"}), "tokens", id="tokens-not-object"),
    pytest.param(with_tokens(refresh_token=...), "tokens.refresh_token", id="no-refresh-token"),
    pytest.param(with_tokens(access_token=...), "tokens.access_token", id="no-access-token"),
    pytest.param(with_tokens(id_token=""), "tokens.id_token", id="empty-id-token"),
    pytest.param(with_tokens(refresh_token=12), "tokens.refresh_token", id="refresh-token-number"),
    pytest.param(with_tokens(access_token="opaque"), "tokens.access_token is not a JWT", id="access-no-dots"),
    pytest.param(with_tokens(id_token="a.!!!.c"), "tokens.id_token is not a JWT", id="id-bad-base64"),
    pytest.param(with_tokens(access_token="a." + b64(b"not json") + ".c"), "tokens.access_token is not a JWT",
                 id="payload-not-json"),
    pytest.param(with_tokens(access_token="a." + b64(b"[1, 2]") + ".c"), "tokens.access_token is not a JWT",
                 id="payload-json-array"),
    pytest.param(with_tokens(id_token="a." + b64(b"null") + ".c"), "tokens.id_token is not a JWT",
                 id="payload-json-null"),
    pytest.param(with_tokens(account_id=None, id_token=jwt({}), access_token=jwt({})), "account id",
                 id="no-account-id"),
    pytest.param(encoded({**auth_json(), "last_refresh": "last tuesday"}), "last_refresh", id="bad-last-refresh"),
]


@pytest.mark.parametrize("document, fragment", BAD_AUTH_JSON)
def test_parse_auth_json_refuses(document, fragment):
    with pytest.raises(CredentialsError) as caught:
        parse_auth_json(document)
    assert fragment in str(caught.value)


# --- the model catalog ----------------------------------------------------------------------------

@pytest.mark.parametrize("document, slugs", [
    pytest.param({"models": [{"slug": "gpt-5.2"}, {"slug": "gpt-5.2-codex", "display_name": "x"}]},
                 ["gpt-5.2", "gpt-5.2-codex"], id="codex-catalog"),
    pytest.param({"object": "list", "data": [{"id": "gpt-4.1"}, {"id": "gpt-5"}]}, ["gpt-4.1", "gpt-5"],
                 id="openai-list"),
    pytest.param({"models": ["a", "b"]}, ["a", "b"], id="plain-strings"),
    pytest.param({"models": [{"slug": ""}, {"slug": 5}, None, 7, {"name": "x"}, {"id": "kept"}]}, ["kept"],
                 id="bad-entries-skipped"),
    pytest.param({"models": None, "data": [{"id": "d"}]}, ["d"], id="falls-back-to-data"),
    pytest.param({"models": "gpt-5.2"}, [], id="models-not-a-list"),
    pytest.param({}, [], id="empty-object"),
    pytest.param([{"slug": "gpt-5.2"}], [], id="not-an-object"),
    pytest.param(None, [], id="null"),
])
def test_parse_models(document, slugs):
    assert parse_models(document) == slugs

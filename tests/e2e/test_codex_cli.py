"""The Codex CLI against the real gunicorn: the exact bodies it sends, and the real binary.

The fixtures are request bodies Codex CLI 0.169.0 sent (`codex exec`, second request of a turn
with one tool round trip), captured with a recording server; only Codex's long prompt and tool
descriptions are shortened. ``codex_cli_request.json`` is a session on ``gpt-5.5`` (top-level
``function``, ``custom``, ``tool_search`` and ``web_search`` tools, a ``function_call`` round
trip); ``codex_cli_request_default_model.json`` one on the CLI's default model (tools in an
``additional_tools`` input item of ``namespace`` tools, a ``custom_tool_call`` round trip).
"""

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from responses_proxy.responses.service import scoped_cache_key
from tests.e2e.helpers import ACCOUNT, events_of, key_id, read_stream, split_frames, wait_for
from tests.fake_upstream import ISSUED, Script, compaction_answer
from tests.helpers import Gateway

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CODEX = shutil.which("codex")
CODEX_TIMEOUT = 25  # seconds one `codex exec` may take before it is killed
KEY_VARIABLE = "CODEX_GATEWAY_API_KEY"
# Models Codex 0.169.0 uses that the fake catalog lacks; each worker reads the catalog once.
CODEX_MODELS = ("gpt-5.5", "gpt-6.1-sol")


def codex_headers(body, responses_lite):
    """The headers Codex sent with ``body`` (its turn metadata shortened), authorization aside."""
    thread = body["prompt_cache_key"]
    headers = {
        "accept": "text/event-stream",
        "content-type": "application/json",
        "originator": "codex_exec",
        "user-agent": "codex_exec/0.169.0 (Debian 12.0.0; x86_64) unknown (codex_exec; 0.169.0)",
        "session-id": thread,
        "thread-id": thread,
        "x-client-request-id": thread,
        "x-codex-window-id": thread + ":0",
        "x-codex-beta-features": "remote_compaction_v2",
        "x-codex-turn-metadata": json.dumps({"session_id": thread, "thread_id": thread, "request_kind": "turn",
                                             "turn_trigger": "exec", "model": body["model"]}),
    }
    if responses_lite:  # sent with the default model, whose tools come in an additional_tools item
        headers["x-openai-internal-codex-responses-lite"] = "true"
    return headers


# $CODEX_HOME/config.toml as docs/codex-cli.md writes it, with its section for machines without
# internet access: no plugin sync with github.com and chatgpt.com, no update check, no analytics.
CONFIG = """\
model = "{model}"
model_provider = "responses-proxy"
check_for_update_on_startup = false

[model_providers.responses-proxy]
name = "responses-proxy"
base_url = "{url}/v1"
env_key = "{key_variable}"
wire_api = "responses"

[features]
plugins = false

[analytics]
enabled = false
"""

# The same provider on the Responses WebSocket (GET {base_url}/responses upgraded).
CONFIG_WEBSOCKET = CONFIG.replace('wire_api = "responses"\n', 'wire_api = "responses"\nsupports_websockets = true\n')
# Codex's built-in provider pointed at the gateway: WebSocket first, the key from CODEX_API_KEY.
CONFIG_BUILT_IN = """\
model = "{model}"
openai_base_url = "{url}/v1"
check_for_update_on_startup = false

[features]
plugins = false

[analytics]
enabled = false
"""

needs_codex = pytest.mark.skipif(CODEX is None, reason="the Codex CLI (npm install -g @openai/codex) is not on PATH")


@pytest.fixture(autouse=True)
def codex_models(upstream):
    upstream.models.extend(CODEX_MODELS)


def load(name):
    return json.loads((FIXTURES / name).read_text())


def tool_types(tools):
    return {tool["type"] for tool in tools}


@pytest.mark.parametrize("name", ["codex_cli_request.json", "codex_cli_request_default_model.json"])
def test_replayed_codex_request_streams_and_reaches_upstream_unchanged(e2e, upstream, name):
    """Codex's real body, replayed with its headers: every item and tool reaches the upstream."""
    body = load(name)
    script = Script(body["model"]).start().reasoning().message(["All ", "done."]).completed()
    upstream.push({"events": script.events()}, account=ACCOUNT)

    reply = requests.post(e2e.url + "/v1/responses", data=json.dumps(body).encode(), stream=True, timeout=(5, 20),
                          headers={**codex_headers(body, name != "codex_cli_request.json"),
                                   "Authorization": f"Bearer {e2e.key}"})
    with reply:
        assert reply.status_code == 200, reply.content
        assert reply.headers["Content-Type"].startswith("text/event-stream")
        events = events_of(split_frames(read_stream(reply)))

    # What Codex builds its turn from: created first, completed last with the same id, and the items.
    names = [event.name for event in events]
    assert names[0] == "response.created" and names[-1] == "response.completed", names
    created, completed = events[0].data["response"], events[-1].data["response"]
    assert completed["id"] == created["id"]
    assert completed["usage"]["total_tokens"] == 19
    assert completed["usage"]["input_tokens_details"]["cached_tokens"] == 4
    done = [event.data["item"] for event in events if event.name == "response.output_item.done"]
    assert done == script.items

    [sent] = upstream.response_requests()
    # Codex's body goes upstream as it came, plus the empty instructions the backend requires,
    # and its thread id scoped to the API key as the upstream's prompt cache key.
    thread = scoped_cache_key(key_id(e2e, e2e.key), body["prompt_cache_key"])
    assert sent["body"] == {**body, "instructions": "", "prompt_cache_key": thread}
    upstream_body = sent["body"]
    assert upstream_body["stream"] is True and upstream_body["store"] is False
    messages = [item for item in upstream_body["input"] if item["type"] == "message"]
    assert messages[0]["role"] == "developer" and messages[-1]["role"] == "user"
    assert upstream_body["include"] == ["reasoning.encrypted_content"]
    assert upstream_body["client_metadata"] == body["client_metadata"]
    [reasoning] = [item for item in upstream_body["input"] if item["type"] == "reasoning"]
    assert "content" in reasoning and reasoning["content"] is None
    assert reasoning["encrypted_content"] == "gAAAAB-opaque"
    assert all("id" in item for item in upstream_body["input"])
    if name == "codex_cli_request.json":
        assert tool_types(upstream_body["tools"]) == {"function", "custom", "tool_search", "web_search"}
        call, output = upstream_body["input"][-2:]
        assert call["type"] == "function_call" and call["status"] == "completed"
        assert output["type"] == "function_call_output" and output["call_id"] == call["call_id"]
        assert isinstance(output["output"], str)
    else:
        assert "tools" not in upstream_body
        [extra] = [item for item in upstream_body["input"] if item["type"] == "additional_tools"]
        assert tool_types(extra["tools"]) == {"namespace"}
        assert tool_types(extra["tools"][0]["tools"]) == {"custom", "function"}
        call, output = upstream_body["input"][-2:]
        assert call["type"] == "custom_tool_call" and call["namespace"] == "functions"
        assert output["type"] == "custom_tool_call_output" and output["call_id"] == call["call_id"]
        assert isinstance(output["output"], list)
    # The account's token goes upstream, never the client's key.
    assert sent["headers"]["authorization"] != f"Bearer {e2e.key}"
    assert sent["headers"]["chatgpt-account-id"] == ACCOUNT
    # Codex's feature headers reach the backend as sent; the cache session follows the thread.
    client = {name.lower(): value for name, value in codex_headers(body, name != "codex_cli_request.json").items()}
    for header, value in client.items():
        if header.startswith(("x-codex-", "x-openai-internal-codex-")):
            assert sent["headers"][header] == value
    assert sent["headers"]["session_id"] == thread


def run_codex(gateway, tmp_path, prompt, model="gpt-5.2", config=CONFIG, key=None, env=None):
    """``codex exec`` configured as docs/codex-cli.md says; returns (exit code, stdout, stderr).

    The CLI is a node launcher that spawns the native binary: the whole process group is killed
    on timeout, or the binary would outlive the test.
    """
    home = tmp_path / "codex-home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / "config.toml").write_text(config.format(model=model, url=gateway.url, key_variable=KEY_VARIABLE))
    nowhere = "http://127.0.0.1:9"  # anything not for 127.0.0.1 fails instead of leaving the machine
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "CODEX_HOME": str(home), KEY_VARIABLE: key or gateway.key,
           "HTTPS_PROXY": nowhere, "HTTP_PROXY": nowhere, "ALL_PROXY": nowhere, "https_proxy": nowhere,
           "http_proxy": nowhere, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
           **(env or {})}
    process = subprocess.Popen(
        [CODEX, "exec", "--skip-git-repo-check", "--ephemeral", "--color", "never", "-C", str(work), prompt],
        env=env, cwd=str(work), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=CODEX_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"codex exec did not finish in {CODEX_TIMEOUT} s:\n{err[-3000:]}\n{gateway.log()}")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode, out, err


@needs_codex
def test_codex_exec_prints_the_answer(e2e, upstream, tmp_path):
    script = Script("gpt-5.2").start().reasoning().message(["The answer ", "is 42."]).completed()
    upstream.push({"events": script.events()}, account=ACCOUNT)

    code, out, err = run_codex(e2e, tmp_path, "What is 6*7?")

    assert code == 0, f"{err[-3000:]}\n{e2e.log()}"
    assert out.strip() == "The answer is 42."
    [sent] = upstream.response_requests()
    body = sent["body"]
    assert body["model"] == "gpt-5.2" and body["stream"] is True and body["store"] is False
    assert body["instructions"] == ""
    assert any(item.get("role") == "developer" for item in body["input"])
    assert body["input"][-1]["content"] == [{"type": "input_text", "text": "What is 6*7?"}]
    assert body["include"] == ["reasoning.encrypted_content"]
    assert body["prompt_cache_key"] and isinstance(body["client_metadata"], dict)


@needs_codex
def test_codex_exec_tool_round_trip(e2e, upstream, tmp_path):
    """The model runs a shell command; Codex sends the call and its output back in a second request."""
    call = Script("gpt-5.2").start().reasoning().function_call(
        "exec_command", ['{"cmd":"echo gateway-', 'tool-ok"}'], call_id="call_codex_1").completed()
    answer = Script("gpt-5.2").start().message(["Ran it: ", "gateway-tool-ok"]).completed()
    upstream.push({"events": call.events()}, account=ACCOUNT)
    upstream.push({"events": answer.events()}, account=ACCOUNT)

    code, out, err = run_codex(e2e, tmp_path, "Run echo gateway-tool-ok")

    assert code == 0, f"{err[-3000:]}\n{e2e.log()}"
    assert out.strip() == "Ran it: gateway-tool-ok"
    first, second = upstream.response_requests()
    assert second["body"]["prompt_cache_key"] == first["body"]["prompt_cache_key"]
    history = second["body"]["input"]
    assert history[:len(first["body"]["input"])] == first["body"]["input"]
    reasoning, function_call, output = history[-3:]
    assert reasoning["type"] == "reasoning" and reasoning["content"] is None
    assert reasoning["encrypted_content"] == "gAAAAB-opaque"
    assert function_call["type"] == "function_call" and function_call["call_id"] == "call_codex_1"
    assert function_call["name"] == "exec_command" and function_call["status"] == "completed"
    assert function_call["arguments"] == '{"cmd":"echo gateway-tool-ok"}'
    assert output["type"] == "function_call_output" and output["call_id"] == "call_codex_1"
    assert isinstance(output["output"], str) and output["output"]


def request_log(gateway, key, count):
    """The gateway's log lines of the requests made with ``key`` (one per request), in order,
    once ``count`` of them are there (for up to 5 s): a request's line is written just after its
    last byte, and a client that has its answer (Codex exits at once) may read before that."""
    owner = key_id(gateway, key)

    def written():
        lines = [json.loads(line) for line in gateway.log(None).splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("message") == "response" and line.get("key_id") == owner]

    wait_for(lambda: len(written()) >= count)
    return written()


def tool_round_trip(upstream):
    call = Script("gpt-5.2").start().reasoning().function_call(
        "exec_command", ['{"cmd":"echo gateway-', 'tool-ok"}'], call_id="call_codex_ws").completed()
    answer = Script("gpt-5.2").start().message(["Ran it: ", "gateway-tool-ok"]).completed()
    upstream.push({"events": call.events()}, account=ACCOUNT)
    upstream.push({"events": answer.events()}, account=ACCOUNT)
    return call


@needs_codex
def test_codex_exec_tool_round_trip_over_a_websocket(e2e, upstream, tmp_path):
    """``supports_websockets = true``: the prewarm, the turn and its tool follow-up on one
    WebSocket, each follow-up naming the previous response; the upstream still gets everything."""
    call = tool_round_trip(upstream)
    key = e2e.create_key()

    code, out, err = run_codex(e2e, tmp_path, "Run echo gateway-tool-ok", config=CONFIG_WEBSOCKET, key=key)

    assert code == 0, f"{err[-3000:]}\n{e2e.log()}"
    assert out.strip() == "Ran it: gateway-tool-ok"
    requests_made = request_log(e2e, key, 3)
    assert [line["transport"] for line in requests_made] == ["websocket"] * 3
    assert requests_made[0]["decisions"] == [{"event": "prewarm"}] and requests_made[0]["account_id"] is None
    # One connection: the requests' ids are the connection's, numbered.
    connection = requests_made[0]["request_id"].rsplit(".", 1)[0]
    assert [line["request_id"] for line in requests_made] == [f"{connection}.{number}" for number in (1, 2, 3)]
    first, second = upstream.response_requests()  # the prewarm never reached the upstream
    assert "previous_response_id" not in first["body"] and "previous_response_id" not in second["body"]
    assert first["body"]["input"][0]["role"] == "developer"  # the prewarm's input, kept by the gateway
    assert second["body"]["input"][:len(first["body"]["input"])] == first["body"]["input"]
    reasoning, function_call, output = second["body"]["input"][-3:]
    assert [reasoning, function_call] == call.items
    assert output["type"] == "function_call_output" and output["call_id"] == "call_codex_ws"
    assert "gateway-tool-ok" in output["output"]
    # Each request's own turn metadata goes upstream, not the one the connection was opened with.
    assert json.loads(second["headers"]["x-codex-turn-metadata"])["request_kind"] == "turn"


@needs_codex
def test_codex_built_in_provider_through_the_gateway(e2e, upstream, tmp_path):
    """``openai_base_url``: Codex's own provider, over the WebSocket, with the gateway key from
    CODEX_API_KEY (OPENAI_API_KEY is not what it sends)."""
    tool_round_trip(upstream)
    key = e2e.create_key()

    code, out, err = run_codex(e2e, tmp_path, "Run echo gateway-tool-ok", config=CONFIG_BUILT_IN, key=key,
                               env={"CODEX_API_KEY": key, "OPENAI_API_KEY": "sk-not-the-gateway-key"})

    assert code == 0, f"{err[-3000:]}\n{e2e.log()}"
    assert out.strip() == "Ran it: gateway-tool-ok"
    assert [line["transport"] for line in request_log(e2e, key, 3)] == ["websocket"] * 3
    first, second = upstream.response_requests()
    # The metadata the built-in provider puts on its items reaches the upstream as it was sent.
    messages = [item for item in second["body"]["input"] if item.get("type") == "message"]
    assert messages and all("internal_chat_message_metadata_passthrough" in item for item in messages)
    assert second["body"]["input"][:len(first["body"]["input"])] == first["body"]["input"]


@needs_codex
def test_codex_falls_back_to_post_at_once_when_websockets_are_off(fake_upstream, upstream, tmp_path):
    server = Gateway(tmp_path / "gateway", fake_upstream.base_url, workers=1,
                     env={"RESPONSES_PROXY_WEBSOCKETS": "off", "RESPONSES_PROXY_ACCESS_LOG": "-"})
    (tmp_path / "gateway").mkdir()
    server.start()
    try:
        server.import_account()
        key = server.create_key()
        script = Script("gpt-5.2").start().message(["Over ", "POST."]).completed()
        upstream.push({"events": script.events()}, account=ACCOUNT)
        code, out, err = run_codex(server, tmp_path, "Say it", config=CONFIG_BUILT_IN, key=key,
                                   env={"CODEX_API_KEY": key})
        assert code == 0, f"{err[-3000:]}\n{server.log()}"
        assert out.strip() == "Over POST."
        assert [line["transport"] for line in request_log(server, key, 1)] == ["http"]
        # One upgrade refused, no retries (a 404 or a 405 would cost about 6.5 s of them).
        assert server.log(None).count('"GET /v1/responses HTTP/1.1" 426') == 1
    finally:
        server.stop()


# Remote compaction (v2) is the built-in provider's: Codex compacts mid-turn, before a tool
# call's follow-up, once the last usage plus its estimate of the new items passes the limit.
CONFIG_COMPACTING = CONFIG_BUILT_IN.replace("check_for_update_on_startup = false\n",
                                            "check_for_update_on_startup = false\n"
                                            "model_auto_compact_token_limit = 5000\n")
NEAR_THE_LIMIT = {"input_tokens": 5900, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 100,
                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 6000}


def compacting_turn(upstream, model="gpt-5.5"):
    """A tool call that fills the context, the compaction Codex asks for then, the answer."""
    call = Script(model).start().reasoning(encrypted_content=ISSUED).function_call(
        "exec_command", ['{"cmd":"echo gateway-', 'tool-ok"}'], call_id="call_compact").completed(
        usage=NEAR_THE_LIMIT)
    answer = Script(model).start().message(["Compacted ", "and done."]).completed()
    for events in (call.events(), compaction_answer(model), answer.events()):
        upstream.push({"events": events}, account=ACCOUNT)


def assert_compacted(upstream):
    """The upstream got Codex's compaction request as sent, and then the compaction item back."""
    turn, compaction, after = upstream.response_requests()
    assert compaction["body"]["input"][-1] == {"type": "compaction_trigger"}
    assert compaction["body"]["input"][:len(turn["body"]["input"])] == turn["body"]["input"]
    assert json.loads(compaction["headers"]["x-codex-turn-metadata"])["request_kind"] == "compaction"
    [item] = [item for item in after["body"]["input"] if item.get("type") == "compaction"]
    assert set(item) == {"type", "id", "encrypted_content"} and item["id"].startswith("cmp_")
    assert upstream.issuer_of(item["encrypted_content"]) == ACCOUNT
    assert not any(item.get("type") in ("function_call", "function_call_output") for item in after["body"]["input"])
    assert "previous_response_id" not in after["body"]


@needs_codex
def test_codex_remote_compaction_over_the_websocket(e2e, upstream, tmp_path):
    compacting_turn(upstream)
    key = e2e.create_key()

    code, out, err = run_codex(e2e, tmp_path, "Run echo gateway-tool-ok", model="gpt-5.5", config=CONFIG_COMPACTING,
                               key=key, env={"CODEX_API_KEY": key})

    assert code == 0, f"{err[-3000:]}\n{e2e.log()}"
    assert out.strip() == "Compacted and done."
    assert_compacted(upstream)
    assert [line["transport"] for line in request_log(e2e, key, 4)] == ["websocket"] * 4  # the prewarm first


@needs_codex
def test_codex_remote_compaction_over_post(fake_upstream, upstream, tmp_path):
    server = Gateway(tmp_path / "gateway", fake_upstream.base_url, workers=1, env={"RESPONSES_PROXY_WEBSOCKETS": "off"})
    (tmp_path / "gateway").mkdir()
    server.start()
    try:
        server.import_account()
        key = server.create_key()
        compacting_turn(upstream)
        code, out, err = run_codex(server, tmp_path, "Run echo gateway-tool-ok", model="gpt-5.5",
                                   config=CONFIG_COMPACTING, key=key, env={"CODEX_API_KEY": key})
        assert code == 0, f"{err[-3000:]}\n{server.log()}"
        assert out.strip() == "Compacted and done."
        assert_compacted(upstream)
        assert [line["transport"] for line in request_log(server, key, 3)] == ["http"] * 3
    finally:
        server.stop()


@needs_codex
def test_codex_echoes_the_turn_state_to_the_account_that_issued_it(fake_upstream, upstream, tmp_path):
    """Over POST the first answer of a turn carries the turn state; Codex sends it back with every
    later request of the turn, and each goes to the account that issued it."""
    server = Gateway(tmp_path / "gateway", fake_upstream.base_url, env={"RESPONSES_PROXY_WEBSOCKETS": "off"})
    (tmp_path / "gateway").mkdir()
    server.start()
    try:
        for account in ("acct-0", "acct-1"):
            server.import_account(account_id=account, last_refresh="2099-01-01T00:00:00Z")
        key = server.create_key()
        call = Script("gpt-5.5").start().reasoning(encrypted_content=ISSUED).function_call(
            "exec_command", ['{"cmd":"echo gateway-', 'tool-ok"}'], call_id="call_state").completed()
        upstream.push({"events": call.events(), "turn_state": True})  # whichever account serves it
        upstream.push({"events": Script("gpt-5.5").start().message(["Ran it."]).completed().events()})
        code, out, err = run_codex(server, tmp_path, "Run echo gateway-tool-ok", model="gpt-5.5",
                                   config=CONFIG_BUILT_IN, key=key, env={"CODEX_API_KEY": key})
        assert code == 0, f"{err[-3000:]}\n{server.log()}"
        assert out.strip() == "Ran it."
        first, second = upstream.response_requests()
        [(state, issuer)] = upstream.turn_states
        assert "x-codex-turn-state" not in first["headers"]
        assert second["headers"]["x-codex-turn-state"] == state
        assert first["headers"]["chatgpt-account-id"] == second["headers"]["chatgpt-account-id"] == issuer
        assert request_log(server, key, 2)[-1]["decisions"][0]["turn_state"] == "issuer"
    finally:
        server.stop()


@needs_codex
def test_codex_echoes_the_turn_state_of_a_metadata_event_over_the_websocket(e2e, upstream, tmp_path):
    call = Script("gpt-5.5").start().reasoning(encrypted_content=ISSUED).function_call(
        "exec_command", ['{"cmd":"echo gateway-', 'tool-ok"}'], call_id="call_ws_state").completed()
    upstream.push({"events": call.events(), "turn_state": True}, account=ACCOUNT)
    upstream.push({"events": Script("gpt-5.5").start().message(["Ran it."]).completed().events()}, account=ACCOUNT)
    key = e2e.create_key()

    code, out, err = run_codex(e2e, tmp_path, "Run echo gateway-tool-ok", model="gpt-5.5", config=CONFIG_BUILT_IN,
                               key=key, env={"CODEX_API_KEY": key})

    assert code == 0, f"{err[-3000:]}\n{e2e.log()}"
    assert out.strip() == "Ran it."
    first, second = upstream.response_requests()
    [(state, _)] = upstream.turn_states
    assert "x-codex-turn-state" not in first["headers"]
    assert second["body"]["client_metadata"]["x-codex-turn-state"] == state
    assert second["headers"]["x-codex-turn-state"] == state

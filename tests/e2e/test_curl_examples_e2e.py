"""Every curl example of the API document, run as written with the real curl binary.

Only the host (``https://api.example.com``) and ``YOUR_API_KEY`` are replaced; ``-sS`` and a
``--write-out`` of the status code are appended so the test can read the outcome.
"""

import json
import shutil
import subprocess

import pytest

from tests.e2e.helpers import ACCOUNT, split_frames
from tests.fake_upstream import Script

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="the curl binary is not installed")

BASIC = """curl https://api.example.com/v1/responses \\
  -H "Authorization: Bearer YOUR_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "gpt-4.1",
    "input": "Explain quantum entanglement in simple terms"
  }'"""

STREAMING = """curl https://api.example.com/v1/responses \\
  -H "Authorization: Bearer YOUR_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "gpt-4.1",
    "input": "Write a short story about a robot",
    "stream": true
  }'"""

INSTRUCTIONS = """curl https://api.example.com/v1/responses \\
  -H "Authorization: Bearer YOUR_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "gpt-4.1",
    "instructions": "You are a helpful coding assistant. Provide concise answers with code examples.",
    "input": "How do I sort a list in Python?"
  }'"""

MESSAGES = """curl https://api.example.com/v1/responses \\
  -H "Authorization: Bearer YOUR_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "gpt-4.1",
    "messages": [
      {"role": "system", "content": "You are a math tutor."},
      {"role": "user", "content": "What is 15 * 23?"}
    ]
  }'"""

FUNCTION_TOOL = """curl https://api.example.com/v1/responses \\
  -H "Authorization: Bearer YOUR_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "gpt-4.1",
    "input": "What is the current time in Tokyo?",
    "tools": [
      {
        "type": "function",
        "name": "get_time",
        "description": "Get current time for a timezone",
        "parameters": {
          "type": "object",
          "properties": {
            "timezone": {
              "type": "string",
              "description": "IANA timezone name"
            }
          },
          "required": ["timezone"]
        }
      }
    ],
    "tool_choice": "auto"
  }'"""

WEB_SEARCH = """curl https://api.example.com/v1/responses \\
  -H "Authorization: Bearer YOUR_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "gpt-4.1",
    "input": "What are the latest developments in fusion energy?",
    "tools": [
      {"type": "web_search"}
    ]
  }'"""

REASONING = """curl https://api.example.com/v1/responses \\
  -H "Authorization: Bearer YOUR_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "gpt-5.2",
    "input": "Solve this complex math problem: ...",
    "reasoning": {
      "effort": "high",
      "summary": "concise"
    }
  }'"""

JSON_OUTPUT = """curl https://api.example.com/v1/responses \\
  -H "Authorization: Bearer YOUR_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "gpt-4.1",
    "input": "List 3 programming languages with their use cases",
    "text": {
      "format": {
        "type": "json_schema",
        "name": "languages",
        "schema": {
          "type": "object",
          "properties": {
            "languages": {
              "type": "array",
              "items": {
                "type": "object",
                "properties": {
                  "name": {"type": "string"},
                  "use_case": {"type": "string"}
                },
                "required": ["name", "use_case"]
              }
            }
          }
        },
        "strict": true
      }
    }
  }'"""

CONVERSATION = """curl https://api.example.com/v1/responses \\
  -H "Authorization: Bearer YOUR_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "gpt-4.1",
    "input": "Tell me more about that",
    "conversation": "conv_abc123"
  }'"""

STATUS_MARK = "\n__STATUS__="


def curl(gateway, example):
    """Run an example; returns (status, body text)."""
    command = example.replace("https://api.example.com", gateway.url).replace("YOUR_API_KEY", gateway.key)
    command += f" -sS --max-time 20 --write-out '{STATUS_MARK}%{{http_code}}'"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition(STATUS_MARK)
    return int(status), body


def user_text(text):
    return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}]


def sent(upstream):
    """The one body the fake upstream received, after checking what every forwarded body has."""
    requests = upstream.response_requests()
    assert len(requests) == 1
    body = requests[0]["body"]
    assert body["stream"] is True
    assert body["store"] is False
    for field in ("messages", "conversation", "previous_response_id", "truncation"):
        assert field not in body
    return body


def answered(upstream, model="gpt-4.1", text="Sure."):
    script = Script(model).start().message([text]).completed()
    upstream.push({"events": script.events()}, account=ACCOUNT)
    return script


def check_completed(status, body, script):
    assert status == 200, body
    document = json.loads(body)
    assert document["id"] == script.response_id
    assert document["object"] == "response"
    assert document["status"] == "completed"
    assert document["output"] == script.items
    assert document["usage"]["total_tokens"] == 19


def test_basic_text_response(e2e, upstream):
    script = answered(upstream)
    status, body = curl(e2e, BASIC)
    check_completed(status, body, script)
    upstream_body = sent(upstream)
    assert upstream_body["model"] == "gpt-4.1"
    assert upstream_body["instructions"] == ""
    assert upstream_body["input"] == user_text("Explain quantum entanglement in simple terms")
    assert "tools" not in upstream_body


def test_streaming_response(e2e, upstream):
    script = answered(upstream, text="Once upon a time.")
    status, body = curl(e2e, STREAMING)
    assert status == 200, body
    frames = split_frames([(0, body.encode())])
    assert [frame.name for frame in frames] == [name for name, _ in script.events()]
    assert frames[-1].data["response"]["id"] == script.response_id
    upstream_body = sent(upstream)
    assert upstream_body["input"] == user_text("Write a short story about a robot")


def test_with_instructions(e2e, upstream):
    script = answered(upstream)
    status, body = curl(e2e, INSTRUCTIONS)
    check_completed(status, body, script)
    upstream_body = sent(upstream)
    assert upstream_body["instructions"] == ("You are a helpful coding assistant. "
                                             "Provide concise answers with code examples.")
    assert upstream_body["input"] == user_text("How do I sort a list in Python?")


def test_structured_input_with_messages(e2e, upstream):
    script = answered(upstream, text="345")
    status, body = curl(e2e, MESSAGES)
    check_completed(status, body, script)
    upstream_body = sent(upstream)
    assert upstream_body["instructions"] == "You are a math tutor."
    assert upstream_body["input"] == user_text("What is 15 * 23?")


def test_tool_calling_with_a_function(e2e, upstream):
    script = (Script("gpt-4.1").start()
              .function_call("get_time", ['{"timezone":', ' "Asia/Tokyo"}'], call_id="call_tokyo").completed())
    upstream.push({"events": script.events()}, account=ACCOUNT)
    status, body = curl(e2e, FUNCTION_TOOL)
    check_completed(status, body, script)
    call = json.loads(body)["output"][0]
    assert (call["type"], call["name"], call["call_id"]) == ("function_call", "get_time", "call_tokyo")
    assert json.loads(call["arguments"]) == {"timezone": "Asia/Tokyo"}
    upstream_body = sent(upstream)
    assert upstream_body["input"] == user_text("What is the current time in Tokyo?")
    assert upstream_body["tool_choice"] == "auto"
    assert upstream_body["tools"] == [{
        "type": "function", "name": "get_time", "description": "Get current time for a timezone",
        "parameters": {"type": "object",
                       "properties": {"timezone": {"type": "string", "description": "IANA timezone name"}},
                       "required": ["timezone"]}}]


def test_tool_calling_with_web_search(e2e, upstream):
    script = answered(upstream, text="Recent results...")
    status, body = curl(e2e, WEB_SEARCH)
    check_completed(status, body, script)
    upstream_body = sent(upstream)
    assert upstream_body["tools"] == [{"type": "web_search"}]
    assert upstream_body["input"] == user_text("What are the latest developments in fusion energy?")


def test_reasoning_with_summary(e2e, upstream):
    script = Script("gpt-5.2").start().reasoning("Working it out.").message(["42"]).completed()
    upstream.push({"events": script.events()}, account=ACCOUNT)
    status, body = curl(e2e, REASONING)
    check_completed(status, body, script)
    assert json.loads(body)["output"][0]["summary"][0]["text"] == "Working it out."
    upstream_body = sent(upstream)
    assert upstream_body["model"] == "gpt-5.2"
    assert upstream_body["reasoning"] == {"effort": "high", "summary": "concise"}
    assert upstream_body["input"] == user_text("Solve this complex math problem: ...")


def test_json_output_format(e2e, upstream):
    answer = '{"languages":[{"name":"Python","use_case":"scripting"}]}'
    script = answered(upstream, text=answer)
    status, body = curl(e2e, JSON_OUTPUT)
    check_completed(status, body, script)
    assert json.loads(json.loads(body)["output"][0]["content"][0]["text"])["languages"][0]["name"] == "Python"
    upstream_body = sent(upstream)
    example = json.loads(JSON_OUTPUT.split("-d '", 1)[1].rstrip("'"))
    assert upstream_body["text"] == example["text"]
    assert upstream_body["text"]["format"]["strict"] is True


def test_conversation_context(e2e, upstream):
    """The example's conversation id is new to this key: the first run starts it, the second
    run sends the first turn (its input and the answer) before the new input."""
    first = answered(upstream, text="Entanglement links two particles.")
    status, body = curl(e2e, CONVERSATION)
    check_completed(status, body, first)
    assert sent(upstream)["input"] == user_text("Tell me more about that")

    upstream.requests.clear()
    second = answered(upstream, text="More details.")
    status, body = curl(e2e, CONVERSATION)
    check_completed(status, body, second)
    history = sent(upstream)["input"]
    assert len(history) == 3, history
    assert history[0] == history[2] == user_text("Tell me more about that")[0]
    assert history[1]["type"] == "message" and history[1]["role"] == "assistant"
    assert history[1]["content"][0]["text"] == "Entanglement links two particles."

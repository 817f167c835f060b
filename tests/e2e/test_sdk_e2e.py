"""The openai Python SDK, sync and async, against the real gunicorn: what an SDK user sees."""

import asyncio
import time

import pytest
from openai import AsyncOpenAI, OpenAI

from tests.e2e.helpers import ACCOUNT
from tests.fake_upstream import USAGE, Script

TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather for a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
TERMINAL = ("response.completed", "response.incomplete", "response.failed")


class SDK:
    """The three ways to call ``/v1/responses`` with the SDK, each sync or async.

    Streams are read to the end before the call returns.
    """

    def __init__(self, gateway, mode):
        self.gateway = gateway
        self.mode = mode

    def _options(self):
        return {"base_url": self.gateway.url + "/v1", "api_key": self.gateway.key, "max_retries": 0,
                "timeout": 20}

    def create(self, **kwargs):
        if self.mode == "sync":
            with OpenAI(**self._options()) as client:
                return client.responses.create(**kwargs)

        async def run():
            async with AsyncOpenAI(**self._options()) as client:
                return await client.responses.create(**kwargs)

        return asyncio.run(run())

    def create_stream(self, **kwargs):
        """``create(stream=True)``: ``[(arrival time, event), ...]``."""
        if self.mode == "sync":
            with OpenAI(**self._options()) as client, client.responses.create(stream=True, **kwargs) as events:
                    return [(time.monotonic(), event) for event in events]

        async def run():
            async with AsyncOpenAI(**self._options()) as client:
                events = await client.responses.create(stream=True, **kwargs)
                async with events:
                    return [(time.monotonic(), event) async for event in events]

        return asyncio.run(run())

    def stream(self, final=True, **kwargs):
        """``responses.stream()``: (events, final response or None)."""
        if self.mode == "sync":
            with OpenAI(**self._options()) as client, client.responses.stream(**kwargs) as manager:
                events = list(manager)
                return events, manager.get_final_response() if final else None

        async def run():
            async with AsyncOpenAI(**self._options()) as client, client.responses.stream(**kwargs) as manager:
                events = [event async for event in manager]
                return events, (await manager.get_final_response()) if final else None

        return asyncio.run(run())


@pytest.fixture(params=["sync", "async"])
def sdk(request, e2e):
    return SDK(e2e, request.param)


def types_of(events):
    return [event.type for event in events]


def check_stream_order(events):
    """What SDK stream consumers rely on: created first, containers before deltas, one id."""
    types = types_of(events)
    assert types[0] == "response.created", types
    assert types[-1] in TERMINAL, types
    assert sum(kind in TERMINAL for kind in types) == 1, types
    deltas = [index for index, kind in enumerate(types) if kind.endswith(".delta")]
    if deltas:
        first = deltas[0]
        assert "response.output_item.added" in types[:first], types
        if types[first] in ("response.output_text.delta", "response.refusal.delta"):
            assert "response.content_part.added" in types[:first], types
            assert all(events[index].content_index == 0 for index in deltas
                       if types[index] != "response.function_call_arguments.delta")
    assert events[-1].response.id == events[0].response.id


# --- text -------------------------------------------------------------------------------------

TEXT_DELTAS = ["Hel", "lo, ", "wor", "ld."]


def text_script(model="gpt-5.2"):
    return Script(model).start().message(TEXT_DELTAS).completed()


def test_create_returns_the_text_answer(sdk, upstream):
    script = text_script()
    upstream.push({"events": script.events()}, account=ACCOUNT)
    response = sdk.create(model="gpt-5.2", input="Say hello", instructions="Be brief.")
    assert response.id == script.response_id
    assert response.status == "completed"
    assert response.output_text == "Hello, world."
    assert response.usage.total_tokens == USAGE["total_tokens"]
    assert response.usage.input_tokens_details.cached_tokens == 4
    sent = upstream.response_requests()[-1]["body"]
    assert sent["stream"] is True and sent["store"] is False
    assert sent["instructions"] == "Be brief."
    assert sent["input"] == [{"type": "message", "role": "user",
                              "content": [{"type": "input_text", "text": "Say hello"}]}]


def test_create_stream_relays_the_text_events_in_order(sdk, upstream):
    script = text_script()
    upstream.push({"events": script.events()}, account=ACCOUNT)
    events = [event for _, event in sdk.create_stream(model="gpt-5.2", input="Say hello")]
    check_stream_order(events)
    assert types_of(events)[-1] == "response.completed"
    assert events[0].response.id == script.response_id
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == TEXT_DELTAS
    assert events[-1].response.output[0].content[0].text == "Hello, world."
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_stream_manager_builds_the_final_response(sdk, upstream):
    upstream.push({"events": text_script().events()}, account=ACCOUNT)
    events, final = sdk.stream(model="gpt-5.2", input="Say hello")
    check_stream_order(events)
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert "".join(deltas) == final.output_text == "Hello, world."
    assert final.status == "completed"


# --- tool call ---------------------------------------------------------------------------------

ARGUMENT_CHUNKS = ['{"ci', 'ty": "Pa', 'ris"}']


def tool_script():
    return Script("gpt-5.2").start().function_call("get_weather", ARGUMENT_CHUNKS, call_id="call_weather1").completed()


def check_function_call(item):
    assert item.type == "function_call"
    assert item.call_id == "call_weather1"
    assert item.name == "get_weather"
    assert item.arguments == '{"city": "Paris"}'


def test_create_returns_the_function_call(sdk, upstream):
    upstream.push({"events": tool_script().events()}, account=ACCOUNT)
    response = sdk.create(model="gpt-5.2", input="Weather in Paris?", tools=TOOLS, tool_choice="auto")
    assert response.status == "completed"
    assert len(response.output) == 1
    check_function_call(response.output[0])
    sent = upstream.response_requests()[-1]["body"]
    assert sent["tools"] == TOOLS and sent["tool_choice"] == "auto"


def test_create_stream_relays_argument_deltas(sdk, upstream):
    upstream.push({"events": tool_script().events()}, account=ACCOUNT)
    events = [event for _, event in sdk.create_stream(model="gpt-5.2", input="Weather?", tools=TOOLS)]
    check_stream_order(events)
    types = types_of(events)
    assert [e.delta for e in events if e.type == "response.function_call_arguments.delta"] == ARGUMENT_CHUNKS
    assert types.index("response.function_call_arguments.done") > types.index("response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.output_item.done"]
    check_function_call(done[0].item)
    check_function_call(events[-1].response.output[0])


def test_stream_manager_final_response_has_the_function_call(sdk, upstream):
    upstream.push({"events": tool_script().events()}, account=ACCOUNT)
    events, final = sdk.stream(model="gpt-5.2", input="Weather?", tools=TOOLS)
    check_stream_order(events)
    deltas = [event.delta for event in events if event.type == "response.function_call_arguments.delta"]
    assert "".join(deltas) == '{"city": "Paris"}'
    check_function_call(final.output[0])


# --- refusal -----------------------------------------------------------------------------------

REFUSAL = ["I can't ", "help with that."]


def refusal_script():
    return Script("gpt-5.2").start().message(REFUSAL, kind="refusal").completed()


def test_create_returns_the_refusal(sdk, upstream):
    upstream.push({"events": refusal_script().events()}, account=ACCOUNT)
    response = sdk.create(model="gpt-5.2", input="Something forbidden")
    part = response.output[0].content[0]
    assert part.type == "refusal"
    assert part.refusal == "I can't help with that."
    assert response.output_text == ""


def test_streams_relay_refusal_deltas(sdk, upstream):
    upstream.push({"events": refusal_script().events()}, account=ACCOUNT)
    events = [event for _, event in sdk.create_stream(model="gpt-5.2", input="Something forbidden")]
    check_stream_order(events)
    assert [e.delta for e in events if e.type == "response.refusal.delta"] == REFUSAL
    upstream.push({"events": refusal_script().events()}, account=ACCOUNT)
    events, final = sdk.stream(model="gpt-5.2", input="Something forbidden")
    check_stream_order(events)
    assert final.output[0].content[0].refusal == "I can't help with that."


# --- incomplete --------------------------------------------------------------------------------

def incomplete_script():
    return Script("gpt-5.2").start().message(["Once upon", " a time"]).incomplete("max_output_tokens")


def test_create_returns_an_incomplete_response(sdk, upstream):
    upstream.push({"events": incomplete_script().events()}, account=ACCOUNT)
    response = sdk.create(model="gpt-5.2", input="A long story")
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "Once upon a time"


def test_streams_end_with_response_incomplete(sdk, upstream):
    upstream.push({"events": incomplete_script().events()}, account=ACCOUNT)
    events = [event for _, event in sdk.create_stream(model="gpt-5.2", input="A long story")]
    check_stream_order(events)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    upstream.push({"events": incomplete_script().events()}, account=ACCOUNT)
    events, _ = sdk.stream(final=False, model="gpt-5.2", input="A long story")
    check_stream_order(events)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.status == "incomplete"


# --- failed ------------------------------------------------------------------------------------

def failed_script():
    return Script("gpt-5.2").start().failed(code="server_error", message="The model failed to answer.")


def test_create_returns_a_failed_response_with_its_error(sdk, upstream):
    script = failed_script()
    upstream.push({"events": script.events()}, account=ACCOUNT)
    response = sdk.create(model="gpt-5.2", input="hi")
    assert response.id == script.response_id
    assert response.status == "failed"
    assert response.error.code == "server_error"
    assert response.error.message == "The model failed to answer."


def test_streams_end_with_response_failed(sdk, upstream):
    upstream.push({"events": failed_script().events()}, account=ACCOUNT)
    events = [event for _, event in sdk.create_stream(model="gpt-5.2", input="hi")]
    check_stream_order(events)
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.code == "server_error"
    assert events[-1].response.error.message == "The model failed to answer."
    upstream.push({"events": failed_script().events()}, account=ACCOUNT)
    events, _ = sdk.stream(final=False, model="gpt-5.2", input="hi")
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.message == "The model failed to answer."


# --- completed with an empty output ------------------------------------------------------------

def test_create_rebuilds_an_empty_output_from_the_done_items(sdk, upstream):
    script = (Script("gpt-5.2").start().reasoning("Weighing it up.").message(["Rebuilt ", "answer."])
              .function_call("get_weather", ['{"city":"Oslo"}'], call_id="call_oslo").completed(empty_output=True))
    upstream.push({"events": script.events()}, account=ACCOUNT)
    response = sdk.create(model="gpt-5.2", input="hi", tools=TOOLS)
    assert response.status == "completed"
    assert [item.type for item in response.output] == ["reasoning", "message", "function_call"]
    assert [item.id for item in response.output] == [item["id"] for item in script.items]
    assert response.output[0].summary[0].text == "Weighing it up."
    assert response.output_text == "Rebuilt answer."
    assert response.output[2].call_id == "call_oslo"
    assert response.usage.total_tokens == USAGE["total_tokens"]


# --- slow upstream -----------------------------------------------------------------------------

def test_slow_deltas_arrive_one_by_one(sdk, upstream):
    deltas = ["One", " two", " three", " four", " five"]
    upstream.push({"events": Script("gpt-5.2").start().message(deltas).completed().events(), "delay": 0.15},
                  account=ACCOUNT)
    timed = sdk.create_stream(model="gpt-5.2", input="Count")
    events = [event for _, event in timed]
    check_stream_order(events)
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == deltas
    # 11 events 0.15 s apart: a buffering gateway would deliver them all at once at the end.
    assert timed[-1][0] - timed[0][0] > 0.7

    upstream.push({"events": Script("gpt-5.2").start().message(deltas).completed().events(), "delay": 0.1},
                  account=ACCOUNT)
    events, final = sdk.stream(model="gpt-5.2", input="Count")
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == final.output_text
    assert final.output_text == "One two three four five"

    upstream.push({"events": Script("gpt-5.2").start().message(deltas).completed().events(), "delay": 0.05},
                  account=ACCOUNT)
    assert sdk.create(model="gpt-5.2", input="Count").output_text == "One two three four five"


@pytest.mark.parametrize("stall_at", [0, 5], ids=["before-first-event", "mid-stream"])
def test_stream_survives_keepalives_while_the_upstream_stalls(sdk, upstream, stall_at):
    """A 2.5 s silence with a 1 s keepalive: the SDK must skip the comments and finish."""
    upstream.push({"events": text_script().events(), "stall_at": stall_at, "stall": 2.5}, account=ACCOUNT)
    events, final = sdk.stream(model="gpt-5.2", input="Say hello")
    check_stream_order(events)
    assert final.output_text == "Hello, world."


def test_streams_report_an_upstream_cut_as_response_failed(sdk, upstream):
    script = text_script()
    upstream.push({"events": script.events(), "cut_after": 6}, account=ACCOUNT)
    events = [event for _, event in sdk.create_stream(model="gpt-5.2", input="Say hello")]
    check_stream_order(events)
    assert events[-1].type == "response.failed"
    assert events[-1].response.id == script.response_id
    assert events[-1].response.error.message

    upstream.push({"events": text_script().events(), "cut_after": 6}, account=ACCOUNT)
    events, _ = sdk.stream(final=False, model="gpt-5.2", input="Say hello")
    check_stream_order(events)
    assert events[-1].type == "response.failed"

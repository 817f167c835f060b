"""The byte-level SSE parser, fed every fixture in one piece, split at every byte position,
byte by byte, and (short fixtures) split in three at every pair of positions: the events must
always be the same, and the ones the SSE standard says.
"""

import json

import pytest

from responses_proxy.upstream.sse import SSEParser
from tests.fake_upstream import Script, sse

BOM = b"\xef\xbb\xbf"


def feed_all(chunks):
    parser = SSEParser()
    events = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events


def splits_at_every_position(raw):
    for cut in range(len(raw) + 1):
        yield cut, [raw[:cut], raw[cut:]]


def three_way_splits(raw):
    for first in range(len(raw) + 1):
        for second in range(first, len(raw) + 1):
            yield (first, second), [raw[:first], raw[first:second], raw[second:]]


def check_every_split(raw, expected, three_way=False):
    assert feed_all([raw]) == expected
    assert feed_all([raw[i:i + 1] for i in range(len(raw))]) == expected, "byte by byte"
    for cut, chunks in splits_at_every_position(raw):
        assert feed_all(chunks) == expected, f"split at byte {cut}: {chunks!r}"
    if three_way:
        for cuts, chunks in three_way_splits(raw):
            assert feed_all(chunks) == expected, f"split at bytes {cuts}: {chunks!r}"


# --- recorded streams, built like the real backend's ------------------------------------------------

def expected_events(events, with_names=True):
    """What a correct parser returns for ``sse(events)``: computed from the events, not parsed."""
    return [(name.encode() if with_names else b"", json.dumps(payload, separators=(",", ":")).encode())
            for name, payload in events]


def text_stream():
    return Script().start().message(["Hel", "lo, ", "wörld ✓", "!"]).completed().events()


def tool_stream():
    return (Script("gpt-5.2-codex").start().reasoning("Let me look.").message(["Running ls."])
            .function_call("shell", ["{\"command\":", "[\"ls\"]}"]).completed().events())


def refusal_stream():
    return Script().start().message(["I can't", " help."], kind="refusal").incomplete().events()


def failed_stream():
    return Script().start().message(["Par"]).failed().events()


STREAMS = [
    pytest.param(text_stream, id="text"),
    pytest.param(tool_stream, id="reasoning-and-tool-call"),
    pytest.param(refusal_stream, id="refusal-incomplete"),
    pytest.param(failed_stream, id="failed"),
]
LINE_ENDINGS = [
    pytest.param(b"\n", id="LF"),
    pytest.param(b"\r\n", id="CRLF"),
    pytest.param(b"\r", id="CR"),
]


@pytest.mark.parametrize("with_names", [True, False], ids=["with-event-lines", "data-only"])
@pytest.mark.parametrize("ending", LINE_ENDINGS)
@pytest.mark.parametrize("make_events", STREAMS)
def test_recorded_stream_at_every_split(make_events, ending, with_names):
    events = make_events()
    raw = "".join(sse(events, with_names)).encode().replace(b"\n", ending)

    check_every_split(raw, expected_events(events, with_names))


@pytest.mark.parametrize("ending", LINE_ENDINGS)
def test_recorded_stream_with_bom_and_keepalives(ending):
    events = text_stream()
    frames = [frame.encode() for frame in sse(events)]
    raw = BOM + b": keepalive\n\n" + b": keepalive\n\n".join(frames) + b": keepalive\n\n"
    raw = raw.replace(b"\n", ending)

    check_every_split(raw, expected_events(events))


def test_recorded_stream_in_network_sized_chunks():
    events = tool_stream()
    raw = "".join(sse(events)).encode().replace(b"\n", b"\r\n")
    for size in (1, 2, 3, 7, 64, 1000, 4096):
        chunks = [raw[i:i + size] for i in range(0, len(raw), size)]
        assert feed_all(chunks) == expected_events(events), f"chunks of {size} bytes"


def test_events_come_out_as_soon_as_they_are_complete():
    """A relay must not hold back an event until the next chunk arrives."""
    frames = [frame.encode() for frame in sse(text_stream())]
    parser = SSEParser()
    for frame in frames:
        assert len(parser.feed(frame)) == 1
    assert parser.feed(b"") == []


# --- hand-written edge cases (short: split three ways too) ------------------------------------------

EDGE_CASES = [
    pytest.param(b"event: a\ndata: 1\n\n", [(b"a", b"1")], id="one-event"),
    pytest.param(b"event: a\r\ndata: 1\r\n\r\nevent: b\r\ndata: 2\r\n\r\n", [(b"a", b"1"), (b"b", b"2")],
                 id="crlf"),
    pytest.param(b"event: a\rdata: 1\r\revent: b\rdata: 2\r\r", [(b"a", b"1"), (b"b", b"2")], id="cr-only"),
    pytest.param(b"event: a\r\ndata: 1\r\rdata: 2\n\r\n", [(b"a", b"1"), (b"", b"2")], id="mixed-endings"),
    pytest.param(b": keepalive\n\n: another\nevent: a\n: inside\ndata: 1\n\n:\n\n", [(b"a", b"1")],
                 id="comments"),
    pytest.param(b"data: line one\ndata: line two\ndata: three\n\n", [(b"", b"line one\nline two\nthree")],
                 id="multi-line-data"),
    pytest.param(BOM + b"event: a\ndata: 1\n\n", [(b"a", b"1")], id="bom-at-start"),
    pytest.param(BOM + b"data: 1\r\n\r\n", [(b"", b"1")], id="bom-then-crlf"),
    pytest.param(b"data: 1\n\n" + BOM + b"data: 2\n\n", [(b"", b"1")], id="bom-later-is-not-stripped"),
    pytest.param(b"data: {\"type\":\"response.created\"}\n\n", [(b"", b"{\"type\":\"response.created\"}")],
                 id="no-event-line"),
    pytest.param(b"id: 7\nretry: 1000\nevent: a\ndata: 1\nid\n\n", [(b"a", b"1")], id="id-and-retry-ignored"),
    pytest.param(b"foo: bar\nevent: a\ndata: 1\n\n", [(b"a", b"1")], id="unknown-field-ignored"),
    pytest.param(b"data:\n\n", [(b"", b"")], id="empty-data-line"),
    pytest.param(b"data\n\n", [(b"", b"")], id="data-field-without-colon"),
    pytest.param(b"data: a\ndata:\ndata: b\n\n", [(b"", b"a\n\nb")], id="empty-data-line-in-the-middle"),
    pytest.param(b"data:no-space\n\ndata:  two spaces\n\n", [(b"", b"no-space"), (b"", b" two spaces")],
                 id="only-one-leading-space-removed"),
    pytest.param(b"data: {\"a\":\"b: c\"}\n\n", [(b"", b"{\"a\":\"b: c\"}")], id="colon-in-value"),
    pytest.param(b"event: ping\n\n", [], id="event-without-data-not-dispatched"),
    pytest.param(b"event: ping\n\ndata: 1\n\n", [(b"", b"1")], id="name-does-not-leak-to-next-event"),
    pytest.param(b"event: a\ndata: 1\n\nevent: b\ndata: 2\n", [(b"a", b"1")], id="trailing-event-without-blank-line"),
    pytest.param(b"event: a\ndata: 1\n\nevent: b\ndata: 2", [(b"a", b"1")], id="trailing-partial-line"),
    pytest.param(b"event: a\ndata: 1\n\nevent: b\ndata: 2\r", [(b"a", b"1")], id="trailing-cr"),
    pytest.param(b"\n\n\nevent: a\ndata: 1\n\n\n\n", [(b"a", b"1")], id="extra-blank-lines"),
    pytest.param(b"event: a\nevent: b\ndata: 1\n\n", [(b"b", b"1")], id="last-event-line-wins"),
    pytest.param("data: héllo ✓ 日本\n\n".encode(), [(b"", "héllo ✓ 日本".encode())], id="utf-8-multibyte"),
    pytest.param(b"", [], id="empty-stream"),
]


@pytest.mark.parametrize("raw, expected", EDGE_CASES)
def test_edge_case_at_every_split(raw, expected):
    check_every_split(raw, expected, three_way=True)


def test_incomplete_event_is_dispatched_once_its_blank_line_arrives():
    parser = SSEParser()
    assert parser.feed(b"event: a\ndata: 1\n") == []
    assert parser.feed(b"\r") == [(b"a", b"1")]
    # The \n of that \r\n must not count as a second blank line (it would dispatch nothing now,
    # but a following data line would otherwise be read as a new event too early).
    assert parser.feed(b"\ndata: 2\r") == []
    assert parser.feed(b"\n\r\n") == [(b"", b"2")]


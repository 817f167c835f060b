"""The byte-level SSE parser, fed every fixture in one piece, split at every byte position,
byte by byte, and (short fixtures) split in three at every pair of positions: the events must
always be the same, and the ones the SSE standard says.
"""

import json
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from responses_proxy.upstream.sse import EventTooLarge, SSEParser
from tests.fake_upstream import Script, sse

BOM = b"\xef\xbb\xbf"
LIMIT = 1 << 20


def feed_all(chunks, limit=LIMIT):
    parser = SSEParser(limit)
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
    parser = SSEParser(LIMIT)
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
    parser = SSEParser(LIMIT)
    assert parser.feed(b"event: a\ndata: 1\n") == []
    assert parser.feed(b"\r") == [(b"a", b"1")]
    # The \n of that \r\n must not count as a second blank line (it would dispatch nothing now,
    # but a following data line would otherwise be read as a new event too early).
    assert parser.feed(b"\ndata: 2\r") == []
    assert parser.feed(b"\n\r\n") == [(b"", b"2")]



# --- the SSE standard itself, as a reference: any input, split anywhere ----------------------------

def reference(stream):
    """The WHATWG "interpreting an event stream" steps, followed literally on a whole stream.

    Returns the dispatched ``(event type, data)`` pairs (type ``b""`` when none was given), the
    length of the longest line and the largest the data buffer got (without its final LF).
    The standard decodes UTF-8 first; on bytes the steps are the same, so bytes it is here.
    """
    if stream.startswith(BOM):  # one leading byte order mark is ignored
        stream = stream[3:]
    pieces = re.split(rb"\r\n|\r|\n", stream)
    longest = max(map(len, pieces))
    lines = pieces[:-1]  # what follows the last end-of-line is not a line (yet): never processed
    events, event_type, data, largest = [], b"", b"", 0
    for line in lines:
        if line == b"":  # dispatch
            if data == b"":
                event_type = b""
                continue
            if data.endswith(b"\n"):
                data = data[:-1]
            events.append((event_type, data))
            event_type, data = b"", b""
        elif line.startswith(b":"):  # a comment
            continue
        else:
            if b":" in line:
                field, _, value = line.partition(b":")
                if value.startswith(b" "):
                    value = value[1:]
            else:
                field, value = line, b""
            if field == b"event":
                event_type = value
            elif field == b"data":
                data += value + b"\n"
                largest = max(largest, len(data) - 1)
            # id, retry and unknown fields do not change the (type, data) pairs
    return events, longest, largest


# Streams built line by line (fields, comments, blank lines, any line ending), with the bytes
# that make parsers stumble (a byte order mark whole or in pieces, colons and spaces in odd
# places, stray bytes), and streams that are just a soup of such pieces.
VALUES = st.one_of(st.sampled_from([b"", b"1", b"a b", b" x", b":", b"{\"type\":\"t\"}", BOM]), st.binary(max_size=3))
FIELD_LINES = st.builds(lambda field, colon, value: field + colon + value,
                        st.sampled_from([b"data", b"data", b"event", b"event", b"id", b"retry", b"dat", b""]),
                        st.sampled_from([b": ", b": ", b":", b":  ", b""]), VALUES)
LINES = st.one_of(st.just(b""), FIELD_LINES, FIELD_LINES, st.builds(lambda value: b":" + value, VALUES))
ENDINGS = st.sampled_from([b"\n", b"\r", b"\r\n"])
STRUCTURED = st.builds(
    lambda start, lines, rest: start + b"".join(line + ending for line, ending in lines) + rest,
    st.sampled_from([b"", BOM, BOM[:2], b"\n"]), st.lists(st.tuples(LINES, ENDINGS), max_size=12), VALUES)
SOUP = st.lists(st.one_of(st.sampled_from([b"data: ", b"event: ", b":", b"\n", b"\r", b"\r\n", BOM, BOM[:1],
                                           BOM[1:]]), st.binary(max_size=3)), max_size=30).map(b"".join)
SSE_STREAMS = st.one_of(STRUCTURED, SOUP)
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=800)


@st.composite
def split_streams(draw):
    """A stream and the chunks it arrives in (any number of cuts, anywhere, empty chunks too)."""
    stream = draw(SSE_STREAMS)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    bounds = [0, *cuts, len(stream)]
    return stream, [stream[start:end] for start, end in zip(bounds, bounds[1:], strict=False)]


@PROPERTY
@given(split_streams())
def test_parser_matches_the_standard_on_any_input_split_anywhere(case):
    stream, chunks = case
    assert feed_all(chunks) == reference(stream)[0]


@PROPERTY
@given(split_streams(), st.integers(3, 24))
def test_parser_refuses_exactly_the_lines_and_events_over_its_limit(case, limit):
    stream, chunks = case
    events, longest, largest = reference(stream)
    if longest > limit or largest > limit:
        with pytest.raises(EventTooLarge):
            feed_all(chunks, limit)
    else:
        assert feed_all(chunks, limit) == events


# --- the limit --------------------------------------------------------------------------------------

def test_a_line_that_never_ends_is_refused_once_over_the_limit():
    parser = SSEParser(100)
    assert parser.feed(b"data: " + b"x" * 60) == []
    assert parser.feed(b"x" * 34) == []  # 100 bytes: still allowed
    with pytest.raises(EventTooLarge, match="a line is longer than 100 bytes"):
        parser.feed(b"x")


def test_a_complete_line_over_the_limit_is_refused_even_in_one_chunk():
    with pytest.raises(EventTooLarge, match="a line is longer than 100 bytes"):
        SSEParser(100).feed(b": " + b"x" * 200 + b"\n\n")


def test_an_event_whose_data_lines_add_up_over_the_limit_is_refused():
    parser = SSEParser(100)
    line = b"data: " + b"x" * 40 + b"\n"
    assert parser.feed(line + line) == []  # 81 bytes of data so far
    with pytest.raises(EventTooLarge, match="an event is larger than 100 bytes"):
        parser.feed(line)


def test_an_event_of_exactly_the_limit_passes_and_one_byte_more_does_not():
    data = b"y" * 49 + b"\n" + b"z" * 50
    raw = b"data: " + data.replace(b"\n", b"\ndata: ") + b"\n\n"
    assert feed_all([raw], limit=len(data)) == [(b"", data)]
    with pytest.raises(EventTooLarge, match="an event is larger than 99 bytes"):
        feed_all([raw], limit=len(data) - 1)


def test_an_unfinished_line_costs_time_linear_in_its_size():
    """50 MB without a newline in 64 KiB chunks: copying the line so far on every chunk would
    move about 20 GB; kept as pieces it is a moment's work. The bound only catches a hang."""
    parser = SSEParser(64 << 20)
    chunk = b"x" * 65536
    deadline = time.monotonic() + 10
    for _ in range(800):
        assert parser.feed(chunk) == []
        assert time.monotonic() < deadline, "feeding an unfinished line is not linear"
    assert parser.feed(b"\n\ndata: 1\n\n") == [(b"", b"1")]

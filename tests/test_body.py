"""The transfer-coding decoders of the socket-level body reader, fed at every split point, and
the reader itself on a real connection."""

import gzip
import hashlib
import select
import time

import pytest
import requests

from responses_proxy.upstream.body import (
    RECV_SIZE,
    BodyError,
    ChunkedDecoder,
    LengthDecoder,
    UnsupportedEncoding,
    UpstreamBody,
    decoder_for,
    inflater_for,
)


def chunked(*pieces, extension=b"", trailer=b""):
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(piece), extension, piece) for piece in pieces)
    return body + b"0\r\n" + trailer + b"\r\n"


BODIES = {
    "events": (chunked(b"event: a\ndata: {}\n\n", b"event: b\ndata: {\"x\":1}\n\n"),
               b"event: a\ndata: {}\n\nevent: b\ndata: {\"x\":1}\n\n"),
    "big-chunk": (chunked(b"x" * 5000, b"y"), b"x" * 5000 + b"y"),
    "extensions-and-trailer": (chunked(b"abc", extension=b";name=value", trailer=b"X-Trailer: 1\r\n"), b"abc"),
    "crlf-inside-data": (chunked(b"a\r\n\r\nb"), b"a\r\n\r\nb"),
    "empty": (b"0\r\n\r\n", b""),
}


@pytest.mark.parametrize("name", sorted(BODIES))
def test_chunked_gives_the_same_bytes_at_every_split(name):
    raw, expected = BODIES[name]
    for split in range(len(raw) + 1):
        decoder = ChunkedDecoder()
        out = decoder.feed(raw[:split]) + decoder.feed(raw[split:])
        assert out == expected and decoder.done, split
    decoder = ChunkedDecoder()
    assert b"".join(decoder.feed(raw[i:i + 1]) for i in range(len(raw))) == expected and decoder.done


def test_chunked_is_not_done_before_the_last_chunk():
    decoder = ChunkedDecoder()
    assert decoder.feed(b"3\r\nabc\r\n") == b"abc" and not decoder.done
    assert decoder.feed(b"0\r\n") == b"" and not decoder.done  # the trailer's empty line is still to come
    decoder.feed(b"\r\n")
    assert decoder.done


@pytest.mark.parametrize("raw", [b"zz\r\nabc\r\n", b"3\r\nabcdef\r\n", b"f" * 5000])
def test_malformed_chunked_bodies_are_errors(raw):
    with pytest.raises(BodyError):
        ChunkedDecoder().feed(raw)


def test_length_and_choice_of_decoder():
    decoder = LengthDecoder(5)
    assert decoder.feed(b"abc") == b"abc" and not decoder.done
    assert decoder.feed(b"defgh") == b"de" and decoder.done
    assert isinstance(decoder_for({"Transfer-Encoding": "chunked"}), ChunkedDecoder)
    assert isinstance(decoder_for({"Content-Length": "10"}), LengthDecoder)
    assert not decoder_for({}).done  # until the upstream closes


def test_compressed_bodies_are_inflated_and_unknown_encodings_refused():
    import gzip

    inflater = inflater_for({"Content-Encoding": "gzip"})
    assert inflater.decompress(gzip.compress(b"data: {}\n\n")) + inflater.flush() == b"data: {}\n\n"
    assert inflater_for({}) is None
    with pytest.raises(BodyError):
        inflater_for({"Content-Encoding": "br"})


# --- the reader on a real connection (the fake upstream) ---------------------------------------------

def open_body(upstream, behaviour):
    upstream.push(behaviour)
    return requests.post(upstream.base_url + "/codex/responses", json={"model": "gpt-5.2"}, stream=True,
                         headers={"Accept-Encoding": "identity"}, timeout=10)


def read_all(body):
    """Every ``read()`` of the body until it is done: the sizes, and a digest of the bytes."""
    sizes, digest = [], hashlib.sha256()
    deadline = time.monotonic() + 30
    while not body.done:
        assert time.monotonic() < deadline, "the body did not end"
        data = body.read()
        if data is None:
            select.select([body], [], [], 1)
            continue
        sizes.append(len(data))
        digest.update(data)
    return sizes, digest.hexdigest()


def test_a_compressed_body_is_inflated_one_bounded_piece_at_a_time(upstream):
    """A small gzip body can stand for gigabytes: each read inflates at most RECV_SIZE bytes."""
    plain = b": padding\n" * (6 * 1024 * 1024)
    packed = gzip.compress(plain)
    assert len(packed) < RECV_SIZE  # one network read holds the whole body
    body = UpstreamBody(open_body(upstream, {"raw": packed, "headers": {"Content-Encoding": "gzip"}}))
    try:
        sizes, digest = read_all(body)
    finally:
        body.close()

    assert digest == hashlib.sha256(plain).hexdigest()
    assert sum(sizes) == len(plain) and max(sizes) <= RECV_SIZE


def test_an_unknown_content_encoding_is_refused_before_reading_and_the_connection_closed(upstream):
    response = open_body(upstream, {"raw": b"\x1b\x2a\x00\xf8", "headers": {"Content-Encoding": "br"}})
    connection = response.raw._connection
    with pytest.raises(UnsupportedEncoding) as caught:
        UpstreamBody(response)

    assert caught.value.encoding == "br"
    assert str(caught.value) == "unsupported Content-Encoding from the upstream: br"
    assert connection.sock is None  # closed, not handed back to the pool half read

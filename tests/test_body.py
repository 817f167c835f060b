"""The transfer-coding decoders of the socket-level body reader, fed at every split point."""

import pytest

from responses_proxy.upstream.body import BodyError, ChunkedDecoder, LengthDecoder, decoder_for, inflater_for


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

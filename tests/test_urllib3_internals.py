"""What the relay takes from urllib3's and http.client's insides, checked against the pinned
versions: an upgrade that changes any of it fails here, with the name of what changed."""

import select
import socket

import requests

from responses_proxy.upstream.body import UpstreamBody
from responses_proxy.upstream.urllib3_internals import buffered_reader, connection_of
from tests.fake_upstream import text_answer


def open_stream(session, upstream):
    upstream.push({"events": text_answer()})
    return session.post(upstream.base_url + "/codex/responses", json={"model": "gpt-5.2"}, stream=True, timeout=10)


def test_the_connection_and_its_socket_of_a_streaming_response(upstream):
    with requests.Session() as session:
        response = open_stream(session, upstream)
        connection = connection_of(response)
        assert connection is not None, "urllib3's HTTPResponse no longer keeps its connection in _connection"
        assert isinstance(connection.sock, socket.socket), "the connection's socket is no longer .sock"
        assert connection.sock.getpeername()[1] == upstream.port
        response.close()


def test_the_bytes_buffered_with_the_headers_are_readable(upstream):
    with requests.Session() as session:
        response = open_stream(session, upstream)
        reader = buffered_reader(response)
        assert callable(getattr(reader, "peek", None)) and callable(getattr(reader, "read1", None)), \
            "http.client's response no longer reads through a buffered reader at _fp.fp"
        response.raw.read()  # the rest of the body, so the buffered part must be its start
        response.close()


def test_a_body_read_to_its_end_goes_back_to_the_pool(upstream):
    """As the relay reads it: from the socket, then ``release`` (in ``UpstreamBody.close``)."""
    with requests.Session() as session:
        first = open_stream(session, upstream)
        local = connection_of(first).sock.getsockname()
        body = UpstreamBody(first)
        data = b""
        while not body.done:
            chunk = body.read()
            if chunk is None:
                select.select([body.fileno()], [], [], 5)
            else:
                data += chunk
        assert data.endswith(b"\n\n")
        body.close()
        second = open_stream(session, upstream)
        # The same connection (same local port) served the second request: it was reused.
        assert connection_of(second).sock.getsockname() == local
        second.close()

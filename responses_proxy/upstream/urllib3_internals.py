"""Every use of urllib3's (and http.client's) private attributes, in one place.

The relay reads a streaming body straight from its socket (upstream/body.py): ``requests``
opens the connection and parses the headers, and then the socket, the bytes http.client
already buffered past the headers, and the way back to the connection pool are needed. None
of these is public API. tests/test_urllib3_internals.py checks each against the pinned
versions, so an upgrade that changes them fails loudly there, not in production.
"""


def connection_of(response):
    """The ``HTTPConnection`` a streaming ``requests`` response still holds."""
    return response.raw._connection


def buffered_reader(response):
    """http.client's buffered reader of the socket: it may hold body bytes read with the headers."""
    return response.raw._fp.fp


def release(response):
    """Hand a connection whose body was read to its end back to urllib3's pool, for reuse."""
    raw = response.raw
    raw._fp.close()  # http.client's response is finished; the socket stays open
    raw.release_conn()

"""Reading a JSON request body: content type, size limit, parse errors, all as envelopes."""

import orjson
from flask import request

from .errors import InvalidRequest, PayloadTooLarge, RequestTimeout


def read_json_body(limit):
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise InvalidRequest(f"Unsupported Content-Type '{mimetype}': send the body as application/json.")
    length = request.content_length
    if length is not None and length > limit:
        raise too_large(limit)
    # One byte past what is accepted, to see a body without Content-Length that is too long;
    # no more than that: the stream allocates a buffer of the size asked for (64 MiB by default).
    try:
        raw = request.stream.read((limit if length is None else length) + 1)
    except TimeoutError:  # the client timeout on the socket (server.py): the client stopped sending
        raise RequestTimeout("The request body stopped arriving before it was complete.") from None
    if len(raw) > limit:
        raise too_large(limit)
    if not raw.strip():
        raise InvalidRequest("The request body is empty: send a JSON object.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None


def too_large(limit):
    # The rest of the body is never read: the connection must not be reused for another request.
    # (gunicorn drops this header; server.py closes the connection when much of the body is left.)
    return PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.", headers={"Connection": "close"})

"""Reading a streaming upstream body straight from its socket.

``requests`` opens the connection, sends the request and parses the status line and headers.
From there the relay reads what the socket has with one non-blocking ``recv`` at a time and
undoes the transfer coding itself: however many events a network read holds, they cost one
system call and one pass of the parser, with no thread, greenlet or queue in between, and the
relay can wait on the upstream socket, the client's socket and the keepalive timer at once.
A body read to its end leaves the connection clean, so it goes back to the pool for the next
request (no new TCP/TLS handshake per request).
"""

import ssl
import zlib

from .urllib3_internals import buffered_reader, connection_of, release

WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
RECV_SIZE = 256 * 1024


class BodyError(Exception):
    """The upstream connection broke, or the body's framing is malformed."""


class UnsupportedEncoding(BodyError):
    """The upstream compressed the body with a coding the gateway cannot undo."""

    def __init__(self, encoding):
        super().__init__(f"unsupported Content-Encoding from the upstream: {encoding}")
        self.encoding = encoding


class ChunkedDecoder:
    """Undo ``Transfer-Encoding: chunked`` on bytes as they arrive."""

    __slots__ = ("done", "_tail", "_left", "_state")

    SIZE, DATA, DATA_END, TRAILER = range(4)

    def __init__(self):
        self.done = False
        self._tail = b""
        self._left = 0
        self._state = self.SIZE

    def feed(self, data):
        if self._tail:
            data = self._tail + data
            self._tail = b""
        out = []
        position, length = 0, len(data)
        while position < length and not self.done:
            if self._state == self.DATA:
                end = min(length, position + self._left)
                out.append(data[position:end])
                self._left -= end - position
                position = end
                if not self._left:
                    self._state = self.DATA_END
                continue
            newline = data.find(b"\n", position)
            if newline < 0:
                if length - position > 4096:
                    raise BodyError("malformed chunked body: a chunk header line is too long")
                self._tail = data[position:]
                break
            line = data[position:newline].rstrip(b"\r")
            position = newline + 1
            if self._state == self.DATA_END:
                if line:
                    raise BodyError("malformed chunked body: chunk data longer than announced")
                self._state = self.SIZE
            elif self._state == self.SIZE:
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise BodyError("malformed chunked body: bad chunk size") from None
                if size:
                    self._left, self._state = size, self.DATA
                else:
                    self._state = self.TRAILER
            elif not line:  # TRAILER: an empty line ends the body
                self.done = True
        return b"".join(out) if len(out) != 1 else out[0]


class LengthDecoder:
    """A body of ``Content-Length`` bytes."""

    __slots__ = ("done", "_left")

    def __init__(self, length):
        self._left = length
        self.done = length == 0

    def feed(self, data):
        data = data[:self._left]
        self._left -= len(data)
        self.done = self._left == 0
        return data


class UntilCloseDecoder:
    """A body that ends when the upstream closes the connection."""

    done = False

    def feed(self, data):
        return data


def decoder_for(headers):
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        return ChunkedDecoder()
    length = headers.get("Content-Length")
    if length is not None and length.strip().isdigit():
        return LengthDecoder(int(length))
    return UntilCloseDecoder()


def inflater_for(headers):
    # The gateway asks for identity; an upstream that compresses anyway is still understood.
    encoding = headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    if encoding in ("", "identity"):
        return None
    raise UnsupportedEncoding(encoding)


class UpstreamBody:
    """The body of a ``requests`` response opened with ``stream=True``.

    ``read()`` returns the decoded bytes available now, ``None`` when the socket has nothing
    yet (wait on ``fileno()``), and ``b""`` once the body is complete (``done``). It raises
    ``BodyError`` when the connection breaks or closes early. ``processed`` counts the bytes
    taken from the socket and those inflated from them: the work the reads did, whatever
    they returned (framing or compression can make that much more, or less, than the body).
    """

    def __init__(self, response):
        self.response = response
        self._connection = connection_of(response)
        self._sock = self._connection.sock
        self._saved_timeout = self._sock.gettimeout()
        self._decoder = decoder_for(response.headers)
        try:
            self._inflater = inflater_for(response.headers)
        except UnsupportedEncoding:
            response.close()  # nothing was read: the connection cannot serve another request
            raise
        self.done = self._decoder.done
        self.processed = 0
        self._sock.settimeout(0.0)
        # Whatever http.client buffered beyond the headers comes first.
        self._pending = self._buffered(buffered_reader(response))

    @staticmethod
    def _buffered(reader):
        try:
            ahead = reader.peek(RECV_SIZE)
        except WOULD_BLOCK:
            return b""
        except OSError as exc:
            raise BodyError(f"the upstream connection failed ({type(exc).__name__})") from None
        return reader.read1(len(ahead)) if ahead else b""

    def fileno(self):
        return self._sock.fileno()

    def read(self):
        if self.done:
            return b""
        if self._inflater is not None and self._inflater.unconsumed_tail:
            return self._inflate(self._inflater.unconsumed_tail)
        if self._pending:
            data, self._pending = self._pending, b""
        else:
            try:
                data = self._sock.recv(RECV_SIZE)
            except WOULD_BLOCK:
                return None
            except OSError as exc:
                raise BodyError(f"the upstream connection failed ({type(exc).__name__})") from None
            if not data:
                if isinstance(self._decoder, UntilCloseDecoder):
                    self.done = True
                    return self._flush()
                raise BodyError("the upstream closed the connection before the end of the body")
        self.processed += len(data)
        decoded = self._decoder.feed(data)
        if self._inflater is not None:
            return self._inflate(decoded)
        if self._decoder.done:
            self.done = True
        return decoded

    def _inflate(self, data):
        # A few compressed bytes can stand for gigabytes: inflate at most one read's worth at a
        # time, the rest waits in ``unconsumed_tail`` for the next read.
        out = self._inflater.decompress(data, RECV_SIZE)
        if self._decoder.done and not self._inflater.unconsumed_tail:
            self.done = True
            out += self._inflater.flush()
        self.processed += len(out)
        return out

    def _flush(self):
        return self._inflater.flush() if self._inflater is not None else b""

    def close(self):
        """Release the connection: back to the pool when the body was read to its end, else
        closed (the rest of the body would otherwise be read as the next response)."""
        if self._connection is None:
            return
        connection, self._connection = self._connection, None
        if self.done and not isinstance(self._decoder, UntilCloseDecoder):
            try:
                self._sock.settimeout(self._saved_timeout)
                release(self.response)
                return
            except OSError:
                pass
        connection.close()
        self.response.close()

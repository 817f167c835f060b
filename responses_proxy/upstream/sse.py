"""A byte-level server-sent-events parser.

``requests``' ``iter_lines`` splits wrongly at chunk boundaries (a chunk ending in ``\\r``, or
in ``\\n`` next to a delimiter, yields a spurious empty line, and an empty line means
"dispatch"). This parser takes the raw chunks of ``iter_content(chunk_size=None)`` and keeps
the state a boundary needs: the unfinished line, and whether a ``\\r`` just ended a line (the
``\\n`` that may follow in the next chunk belongs to it).

The upstream is not trusted to end its lines: a line or an event larger than the limit is an
error, and an unfinished line is kept as the list of its pieces, joined once when it ends, so
the work and the memory stay linear in what arrived.
"""

_BOM = b"\xef\xbb\xbf"


class EventTooLarge(ValueError):
    """A line or an event of the stream is larger than the parser's limit."""


class SSEParser:
    """Feed it chunks, get back the complete events as ``(name, data)`` byte pairs.

    ``name`` is the ``event:`` field (``b""`` when the event had none); ``data`` is the
    ``data:`` lines joined by ``\\n``. Comments, ``id:`` and ``retry:`` are dropped; an event
    without data is not dispatched, as the SSE standard says. A line longer than
    ``max_event_bytes`` (without its line ending), or an event whose data grows beyond it,
    raises ``EventTooLarge``.
    """

    __slots__ = ("_max", "_pieces", "_pending", "_skip_lf", "_name", "_data", "_size", "_at_start")

    def __init__(self, max_event_bytes):
        self._max = max_event_bytes
        self._pieces = []  # the unfinished line, as it arrived
        self._pending = 0  # its length
        self._skip_lf = False
        self._name = b""
        self._data = None  # the event's data line, or a list of its lines, None before the first
        self._size = 0  # the length of those lines once joined
        self._at_start = True

    def feed(self, chunk: bytes):
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == 10:  # the \n of a \r\n split across two chunks
                chunk = chunk[1:]
                if not chunk:
                    return []
        if 13 in chunk:  # b"\r": rare, normalise to \n (the unfinished line never holds one)
            if chunk[-1] == 13:
                self._skip_lf = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._at_start:
            chunk = self._without_bom(chunk)
            if not chunk:
                return []
        if 10 not in chunk:
            self._pieces.append(chunk)
            self._pending += len(chunk)
            if self._pending > self._max:
                raise EventTooLarge(f"a line is longer than {self._max} bytes")
            return []
        if self._pieces:
            self._pieces.append(chunk)
            chunk = b"".join(self._pieces)
        lines = chunk.split(b"\n")
        if len(chunk) > self._max and max(map(len, lines)) > self._max:
            raise EventTooLarge(f"a line is longer than {self._max} bytes")
        tail = lines.pop()
        self._pieces = [tail] if tail else []
        self._pending = len(tail)
        events = []
        name, data, size = self._name, self._data, self._size
        for line in lines:
            if not line:
                if data is not None:
                    events.append((name, data if isinstance(data, bytes) else b"\n".join(data)))
                name, data = b"", None
            elif line[0] == 58:  # ":" comment
                continue
            else:
                colon = line.find(b":")
                if colon < 0:
                    field, value = line, b""
                else:
                    field, value = line[:colon], line[colon + 1:]
                    if value[:1] == b" ":
                        value = value[1:]
                if field == b"data":
                    if data is None:
                        data, size = value, len(value)
                    else:
                        # Rare (the backend sends one data line per event): a list, joined once.
                        if isinstance(data, bytes):
                            data = [data]
                        data.append(value)
                        size += 1 + len(value)
                        if size > self._max:
                            raise EventTooLarge(f"an event is larger than {self._max} bytes")
                elif field == b"event":
                    name = value
        self._name, self._data, self._size = name, data, size
        return events

    def _without_bom(self, chunk):
        """The stream's first bytes without the byte order mark, which may come split."""
        start = b"".join(self._pieces) + chunk if self._pieces else chunk
        if len(start) < 3 and _BOM.startswith(start):
            self._pieces, self._pending = [start], len(start)
            return b""
        self._at_start = False
        self._pieces, self._pending = [], 0
        return start[3:] if start.startswith(_BOM) else start

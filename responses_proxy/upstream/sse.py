"""A byte-level server-sent-events parser.

``requests``' ``iter_lines`` splits wrongly at chunk boundaries (a chunk ending in ``\\r``, or
in ``\\n`` next to a delimiter, yields a spurious empty line, and an empty line means
"dispatch"). This parser takes the raw chunks of ``iter_content(chunk_size=None)`` and keeps
the state a boundary needs: the unfinished line, and whether a ``\\r`` just ended a line (the
``\\n`` that may follow in the next chunk belongs to it).
"""

_BOM = b"\xef\xbb\xbf"


class SSEParser:
    """Feed it chunks, get back the complete events as ``(name, data)`` byte pairs.

    ``name`` is the ``event:`` field (``b""`` when the event had none); ``data`` is the
    ``data:`` lines joined by ``\\n``. Comments, ``id:`` and ``retry:`` are dropped; an event
    without data is not dispatched, as the SSE standard says.
    """

    __slots__ = ("_tail", "_skip_lf", "_name", "_data", "_at_start")

    def __init__(self):
        self._tail = b""
        self._skip_lf = False
        self._name = b""
        self._data = None
        self._at_start = True

    def feed(self, chunk: bytes):
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == 10:  # the \n of a \r\n split across two chunks
                chunk = chunk[1:]
        buffer = self._tail + chunk if self._tail else chunk
        if self._at_start:
            if len(buffer) < 3 and _BOM.startswith(buffer):
                self._tail = buffer
                return []
            self._at_start = False
            if buffer.startswith(_BOM):
                buffer = buffer[3:]
        if 13 in buffer:  # b"\r": rare, normalise to \n
            if buffer[-1] == 13:
                self._skip_lf = True
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._tail = lines.pop()
        events = []
        name, data = self._name, self._data
        for line in lines:
            if not line:
                if data is not None:
                    events.append((name, data))
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
                    data = value if data is None else data + b"\n" + value
                elif field == b"event":
                    name = value
        self._name, self._data = name, data
        return events

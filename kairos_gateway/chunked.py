"""Chunked request bodies (RFC 9112 §7.1), decoded strictly and measured exactly.

The proxy listener feeds the parser one message at a time, so it must know where a chunked body
ends in the byte stream; :class:`ChunkedDecoder` returns the decoded data *and* that offset.
Rules:

- a chunk-size line is 1 to 16 hex digits, optionally followed by extensions (``;`` then
  anything but control characters, which are ignored), ending in CRLF; a bare LF, a sign, a
  space before the size, an ``0x`` prefix or an empty size are errors;
- chunk data is followed by exactly CRLF;
- the last chunk (size 0) is followed by trailer lines (``name: value``, a token name, no
  control characters in the value), read and dropped, then an empty line;
- a size line or trailer line longer than ``MAX_LINE_BYTES``, or trailers over
  ``max_trailer_bytes`` in all, are errors.

Every error raises :class:`ChunkedError`; the decoder is then unusable.
"""

from __future__ import annotations

import re

MAX_LINE_BYTES = 4096

_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})([ \t]*;[^\x00-\x08\x0a-\x1f\x7f]*)?")
_TRAILER_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\x00-\x08\x0a-\x1f\x7f]*")

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedError(ValueError):
    """The chunked framing is malformed; the message says how."""


class ChunkedDecoder:
    """Incremental decoder: ``feed`` bytes as they arrive, get the data and the body's end."""

    __slots__ = ("_left", "_line", "_max_trailer_bytes", "_state", "_trailer_bytes")

    def __init__(self, max_trailer_bytes: int) -> None:
        self._state = _SIZE
        self._left = 0
        self._line = bytearray()
        self._trailer_bytes = 0
        self._max_trailer_bytes = max_trailer_bytes

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        """The chunk data in ``data`` and the offset just past the body's last byte, or -1 when
        the body goes on in the next bytes. Bytes after that offset belong to the next message."""
        out: list[bytes] = []
        position, size = 0, len(data)
        while position < size:
            if self._state == _DATA:
                take = min(self._left, size - position)
                out.append(data if take == size else data[position : position + take])
                position += take
                self._left -= take
                if self._left == 0:
                    self._state = _DATA_END
                continue
            end = data.find(b"\n", position)
            if end < 0:
                self._line += data[position:]
                if len(self._line) > MAX_LINE_BYTES:
                    raise ChunkedError(f"a chunk line is longer than {MAX_LINE_BYTES} bytes")
                return out, -1
            if self._line:
                self._line += data[position : end + 1]
                line = bytes(self._line)
                self._line.clear()
            else:
                line = data[position : end + 1]
            position = end + 1
            if len(line) > MAX_LINE_BYTES + 2:
                raise ChunkedError(f"a chunk line is longer than {MAX_LINE_BYTES} bytes")
            if not line.endswith(b"\r\n"):
                raise ChunkedError("a chunk line ends in a bare LF")
            self._line_done(line[:-2])
            if self._state == _DONE:
                return out, position
        return out, -1

    def _line_done(self, line: bytes) -> None:
        state = self._state
        if state == _SIZE:
            match = _SIZE_LINE.fullmatch(line)
            if match is None:
                raise ChunkedError(f"invalid chunk size line {line[:40]!r}")
            self._left = int(match.group(1), 16)
            self._state = _DATA if self._left else _TRAILER
        elif state == _DATA_END:
            if line:
                raise ChunkedError("chunk data longer than its size")
            self._state = _SIZE
        elif not line:
            self._state = _DONE
        else:
            if _TRAILER_LINE.fullmatch(line) is None:
                raise ChunkedError(f"invalid trailer line {line[:40]!r}")
            self._trailer_bytes += len(line) + 2
            if self._trailer_bytes > self._max_trailer_bytes:
                raise ChunkedError(f"trailers exceed {self._max_trailer_bytes} bytes")

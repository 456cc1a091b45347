"""``kairos_gateway.chunked``: strict chunked decoding that knows where the body ends."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kairos_gateway.chunked import MAX_LINE_BYTES, ChunkedDecoder, ChunkedError

MAX_TRAILER_BYTES = 64


def decode(*pieces: bytes) -> tuple[bytes, int, int]:
    """(data, index of the piece where the body ended, end offset in that piece)."""
    decoder = ChunkedDecoder(MAX_TRAILER_BYTES)
    data = b""
    for index, piece in enumerate(pieces):
        chunks, end = decoder.feed(piece)
        data += b"".join(chunks)
        if end >= 0:
            assert decoder.done
            return data, index, end
    return data, -1, -1


def encode(chunks: list[bytes], trailers: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n" + trailers + b"\r\n"


def test_data_and_the_end_of_the_body_are_found() -> None:
    wire = encode([b"hello", b" ", b"world"])
    assert decode(wire + b"GET / HTTP/1.1\r\n") == (b"hello world", 0, len(wire))


def test_sizes_are_hex_in_either_case_with_extensions_ignored() -> None:
    wire = b"A;name=value\r\n" + b"x" * 10 + b"\r\nb ; flag\r\n" + b"y" * 11 + b"\r\n0;last\r\n\r\n"
    assert decode(wire) == (b"x" * 10 + b"y" * 11, 0, len(wire))


def test_trailers_are_read_and_dropped() -> None:
    wire = encode([b"abc"], b"X-Checksum: 1\r\nX-Other: two\r\n")
    assert decode(wire) == (b"abc", 0, len(wire))


@given(
    st.lists(st.binary(min_size=1, max_size=40), max_size=6),
    st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=30),
)
def test_any_split_of_the_bytes_decodes_the_same(chunks: list[bytes], cuts: list[int]) -> None:
    wire = encode(chunks, b"X-T: 1\r\n")
    pieces, position = [], 0
    for cut in cuts:
        pieces.append(wire[position : position + cut])
        position += cut
    pieces.append(wire[position:] + b"NEXT")
    pieces = [p for p in pieces if p]
    data, index, end = decode(*pieces)
    assert data == b"".join(chunks)
    assert pieces[index][end:] + b"".join(pieces[index + 1 :]) == b"NEXT"


@pytest.mark.parametrize(
    "wire",
    [
        b"5\nhello\r\n0\r\n\r\n",  # bare LF after the size
        b"+5\r\nhello\r\n0\r\n\r\n",  # sign
        b" 5\r\nhello\r\n0\r\n\r\n",  # space before the size
        b"0x5\r\nhello\r\n0\r\n\r\n",  # prefix
        b"\r\nhello\r\n0\r\n\r\n",  # empty size
        b"zz\r\nhello\r\n0\r\n\r\n",  # not hex
        b"11111111111111111\r\n",  # 17 digits
        b"5;ext\x01\r\nhello\r\n0\r\n\r\n",  # control character in an extension
        b"5\r\nhello!\r\n0\r\n\r\n",  # data longer than its size
        b"5\r\nhelloXY0\r\n\r\n",  # data not followed by CRLF
        b"0\r\nBad Trailer: 1\r\n\r\n",  # trailer name not a token
        b"0\r\nX-T: a\x00b\r\n\r\n",  # control character in a trailer
    ],
)
def test_malformed_framing_is_an_error(wire: bytes) -> None:
    with pytest.raises(ChunkedError):
        decode(wire)


def test_a_line_longer_than_the_limit_is_an_error_before_it_ends() -> None:
    decoder = ChunkedDecoder(MAX_TRAILER_BYTES)
    decoder.feed(b"5;" + b"e" * (MAX_LINE_BYTES // 2))
    with pytest.raises(ChunkedError, match="longer than"):
        decoder.feed(b"e" * MAX_LINE_BYTES)


def test_trailers_over_the_limit_are_an_error() -> None:
    with pytest.raises(ChunkedError, match="trailers exceed"):
        decode(encode([b"a"], b"X-Long: " + b"v" * MAX_TRAILER_BYTES + b"\r\n"))

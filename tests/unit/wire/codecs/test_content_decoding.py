"""Incremental content decoding: every encoding, any split of the input, and bounded output."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
import zstandard
from kimiwire.wire.codecs.content_decoding import (
    BodyDecoder,
    DecodedTooLarge,
    DecodingError,
    content_encoding,
    decode_body,
)

BODY = b"".join(b'data: {"choices":[{"index":0,"delta":{"content":"tok%d"}}]}\n\n' % i for i in range(300))
ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
}


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize("encoding", ENCODERS)
@pytest.mark.parametrize("step", [1, 7, 100, 100_000])
def test_any_split_decodes_to_the_body(encoding, step):
    encoded = ENCODERS[encoding](BODY)
    decoder = BodyDecoder(encoding, 1 << 20)
    out = b"".join(decoder.feed(encoded[i : i + step]) for i in range(0, len(encoded), step)) + decoder.end()
    assert out == BODY


def test_raw_deflate_is_accepted_too():
    assert decode_body(raw_deflate(BODY), "deflate", 1 << 20) == BODY


@pytest.mark.parametrize("encoding", ENCODERS)
def test_a_bomb_stops_at_the_limit(encoding):
    bomb = ENCODERS[encoding](b"\0" * (16 << 20))  # 16 MiB of zeros, a few KB compressed
    assert len(bomb) < 100_000
    with pytest.raises(DecodedTooLarge):
        decode_body(bomb, encoding, 1 << 20)


@pytest.mark.parametrize("encoding", ENCODERS)
def test_garbage_is_a_decoding_error(encoding):
    with pytest.raises(DecodingError):
        decode_body(b"this is not compressed at all" * 3, encoding, 1 << 20)


def test_header_values():
    assert content_encoding(" GZIP ") == "gzip" and content_encoding("identity") == "" and content_encoding("") == ""
    assert content_encoding("gzip, br") is None and content_encoding("compress") is None


def test_gzip_members_one_after_the_other():
    encoded = gzip.compress(BODY[:1000]) + gzip.compress(BODY[1000:])
    decoder = BodyDecoder("gzip", 1 << 20)
    assert b"".join(decoder.feed(encoded[i : i + 50]) for i in range(0, len(encoded), 50)) == BODY

"""HTTP content-encoding (gzip, deflate, br, zstd) decoded incrementally, with bounded output.

A few hundred bytes of gzip can inflate to gigabytes: every `feed` stops as soon as its output
would pass `max_output` bytes and raises `DecodedTooLarge`, without producing the rest. Used for
compressed SSE streams (bounded per upstream chunk) and compressed request bodies (bounded in
total: the whole body is one feed).
"""

from __future__ import annotations

import zlib
from typing import Any

import brotli
import zstandard

ENCODINGS = ("gzip", "x-gzip", "deflate", "br", "zstd")


class DecodingError(ValueError):
    """The data is not valid for its content-encoding."""


class DecodedTooLarge(DecodingError):
    def __init__(self, max_output: int) -> None:
        super().__init__(f"decodes to more than {max_output} bytes")
        self.max_output = max_output


def content_encoding(header: str) -> str | None:
    """The one encoding named by a content-encoding header, "" for identity, None if unsupported."""
    value = header.strip().lower()
    if value in ("", "identity"):
        return ""
    return value if value in ENCODINGS else None


class _LimitedSink:
    """Where zstandard writes its output; refuses to take more than the limit."""

    def __init__(self, max_output: int) -> None:
        self.max_output = max_output
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: Any) -> int:
        self.size += len(data)
        if self.size > self.max_output:
            raise DecodedTooLarge(self.max_output)
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        self.size = 0
        return out


class BodyDecoder:
    def __init__(self, encoding: str, max_output: int) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"unsupported content-encoding {encoding!r}")
        self.encoding = encoding
        self.max_output = max_output
        self._fed_anything = False
        self._zlib: zlib._Decompress | None = None
        self._brotli: Any = None  # brotli ships no types
        self._zstd: zstandard.ZstdDecompressionWriter | None = None
        self._sink: _LimitedSink | None = None
        if encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif encoding == "deflate":
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS)  # zlib-wrapped, as RFC 9110 says
        elif encoding == "br":
            self._brotli = brotli.Decompressor()
        else:
            self._sink = _LimitedSink(max_output)
            # zstandard calls only the sink's write() (and flush() when it has one); its stub asks for IO[bytes].
            self._zstd = zstandard.ZstdDecompressor().stream_writer(
                self._sink,  # type: ignore[arg-type]
                write_size=65536,
                closefd=False,
            )

    def feed(self, data: bytes) -> bytes:
        """The decoded bytes of `data` (possibly empty: the decoder may wait for more input)."""
        if not data:
            return b""
        try:
            if self._zlib is not None:
                return self._feed_zlib(data)
            if self._brotli is not None:
                out: bytes = self._brotli.process(data, output_buffer_limit=self.max_output + 1)
                if len(out) > self.max_output:
                    raise DecodedTooLarge(self.max_output)
                return out
            assert self._zstd is not None and self._sink is not None
            self._zstd.write(data)
            self._zstd.flush()
            return self._sink.take()
        except DecodingError:
            raise
        except (zlib.error, brotli.error, zstandard.ZstdError) as exc:
            raise DecodingError(f"invalid {self.encoding} data: {exc}") from None
        finally:
            self._fed_anything = True

    def _feed_zlib(self, data: bytes) -> bytes:
        assert self._zlib is not None
        out = bytearray()
        while data:
            try:
                piece = self._zlib.decompress(data, self.max_output - len(out) + 1)
            except zlib.error:
                if self.encoding != "deflate" or self._fed_anything or out:
                    raise
                # Some servers send raw deflate without the zlib wrapper (mitmproxy accepts both too).
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                piece = self._zlib.decompress(data, self.max_output - len(out) + 1)
            out += piece
            if len(out) > self.max_output:
                raise DecodedTooLarge(self.max_output)
            data = self._zlib.unused_data if self._zlib.eof and self.encoding != "deflate" else b""
            if data:  # gzip may have several members, one after the other
                self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 16)
        return bytes(out)

    def end(self) -> bytes:
        """What the decoder still holds once the input is over."""
        try:
            if self._zlib is not None:
                out = self._zlib.flush()
                if len(out) > self.max_output:
                    raise DecodedTooLarge(self.max_output)
                return out
        except zlib.error as exc:
            raise DecodingError(f"invalid {self.encoding} data: {exc}") from None
        return b""


def decode_body(raw: bytes, encoding: str, max_output: int) -> bytes:
    """A whole body decoded, at most `max_output` bytes (DecodedTooLarge past it)."""
    decoder = BodyDecoder(encoding, max_output)
    out = decoder.feed(raw)
    tail = decoder.end()
    if len(out) + len(tail) > max_output:
        raise DecodedTooLarge(max_output)
    return out + tail

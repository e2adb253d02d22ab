"""The benchmark client reads each event's send stamp from the body's payload, whatever the chunk
framing: a stamp a chunk boundary splits still counts (else a proxy that passes the upstream's
chunking through would be charged errors it did not make)."""

import pathlib
import random
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "scripts"))
from bench_client import Dechunked


def _chunked(payload: bytes, rng: random.Random) -> bytes:
    wire, at = b"", 0
    while at < len(payload):
        piece = payload[at : at + rng.randint(1, 200)]
        wire += b"%x\r\n%s\r\n" % (len(piece), piece)
        at += len(piece)
    return wire + b"0\r\n\r\n"


def test_any_chunking_read_in_any_pieces_gives_the_payload_back():
    rng = random.Random(7)
    payload = b"".join(b'data: {"t": "w%d [sent_at=%d]"}\n\n' % (i, 10**18 + i) for i in range(300))
    for _ in range(100):
        wire, body, at = _chunked(payload, rng), Dechunked(), 0
        out = b""
        while at < len(wire):
            step = rng.randint(1, 100)
            out += body.feed(wire[at : at + step])
            at += step
        assert out == payload and body.ended


def test_the_body_has_not_ended_before_the_last_chunk():
    body = Dechunked()
    assert body.feed(b"5\r\nhello\r\n") == b"hello" and not body.ended
    assert body.feed(b"0\r\n\r\n") == b"" and body.ended

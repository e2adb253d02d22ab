from hypothesis import given, settings
from hypothesis import strategies as st
from kimiwire.wire.codecs.sse import SSEDecoder, encode_data


def decode_all(pieces):
    decoder = SSEDecoder()
    events = []
    for piece in pieces:
        events += decoder.feed(piece)
    events += decoder.end()
    return events


def summary(events):
    return [(e.data, e.event, e.complete) for e in events]


STREAM = (
    b": keepalive\n\n"
    b'data: {"a": "caf\xc3\xa9 \xf0\x9f\x98\x80"}\n\n'
    b"event: message\r\ndata: line1\r\ndata: line2\r\n\r\n"
    b"data:nospace\rdata: cr-only\r\r"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    (None, None, True),
    ('{"a": "café 😀"}'.encode(), None, True),
    (b"line1\nline2", b"message", True),
    (b"nospace\ncr-only", None, True),
    (b"[DONE]", None, True),
]


def test_decodes_every_line_end_and_field():
    assert summary(decode_all([STREAM])) == EXPECTED


def test_raw_bytes_are_kept_exactly():
    events = decode_all([STREAM])
    assert b"".join(e.raw for e in events) == STREAM


def test_every_single_cut_point_gives_the_same_events():
    for cut in range(len(STREAM) + 1):
        assert summary(decode_all([STREAM[:cut], STREAM[cut:]])) == EXPECTED, cut


def test_byte_by_byte():
    assert summary(decode_all([bytes([b]) for b in STREAM])) == EXPECTED


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_any_split_gives_the_same_events(cuts):
    cuts = sorted(set(cuts))
    pieces = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
    assert summary(decode_all(pieces)) == EXPECTED


def test_unterminated_last_event_is_dispatched_incomplete():
    events = decode_all([b'data: {"x": 1}\n\ndata: {"y"'])
    assert summary(events) == [(b'{"x": 1}', None, True), (b'{"y"', None, False)]


def test_encode_round_trip():
    for data in [b'{"a":1}', b"multi\nline", b"[DONE]"]:
        assert [e.data for e in decode_all([encode_data(data)])] == [data]

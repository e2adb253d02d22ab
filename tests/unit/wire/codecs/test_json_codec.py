"""Request bodies orjson refuses or silently changes: read by the exact decoder, repaired, and
written back with nothing changed but the repairs."""

import math

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kimiwire.wire.codecs import json_codec
from kimiwire.wire.request.repair import repair_request_body
from kimiwire.wire.servers.policy import Flavor, Policy

POLICY = Policy.build(Flavor.SELFHOSTED)

# What Node writes for `JSON.stringify({content: "read it 😀".slice(0, 9)})`: the emoji's high
# surrogate alone, as a lowercase escape (well-formed JSON.stringify, ES2019).
CUT_EMOJI = b'"read it \\ud83d"'
# OpenClaw's mangled ids (`functionsread0` on every turn): a request that needs the id repair.
HISTORY = (
    b'{"role":"assistant","content":null,"tool_calls":[{"id":"functionsread0","type":"function",'
    b'"function":{"name":"read","arguments":"{\\"path\\":\\"a\\"}"}}]},'
    b'{"role":"tool","tool_call_id":"functionsread0","content":"A"}'
)


def request(user_content: bytes = b'"go"', extra: bytes = b"") -> bytes:
    return (
        b'{"model":"kimi-k2-thinking","messages":[{"role":"user","content":'
        + user_content
        + b"},"
        + HISTORY
        + b"]"
        + extra
        + b"}"
    )


def test_common_bodies_stay_on_orjson():
    decoded = json_codec.decode(request())
    assert decoded.fallback is None
    assert decoded.encode(decoded.value) == orjson.dumps(orjson.loads(request()))


def test_lone_surrogate_is_read_repaired_and_written_back_as_the_same_escape():
    raw = request(CUT_EMOJI)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)
    result = repair_request_body(raw, POLICY)
    assert result.skipped is None and result.body is not None
    assert CUT_EMOJI in result.body  # byte for byte: same escape, same case
    assert b"functionsread0" not in result.body and b'"functions.read:0"' in result.body
    assert any("exact JSON decoder" in note and "surrogate" in note for note in result.notes)


@pytest.mark.parametrize(
    "literal",
    [
        b"18446744073709551616",  # u64 max + 1: orjson returns 1.8446744073709552e+19, no error
        b"-9223372036854775809",  # i64 min - 1
        b"123456789012345678901234567890123",
    ],
)
def test_integers_beyond_64_bits_keep_every_digit(literal):
    raw = request(extra=b',"seed":' + literal + b',"metadata":{"trace":[' + literal + b"]}")
    assert orjson.dumps(orjson.loads(raw)).count(literal) == 0  # what the common path would do
    result = repair_request_body(raw, POLICY)
    assert result.body is not None and b'"functions.read:0"' in result.body
    assert result.body.count(literal) == 2


def test_nan_and_infinity_literals_go_back_as_written():
    raw = request(extra=b',"temperature":NaN,"top_p":Infinity,"x":-Infinity')
    result = repair_request_body(raw, POLICY)
    assert result.body is not None
    assert b'"temperature":NaN' in result.body and b'"top_p":Infinity' in result.body
    assert b'"x":-Infinity' in result.body


def test_a_large_float_costs_only_the_slower_decoder():
    raw = request(b'"go"', b',"x":1e19,"y":-9.3e18')
    decoded = json_codec.decode(raw)
    assert decoded.fallback is not None
    assert decoded.value == orjson.loads(raw)


@pytest.mark.parametrize(
    "raw,why",
    [
        (request(b'"caf\xe9"'), "invalid UTF-8"),
        (b"\xef\xbb\xbf" + request(), "byte-order mark"),
        (request(extra=b',"temperature":1e400'), "beyond a double: Infinity would be a change"),
        (request(extra=b',"x":NaNa'), "garbage"),
        (b'{"model": "k", "messages": [', "truncated"),
        (b"[" * 5000 + b"]" * 5000, "nested beyond both decoders' limits"),
        (request(extra=b',"n":' + b"9" * 5000), "an integer too long to convert in bounded time"),
    ],
)
def test_what_neither_decoder_accepts_is_forwarded_unchanged(raw, why):
    result = repair_request_body(raw, POLICY)
    assert result.body is None and result.skipped and result.skipped.startswith("body is not valid JSON"), why


_SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
_TEXT = st.text(st.one_of(st.characters(), _SURROGATES), max_size=12)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40) | st.floats(allow_nan=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=20,
)


@given(_JSON)
def test_exact_encoding_reads_back_to_the_same_value(value):
    if isinstance(value, float) and math.isinf(value):
        return  # written as Infinity, which the decoder reads back too; compared below by repr
    encoded = json_codec.encode_exact(value)
    encoded.decode("utf-8")  # always valid UTF-8: lone surrogates leave as escapes
    back = json_codec.decode(encoded).value
    assert repr(back) == repr(value)


def test_the_exact_path_writes_what_the_common_path_writes():
    text = '"caf\\u00e9 \\n\\t\\u0001 \\"q\\" \\\\ \\u2028 😀 %s"'
    extra = b',"temperature":0.7,"top_p":1.0,"max_tokens":100,"stop":null,"stream":true'
    common = repair_request_body(request((text % "X").encode(), extra), POLICY)
    exact = repair_request_body(request((text % "\\ud83d").encode(), extra), POLICY)
    assert common.notes == [] and exact.notes
    assert exact.body.replace(b"\\ud83d", b"X") == common.body


def test_records_of_a_repair_hold_only_valid_utf8():
    raw = request(extra=b',"tools":[{"type":"function","function":{"name":"read","description":"x \\udc00"}}]')
    raw = raw.replace(b'"content":null', b'"content":null,"reasoning_content":"r \\ud83d"')
    result = repair_request_body(raw, POLICY)
    assert "reasoning.stripped" in result.log.kinds()
    orjson.dumps(result.log.as_list())  # orjson refuses lone surrogates, as mitmproxy's flow files do
    orjson.dumps(result.facts.as_dict())
    assert b"\\\\ud83d" in orjson.dumps(result.log.as_list())  # kept, spelled as its escape


def test_history_arguments_holding_a_lone_surrogate_are_valid_json_and_pass_unchanged():
    # The arguments string (itself JSON) holds a lone surrogate once the body is read: orjson
    # refuses such a string, JSON allows it; before, it was "repaired" and relabelled.
    call = r'{"id":"functions.read:0","type":"function","function":{"name":"read","arguments":"{\"q\":\"\ud83d x\"}"}}'
    body = (
        r'{"model":"k","messages":[{"role":"user","content":"hi"},'
        r'{"role":"assistant","content":null,"tool_calls":[' + call + r"]},"
        r'{"role":"tool","tool_call_id":"functions.read:0","content":"ok"}]}'
    ).encode()
    result = repair_request_body(body, Policy.build(Flavor.SELFHOSTED))
    assert result.skipped is None
    assert result.body is None, "nothing to repair: forwarded byte for byte"
    assert [entry["kind"] for entry in result.log.as_list()] == []
    mangled = body.replace(b"functions.read:0", b"functionsread0")
    repaired = repair_request_body(mangled, Policy.build(Flavor.SELFHOSTED))
    assert repaired.body == body  # ids repaired, the arguments' lone surrogate kept as the same escape

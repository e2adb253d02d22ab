"""First, do no harm (adapter side), through mitmdump: every chat flow gets the ending
guarantees whether or not its body parsed (6), a compressed SSE stream is decoded, repaired,
captured and timed (7), [DONE] then a torn connection is a clean end (8), and a compressed
request is never inflated past kimi_max_request_bytes (9)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import time
import zlib

import brotli
import httpx
import orjson
import pytest
import zstandard
from kimiwire.mitm.capture import delivered_body
from mitmproxy import exceptions

from tests.support.endings import FIRST_BYTE, IDLE, OPTIONS, REQUEST
from tests.support.mitm import Mitmdump
from tests.support.piai_model import piai_parse
from tests.support.proxied import proxied
from tests.support.streams import EXEC_ARGS, READ_ARGS, Stream, interleaved, tool_delta
from tests.support.upstream import RecordingUpstream, sse_reply

TWO = [("read", READ_ARGS), ("exec", EXEC_ARGS)]


def text_stream() -> Stream:
    return Stream().chunk({"role": "assistant", "content": ""}).chunk({"content": "tok "}).chunk({}, "stop").done()


def _zlib_pieces(events: list[bytes], wbits: int) -> list[bytes]:
    c = zlib.compressobj(wbits=wbits)
    return [c.compress(e) + c.flush(zlib.Z_SYNC_FLUSH) for e in events] + [c.flush()]


def _brotli_pieces(events: list[bytes]) -> list[bytes]:
    c = brotli.Compressor()
    return [c.process(e) + c.flush() for e in events] + [c.finish()]


def _zstd_pieces(events: list[bytes]) -> list[bytes]:
    c = zstandard.ZstdCompressor().compressobj()
    return [c.compress(e) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK) for e in events] + [c.flush()]


COMPRESSORS = {
    "gzip": lambda events: _zlib_pieces(events, 31),
    "deflate": lambda events: _zlib_pieces(events, 15),
    "br": _brotli_pieces,
    "zstd": _zstd_pieces,
}


def compressed_reply(encoding: str, events: list[bytes], **kwargs):
    pieces = [p for p in COMPRESSORS[encoding](events) if p]
    reply = sse_reply(pieces, **kwargs)
    reply.headers["content-encoding"] = encoding
    return reply


def scenario(request):
    kind, _, arg = request.headers.get("x-scenario", "normal").partition(":")
    if kind == "slow_first_byte":
        return sse_reply(text_stream().events, header_delay=30)
    if kind == "compressed":
        return compressed_reply(arg, interleaved(TWO).events, gap=0.02)
    if kind == "compressed_stall":
        return compressed_reply(arg, Stream().chunk({"role": "assistant", "content": "tok"}).events, hold_open=30)
    if kind == "past_buffer_limit":  # a call bigger than the buffer limit, then text every 0.5 s
        s = Stream().chunk({"role": "assistant", "content": ""}).chunk(tool_delta(0, "functions.read:0", "read", ""))
        s.chunk(tool_delta(0, arguments='{"path": "' + "a" * 3000 + '"}'))
        for i in range(6):
            s.chunk({"content": f"tok{i} "})
        return sse_reply(s.chunk({}, "stop").done().events, gap=0.5)
    if kind == "done_then_reset":
        return sse_reply(text_stream().events, hold_open=0.2, reset_after=len(text_stream().events))
    return sse_reply(text_stream().events)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    with proxied(scenario, tmp_path_factory.mktemp("guarantees"), OPTIONS) as p:
        yield p


def captured(proxy, name: str, timeout: float = 10.0) -> list:
    """The flows of the proxy's capture sent with `x-scenario: name`, once the capture holds one (it is
    written after the response ends, while the proxy keeps running and appending to it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            [path] = proxy.capture_files()
            found = [f for f in proxy.read_flows(path) if f.request.headers.get("x-scenario") == name]
        except (ValueError, exceptions.FlowReadException):  # no file yet, or a record still being written
            found = []
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def post(proxy, name: str, content: bytes, headers: dict[str, str] | None = None, timeout: float = 10.0):
    headers = {"content-type": "application/json", "x-scenario": name, **(headers or {})}
    start = time.monotonic()
    r = httpx.post(f"{proxy.url}/v1/chat/completions", content=content, headers=headers, timeout=timeout)
    return r, time.monotonic() - start


# -- 6: the guarantees do not depend on the body parsing -----------------------------------------

UNPARSABLE = {
    "nan": (b'{"model":"kimi","stream":true,"temperature":NaN,"messages":[{"role":"user","content":"hi"}]}', {}),
    "invalid_utf8": (b'{"model":"kimi","stream":true,"messages":[{"role":"user","content":"\xff\xfe"}]}', {}),
    "undecodable_gzip": (orjson.dumps(REQUEST), {"content-encoding": "gzip"}),  # says gzip, is not
}


@pytest.mark.parametrize("body", UNPARSABLE)
def test_an_unparsable_request_still_gets_the_first_byte_timeout(proxy, body):
    content, headers = UNPARSABLE[body]
    r, elapsed = post(proxy, "slow_first_byte", content, headers)
    assert r.status_code == 504 and r.json()["error"]["type"] == "upstream_timeout"
    assert FIRST_BYTE <= elapsed < FIRST_BYTE + 3
    assert proxy.upstream.requests[-1].body == content  # forwarded byte for byte


# -- 7: compressed SSE ----------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", COMPRESSORS)
def test_a_compressed_stream_is_decoded_repaired_and_captured(proxy, encoding):
    r, _ = post(proxy, f"compressed:{encoding}", orjson.dumps(REQUEST))
    assert r.status_code == 200 and "content-encoding" not in r.headers
    assert [c[1] for c in piai_parse(r.content)["calls"]] == ["read", "exec"]  # repaired: the two calls whole
    [flow] = captured(proxy, f"compressed:{encoding}")
    record = flow.metadata["kimiwire"]
    assert delivered_body(flow) == r.content
    assert flow.response.content == interleaved(TWO).body()  # the upstream's stream, readable
    assert record["upstream_content_encoding"] == encoding


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_a_compressed_stream_that_stalls_is_ended_by_the_idle_timeout(proxy, encoding):
    r, elapsed = post(proxy, f"compressed_stall:{encoding}", orjson.dumps(REQUEST))
    assert r.content.startswith(b"data: ") and r.content.endswith(b"data: [DONE]\n\n")
    assert b"upstream_idle_timeout" in r.content
    assert IDLE <= elapsed < IDLE + 3


def test_a_stream_past_the_buffer_limit_is_not_cut_by_the_idle_timeout(tmp_path):
    # Passed through from the limit on; its bytes still count as activity (3 s of 0.5 s gaps, idle 1.5 s).
    with proxied(scenario, tmp_path, {**OPTIONS, "kimi_stream_buffer_limit": 1024}) as p:
        r, elapsed = post(p, "past_buffer_limit", orjson.dumps(REQUEST))
    assert b"upstream_idle_timeout" not in r.content and r.content.endswith(b"data: [DONE]\n\n")
    assert b"tok5" in r.content and elapsed > 2.5


# -- 8: [DONE], then the upstream tears the connection -------------------------------------------


def test_done_then_a_torn_connection_reaches_httpx_as_a_clean_end(proxy):
    r, _ = post(proxy, "done_then_reset", orjson.dumps(REQUEST))  # raises on a torn body
    assert r.content == text_stream().body()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_done_then_a_torn_connection_reaches_curl_as_a_clean_end(proxy):
    done = subprocess.run(
        ["curl", "-sS", "-N", "--max-time", "10", "-H", "content-type: application/json", "-H",
         "x-scenario: done_then_reset", "--data-binary", orjson.dumps(REQUEST).decode(),
         f"{proxy.url}/v1/chat/completions"],
        capture_output=True, timeout=20,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == text_stream().body()


NODE_FETCH = """
const r = await fetch(process.argv[1], {method: "POST", headers: {"content-type": "application/json",
  "x-scenario": "done_then_reset"}, body: process.argv[2]});
try { process.stdout.write(await r.text()); } catch (e) { process.stdout.write("ERROR " + e.message); }
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_done_then_a_torn_connection_reaches_node_fetch_as_a_clean_end(proxy):
    done = subprocess.run(
        ["node", "--input-type=module", "-e", NODE_FETCH, f"{proxy.url}/v1/chat/completions",
         orjson.dumps(REQUEST).decode()],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert b"terminated" not in done.stdout and done.stdout == text_stream().body(), done.stdout + done.stderr


# -- 9: the decoded request size is bounded -------------------------------------------------------


def gzip_bomb(inflated: int) -> bytes:
    c = zlib.compressobj(1, wbits=31)
    head = b'{"model":"kimi","stream":true,"messages":[{"role":"user","content":"'
    block = b"a" * (1 << 20)
    parts = [c.compress(head)] + [c.compress(block) for _ in range(inflated >> 20)]
    return b"".join([*parts, c.compress(b'"}]}'), c.flush()])


def peak_rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_compressed_request_past_the_limit_is_refused_without_inflating_it(tmp_path):
    bomb = gzip_bomb(320 << 20)  # 320 MiB once inflated, 10x the default limit
    assert len(bomb) < 2 << 20
    with proxied(scenario, tmp_path, OPTIONS) as p:
        before = peak_rss_mb(p.pid)
        r, _ = post(p, "normal", bomb, {"content-encoding": "gzip"}, timeout=30)
        growth = peak_rss_mb(p.pid) - before
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert growth < 100, f"peak RSS grew by {growth:.0f} MB"
    assert not [q for q in p.upstream.requests if q.body == bomb]
    [flow] = p.read_flows(p.capture_files()[0])
    assert flow.metadata["kimiwire"]["ending"] == "request_too_large"


# -- the record says what happened ----------------------------------------------------------------


def stalled_reply(request):
    return sse_reply(
        Stream().chunk({"role": "assistant", "content": ""}).chunk({"content": "tok "}).events, hold_open=30
    )


def test_sigterm_ends_open_streams_cleanly_and_captures_what_the_client_received(tmp_path):
    received = bytearray()
    # Stopped by hand in the middle of a stream: mitmproxy itself may log a cancelled connection task
    # then, so this proxy is not under tests.support.mitm's check for a traceback-free exit.
    with RecordingUpstream(stalled_reply) as up:
        p = Mitmdump(up.url, tmp_path, {**OPTIONS, "kimi_idle_timeout": 60}).start()
        try:
            with (
                httpx.Client(timeout=10) as client,
                client.stream("POST", f"{p.url}/v1/chat/completions", json=REQUEST) as r,
            ):
                chunks = r.iter_raw()
                received += next(chunks)
                while b"tok " not in received:
                    received += next(chunks)
                assert p.stop() == 0  # SIGTERM while the stream is open
                for chunk in chunks:  # the body ends cleanly (a torn one raises httpx.RemoteProtocolError)
                    received += chunk
        finally:
            p.stop()
    # The stream was ended by the proxy as it stopped: an OpenAI-style error event, then [DONE].
    events = [e for e in bytes(received).split(b"\n\n") if e.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]"
    assert orjson.loads(events[-2][6:])["error"]["type"] == "proxy_shutdown"
    assert "kimiwire: shutting down: ending 1 open stream(s) cleanly" in p.output
    for path in [p.flows_path, *p.capture_files()]:
        [flow] = p.read_flows(path)
        record = flow.metadata["kimiwire"]
        assert delivered_body(flow) == bytes(received), path.name
        assert record["ending"] == "shutdown" and flow.marked and "ended=shutdown" in flow.comment


def test_flows_the_proxy_ended_are_marked_and_commented(tmp_path):
    from mitmproxy import flowfilter

    with proxied(stalled_reply, tmp_path, OPTIONS) as p:
        httpx.post(f"{p.url}/v1/chat/completions", json=REQUEST, timeout=10)
    [flow] = p.read_flows(p.capture_files()[0])
    assert flow.metadata["kimiwire"]["ending"] == "idle_timeout"
    assert flow.marked and "kimiwire: ended=idle_timeout" in flow.comment
    assert flowfilter.match("~comment ended", flow) and flowfilter.match("~marked", flow)

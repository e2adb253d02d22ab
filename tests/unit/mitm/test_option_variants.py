"""Option variants that only change what the addon decides, run in process on mitmproxy's test flows
(`taddons`, `tflow`) instead of a mitmdump per variant. The network path of each behaviour keeps its
real-mitmdump test: kimi_max_request_bytes in tests/e2e/test_e2e_request_limits.py (refused while the
body arrives) and tests/e2e/test_e2e_guarantees.py (a compressed bomb, default limit); captures in
tests/e2e/test_captures.py."""

import asyncio
import gzip

import orjson
import pytest
from kimiwire.mitm.addon import KimiWire
from mitmproxy import http
from mitmproxy.test import taddons, tutils

from tests.support.conversations import user
from tests.support.endings import REQUEST
from tests.support.in_process import chat_flow, run_request_hook


def test_the_request_limit_is_an_option():
    body = orjson.dumps({**REQUEST, "messages": [user("x" * 5000)]})
    small_gzipped = gzip.compress(orjson.dumps(REQUEST))
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        tctx.configure(kw, kimi_capture_dir="", kimi_max_request_bytes=4096)
        big = chat_flow(body)
        run_request_hook(kw, big)
        small = chat_flow(small_gzipped, content_encoding="gzip")
        run_request_hook(kw, small)
    assert big.response is not None and big.response.status_code == 413
    assert orjson.loads(big.response.content)["error"]["code"] == "request_too_large"
    assert small.response is None  # goes upstream
    assert orjson.loads(small.request.content)["messages"] == REQUEST["messages"]
    kw.request_worker.close()


@pytest.mark.parametrize("capture_dir", ["captures", ""])
def test_captures_off_when_the_option_is_empty(tmp_path, monkeypatch, capture_dir):
    """The default folder ("captures", under the working directory) gets the run's capture; an empty
    kimi_capture_dir writes none and makes no folder."""
    monkeypatch.chdir(tmp_path)
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        tctx.configure(kw, kimi_capture_dir=capture_dir)

        async def exchange() -> None:
            flow = chat_flow(orjson.dumps(REQUEST))
            pending = kw.request(flow)
            if pending is not None:
                await pending
            flow.response = tutils.tresp(
                content=b'{"choices": []}', headers=http.Headers(content_type="application/json")
            )
            kw.response(flow)
            if kw.capture_tasks:
                await asyncio.wait(set(kw.capture_tasks))

        asyncio.run(exchange())
        kw.done()
    captured = sorted(tmp_path.rglob("kimiwire-*.mitm"))
    if capture_dir:
        assert [p.parent for p in captured] == [tmp_path / "captures"]
    else:
        assert not captured and not (tmp_path / "captures").exists()
    kw.request_worker.close()

"""Option variants that only change what the addon decides, run in process on mitmproxy's test flows
(`taddons`, `tflow`) instead of a mitmdump per variant. The network path of each behaviour keeps its
real-mitmdump test: kimi_max_request_bytes in tests/e2e/test_e2e_request_limits.py (refused while the
body arrives) and tests/e2e/test_e2e_guarantees.py (a compressed bomb, default limit)."""

import asyncio
import gzip

import orjson
from kimiwire.mitm.addon import KimiWire
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

from tests.support.conversations import user
from tests.support.endings import REQUEST


def _chat_flow(content: bytes, **headers: str) -> http.HTTPFlow:
    req = tutils.treq(
        method=b"POST",
        path=b"/v1/chat/completions",
        content=content,
        headers=http.Headers(content_type="application/json", **headers),
    )
    flow = tflow.tflow(req=req)
    flow.live = True
    return flow


def _request_hook(kw: KimiWire, flow: http.HTTPFlow) -> None:
    """The `request` hook as mitmproxy runs it: on a loop, awaited when it returns a coroutine."""

    async def hook() -> None:
        pending = kw.request(flow)
        if pending is not None:
            await pending

    asyncio.run(hook())


def test_the_request_limit_is_an_option():
    body = orjson.dumps({**REQUEST, "messages": [user("x" * 5000)]})
    small_gzipped = gzip.compress(orjson.dumps(REQUEST))
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        tctx.configure(kw, kimi_capture_dir="", kimi_max_request_bytes=4096)
        big = _chat_flow(body)
        _request_hook(kw, big)
        small = _chat_flow(small_gzipped, content_encoding="gzip")
        _request_hook(kw, small)
    assert big.response is not None and big.response.status_code == 413
    assert orjson.loads(big.response.content)["error"]["code"] == "request_too_large"
    assert small.response is None  # goes upstream
    assert orjson.loads(small.request.content)["messages"] == REQUEST["messages"]
    kw.request_worker.close()

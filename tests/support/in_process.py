"""The addon's hooks driven in process (mitmproxy's test flows, no proxy): a live chat-completions
flow, and the `request` hook run as mitmproxy runs it."""

from __future__ import annotations

import asyncio
import time

from kimiwire.mitm.addon import KimiWire
from mitmproxy import http
from mitmproxy.test import tflow, tutils


def chat_flow(content: bytes, **headers: str) -> http.HTTPFlow:
    """A live POST to /v1/chat/completions with a JSON body (extra headers as keyword arguments)."""
    req = tutils.treq(
        method=b"POST",
        path=b"/v1/chat/completions",
        content=content,
        headers=http.Headers(content_type="application/json", **headers),
    )
    req.timestamp_start = time.time()  # (a retry budget counts from it)
    flow = tflow.tflow(req=req)
    flow.live = True
    return flow


def run_request_hook(kw: KimiWire, flow: http.HTTPFlow) -> bool:
    """The `request` hook as mitmproxy runs it: on a loop, awaited when it returns a coroutine. True
    when it did (the work went off the loop)."""

    async def hook() -> bool:
        pending = kw.request(flow)
        if pending is None:
            return False
        await pending
        return True

    return asyncio.run(hook())

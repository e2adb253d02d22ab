"""The benchmark's baseline: plain mitmproxy that streams SSE (without it mitmproxy buffers whole
event streams) and connects lazily like kimiwire does. Nothing else."""

from mitmproxy import ctx, http


def running() -> None:
    ctx.options.update(connection_strategy="lazy")


def responseheaders(flow: http.HTTPFlow) -> None:
    if flow.response is not None and flow.response.headers.get("content-type", "").startswith("text/event-stream"):
        flow.response.stream = True

"""mitmweb / mitmproxy contentviews for chat-completions flows (adapter: thin over
inspection/flow_views.py). A view picked by hand for a message it does not show says so."""

from __future__ import annotations

from typing import Any

import orjson
from mitmproxy import contentviews, http

from kimiwire.inspection.flow_views import attempts_raw_view, request_view, response_view, wrong_view
from kimiwire.wire import chat_exchanges


def _record(metadata: contentviews.Metadata) -> dict[str, Any]:
    flow = metadata.flow
    record = flow.metadata.get("kimiwire") if flow is not None else None
    return record if isinstance(record, dict) else {}


def _is_chat_path(metadata: contentviews.Metadata) -> bool:
    flow = metadata.flow
    return isinstance(flow, http.HTTPFlow) and flow.request.path.split("?", 1)[0].rstrip("/").endswith(
        "/chat/completions"
    )


class KimiResponseContentview(contentviews.Contentview):
    """A chat-completions response assembled: the attempts when it was retried, then reasoning,
    content, tool calls, finish_reason, usage; what the client received if kimiwire changed it,
    the repairs and how it ended."""

    name = "Kimi Response"
    syntax_highlight = "yaml"

    def prettify(self, data: bytes, metadata: contentviews.Metadata) -> str:
        if not isinstance(metadata.http_message, http.Response):
            return wrong_view(self.name, "this is a request", "choose the Kimi Request view (or auto) for it")
        flow = metadata.flow
        client_request, started = b"", None
        if isinstance(flow, http.HTTPFlow):
            client_request = flow.request.get_content(strict=False) or b""
            started = flow.request.timestamp_start
        return response_view(data, metadata.content_type or "", _record(metadata), client_request, started)

    def render_priority(self, data: bytes, metadata: contentviews.Metadata) -> float:
        if not isinstance(metadata.http_message, http.Response):
            return -1
        content_type = metadata.content_type or ""
        if chat_exchanges.is_event_stream(content_type) and b"data:" in data[:4096]:
            return 2 if _is_chat_path(metadata) or b'"choices"' in data[:8192] else -1
        if chat_exchanges.is_json(content_type) and _is_chat_path(metadata) and b'"choices"' in data[:65536]:
            return 2
        if _record(metadata).get("attempts") and _is_chat_path(metadata):
            return 2  # a retried flow whose recorded response is an error: its attempts are the story
        return -1


class KimiRequestContentview(contentviews.Contentview):
    """A chat-completions request: each message, its tool-call ids, and the ids kimiwire rewrote."""

    name = "Kimi Request"
    syntax_highlight = "yaml"

    def prettify(self, data: bytes, metadata: contentviews.Metadata) -> str:
        if not isinstance(metadata.http_message, http.Request):
            return wrong_view(self.name, "this is a response", "choose the Kimi Response view (or auto) for it")
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            return wrong_view(self.name, "the body is not JSON", f"{exc}; choose the Raw view")
        return request_view(body, _record(metadata))

    def render_priority(self, data: bytes, metadata: contentviews.Metadata) -> float:
        if not isinstance(metadata.http_message, http.Request) or not _is_chat_path(metadata):
            return -1
        return 2 if b'"messages"' in data else -1


class KimiAttemptsRawContentview(contentviews.Contentview):
    """Each attempt's body exactly as the upstream sent it (picked by hand: never auto)."""

    name = "Kimi Attempts Raw"
    syntax_highlight = "none"

    def prettify(self, data: bytes, metadata: contentviews.Metadata) -> str:
        return attempts_raw_view(_record(metadata))

    def render_priority(self, data: bytes, metadata: contentviews.Metadata) -> float:
        return -1


def register() -> None:
    contentviews.add(KimiResponseContentview)
    contentviews.add(KimiRequestContentview)
    contentviews.add(KimiAttemptsRawContentview)

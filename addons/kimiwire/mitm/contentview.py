"""mitmweb / mitmproxy contentviews for chat-completions flows (adapter: thin over presentation)."""

from __future__ import annotations

from typing import Any

import orjson
from mitmproxy import contentviews, http

from kimiwire.inspection.assembled import assemble
from kimiwire.inspection.presentation import render_repairs, render_request, render_response
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
    """A chat-completions response assembled: reasoning, content, tool calls, finish_reason,
    usage; then what the client received if kimiwire changed it, and the repairs."""

    name = "Kimi Response"
    syntax_highlight = "yaml"

    def prettify(self, data: bytes, metadata: contentviews.Metadata) -> str:
        content_type = metadata.content_type or ""
        parts = [render_response(assemble(data, content_type), "as the upstream sent it")]
        record = _record(metadata)
        delivered = record.get("delivered")
        if isinstance(delivered, bytes) and delivered and delivered != data:
            parts.append(render_response(assemble(delivered, content_type), "as the client received it"))
        if record:
            parts.append(render_repairs(record.get("repairs") or [], "response"))
            if record.get("ending"):
                parts.append(f"ending: {record['ending']}")
        return "\n\n".join(parts)

    def render_priority(self, data: bytes, metadata: contentviews.Metadata) -> float:
        if not isinstance(metadata.http_message, http.Response):
            return -1
        content_type = metadata.content_type or ""
        if chat_exchanges.is_event_stream(content_type) and b"data:" in data[:4096]:
            return 2 if _is_chat_path(metadata) or b'"choices"' in data[:8192] else -1
        if chat_exchanges.is_json(content_type) and _is_chat_path(metadata) and b'"choices"' in data[:65536]:
            return 2
        return -1


class KimiRequestContentview(contentviews.Contentview):
    """A chat-completions request: each message, its tool-call ids, and the ids kimiwire rewrote."""

    name = "Kimi Request"
    syntax_highlight = "yaml"

    def prettify(self, data: bytes, metadata: contentviews.Metadata) -> str:
        body = orjson.loads(data)
        if not isinstance(body, dict):
            raise ValueError("not a chat-completions request")
        record = _record(metadata)
        parts = [render_request(body, record.get("repairs") or [])]
        if record:
            parts.append(render_repairs(record.get("repairs") or [], "request"))
        return "\n\n".join(parts)

    def render_priority(self, data: bytes, metadata: contentviews.Metadata) -> float:
        if not isinstance(metadata.http_message, http.Request) or not _is_chat_path(metadata):
            return -1
        return 2 if b'"messages"' in data else -1


def register() -> None:
    contentviews.add(KimiResponseContentview)
    contentviews.add(KimiRequestContentview)

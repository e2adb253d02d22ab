"""Which HTTP exchanges are chat-completions calls (plain data, no mitmproxy types)."""

from __future__ import annotations

HEALTH_PATH = "/_kimiwire/health"  # answered by the proxy itself (load balancers' health checks)


def is_health_check(method: str, path: str, health_path: str) -> bool:
    return bool(health_path) and method.upper() in ("GET", "HEAD") and path.split("?", 1)[0] == health_path


def is_chat_completions(method: str, path: str, content_type: str) -> tuple[bool, str | None]:
    """(is it a chat-completions call we repair, why not when it looks like one but is not)."""
    if method.upper() != "POST":
        return False, None
    if not path.split("?", 1)[0].rstrip("/").endswith("/chat/completions"):
        return False, None
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        return False, f"content type {content_type or '(none)'!r} is not JSON"
    return True, None


def is_event_stream(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")

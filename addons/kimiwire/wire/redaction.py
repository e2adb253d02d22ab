"""Secrets never reach captures or logs: these header values are replaced."""

from __future__ import annotations

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "api-key", "x-api-key", "cookie", "set-cookie"})
REDACTED = "[redacted by kimiwire]"


def redact_header_fields(
    fields: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...],
) -> list[tuple[bytes, bytes]]:
    """Secret header values replaced in mitmproxy's serialized header list ((name, value) bytes pairs)."""
    return [
        (name, REDACTED.encode() if name.decode("latin-1").lower() in SECRET_HEADERS else value)
        for name, value in fields
    ]

"""Secrets never reach captures or logs: these header values are replaced."""

from __future__ import annotations

from collections.abc import MutableMapping

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "api-key", "x-api-key", "cookie", "set-cookie"})
REDACTED = "[redacted by kimiwire]"


def redact_headers(headers: MutableMapping[str, str]) -> int:
    """Redact secret headers in place (any case); returns how many were redacted."""
    names = [name for name in headers if name.lower() in SECRET_HEADERS]
    for name in names:
        headers[name] = REDACTED
    return len(names)


def redact_header_fields(
    fields: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...],
) -> list[tuple[bytes, bytes]]:
    """The same for mitmproxy's serialized header lists (name, value) of bytes."""
    return [
        (name, REDACTED.encode() if name.decode("latin-1").lower() in SECRET_HEADERS else value)
        for name, value in fields
    ]

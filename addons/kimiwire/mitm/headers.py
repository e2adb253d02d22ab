"""Header reads and writes straight on `Headers.fields` (a tuple of (name, value) bytes pairs).

The hooks read and change a few headers of every flow; mitmproxy's `Headers.get`, `__setitem__`
and `pop` walk the fields once per call with several Python calls per field, which showed up as
a large part of the hooks' CPU. These give the same results as the mitmproxy calls they replace.
"""

from __future__ import annotations

from collections.abc import Collection

from mitmproxy import http


def read_headers(headers: http.Headers, names: Collection[bytes]) -> dict[bytes, str]:
    """`headers.get(name)` for each of `names` (lowercase) that is present, in one pass: the
    values of a name folded with ", ", as mitmproxy folds them."""
    found: dict[bytes, str] = {}
    for key, value in headers.fields:
        key = key.lower()
        if key in names:
            text = value.decode("utf-8", "surrogateescape")
            found[key] = f"{found[key]}, {text}" if key in found else text
    return found


def set_header(headers: http.Headers, name: bytes, value: bytes) -> None:
    """`headers[name] = value`: the first field of that name (lowercase) takes the value and keeps
    its spelling, later ones are removed; without one, the field is appended."""
    fields: list[tuple[bytes, bytes]] = []
    placed = False
    for field in headers.fields:
        if field[0].lower() == name:
            if not placed:
                fields.append((field[0], value))
                placed = True
        else:
            fields.append(field)
    if not placed:
        fields.append((name, value))
    headers.fields = tuple(fields)


def append_header(headers: http.Headers, name: bytes, value: bytes) -> None:
    """`headers[name] = value` for a name the headers do not hold (`read_headers` said so)."""
    headers.fields = (*headers.fields, (name, value))


def remove_header(headers: http.Headers, name: bytes) -> None:
    """`headers.pop(name, None)` for a lowercase name."""
    fields = headers.fields
    kept = tuple(field for field in fields if field[0].lower() != name)
    if len(kept) != len(fields):
        headers.fields = kept


def set_body(message: http.Message, body: bytes) -> None:
    """`message.content = body`. Without a content-encoding there is nothing to encode: the body
    is stored as it is and content-length set unless a transfer-encoding frames the message."""
    transfer_encoding = False
    for key, _ in message.headers.fields:
        key = key.lower()
        if key == b"content-encoding":
            message.content = body  # mitmproxy encodes it (or drops an encoding it cannot apply)
            return
        if key == b"transfer-encoding":
            transfer_encoding = True
    message.raw_content = body
    if not transfer_encoding:
        set_header(message.headers, b"content-length", str(len(body)).encode())

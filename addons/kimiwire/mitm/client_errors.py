"""Telling the client's mistakes from the upstream's failures, and how error answers name the upstream.

mitmproxy runs the `error` hook for both. A request refused before it was whole (both
Content-Length and Transfer-Encoding, a CONNECT in reverse mode, a malformed chunked body) is the
client's mistake: mitmproxy answers it 400 itself, and an SDK must not retry it as it retries a 5xx.
Such a request never reached the `request` hook, so mitmproxy never stamped its end
(`Request.timestamp_end` is set when the whole body has been read, before that hook).
"""

from __future__ import annotations

import re

from mitmproxy import http

# How Python's socket errors, which mitmproxy's error messages quote, write an address: ('host', port).
_ADDRESS_TUPLE = re.compile(r"\(\s*'[^']*'\s*,\s*\d+\s*(?:,[^)]*)?\)")


def is_client_error(flow: http.HTTPFlow) -> bool:
    """The flow failed before its request was whole: nothing went upstream on the proxy's behalf."""
    return flow.request.timestamp_end is None


def upstream_name(flow: http.HTTPFlow, with_address: bool) -> str:
    """'the upstream', or 'the upstream scheme://host:port' when the operator chose to show addresses
    (kimi_error_names_upstream): error answers go to clients, who need not learn the network behind
    the proxy."""
    if not with_address:
        return "the upstream"
    request = flow.request
    return f"the upstream {request.scheme}://{request.pretty_host}:{request.port}"


def upstream_cause(flow: http.HTTPFlow, message: str, with_address: bool) -> str:
    """mitmproxy's error message for an error answer: as it is when addresses may be shown, otherwise
    with the upstream's host, port and any quoted socket address replaced by 'the upstream'."""
    if with_address:
        return message
    text = _ADDRESS_TUPLE.sub("(the upstream)", message)
    names = {flow.request.host, flow.request.pretty_host}
    if flow.server_conn.address:
        names.add(str(flow.server_conn.address[0]))
    for name in sorted((n for n in names if n), key=len, reverse=True):
        text = re.sub(rf"{re.escape(name)}(?::\d+)?", "the upstream", text)
    return text

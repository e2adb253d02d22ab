"""A malformed client request is the client's mistake: mitmproxy's 400 reaches the client, never
an upstream error (which SDKs would retry) naming an address; error answers name the upstream's
address only when kimi_error_names_upstream is on."""

import socket

import pytest
from kimiwire.mitm import client_errors
from mitmproxy.test import tflow

from tests.support.endings import OPTIONS
from tests.support.proxied import proxied
from tests.support.upstream import TEXT_COMPLETION, json_reply

BODY = b'{"model": "kimi", "messages": [{"role": "user", "content": "hi"}]}'
MALFORMED = {
    "content_length_and_chunked": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: client.example:9999\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\ntransfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), len(BODY), BODY)
    ),
    "connect_in_reverse_mode": b"CONNECT client.example:9999 HTTP/1.1\r\nHost: client.example:9999\r\n\r\n",
}


def _exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(raw)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    return received


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    with proxied(lambda request: json_reply(TEXT_COMPLETION), tmp_path_factory.mktemp("client-errors"), OPTIONS) as p:
        yield p


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request_is_answered_400_as_mitmproxy_does(proxy, case):
    answer = _exchange(proxy.port, MALFORMED[case])
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b"client.example" not in answer and b"failed before responding" not in answer
    assert not [r for r in proxy.upstream.requests if r.method != "POST" or r.body == BODY]


def test_error_answers_name_the_upstream_only_when_asked():
    flow = tflow.tflow()
    assert client_errors.upstream_name(flow, False) == "the upstream"
    assert client_errors.upstream_name(flow, True) == "the upstream http://address:22"
    assert not client_errors.is_client_error(flow)  # its request is whole: an upstream failure is the upstream's
    flow.request.timestamp_end = None
    assert client_errors.is_client_error(flow)


def test_error_causes_lose_the_upstream_address_unless_asked():
    flow = tflow.tflow()
    flow.server_conn.address = ("10.1.2.3", 8000)
    flow.request.host = "10.1.2.3"
    cause = "Multiple exceptions: [Errno 111] Connect call failed ('10.1.2.3', 8000), [Errno 99] ('::1', 8000, 0, 0)"
    hidden = client_errors.upstream_cause(flow, cause, False)
    assert "10.1.2.3" not in hidden and "8000" not in hidden and "::1" not in hidden
    assert "Connect call failed" in hidden
    assert client_errors.upstream_cause(flow, "Server 10.1.2.3:8000 closed", False) == "Server the upstream closed"
    assert client_errors.upstream_cause(flow, cause, True) == cause

"""kimi_max_request_bytes is enforced while the body arrives, on every path: a declared length over
the limit is answered 413 before any of the body is read, a chunked body is refused once it passes
the limit; nothing reaches the upstream, and the proxy does not keep the body."""

import time

import httpx
import pytest

from tests.support.endings import OPTIONS
from tests.support.proxied import proxied
from tests.support.upstream import TEXT_COMPLETION, json_reply

LIMIT = 1 << 20
PIECE = b"x" * 65536


def _chunks(total: int):
    sent = 0
    while sent < total:
        yield PIECE
        sent += len(PIECE)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    options = {**OPTIONS, "kimi_max_request_bytes": LIMIT}
    with proxied(lambda request: json_reply(TEXT_COMPLETION), tmp_path_factory.mktemp("limits"), options) as p:
        yield p


def _assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text[:300]
    error = response.json()["error"]
    assert error["code"] == "request_too_large" and str(LIMIT) in error["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_over_the_limit_is_refused_while_it_arrives(proxy, path, framing):
    before = len(proxy.upstream.requests)
    headers = {"content-type": "application/json"}
    content = b"{" + b" " * (8 * LIMIT) + b"}" if framing == "content-length" else _chunks(8 * LIMIT)
    start = time.monotonic()
    response = httpx.post(f"{proxy.url}{path}", content=content, headers=headers, timeout=20)
    _assert_refused(response)
    assert time.monotonic() - start < 5
    assert len(proxy.upstream.requests) == before  # nothing went upstream


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_within_the_limit_goes_upstream_whole(proxy, framing):
    body = b'{"model": "kimi", "messages": [{"role": "user", "content": "' + b"y" * (LIMIT // 2) + b'"}]}'
    content = body if framing == "content-length" else iter([body[:1000], body[1000:]])
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions", content=content, headers={"content-type": "application/json"}, timeout=20
    )
    assert response.status_code == 200, response.text[:300]
    assert proxy.upstream.requests[-1].body == body


def test_refusals_are_counted(proxy):
    stats = httpx.get(f"{proxy.url}/_kimiwire/health", timeout=5).json()
    assert stats["refused_too_large"] >= 1

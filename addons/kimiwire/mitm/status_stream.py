"""A streamed request whose first attempt failed before an answer, retried as it comes.

A retryable error status (429, 5xx) (429, 5xx): the client
gets the headers of a first-time success at once (`200 OK`, `text/event-stream`, no
content-length), the error body is held for the record, and the retry streams into the open body
as it comes (mitm/retry.py), with comments while the client waits. Decided when the error's
headers come (`responseheaders`), the only moment the client's status line is still free; when
no retry can be made (not watched, no retries left, the budget or Retry-After too long), the error
goes to the client as it came. No other mitmproxy use than the response object."""

from __future__ import annotations

from mitmproxy import http

from kimiwire.mitm.headers import remove_header, set_header
from kimiwire.wire.retry.policy import RETRY_STATUSES, RetryPolicy, decide


class HeldError:
    """The flow's stream callable while the error body arrives: kept, nothing sent."""

    def __init__(self, status: int, reason: str, headers: list[tuple[bytes, bytes]], retry_after: float | None) -> None:
        self.status = status
        self.retry_after = retry_after
        self.reason = reason
        self.headers = headers  # the upstream's, for the record
        self.body = bytearray()

    def __call__(self, data: bytes) -> list[bytes]:
        if len(self.body) < 1024 * 1024:  # an error body; more is not kept
            self.body += data
        return []


def will_retry(policy: RetryPolicy, status: int, elapsed: float, retry_after: float | None) -> bool:
    """Whether the retry of a first attempt that answered `status` will be made (jitter 0: the
    shortest backoff; a longer one is checked again by the attempt loop)."""
    if status not in RETRY_STATUSES or not policy.active:
        return False
    return decide(policy, "status", 1, elapsed, 0.0, retry_after).retry


def hold_for_retry(response: http.Response, http_version: bytes, retry_after: float | None) -> HeldError:
    """Turn the error's response into the stream a first-time success would have started."""
    held = HeldError(response.status_code, response.reason, list(response.headers.fields), retry_after)
    response.status_code = 200
    response.reason = "OK"
    response.headers = http.Headers([(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")])
    remove_header(response.headers, b"content-length")
    if http_version == b"HTTP/1.1":
        set_header(response.headers, b"transfer-encoding", b"chunked")
    response.stream = held
    return held

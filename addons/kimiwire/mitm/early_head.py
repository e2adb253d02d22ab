"""An early head for a streaming client while the upstream sends no response headers.

Before the upstream's headers nothing could go to the client (its status is not known yet), so a
streaming client heard nothing for up to kimi_first_byte_timeout. For a streamed chat request
from an HTTP/1 client, after kimi_keepalive seconds without upstream headers the client is sent
a `200 OK` event-stream head (chunked) and then a comment every kimi_keepalive seconds
(`proxy_internals.send_early_head`, `send_raw_to_client`). What follows goes on in that stream:
- the upstream's event stream, repaired as ever (its own head never reaches the client);
- a retryable error status: held and retried into the stream (status_stream.py);
- any other answer that is not an event stream: `LateAnswer` below turns it into events
  (wire/retry/early_answer.py);
- a stall or a connection failure before headers: retried into the same stream (the error hook's
  live retry), or ended with the error event and [DONE].
HTTP/2 clients are not given one (their stream's HEADERS frame is mitmproxy's to send).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mitmproxy import http

from kimiwire.mitm import proxy_internals
from kimiwire.mitm.flow_record import FlowRecord
from kimiwire.wire.retry.early_answer import MAX_BODY, events_for_answer
from kimiwire.wire.stream_endings import KEEPALIVE_COMMENT

logger = logging.getLogger("kimiwire")

_COMMENT_CHUNK = b"%x\r\n%s\r\n" % (len(KEEPALIVE_COMMENT), KEEPALIVE_COMMENT)


class EarlyHead:
    """One flow's wait for the upstream's headers: the head, then comments, until `stop()`."""

    def __init__(
        self, flow: http.HTTPFlow, record: FlowRecord, interval: float, on_comment: Callable[[], None]
    ) -> None:
        self.flow = flow
        self.record = record  # gets `early_head: True` once the head went out
        self.interval = interval
        self.on_comment = on_comment
        self.sent = False  # the client has our head
        self.late: LateAnswer | None = None  # an answer that came after it and is not an event stream
        self.comments = 0
        self._stopped = False
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._due)

    def stop(self) -> None:
        """The upstream's headers came, or the flow's error path took over: no more comments
        from here (a send under way finishes: it is one whole chunk)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def pending(self) -> bool:
        return self._timer is not None or (self._task is not None and not self._task.done())

    def _due(self) -> None:
        self._timer = None
        if not self._stopped and self.flow.live and self.flow.response is None:
            self._task = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        try:
            if self._stopped:
                return
            if not self.sent:
                outcome = await proxy_internals.send_early_head(self.flow)
                if outcome.kind is not proxy_internals.SendKind.SENT:
                    logger.debug("kimiwire: no early head: %s", outcome)
                    return
                self.sent = True
                self.record.early_head_sent()
                outcome = await proxy_internals.send_raw_to_client(self.flow, _COMMENT_CHUNK)  # body bytes at once
                if outcome.kind is not proxy_internals.SendKind.SENT:
                    return
            else:
                outcome = await proxy_internals.send_raw_to_client(self.flow, _COMMENT_CHUNK)
                if outcome.kind is not proxy_internals.SendKind.SENT:
                    return
            self.comments += 1
            self.on_comment()
        except Exception:
            logger.exception("kimiwire: the early head failed")
            return
        if not self._stopped:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._due)


class LateAnswer:
    """The stream callable of an upstream answer that came after an early head and is not an event
    stream: kept (bounded), then delivered as events at its end."""

    def __init__(self, status: int, content_type: str, repair: Callable[[bytes], bytes]) -> None:
        self.status = status
        self.content_type = content_type
        self.repair = repair  # a chat completion's repair (returns the body as it came on failure)
        self.body = bytearray()
        self.delivered = b""
        self.ended = False

    def __call__(self, data: bytes) -> list[bytes]:
        # Never an empty chunk mid-stream: on a chunked body it would be the terminator.
        if data:
            if len(self.body) < MAX_BODY:
                self.body += data[: MAX_BODY - len(self.body)]
            return []
        self.ended = True
        body = bytes(self.body)
        if 200 <= self.status < 300:
            body = self.repair(body)
        self.delivered = b"".join(events_for_answer(self.status, self.content_type, body))
        return [self.delivered]

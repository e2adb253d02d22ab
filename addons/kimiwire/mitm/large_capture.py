"""A large flow's capture record, made off the event loop and off the proxy's GIL where it counts.

Redaction parses the bodies as JSON (the client's request and the body sent upstream): orjson holds
the GIL for a whole document, and the streams on the loop wait for it. Bodies from PROCESS_BYTES
are redacted in a worker process of their own (bytes there, None back when nothing was secret, which is nearly
always); the flow's state is then built with those answers and encoded (tnetstring, pure Python that
lets the GIL go every switch interval) in the worker thread. The record is appended on the loop, as
every other. When the worker process fails, or kimi_worker_processes is off, the thread redacts those
bodies itself: the record is whole either way.
"""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import http

from kimiwire.mitm.capture import saved_state
from kimiwire.mitm.request_worker import Raised, RequestWorker
from kimiwire.wire.capture.redaction import KnownRedactions, Redactor, redacted_bodies
from kimiwire.wire.codecs import tnetstring

logger = logging.getLogger("kimiwire")


async def encoded_record(
    worker: RequestWorker,
    flow: http.HTTPFlow,
    client_request: dict[str, Any] | None,
    upstream_headers: Any,
    upstream_body: bytes | None,
    redactor: Redactor,
) -> bytes | Raised:
    """The flow's capture record, encoded (`saved_state` with the same arguments, as tnetstring)."""
    bodies: list[bytes] = []
    answers: list[bytes | None] = []
    for body in _redacted_bodies_of(flow, client_request):
        if not worker.captures_in_process(len(body)):
            continue
        # One body per call: pickling the call for the worker holds the GIL while it copies.
        answer = await worker.captures.run(redacted_bodies, redactor, [body])
        if isinstance(answer, Raised):
            logger.warning("kimiwire: capture redaction in the worker process failed (%r); done here", answer.error)
            continue
        bodies.append(body)
        answers += answer
    known = KnownRedactions(redactor, bodies, answers)
    return await worker.run(_encoded, flow, client_request, upstream_headers, upstream_body, known)


def _redacted_bodies_of(flow: http.HTTPFlow, client_request: dict[str, Any] | None) -> list[bytes]:
    """The bodies `saved_state` gives to `Redactor.json_body`: the client's and the one sent upstream."""
    found = []
    client_body = client_request.get("content") if isinstance(client_request, dict) else flow.request.raw_content
    if isinstance(client_body, bytes):
        found.append(client_body)
    record = flow.metadata.get("kimiwire")
    sent = record.get("upstream_request") if isinstance(record, dict) else None
    if isinstance(sent, bytes) and sent is not client_body:
        found.append(sent)
    return found


def _encoded(
    flow: http.HTTPFlow,
    client_request: dict[str, Any] | None,
    upstream_headers: Any,
    upstream_body: bytes | None,
    redactor: Redactor,
) -> bytes:
    return tnetstring.dumps(saved_state(flow, client_request, upstream_headers, upstream_body, redactor))

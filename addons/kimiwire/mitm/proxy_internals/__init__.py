"""The only package that touches mitmproxy's private proxy core (verified on 12.2.x).

mitmproxy gives an addon no public way to end a streamed response while the upstream is silent,
nor to write to a client while its flow waits in a hook, nor to count a request body as it arrives,
nor to answer an upstream failure with anything but its own HTML error page, nor to answer a client before
the upstream's headers came. Five techniques, each in its module; `core` holds what they share (the
private imports and the check that they fit, finding a flow's place in the layer tree, and a synthetic
event that runs a step inside the flow's HttpLayer, serialized with every real IO event):

1. Ending a stream (`stream_end`): one synthetic event is fed into the flow's connection handler.
   Inside the HttpLayer it plays the upstream connection: the upstream parser is detached from the
   stream, then `ResponseEndOfMessage` makes mitmproxy itself call `stream(b"")` (the repairer's
   flush), run the `response` hook and end the client body (chunked terminator or HTTP/2
   END_STREAM; an HTTP/1 client connection stays open for its next request, as after any
   response); then the upstream is cancelled (HTTP/1 connection closed, HTTP/2 RST_STREAM on that
   stream). Every precondition is checked inside that event, serialized with real IO.
2. Writing to a client while its flow waits in the `response` hook (retries; `client_writes`):
   once the upstream body has ended, mitmproxy calls `stream(b"")`, then awaits the `response`
   hook, and only then ends the client's body. The same synthetic event, run inside the HttpLayer,
   sends `ResponseData` for the flow's stream straight to the client connection's layer (chunked
   on HTTP/1, DATA frames on HTTP/2); only the HttpStream waits for the hook, not the HttpLayer.
3. Error answers (`error_answers`): a client connection for which kimiwire registers an answer
   gets its own `send` (the Http1Server instance's attribute over the class's method), so that a
   protocol error there sends that answer (an OpenAI-style JSON error before the response started,
   or the closing events of a stream already under way), then ends the response as mitmproxy ends
   any (`Http1Server.mark_done`), so the connection serves the client's next request: a pooled
   client sends it there at once, and a connection closed under a head without `connection: close`
   would reset it. Other connections keep mitmproxy's send untouched.
4. Counting a request body as it arrives (`request_body`): the flow's HttpStream gets its own
   `_handle_event` (the instance's attribute over the class's method) that counts `RequestData`
   and, past a limit, answers the client itself and discards the rest (mitmproxy's
   `body_size_limit` would apply to every response too; and an answer followed by mitmproxy's
   CloseConnection while the client was still writing left the socket ESTABLISHED with a full
   receive queue, seen with `ss`, so the client blocked until its own write timeout instead of
   reading the answer).
5. An early head (`early_heads`, sent by `client_writes`): an HTTP/1 client of a streamed request
   still waiting for the upstream's headers is sent a `200 OK` event-stream head (chunked) from
   inside the HttpLayer, and its Http1Server gets that head as its `response` (so mitmproxy frames
   every later `ResponseData` as chunks and ends the body with the chunked terminator) and the
   answering `send`, which also drops the `ResponseHeaders` of that stream when the upstream's
   head comes: the client has had its head.

When a precondition fails, callers fall back to closing the connections at once, so a client
errors promptly instead of hanging.
"""

from kimiwire.mitm.proxy_internals.client_writes import (
    SendKind,
    SendOutcome,
    send_early_head,
    send_raw_to_client,
    send_to_client,
)
from kimiwire.mitm.proxy_internals.core import VERIFIED_VERSIONS, Outcome, problems, usable
from kimiwire.mitm.proxy_internals.early_heads import early_head, early_heads, forget_early_head
from kimiwire.mitm.proxy_internals.error_answers import (
    FALLBACK,
    ErrorAnswer,
    can_answer,
    forget_error_answer,
    install_error_answers,
    pending_error_answers,
    set_error_answer,
)
from kimiwire.mitm.proxy_internals.request_body import limit_request_body
from kimiwire.mitm.proxy_internals.stream_end import (
    EndKind,
    EndOutcome,
    close_connections,
    close_upstream,
    end_stream,
)

__all__ = [
    "FALLBACK",
    "VERIFIED_VERSIONS",
    "EndKind",
    "EndOutcome",
    "ErrorAnswer",
    "Outcome",
    "SendKind",
    "SendOutcome",
    "can_answer",
    "close_connections",
    "close_upstream",
    "early_head",
    "early_heads",
    "end_stream",
    "forget_early_head",
    "forget_error_answer",
    "install_error_answers",
    "limit_request_body",
    "pending_error_answers",
    "problems",
    "send_early_head",
    "send_raw_to_client",
    "send_to_client",
    "set_error_answer",
    "usable",
]

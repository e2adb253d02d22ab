"""scripts/replay's core must deliver what the live addon delivered for the same exchange."""

import orjson
from kimiwire.inspection.rerun import rerun_exchange
from kimiwire.wire.request.repair import repair_request_body
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.servers.policy import Flavor, Policy

from tests.support import streams
from tests.support.conversations import TOOLS, assistant, user
from tests.support.streams import EXEC_ARGS, READ_ARGS

POLICY = Policy.build(Flavor.SELFHOSTED)
UPSTREAM = streams.interleaved([("read", READ_ARGS), ("exec", EXEC_ARGS)]).body()


def live_delivery(client_request: bytes) -> bytes:
    """What the addon does live: request facts are recorded even when the request is left alone."""
    facts = repair_request_body(client_request, POLICY).facts
    repairer = StreamRepairer(facts, POLICY)
    return b"".join([*repairer.feed(UPSTREAM), *repairer.end()])


def test_rerun_repairs_the_stream_even_when_the_request_was_left_alone():
    nameless = {"id": "x", "type": "function", "function": {"arguments": "{}"}}
    request = orjson.dumps({"model": "k", "stream": True, "tools": TOOLS, "messages": [user(), assistant(nameless)]})
    assert repair_request_body(request, POLICY).skipped  # unrepairable: forwarded unchanged
    result = rerun_exchange(request, 200, "text/event-stream", UPSTREAM, POLICY)
    assert result.upstream_request == request
    assert result.delivered == live_delivery(request) != UPSTREAM


def test_rerun_of_a_request_that_is_not_json():
    result = rerun_exchange(b"{not json", 200, "text/event-stream", UPSTREAM, POLICY)
    assert result.delivered == live_delivery(b"{not json") != UPSTREAM

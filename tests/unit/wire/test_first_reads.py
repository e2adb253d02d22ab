"""A stream's first reads take the full path; an event it leaves unchanged goes out as the upstream
wrote it, in any layout (json.dumps's spaces, escaped non-ASCII), never re-encoded."""

import json

from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.servers.policy import Flavor, Policy

POLICY = Policy.build(Flavor.SELFHOSTED)  # think tags split, markup recovered
BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "kimi-k2"}


def spaced(delta: dict, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return b"data: " + json.dumps({**BASE, "choices": [choice]}).encode() + b"\n\n"


def test_the_first_content_the_think_splitter_gives_back_goes_out_as_sent():
    repairer = StreamRepairer(RequestFacts(stream=True), POLICY)
    events = [spaced({"role": "assistant", "content": "Caf\u00e9 first"}), spaced({"content": " then more"})]
    assert b"\\u00e9" in events[0]  # json.dumps escapes it; orjson would not
    for data in events:
        assert repairer.feed(data) == [data]
    assert not repairer.log.entries  # nothing was repaired


def test_a_first_content_with_think_tags_is_still_split():
    repairer = StreamRepairer(RequestFacts(stream=True), POLICY)
    data = spaced({"role": "assistant", "content": "<think>hm</think>Hi"})
    out = b"".join(repairer.feed(data))
    assert out != data
    assert b'"reasoning_content":"hm"' in out and b'"content":"Hi"' in out

"""The tests' recording upstream: the simulator's scripted server (kimiwire.sim.scripted), which
records what it receives and answers each request with `responder(request) -> Reply`."""

from kimiwire.sim.scripted import RecordedRequest, Reply, ScriptedUpstream, json_reply, sse_reply

RecordingUpstream = ScriptedUpstream

# A plain JSON answer, for tests about what the upstream receives.
TEXT_COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "created": 1,
    "model": "kimi",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
}

__all__ = ["TEXT_COMPLETION", "RecordedRequest", "RecordingUpstream", "Reply", "json_reply", "sse_reply"]

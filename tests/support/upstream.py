"""The tests' recording upstream: the simulator's scripted server (kimiwire.sim.scripted), which
records what it receives and answers each request with `responder(request) -> Reply`."""

from kimiwire.sim.scripted import RecordedRequest, Reply, ScriptedUpstream, json_reply, sse_reply

RecordingUpstream = ScriptedUpstream

__all__ = ["RecordedRequest", "RecordingUpstream", "Reply", "json_reply", "sse_reply"]

"""A fallback upstream (`kimi_fallback_upstream`): a primary that never answers, a fallback that
does: the client gets the fallback's answer, the flow shows where it came from, the fallback gets
the client's Authorization or the key named by `kimi_fallback_key_env` (never logged or captured)."""

from __future__ import annotations

import openai

from tests.support.mitm import Mitmdump, free_port
from tests.support.proxied import proxied
from tests.support.streams import Stream
from tests.support.upstream import TEXT_COMPLETION, RecordingUpstream, Reply, json_reply, sse_reply

SCALE = 0.05
REQUEST = {"model": "kimi-k2", "messages": [{"role": "user", "content": "hi"}]}


def answer() -> Reply:
    stream = Stream(rid="chatcmpl-fb").chunk({"role": "assistant", "content": ""}).chunk({"content": "From B."})
    return sse_reply(stream.chunk({}, "stop").done().events)


def options(fallback: str, **more: str) -> dict[str, object]:
    return {"kimi_timeout_scale": str(SCALE), "kimi_fallback_upstream": fallback, **more}


def streamed_text(url: str, key: str = "sk-client") -> str:
    with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30) as client:
        stream = client.chat.completions.create(**REQUEST, stream=True)
        return "".join(choice.delta.content or "" for chunk in stream for choice in chunk.choices)


def test_a_primary_that_never_answers_is_answered_by_the_fallback(tmp_path):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with (
        RecordingUpstream(lambda request: answer()) as fallback,
        Mitmdump(down, tmp_path, options(fallback.url)) as proxy,
    ):
        assert streamed_text(proxy.url) == "From B."
    [seen] = fallback.requests
    assert seen.path == "/v1/chat/completions" and seen.headers["authorization"] == "Bearer sk-client"
    assert seen.json()["messages"] == REQUEST["messages"]
    [flow] = proxy.read_flows()
    record = flow.metadata["kimiwire"]
    assert record["fallback"] == fallback.url
    assert [a.get("upstream") for a in record["attempts"]] == [None, None, None, fallback.url]
    assert [a["outcome"] for a in record["attempts"]] == ["connect", "connect", "connect", "answered"]
    assert record["ending"] == "retried"
    assert f"fallback upstream {fallback.url}" in proxy.output


def test_a_silent_primary_streams_the_fallbacks_answer_into_the_early_head(tmp_path):
    with (
        RecordingUpstream(lambda request: answer()) as fallback,
        proxied(
            lambda request: Reply(header_delay=300 * SCALE), tmp_path, options(fallback.url), save_flows=False
        ) as proxy,
    ):
        assert streamed_text(proxy.url) == "From B."
        assert len(fallback.requests) == 1


def test_the_fallback_key_comes_from_the_environment_and_is_never_written(tmp_path, monkeypatch):
    monkeypatch.setenv("KIMIWIRE_TEST_FALLBACK_KEY", "sk-fallback-secret")
    down = f"http://127.0.0.1:{free_port()}"
    with (
        RecordingUpstream(lambda request: json_reply(TEXT_COMPLETION)) as fallback,
        Mitmdump(down, tmp_path, options(fallback.url, kimi_fallback_key_env="KIMIWIRE_TEST_FALLBACK_KEY")) as proxy,
        openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client", max_retries=0, timeout=30) as client,
    ):
        completion = client.chat.completions.create(**REQUEST)
    assert completion.choices[0].message.content == "hi"
    assert fallback.requests[0].headers["authorization"] == "Bearer sk-fallback-secret"
    assert "sk-fallback-secret" not in proxy.output
    written = b"".join(path.read_bytes() for path in [*proxy.capture_files(), proxy.flows_path])
    assert b"sk-fallback-secret" not in written

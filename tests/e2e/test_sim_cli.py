"""`scripts/sim` flags reach the simulator's settings (each one, by keyword), and the simulator
started by the shared launcher answers with them."""

from __future__ import annotations

import dataclasses
import re

import httpx
import orjson
from kimiwire import launch
from kimiwire.sim.__main__ import parse_args
from kimiwire.sim.settings import SimSettings

# one non-default value for every setting, as command-line flags
FLAGS = [
    "--port", "0", "--shape", "vllm", "--fragments", "2", "--interleave", "--reasoning-between", "--whole",
    "--no-reasoning", "--broken-history", "empty", "--fault", "done-open", "--delay", "0.5", "--hold", "3",
    "--answer-events", "7", "--leak", "consumed", "--held-call", "2", "--think", "block", "--stamp", "--run", "r1",
    "--served", "moonshotai/Kimi-K2.6", "--contract", "moonshot", "--replay", "turn.sse",
]  # fmt: skip


def test_every_setting_has_a_flag_that_reaches_it():
    settings, port, _ = parse_args(FLAGS)
    default = SimSettings()
    unchanged = [
        f.name for f in dataclasses.fields(SimSettings) if getattr(settings, f.name) == getattr(default, f.name)
    ]
    assert unchanged == [] and port == 0
    assert settings.answer_events == 7 and settings.stamp is True


def test_the_simulator_process_streams_with_answer_events_and_stamps():
    with launch.simulator(0, "--answer-events", "5", "--stamp", "--no-reasoning") as sim:
        body = {"model": "kimi-k2-thinking", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
        r = httpx.post(f"{sim.url}/v1/chat/completions", json=body, timeout=10)
    chunks = [orjson.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c.get("choices")]
    stamped = [c for c in contents if c and re.fullmatch(r"\S+ \[sent_at=\d+\]", c)]
    assert len(stamped) >= 5 and all("sent_at" not in c for c in chunks)


def test_the_simulator_replays_a_files_events_as_they_are(tmp_path):
    """`replay=NAME` answers a stream with the events of NAME in --replay-dir, byte for byte, each
    marker `[sent_at]` stamped with its send time; a name that is a path is refused."""
    events = [
        b'data: {"id": "x", "choices": [{"index": 0, "delta": {"content": "a[sent_at]"}, "finish_reason": null}]}\n\n',
        b'data: {"id":"x","choices":[{"index":0,"delta":{},"finish_reason":"stop","matched_stop":null}]}\n\n',
        b"data: [DONE]\n\n",
    ]
    (tmp_path / "turn.sse").write_bytes(b"".join(events))
    body = {"model": "kimi-k2-thinking", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    with launch.simulator(0, "--replay-dir", str(tmp_path)) as sim:
        r = httpx.post(f"{sim.url}/v1/chat/completions", json=body, headers={"x-kimi-sim": "replay=turn.sse,stamp"})
        refused = httpx.post(f"{sim.url}/v1/chat/completions", json=body, headers={"x-kimi-sim": "replay=../x"})
        missing = httpx.post(f"{sim.url}/v1/chat/completions", json=body, headers={"x-kimi-sim": "replay=none.sse"})
    stamped = re.sub(rb"\[sent_at=\d+\]", b"[sent_at]", r.content)
    assert r.status_code == 200 and stamped == b"".join(events) and r.content != stamped
    assert refused.status_code == missing.status_code == 400

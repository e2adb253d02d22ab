"""Benchmark streams in real servers' layouts (scripts/bench.py's layout rows).

Each layout's events are the engine corpus's own (tests/fixtures/engines/corpus.jsonl, the events
released vLLM and SGLang wheels write), with only their texts, call ids and argument fragments
changed and written back in the same layout (the corpus's events are compact JSON with UTF-8
text, which `json.dumps(separators=(",", ":"), ensure_ascii=False)` writes byte for byte again):
- vllm-0.10.2, vllm-0.13.0 (reasoning in both `reasoning` and `reasoning_content`, `token_ids:
  null`), vllm-0.20.0 (`reasoning`), vllm-0.34.0 (`kv_transfer_params: null`), sglang-0.5.5
  (`role`, `content`, `reasoning_content`, `tool_calls` null in every delta, `matched_stop`,
  `usage: null`), sglang-0.5.23;
- moonshot-like: vLLM 0.10.2's events with the simulator's Moonshot shape (no `logprobs`, usage
  inside the finishing choice, sim/shapes.py);
- gateway-spaced: SGLang 0.5.23's events written again with `json.dumps` defaults (`", "`, `": "`,
  \\u escapes), as a Python gateway in front of an engine writes them;
- agent-turn: an agent's turn in SGLang 0.5.23's layout: reasoning, text, then two tool calls
  whose arguments come in fragments of a few characters.

A text event carries the simulator's replay stamp marker, so the end-to-end rows time it.
"""

from __future__ import annotations

import copy
import json
import pathlib
import statistics
import time
from collections.abc import Callable
from typing import Any

from kimiwire.mitm.stream_callable import RepairingStream
from kimiwire.sim.replay import STAMP_MARK
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.response.reasoning_field import TEXT_KEYS
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.servers.policy import Flavor, Policy

from tests.support import engine_corpus

MARK = STAMP_MARK.decode()
LAYOUTS = (
    *("vllm-0.10.2", "vllm-0.13.0", "vllm-0.20.0", "vllm-0.34.0", "sglang-0.5.5", "sglang-0.5.23"),
    *("moonshot-like", "gateway-spaced"),
)
AGENT_TURN = "agent-turn"
TOOLS = RequestFacts(0, dict(engine_corpus.TOOLS), True, True)


class Exemplars:
    """One engine's events of each kind, from its corpus streams (split `1ch`)."""

    def __init__(self, engine: str, spaced: bool = False, moonshot: bool = False) -> None:
        cases = {case.scenario: case for case in engine_corpus.load() if case.engine == engine and case.split == "1ch"}
        text = self._events(cases["k25-text"])
        calls = self._events(cases["k25-two-calls"])
        self.spaced = spaced
        self.role = text[0]
        self.reasoning = next(e for e in text if self._text_key(e) not in (None, "content"))
        self.content = next(e for e in text if self._text_key(e) == "content")
        self.stop = next(e for e in text if e["choices"] and e["choices"][0].get("finish_reason"))
        self.call_head = next(e for e in calls if self._call(e) and self._call(e).get("id"))
        self.fragment = next(e for e in calls if self._call(e) and not self._call(e).get("id"))
        self.calls_finish = next(e for e in calls if e["choices"] and e["choices"][0].get("finish_reason"))
        if moonshot:  # sim/shapes.py's Moonshot shape: no logprobs, usage in the finishing choice
            for event in (self.role, self.reasoning, self.content, self.stop, self.call_head, self.fragment):
                event["choices"][0].pop("logprobs", None)
            for event in (self.stop, self.calls_finish):
                event["choices"][0].pop("logprobs", None)
                event["choices"][0]["usage"] = {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}

    @staticmethod
    def _events(case: engine_corpus.Case) -> list[dict[str, Any]]:
        return [json.loads(e[6:]) for e in case.sse.split(b"\n\n") if e.startswith(b"data: {")]

    @staticmethod
    def _text_key(event: dict[str, Any]) -> str | None:
        choices = event.get("choices") or []
        delta = choices[0].get("delta") or {} if choices else {}
        if choices and choices[0].get("finish_reason") is None and not delta.get("tool_calls"):
            for key in TEXT_KEYS:
                if type(delta.get(key)) is str and delta[key] and delta.get("role") is None:
                    return key
        return None

    @staticmethod
    def _call(event: dict[str, Any]) -> dict[str, Any] | None:
        choices = event.get("choices") or []
        calls = (choices[0].get("delta") or {}).get("tool_calls") if choices else None
        return calls[0] if calls else None

    def encode(self, event: dict[str, Any]) -> bytes:
        if self.spaced:
            return b"data: " + json.dumps(event).encode() + b"\n\n"
        return b"data: " + json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"

    def text(self, exemplar: dict[str, Any], text: str) -> bytes:
        event = copy.deepcopy(exemplar)
        delta = event["choices"][0]["delta"]
        for key in TEXT_KEYS:  # every copy of the text (vLLM 0.13 writes reasoning twice)
            if type(delta.get(key)) is str and delta[key]:
                delta[key] = text
        return self.encode(event)

    def call(self, index: int, name: str, fragments: list[str]) -> list[bytes]:
        head = copy.deepcopy(self.call_head)
        call = self._call(head)
        assert call is not None
        call.update(index=index, id=f"functions.{name}:{index}")
        call["function"]["name"] = name
        out = [self.encode(head)]
        for piece in fragments:
            event = copy.deepcopy(self.fragment)
            fragment = self._call(event)
            assert fragment is not None
            fragment["index"] = index
            fragment["function"]["arguments"] = piece
            out.append(self.encode(event))
        return out


def exemplars(layout: str) -> Exemplars:
    if layout == "moonshot-like":
        return Exemplars("vllm-0.10.2", moonshot=True)
    if layout in ("gateway-spaced", AGENT_TURN):
        return Exemplars("sglang-0.5.23", spaced=layout == "gateway-spaced")
    return Exemplars(layout)


def text_stream(layout: str, events: int) -> list[bytes]:
    """A role event, three reasoning events, `events` content events (each stamped), the finish."""
    ex = exemplars(layout)
    out = [ex.encode(ex.role)]
    out += [ex.text(ex.reasoning, f"thinking {i} ") for i in range(3)]
    out += [ex.text(ex.content, f"tok {MARK}") for _ in range(events)]
    return [*out, ex.encode(ex.stop), b"data: [DONE]\n\n"]


def agent_turn(events: int) -> list[bytes]:
    """`events` stamped text events (two thirds reasoning, a third text), then two calls whose
    arguments come in fragments of three characters, about as many events again."""
    ex = exemplars(AGENT_TURN)
    reasoning = events * 2 // 3
    out = [ex.encode(ex.role)]
    out += [ex.text(ex.reasoning, f"step {i} {MARK}") for i in range(reasoning)]
    out += [ex.text(ex.content, f"word {MARK}") for _ in range(events - reasoning)]
    for index, (name, key) in enumerate((("read", "path"), ("exec", "command"))):
        arguments = json.dumps({key: "/srv/project/" + "x" * max(1, events * 3 // 2 - 30)})
        out += ex.call(index, name, [arguments[k : k + 3] for k in range(0, len(arguments), 3)])
    return [*out, ex.encode(ex.calls_finish), b"data: [DONE]\n\n"]


def stream(name: str, events: int) -> list[bytes]:
    return agent_turn(events) if name == AGENT_TURN else text_stream(name, events)


def write_replays(directory: pathlib.Path, events_per_stream: list[int]) -> dict[tuple[str, int], str]:
    """Every row's stream as a replay file of the simulator: (row, events) -> file name."""
    names = {}
    for row in (*LAYOUTS, AGENT_TURN):
        for events in events_per_stream:
            name = f"{row}-{events}.sse"
            (directory / name).write_bytes(b"".join(stream(row, events)))
            names[(row, events)] = name
    return names


# -- in process ------------------------------------------------------------------------------------


def per_event_us(events: list[bytes], fast: bool, facts: RequestFacts, total: int = 20_000) -> float:
    """Microseconds per event of the `flow.response.stream` callable (RepairingStream, its steady
    lane included) fed `events` one read each, streams repeated up to `total` events. CPU time of
    this process: on a shared machine wall time also counts the time other processes had the core."""
    policy = Policy.build(Flavor.SELFHOSTED)
    streams = max(1, total // len(events))
    clock: Callable[[], float] = time.monotonic
    start = time.process_time()
    for _ in range(streams):
        repairer = StreamRepairer(facts, policy)
        repairer.fast_path = fast
        call = RepairingStream(repairer, clock=clock)
        for event in events:
            call(event)
        call(b"")
    return (time.process_time() - start) / (streams * len(events)) * 1e6


def in_process(rounds: int = 5, total: int = 20_000) -> dict[str, dict[str, float]]:
    """Per row: the callable's µs per event on the fast path and on the full path alone (median of
    `rounds`, alternated), and the share of events the fast path took, with the corpus's tools
    declared (as agents do) and without."""
    out: dict[str, dict[str, float]] = {}
    for row in (*LAYOUTS, AGENT_TURN):
        events = [e.replace(STAMP_MARK, b"") for e in stream(row, 300)]
        figures: dict[str, float] = {}
        for label, facts in (("tools", TOOLS), ("no_tools", RequestFacts(0, {}, True, True))):
            fast, full = [], []
            for _ in range(rounds):
                fast.append(per_event_us(events, True, facts, total))
                full.append(per_event_us(events, False, facts, total))
            figures[f"fast_us_{label}"] = statistics.median(fast)
            figures[f"full_us_{label}"] = statistics.median(full)
            figures[f"fast_share_{label}"] = fast_share(events, facts)
        out[row] = figures
    return out


def fast_share(events: list[bytes], facts: RequestFacts) -> float:
    """The share of `events` (one read each) that took the fast path or the steady lane."""
    repairer = StreamRepairer(facts, Policy.build(Flavor.SELFHOSTED))
    call = RepairingStream(repairer)
    taken = 0
    for event in events:
        before = call.calls
        call(event)
        taken += call.calls == before
    call(b"")
    return taken / len(events)

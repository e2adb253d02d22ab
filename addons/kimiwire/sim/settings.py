"""Simulator settings: shape, fragmentation, model behaviour and transport faults.

Set by command-line flags (the defaults) and per request by the header
`x-kimi-sim: shape=vllm, interleave, fault=stall:3` or a model-name suffix
`kimi-k2-thinking@shape=vllm,interleave`, so one running simulator serves every test.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal, get_args

from .replay import NAME as REPLAY_NAME

Shape = Literal["sglang", "vllm", "moonshot", "deepinfra"]
BrokenHistory = Literal["markup", "empty", "off"]
# How a server's tool parsing fails on a turn with calls (sources in shapes.py).
Leak = Literal[
    "none",
    "consumed",
    "consumed-functions",
    "in-arguments",
    "untooled",
    "k3-tools",
    "k3-answer-in-reasoning",
    "resend",
    "cut-call",
]
# How reasoning reaches the client when the engine's reasoning parser does not split it.
Think = Literal["field", "prefilled", "block"]
# Request validation before the model answers: off, or moonshot (Moonshot's 400s, moonshot_validator.py).
Contract = Literal["off", "moonshot"]
SHAPES: tuple[Shape, ...] = get_args(Shape)
BROKEN_HISTORY: tuple[BrokenHistory, ...] = get_args(BrokenHistory)
LEAKS: tuple[Leak, ...] = get_args(Leak)
THINKS: tuple[Think, ...] = get_args(Think)
CONTRACTS: tuple[Contract, ...] = get_args(Contract)


@dataclass(frozen=True)
class SimSettings:
    shape: Shape = "sglang"
    fragments: int = 4  # argument fragments per tool call
    interleave: bool = False  # parallel calls' fragments interleaved (idx0, idx1, idx0, ...)
    reasoning_between: bool = False  # a reasoning delta between argument fragments
    whole: bool = False  # every call whole, in one chunk
    reasoning: bool = True
    broken_history: BrokenHistory = "markup"  # what a model fed non-canonical ids does: markup | empty | off
    # none | stall:N | done-open | reset:N | status:CODE | slow-first-byte:SECONDS, or a turn fault
    # that fails the first N attempts of a turn (see TURN_FAULTS): empty:N, status:CODE:N, ...
    fault: str = "none"
    delay: float = 0.0  # seconds between events
    hold: float = 300.0  # how long stall and done-open keep the connection
    answer_events: int = 0  # > 0: text answers are this many one-token content events (benchmarks)
    stamp: bool = False  # end every event's text with its send time, `[sent_at=NS]` (benchmarks)
    leak: Leak = "none"  # one of LEAKS (shapes.py says what each is and who reported it)
    held_call: float = 0.0  # seconds of silence before the first tool-call chunk (vllm PR #50627)
    think: Think = "field"  # field: its own field | prefilled: content ending `</think>` | block: `<think>…</think>`
    contract: Contract = "off"  # off | moonshot: refuse what Moonshot's API refuses, with its 400 messages
    run: str = ""  # a tag that only separates the attempt counts of otherwise identical requests
    served: str = "moonshotai/Kimi-K2-Thinking"  # the model GET /v1/models lists (its family)
    replay: str = ""  # a file of --replay-dir: a stream answers with its events as they are (sim/replay.py)

    def with_overrides(self, text: str) -> SimSettings:
        """Apply `key=value` / `flag` items separated by commas or semicolons."""
        changes: dict[str, object] = {}
        kinds = {f.name: f.type for f in fields(self)}
        for item in text.replace(";", ",").split(","):
            item = item.strip()
            if not item:
                continue
            key, _, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if key not in kinds:
                raise ValueError(f"unknown simulator setting {key!r}")
            kind = kinds[key]
            if kind in ("bool", bool):
                changes[key] = value.strip().lower() not in ("0", "false", "no", "off") if value else True
            elif kind in ("int", int):
                changes[key] = int(value)
            elif kind in ("float", float):
                changes[key] = float(value)
            else:
                changes[key] = value.strip()
        result = replace(self, **changes)  # type: ignore[arg-type]
        result.validate()
        return result

    def validate(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SHAPES)}")
        if self.broken_history not in BROKEN_HISTORY:
            raise ValueError(f"broken_history must be one of {', '.join(BROKEN_HISTORY)}")
        if self.leak not in LEAKS:
            raise ValueError(f"leak must be one of {', '.join(LEAKS)}")
        if self.contract not in CONTRACTS:
            raise ValueError(f"contract must be one of {', '.join(CONTRACTS)}")
        if self.think not in THINKS:
            raise ValueError(f"think must be one of {', '.join(THINKS)}")
        kind, _, argument = self.fault.partition(":")
        if kind in TURN_FAULTS or (kind == "status" and argument.count(":") == 1):
            turn_fault(self.fault)
        elif kind not in ("none", "stall", "done-open", "reset", "status", "slow-first-byte"):
            raise ValueError(f"unknown fault {self.fault!r}")
        elif kind in ("stall", "reset", "status"):
            int(argument)
        if kind == "slow-first-byte":
            float(argument)
        if self.replay and not REPLAY_NAME.fullmatch(self.replay):
            raise ValueError("replay must be a plain file name")
        if self.fragments < 1:
            raise ValueError("fragments must be at least 1")


# Faults that fail the first N attempts of a turn (attempts counted per identical request), then
# let it answer; each as the server that reported it sends it (render it in that shape).
TURN_FAULTS = {
    "empty": "sglang#23341, MoonshotAI/Kimi-K2.5#9 (SGLang): role chunk, finish stop with matched_stop, usage only",
    "reasoning-only": "vllm-ascend#9361, vllm#33654 (vLLM): reasoning, then stop with no content and no call",
    "empty-tool-arrays": "vllm#54701 (vLLM 0.19, streams only): only `tool_calls: []` deltas, finish tool_calls",
    "status": "status:CODE:N: an OpenAI-style error with HTTP CODE (429 with Retry-After: 0)",
    "refuse": "the connection is reset before any response",
    "stall-first": "headers and the role chunk, then nothing (the connection stays open)",
    "silent": "no response headers at all (the connection stays open for `hold`, then closes)",
    "headers-stall": "the DeepInfra/Kimi-K2.5 report: headers, then nothing (non-streamed: as silent)",
    "reasoning-stall": "headers, the role chunk and reasoning, then nothing (non-streamed: as silent)",
    "invalid-call": "anomalyco/opencode#37297 (vLLM, K2.6): Kimi markup nested in a call's arguments",
    "schema-violation": "MoonshotAI/K2-Vendor-Verifier: arguments that are JSON but break the declared schema",
}


def turn_fault(fault: str) -> tuple[str, int, int]:
    """(kind, failing attempts N, status code or 0) of a turn fault; ("none", 0, 0) for others."""
    kind, _, argument = fault.partition(":")
    if kind == "status":
        code, _, count = argument.partition(":")
        if not count:
            return "none", 0, 0
        return kind, int(count), int(code)
    if kind not in TURN_FAULTS:
        return "none", 0, 0
    return kind, int(argument or 1), 0


def settings_for_request(defaults: SimSettings, header: str | None, model: str | None) -> SimSettings:
    settings = defaults
    if model and "@" in model:
        settings = settings.with_overrides(model.split("@", 1)[1])
    if header:
        settings = settings.with_overrides(header)
    return settings

"""The upstream shapes of the harness matrix: one entry each.

A shape is the simulator's settings for every request of the run (`sim`, the `x-kimi-sim` syntax:
see addons/kimiwire/sim/settings.py and shapes.py for what each setting plays and its public
source), the kimiwire options that upstream needs (its flavor), and one line saying what it
reproduces. A new simulator behaviour (a leak kind, a turn fault, a validating mode) is a new entry
here; an upstream that is not the simulator (a recorded engine stream, a validating server) gives
`upstream`, a factory of a context manager with `.url` and `.recorded()` (the request bodies)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol


class Upstream(Protocol):
    url: str

    def recorded(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Shape:
    name: str
    sim: str  # simulator settings, `key=value, flag, ...`
    reproduces: str
    proxy: dict[str, str] = field(default_factory=dict)  # kimiwire options this upstream needs
    upstream: Callable[[], AbstractContextManager[Upstream]] | None = None  # None: the simulator


# Every shape streams its calls the hardest realistic way the server does: two parallel calls with
# fragments interleaved (where deltas carry an index) and a reasoning delta between fragments.
_HARD = "interleave, reasoning_between, fragments=5"

SHAPES: tuple[Shape, ...] = (
    Shape(
        "sglang",
        f"shape=sglang, {_HARD}",
        "SGLang K2: interleaved parallel calls, reasoning between argument fragments, `functions.NAME:N` ids",
    ),
    Shape(
        "vllm",
        f"shape=vllm, {_HARD}",
        "vLLM K2: the same, reasoning as `reasoning`, first tool delta without `arguments`",
    ),
    Shape(
        "moonshot",
        "shape=moonshot, reasoning_between, fragments=5",
        "Moonshot's API: tool deltas without `index`, ids `NAME:N`, usage inside the choice",
        proxy={"kimi_flavor": "moonshot"},
    ),
    Shape(
        "leaked-markup",
        "shape=sglang, leak=consumed",
        "K2.6 router that consumed the section markers: calls arrive as `NAME:N<|tool_call_argument_begin|>{..}` text",
    ),
    Shape(
        "empty-turn",
        f"shape=sglang, {_HARD}, fault=empty:1",
        "SGLang empty turn (sglang#23341): the first attempt of every turn ends with nothing",
    ),
    Shape(
        "stall",
        f"shape=sglang, {_HARD}, fault=stall-first:1, hold=60",
        "headers and the role chunk, then 60 s of silence, on the first attempt of every turn",
    ),
)

BY_NAME = {shape.name: shape for shape in SHAPES}

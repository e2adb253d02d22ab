"""A capture holding one chat flow of each kind a user meets in mitmweb: made by mitmdump with the
kimiwire addon in front of the simulator, the way `./scripts/run` makes them.

Timeouts are the defaults scaled by one factor (SCALE), so their ratios stay those of the defaults."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Any

import httpx
from kimiwire.sim.server import SimulatorThread
from kimiwire.sim.settings import SimSettings

from tests.support.conversations import TOOLS, assistant, call, tool, user
from tests.support.proxied import proxied

SCALE = 1 / 60  # of every default timeout, retry budget and backoff (kimi_timeout_scale): their ratios kept
OPTIONS = {"kimi_timeout_scale": f"{SCALE:g}"}


@dataclass(frozen=True)
class FlowKind:
    name: str
    sim: str  # the simulator's per-request settings (x-kimi-sim)
    task: str = "read /w/a.txt"
    stream: bool = True
    history: list[dict[str, Any]] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        messages = [user(self.task), *self.history]
        return {"model": "kimi-k2-thinking", "messages": messages, "tools": TOOLS, "stream": self.stream}


KINDS = (
    FlowKind("fragmented", "shape=sglang, fragments=5, interleave", "read /w/a.txt and read /w/b.txt"),
    FlowKind(
        "mangled_ids",
        "shape=sglang",
        "read /w/a.txt then read /w/b.txt",
        history=[assistant(call("functionsread0", "read", {"path": "/w/a.txt"})), tool("functionsread0", "A")],
    ),
    FlowKind("empty_retried", "shape=sglang, fault=empty:1"),
    FlowKind("status_retried", "shape=sglang, fault=status:503:1"),
    FlowKind("retries_exhausted", "shape=sglang, fault=empty:5"),
    FlowKind("leaked_markup", "shape=sglang, leak=consumed"),
    FlowKind("markup_in_arguments", "shape=vllm, leak=in-arguments"),
    FlowKind("idle_timeout", "shape=sglang, fault=stall:6, hold=30", "read /w/a.txt and read /w/b.txt"),
    FlowKind("reasoning_only_retried", "shape=vllm, fault=reasoning-only:1", stream=False),
    FlowKind("think_tags", "shape=vllm, think=block"),
)


def make_capture(tmp_path: pathlib.Path) -> pathlib.Path:
    """Send one request of each kind through mitmdump + kimiwire; return the capture file."""
    with (
        SimulatorThread(SimSettings()) as sim,
        proxied(sim, tmp_path, OPTIONS, save_flows=False) as proxy,
        httpx.Client(timeout=30) as client,
    ):
        for number, kind in enumerate(KINDS):
            client.post(
                f"{proxy.url}/v1/chat/completions",
                json=kind.body(),
                headers={"x-kimi-sim": f"{kind.sim}, run=kind{number}"},
            )
    [capture] = proxy.capture_files()
    return capture


def read_kinds(capture: pathlib.Path) -> dict[str, Any]:
    """The capture's flows by kind name (in the order they were sent)."""
    from mitmproxy import io

    with open(capture, "rb") as f:
        flows = list(io.FlowReader(f).stream())
    assert len(flows) == len(KINDS), [f.request.path for f in flows]
    return {kind.name: flow for kind, flow in zip(KINDS, flows, strict=True)}

"""Never worse than direct, with real clients: every client below runs the simulator's
multi-round tool task on every server shape, once straight at the simulator and once through
`mitmdump -s addons/kimi.py`. Through kimiwire every cell finishes with the exact arguments; direct,
a cell fails only where the table below (and docs/clients.md) says, with that symptom.

pi-ai, the other real client, has its own direct/through tests in test_real_clients.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kimiwire.sim.server import SimulatorThread

from tests.support.client_matrix import NODE_VARIANTS, PYTHON_CLIENTS, Report, run_node_cells
from tests.support.clients import EXPECTED_ANSWER, EXPECTED_TOOL_RUNS, tool_runs
from tests.support.proxied import proxied

SHAPES = {
    "sglang": "shape=sglang",
    "sglang-interleaved": "shape=sglang,interleave",
    "sglang-reasoning-between": "shape=sglang,reasoning_between",
    "sglang-whole": "shape=sglang,whole",
    "vllm": "shape=vllm",
    "vllm-interleaved": "shape=vllm,interleave",
    "vllm-reasoning-between": "shape=vllm,reasoning_between",
    "moonshot": "shape=moonshot",
    "moonshot-reasoning-between": "shape=moonshot,reasoning_between",
    "deepinfra": "shape=deepinfra",
    "deepinfra-interleaved": "shape=deepinfra,interleave",
    "deepinfra-reasoning-between": "shape=deepinfra,reasoning_between",
}
CLIENTS = [*PYTHON_CLIENTS, *NODE_VARIANTS]
ROUTES = ("direct", "kimiwire")

GUIDES = ("openai-py-guide", "openai-node-guide")
MOONSHOT = ("moonshot", "moonshot-reasoning-between")
VLLM = ("vllm", "vllm-interleaved", "vllm-reasoning-between")
GUIDE_DOUBLED = 'call 0: read {"path":"/w/a.txt"}{"path":"/w/a.txt"}'
GUIDE_MERGED = 'call 1: read {"path":"/w/b.txt"}{"command":"ls -la /w"}'
# (client, shape) -> a piece of the cell's symptom (see `symptom`) without kimiwire: the client bugs
# kimiwire fixes. Moonshot's tool deltas have no `index`, vLLM's first tool delta no `arguments`,
# and a server that sends a call whole in its first delta has the guide's code double it.
DIRECT_FAILURES: dict[tuple[str, str], str] = {
    **{(guide, "sglang-whole"): GUIDE_DOUBLED for guide in GUIDES},
    **{
        ("openai-py-guide", s): "TypeError: unsupported operand type(s) for +=: 'NoneType' and 'NoneType'" for s in VLLM
    },
    **{("openai-node-guide", s): 'call 0: read NaN{"path":"/w/a.txt"}' for s in VLLM},
    **{(guide, s): GUIDE_MERGED for guide in GUIDES for s in MOONSHOT},
    **{("openai-py-stream", s): "TypeError: list indices must be integers or slices, not NoneType" for s in MOONSHOT},
    **{
        (c, s): "stopped: tool_calls; 0 of 4 calls ran"
        for c in ("openai-node-stream", "openai-node-runTools")
        for s in MOONSHOT
    },
    **{("langchain", s): "error: invalid_tool_calls" for s in MOONSHOT},
    **{("litellm", s): 'call 1: exec {"path":"/w/b.txt"}{"command":"ls -la /w"}' for s in MOONSHOT},
    **{("ai-sdk", s): "call 2: exec {}" for s in MOONSHOT},
}

_reports: dict[tuple[str, str, str], Report] = {}


@pytest.fixture(scope="module")
def urls(tmp_path_factory):
    """Where each route reaches the one simulator: straight, or through mitmdump with the addon."""
    options = {
        "kimi_idle_timeout": 2,
        "kimi_first_byte_timeout": 2,
        "kimi_first_event_timeout": 2,
        "kimi_done_grace": 0.3,
    }
    with (
        SimulatorThread() as sim,
        proxied(sim, tmp_path_factory.mktemp("matrix"), options, save_flows=False) as proxy,
    ):
        yield {"direct": sim.url, "kimiwire": proxy.url}


def cell_report(client: str, shape: str, route: str, urls: dict[str, str]) -> Report:
    """The cell's report; a Node client runs all of its cells in one process the first time one is asked for."""
    key = (client, shape, route)
    if key not in _reports:
        if client in PYTHON_CLIENTS:
            _reports[key] = PYTHON_CLIENTS[client](urls[route], SHAPES[shape])
        else:
            package = NODE_VARIANTS[client][0]
            cells = {
                f"{c}|{s}|{r}": (c, s, r)
                for c, (p, _) in NODE_VARIANTS.items()
                if p == package
                for s in SHAPES
                for r in ROUTES
            }
            reports = run_node_cells(
                package,
                [(cell_id, urls[r], SHAPES[s], NODE_VARIANTS[c][1]) for cell_id, (c, s, r) in cells.items()],
            )
            for cell_id, cell in cells.items():
                _reports[cell] = reports[cell_id]
    return _reports[key]


def finished_exactly(report: Report) -> bool:
    return (
        tool_runs(report) == EXPECTED_TOOL_RUNS
        and report["outcome"] == "answered"
        and report["finalText"] == EXPECTED_ANSWER
    )


def symptom(report: Report) -> str:
    """How a cell went wrong: its outcome, then the first tool run that differs from the task's."""
    runs: list[Any] = tool_runs(report)
    wrong = next(
        ((i, run) for i, run in enumerate(runs) if i >= len(EXPECTED_TOOL_RUNS) or run != EXPECTED_TOOL_RUNS[i]), None
    )
    text = report["outcome"]
    if wrong is not None:
        index, (name, arguments) = wrong
        text += f"; call {index}: {name} {arguments if isinstance(arguments, str) else json.dumps(arguments)}"
    elif len(runs) < len(EXPECTED_TOOL_RUNS):
        text += f"; {len(runs)} of {len(EXPECTED_TOOL_RUNS)} calls ran"
    if report["outcome"] == "answered" and report["finalText"] != EXPECTED_ANSWER:
        text += f"; answer {report['finalText']!r}"
    return text


CELLS = [pytest.param(client, shape, id=f"{client}-{shape}") for client in CLIENTS for shape in SHAPES]


@pytest.mark.parametrize(("client", "shape"), CELLS)
def test_through_kimiwire_every_client_finishes_with_exact_arguments(client, shape, urls):
    report = cell_report(client, shape, "kimiwire", urls)
    assert finished_exactly(report), symptom(report)


@pytest.mark.parametrize(("client", "shape"), CELLS)
def test_direct_cells_fail_only_where_documented(client, shape, urls):
    report = cell_report(client, shape, "direct", urls)
    expected = DIRECT_FAILURES.get((client, shape))
    if expected is None:
        assert finished_exactly(report), symptom(report)
    else:
        assert not finished_exactly(report)
        assert expected in symptom(report)

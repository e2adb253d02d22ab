"""The engine corpus (tests/fixtures/engines/corpus.jsonl, made by scripts/engine_corpus.py from the
Kimi parsers of released vLLM and SGLang wheels): each stream as the engine sent it, the model
output's ground truth, and what a client assembles from it directly or through kimiwire."""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass
from typing import Any

from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.request.repair import facts_from_body
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.servers.policy import Flavor, Policy

from tests.support.piai_model import guide_accumulate, piai_parse
from tests.support.sse_reading import content, finish_reasons

CORPUS = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "engines" / "corpus.jsonl"
TOOLS = {
    "read": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    "exec": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    "write": {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}},
}
PIAI_STOP = {"stop": "stop", "tool_calls": "toolUse", "length": "length"}
# With several tokens in one engine step, these releases never send part of the model's output:
# SGLang 0.5.5's Kimi detector and vLLM 0.10.2-0.13's Kimi tool parser drop or mangle the text or arguments
# that share a step with a marker token (the end of the text before the tool section, the end of
# a call's arguments), vLLM 0.13/0.20's reasoning parser the end of the reasoning that shares a
# step with `</think>`. No proxy can deliver bytes it never got, so for these the test asserts
# what can be: nothing invented, no cut call to run (finish `length`), never worse than direct.
ENGINE_LOST = {
    ("sglang-0.5.5", "k25-one-call"),
    ("sglang-0.5.5", "k25-no-reasoning-parser"),
    *(("vllm-0.10.2", s) for s in ("k2-one-call", "k25-two-calls", "k25-nested-args", "k25-off-one-call")),
    *(
        ("vllm-0.13.0", s)
        for s in (
            "k25-text",
            "k25-one-call",
            "k2-one-call",
            "k25-two-calls",
            "k25-nested-args",
            "k25-cut-call",
            "k25-no-reasoning-parser",
            "k25-off-one-call",
        )
    ),
    *(("vllm-0.20.0", s) for s in ("k25-text", "k25-one-call", "k25-two-calls", "k25-nested-args", "k25-cut-call")),
}
ENGINE_LOST_SPLIT = "4tok-steps"


@dataclass(frozen=True)
class Case:
    engine: str
    scenario: str
    split: str
    model: str
    thinking: bool
    truth: dict[str, Any]
    sse: bytes

    @property
    def id(self) -> str:
        return f"{self.engine}/{self.scenario}/{self.split}"

    def request_body(self) -> dict[str, Any]:
        """The request the stream answers, as a harness would send it to that server."""
        model = {"k2": "kimi-k2-thinking", "k25": "kimi-k2.5", "k3": "kimi-k3"}[self.model]
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": "Read /tmp/a.txt"}],
            "tools": [{"type": "function", "function": {"name": n, "parameters": p}} for n, p in TOOLS.items()],
            "stream": True,
        }
        if self.model == "k25":
            body["chat_template_kwargs"] = {"thinking": self.thinking}
        return body

    def facts(self) -> RequestFacts:
        """What kimiwire learns from that request (as the addon does)."""
        return facts_from_body(self.request_body())


def engine_lost(case: Case) -> bool:
    """The engine never sent part of this case's output (ENGINE_LOST)."""
    return case.split == ENGINE_LOST_SPLIT and (case.engine, case.scenario) in ENGINE_LOST


def load() -> list[Case]:
    cases = []
    for line in CORPUS.read_text().splitlines():
        row = json.loads(line)
        cases.append(
            Case(
                row["engine"],
                row["scenario"],
                row["split"],
                row["model"],
                row["thinking"],
                row["truth"],
                row["sse"].encode(),
            )
        )
    return cases


def through(case: Case, policy: Policy | None = None) -> bytes:
    """The stream as kimiwire delivers it (in process, the stream repairer fed event by event)."""
    repairer = StreamRepairer(case.facts(), policy or Policy.build(Flavor.SELFHOSTED))
    out: list[bytes] = []
    for event in case.sse.split(b"\n\n"):
        if event:
            out += repairer.feed(event + b"\n\n")
    out += repairer.end()
    return b"".join(out)


def _finish(body: bytes) -> str | None:
    reasons = finish_reasons(body)
    return reasons[-1] if reasons else None


def _complete_object(arguments: str) -> bool:
    try:
        return isinstance(json.loads(arguments), dict)
    except ValueError:
        return False


def piai_problems(case: Case, body: bytes) -> list[str]:
    """What a pi-ai client (index-less current block, partial JSON) gets wrong against the truth."""
    got = piai_parse(body)
    truth = case.truth
    problems = []
    if truth["cut"]:
        if got["stop"] == "toolUse":
            problems.append("cut call delivered under tool_calls: the client runs it")
    else:
        calls = [(name, args) for _, name, args in got["calls"]]
        want = [(name, args) for name, args in truth["calls"]]
        if calls != want:
            problems.append(f"calls {calls} != {want}")
    if got["stop"] != PIAI_STOP[truth["finish"]]:
        problems.append(f"stop {got['stop']} != {PIAI_STOP[truth['finish']]}")
    if got["text"] != truth["text"]:
        problems.append(f"text {got['text']!r} != {truth['text']!r}")
    if got["thinking"] != truth["reasoning"]:
        problems.append(f"reasoning {got['thinking']!r} != {truth['reasoning']!r}")
    return problems


def guide_problems(case: Case, body: bytes) -> list[str]:
    """What OpenAI-guide-style assembly (accumulate by index, parse at the end) gets wrong."""
    truth = case.truth
    problems = []
    assembled = guide_accumulate(body)
    if truth["cut"]:
        if any(_complete_object(args) for _, _, args in assembled):
            problems.append("a cut call's arguments parse as complete")
    else:
        calls = []
        for _, name, args in assembled:
            try:
                calls.append((name, json.loads(args)))
            except ValueError:
                calls.append((name, args))
        want = [(name, args) for name, args in truth["calls"]]
        if calls != want:
            problems.append(f"calls {calls} != {want}")
    if _finish(body) != truth["finish"]:
        problems.append(f"finish {_finish(body)} != {truth['finish']}")
    if content(body) != truth["text"]:
        problems.append(f"text {content(body)!r} != {truth['text']!r}")
    return problems


def problems(case: Case, body: bytes) -> list[str]:
    return [f"pi-ai: {p}" for p in piai_problems(case, body)] + [f"guide: {p}" for p in guide_problems(case, body)]


def _lost_from(part: str, whole: str) -> bool:
    """`part` is `whole` with some characters missing (none added, none moved)."""
    rest = iter(whole)
    return all(char in rest for char in part)


def _calls_lost_from(calls: list[tuple[Any, Any]], whole: list[tuple[Any, Any]]) -> bool:
    rest = iter(whole)
    return all(call in rest for call in calls)


def engine_lost_problems(case: Case, body: bytes) -> list[str]:
    """For a stream whose engine never sent part of the model's output (the truth cannot be
    delivered), what a client must still get: nothing invented (the text and reasoning are the
    model's with parts missing, every call whose arguments parse is one the model made, in order)
    and no cut call to run: a call whose arguments never closed goes out under finish `length`
    (pi-ai `length`), else the model's finish."""
    truth = case.truth
    got = piai_parse(body)
    problems = []
    for label, text, want in (
        ("pi-ai text", got["text"], truth["text"]),
        ("pi-ai reasoning", got["thinking"], truth["reasoning"]),
        ("guide text", content(body), truth["text"]),
    ):
        if not _lost_from(text, want):
            problems.append(f"{label} {text!r} is not {want!r} with parts lost")
    complete: list[tuple[Any, Any]] = []
    cut = False
    for _, name, arguments in guide_accumulate(body):
        try:
            value = json.loads(arguments)
        except ValueError:
            value = None
        if isinstance(value, dict):
            complete.append((name, value))
        else:
            cut = True
    want_calls = [(name, args) for name, args in truth["calls"]]
    if not _calls_lost_from(complete, want_calls):
        problems.append(f"calls {complete} are not among {want_calls}")
    finish, stop = _finish(body), got["stop"]
    if cut or truth["cut"]:
        if (finish, stop) != ("length", "length"):
            problems.append(f"a call whose arguments never closed goes out under finish {finish} (pi-ai {stop})")
    elif (finish, stop) != (truth["finish"], PIAI_STOP[truth["finish"]]):
        problems.append(f"finish {finish} (pi-ai {stop}) != {truth['finish']}")
    return problems

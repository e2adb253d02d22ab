"""The engine corpus (tests/fixtures/engines/corpus.jsonl, made by scripts/engine_corpus.py from the
Kimi parsers of released vLLM and SGLang wheels): each stream as the engine sent it, the model
output's ground truth, and what a client assembles from it directly or through kimiwire."""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass
from typing import Any

from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.policy import Flavor, Policy
from kimiwire.wire.request.repair import facts_from_body
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.sse import SSEDecoder

from tests.support.piai_model import guide_accumulate, piai_parse

CORPUS = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "engines" / "corpus.jsonl"
TOOLS = {
    "read": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    "exec": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    "write": {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}},
}
PIAI_STOP = {"stop": "stop", "tool_calls": "toolUse", "length": "length"}


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
    decoder = SSEDecoder()
    finish = None
    for event in decoder.feed(body) + decoder.end():
        if event.data and event.data != b"[DONE]":
            for choice in json.loads(event.data).get("choices") or []:
                finish = choice.get("finish_reason") or finish
    return finish


def _content(body: bytes) -> str:
    decoder = SSEDecoder()
    text = []
    for event in decoder.feed(body) + decoder.end():
        if event.data and event.data != b"[DONE]":
            for choice in json.loads(event.data).get("choices") or []:
                text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text)


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
    if _content(body) != truth["text"]:
        problems.append(f"text {_content(body)!r} != {truth['text']!r}")
    return problems


def problems(case: Case, body: bytes) -> list[str]:
    return [f"pi-ai: {p}" for p in piai_problems(case, body)] + [f"guide: {p}" for p in guide_problems(case, body)]

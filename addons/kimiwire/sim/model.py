"""The scripted model: deterministic, and as sensitive to broken history as Kimi is.

The first user message of the current turn (after the last answer without tool calls) is a task
in steps separated by "then"; each step asks for one or more tool calls joined by "and":
`read PATH`, `run `COMMAND``, or `call NAME {json}`. User messages after it are context a harness
added (OpenClaw 2026.9 appends an internal-context message after the task), not tasks. Turn k of
the current task makes the calls of step k (several calls = parallel calls); once every step has
had its results, the model answers in text. Only declared tools are called.

Kimi copies the tool-call ids it sees: when the history holds ids that are not canonical
(`functions.NAME:K`, K counting every call from 0), the model writes its next call with the
broken pattern, the server's parser fails, and the call reaches the client as raw markup in
`content` with `finish_reason: stop` (or the turn comes back empty). Sources: shared notes,
kimi-wire-format.md §1.3 (sglang #21377, #25218, #25358; vLLM blog), §9.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

_STEP_SPLIT = re.compile(r"\bthen\b|;|\n", re.I)
_READ = re.compile(r"""\bread\s+(?P<path>[^\s,;"'`]+)""", re.I)  # a path ends before a quote (opencode quotes the task)
_RUN = re.compile(r"\b(?:run|exec)\s+`(?P<command>[^`]+)`", re.I)
_CALL = re.compile(r"\bcall\s+(?P<name>[\w\-]+)\s+(?P<args>\{.*?\})(?=\s+and\b|\s*$)", re.I)
CANONICAL_ID = re.compile(r"^functions\.[A-Za-z0-9_\-]+:(?P<index>\d+)$")


@dataclass
class PlannedCall:
    name: str
    arguments: str  # JSON object text


@dataclass
class TurnPlan:
    reasoning: str = ""
    content: str = ""
    calls: list[PlannedCall] = field(default_factory=list)
    history_calls: int = 0  # tool calls in the request's history: the next id's number
    poisoned_by: str | None = None  # the broken id the model copied, if it did
    tools_declared: bool = True  # the request declared tools (SGLang parses calls only then)
    empty_tool_arrays: bool = False  # a turn fault: empty `tool_calls: []` deltas (vllm#54701)

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.calls else "stop"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _json_object(text: str) -> dict[str, Any] | None:
    """`text` as a JSON object; None when it is not one (a harness quoted the task, say)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _path_key(tools: Any) -> str:
    """The argument the declared `read` tool takes the path in, as a model reads it off the schema:
    its first required property (opencode's `read` takes `filePath`); `path` by default."""
    for tool in tools if isinstance(tools, list) else []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and function.get("name") == "read":
            parameters = function.get("parameters")
            required = parameters.get("required") if isinstance(parameters, dict) else None
            if isinstance(required, list) and required and isinstance(required[0], str):
                return required[0]
    return "path"


def _steps(task: str, declared: set[str], path_key: str = "path") -> list[list[PlannedCall]]:
    steps: list[list[PlannedCall]] = []
    for part in _STEP_SPLIT.split(task):
        calls: list[tuple[int, PlannedCall]] = []
        # `call read {"filePath": ...}` is one explicit call, not also the shorthand `read PATH`
        explicit = [match.span() for match in _CALL.finditer(part)]
        for match in _READ.finditer(part):
            if any(start <= match.start() < end for start, end in explicit):
                continue
            if "read" in declared:
                calls.append((match.start(), PlannedCall("read", orjson.dumps({path_key: match["path"]}).decode())))
        for match in _RUN.finditer(part):
            if "exec" in declared:
                calls.append((match.start(), PlannedCall("exec", orjson.dumps({"command": match["command"]}).decode())))
        for match in _CALL.finditer(part):
            arguments = _json_object(match["args"])
            if match["name"] in declared and arguments is not None:
                calls.append((match.start(), PlannedCall(match["name"], orjson.dumps(arguments).decode())))
        if calls:
            steps.append([c for _, c in sorted(calls, key=lambda pair: pair[0])])
    return steps


def broken_history_id(messages: list[Any]) -> str | None:
    """The first history id a Kimi model would be confused by (non-canonical or out of order)."""
    k = 0
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        for call in message.get("tool_calls") or []:
            call_id = call.get("id") if isinstance(call, dict) else None
            match = CANONICAL_ID.match(call_id) if isinstance(call_id, str) else None
            if match is None or int(match["index"]) != k:
                return str(call_id)
            k += 1
    return None


def copied_id(broken: str, name: str, k: int) -> str:
    """The id a model writes after copying a broken pattern from history."""
    if broken.startswith("call"):
        return f"call_{k}"
    if ":" in broken and not broken.startswith("functions."):
        return f"{name}:{k}"
    return f"functions{name}{k}"


def _turn_start(messages: list[dict[str, Any]]) -> int:
    """The index of the first user message after the last answer (an assistant message without
    tool calls); the last user message when none follows it; -1 when there is no user message."""
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    answered = max(
        (i for i, m in enumerate(messages) if m.get("role") == "assistant" and not m.get("tool_calls")), default=-1
    )
    return next((i for i in users if i > answered), users[-1] if users else -1)


def plan_turn(body: dict[str, Any], history_tools: bool = False) -> TurnPlan:
    """`history_tools`: with no tools declared, the model still calls the tools its history
    called (it sees them there; pi-ai then sends `tools: []`)."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    declared = {
        t["function"]["name"]
        for t in body.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)
    }
    if history_tools and not declared:
        declared = {
            c["function"]["name"]
            for m in messages
            if m.get("role") == "assistant"
            for c in m.get("tool_calls") or []
            if isinstance(c, dict)
            and isinstance(c.get("function"), dict)
            and isinstance(c["function"].get("name"), str)
        }
    history_calls = sum(len(m.get("tool_calls") or []) for m in messages if m.get("role") == "assistant")
    task_at = _turn_start(messages)
    task = _text(messages[task_at].get("content")) if task_at >= 0 else ""
    turns_done = sum(1 for m in messages[task_at + 1 :] if m.get("role") == "assistant" and m.get("tool_calls"))
    steps = _steps(task, declared, _path_key(body.get("tools")))
    plan = TurnPlan(
        history_calls=history_calls, poisoned_by=broken_history_id(messages), tools_declared=bool(body.get("tools"))
    )
    if turns_done < len(steps):
        plan.calls = steps[turns_done]
        names = " and ".join(f"{c.name} {c.arguments}" for c in plan.calls)
        plan.reasoning = f"Step {turns_done + 1} of {len(steps)}: I should call {names}."
        return plan
    results = [_text(m.get("content")) for m in messages[task_at + 1 :] if m.get("role") == "tool"]
    plan.reasoning = f"All {len(steps)} steps are done; I will summarise." if steps else "A greeting."
    plan.content = ("Done. " + " | ".join(results)) if results else "Hello! Ask me to read a file or run a command."
    return plan

"""Benchmark section 1, core in process (scripts/bench.py): stream repair against an SSE
decode/orjson/re-encode floor, request repair of a 1 MB agent history against orjson loads+dumps,
and memory while a 1 MB tool argument is buffered."""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from typing import Any

import orjson
from kimiwire.wire.codecs.sse import SSEDecoder, encode_data
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.request.repair import repair_request_body
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.servers.policy import Flavor, Policy

POLICY = Policy.build(Flavor.SELFHOSTED)
MOONSHOT_POLICY = Policy.build(Flavor.MOONSHOT)  # its contract rules on top: hygiene, results in place, renames
# Rounds per --repeat of the request rows (medians of CPU time): each round is a few milliseconds.
REQUEST_ROUNDS = 20
TOOLS = {
    "read": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    "exec": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
}
FACTS = RequestFacts(12, TOOLS, True, True)


def realistic_stream(total: int = 10_000) -> list[bytes]:
    """SGLang-shaped: reasoning, content, then six parallel calls whose fragments interleave."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "kimi-k2-thinking"}

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

    events = [event({"role": "assistant", "content": ""})]
    events += [event({"reasoning_content": f"thinking token {i} "}) for i in range(4000)]
    events += [event({"content": f"word{i} "}) for i in range(3000)]
    calls = 6
    fragments_per_call = (total - len(events) - 2 - calls) // calls
    for i in range(calls):
        name = "read" if i % 2 == 0 else "exec"
        events.append(
            event(
                {
                    "tool_calls": [
                        {
                            "id": f"functions.{name}:{12 + i}",
                            "index": i,
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            )
        )
    key = {"read": "path", "exec": "command"}
    bodies = []
    for i in range(calls):
        name = "read" if i % 2 == 0 else "exec"
        text = orjson.dumps({key[name]: "x" * (fragments_per_call * 3 - 14)}).decode()
        size = -(-len(text) // fragments_per_call)
        bodies.append([text[k : k + size] for k in range(0, len(text), size)])
    for k in range(max(len(b) for b in bodies)):
        for i, pieces in enumerate(bodies):
            if k < len(pieces):
                events.append(
                    event(
                        {
                            "tool_calls": [
                                {
                                    "id": None,
                                    "index": i,
                                    "type": "function",
                                    "function": {"name": None, "arguments": pieces[k]},
                                }
                            ]
                        }
                    )
                )
    while len(events) < total - 2:  # round up to the exact count with content tokens
        events.insert(4001, event({"content": "pad "}))
    events.append(event({}, "tool_calls"))
    events.append(b"data: [DONE]\n\n")
    return events


def floor_pass(events: list[bytes]) -> int:
    decoder = SSEDecoder()
    out = 0
    for piece in events:
        for ev in decoder.feed(piece):
            if ev.data is None or ev.data == b"[DONE]":
                out += 1
                continue
            out += len(encode_data(orjson.dumps(orjson.loads(ev.data))))
    return out


def repair_pass(events: list[bytes]) -> int:
    repairer = StreamRepairer(FACTS, POLICY)
    out = 0
    for piece in events:
        out += len(repairer.feed(piece))
    return out + len(repairer.end())


def best_time(fn: Any, arg: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - start)
    return min(times)


def cpu_medians(fns: dict[str, Any], arg: Any, rounds: int) -> dict[str, float]:
    """Median CPU seconds of this thread for each `fn(arg)`, the functions run in turn in each round:
    on a shared machine they see the same neighbours, and CPU time leaves out the time others ran."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            gc.collect()
            start = time.thread_time()
            fns[name](arg)
            times[name].append(time.thread_time() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def long_history() -> bytes:
    """About 1 MB: 500 messages, 200 tool calls, reasoning on every assistant turn, OpenClaw ids."""
    messages: list[dict[str, Any]] = []
    k = 0
    for round_ in range(100):
        messages.append({"role": "user", "content": [{"type": "text", "text": f"step {round_}: " + "u" * 300}]})
        calls = []
        for _ in range(2):
            calls.append(
                {
                    "id": f"functionsread{k}",
                    "type": "function",
                    "function": {"name": "read", "arguments": orjson.dumps({"path": f"/src/f{k}.py"}).decode()},
                }
            )
            k += 1
        messages.append({"role": "assistant", "content": None, "reasoning_content": "r" * 1500, "tool_calls": calls})
        for call in calls:
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": "c" * 3000})
        messages.append({"role": "assistant", "content": "a" * 400, "reasoning_content": "r" * 1500})
    body = {
        "model": "kimi-k2-thinking",
        "stream": True,
        "messages": messages,
        "tools": [{"type": "function", "function": {"name": n, "parameters": p}} for n, p in TOOLS.items()],
    }
    return orjson.dumps(body)


def peak_memory_for_big_argument(size: int = 1_000_000) -> dict[str, Any]:
    argument = orjson.dumps({"path": "p" * (size - 11)}).decode()
    pieces = [argument[i : i + 1000] for i in range(0, len(argument), 1000)]
    events = [
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"functions.read:0",'
        b'"type":"function","function":{"name":"read","arguments":""}}]}}]}\n\n'
    ]
    events += [
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":'
        + orjson.dumps(p)
        + b"}}]}}]}\n\n"
        for p in pieces
    ]
    events += [b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n', b"data: [DONE]\n\n"]
    gc.collect()
    tracemalloc.start()
    repairer = StreamRepairer(RequestFacts(0, TOOLS, True, True), POLICY)
    held_peak = 0
    for event in events[:-2]:
        repairer.feed(event)
        held_peak = max(held_peak, repairer.buffered)
    _, while_buffering = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    for event in events[-2:]:
        repairer.feed(event)
    _, at_flush = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # a 20 MB argument against the 8 MiB limit: what is held never passes the limit (plus one chunk)
    limited = StreamRepairer(RequestFacts(0, TOOLS, True, True), POLICY)
    most = 0
    big_piece = (
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"'
        + b"q" * 100_000
        + b'"}}]}}]}\n\n'
    )
    limited.feed(events[0])
    for _ in range(200):
        limited.feed(big_piece)
        most = max(most, limited.buffered)
    return {
        "argument_bytes": len(argument),
        "held_peak_bytes": held_peak,
        "peak_bytes_while_buffering": while_buffering,
        "peak_bytes_at_flush": at_flush,
        "limit_bytes": POLICY.stream_buffer_limit,
        "most_held_with_20mb_argument": most,
        "bypassed_past_limit": limited.bypass,
    }


def core(repeat: int) -> dict[str, Any]:
    events = realistic_stream()
    assert len(events) == 10_000, len(events)
    floor = best_time(floor_pass, events, repeat)
    repair = best_time(repair_pass, events, repeat)
    body = long_history()
    request = cpu_medians(
        {
            "floor": lambda b: orjson.dumps(orjson.loads(b)),
            "repair": lambda b: repair_request_body(b, POLICY),
            "moonshot": lambda b: repair_request_body(b, MOONSHOT_POLICY),
        },
        body,
        REQUEST_ROUNDS * repeat,
    )
    request_floor, request_repair = request["floor"], request["repair"]
    result = repair_request_body(body, POLICY)
    assert result.body is not None and len(result.log) >= 400
    moonshot = repair_request_body(body, MOONSHOT_POLICY)
    assert moonshot.body is not None and len(moonshot.log) >= 400
    return {
        "stream_events": len(events),
        "stream_floor_s": floor,
        "stream_repair_s": repair,
        "stream_repair_events_per_s": len(events) / repair,
        "stream_ratio": repair / floor,
        "history_bytes": len(body),
        "request_floor_s": request_floor,
        "request_repair_s": request_repair,
        "request_ratio": request_repair / request_floor,
        "request_repair_moonshot_s": request["moonshot"],
        "request_moonshot_ratio": request["moonshot"] / request_floor,
        "memory": peak_memory_for_big_argument(),
    }

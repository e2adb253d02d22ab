"""A planned turn rendered the way each server puts it on the wire (sans-IO: dicts out).

Shapes, from the shared notes (kimi-wire-format.md §3-4, §6-7; openclaw-client.md §1.3):
- sglang: role chunk with `content: ""`; `reasoning_content`; first tool delta with id, name and
  `arguments: ""`, later deltas `id: null, name: null`; a separate finish chunk; ids
  `functions.NAME:H+i`; usage in a `choices: []` chunk when asked for.
- vllm: `reasoning` instead of `reasoning_content` (vLLM >= 0.17); first tool delta without an
  `arguments` key; then `{index, function: {arguments}}` diffs.
- moonshot: tool deltas without `index`; ids without the `functions.` prefix (`read:3`); `usage`
  inside `choices[0]` of the finish chunk.
- deepinfra: no DeepInfra-specific quirk is documented (§6); OpenAI-like deltas with `index` on
  every fragment and `reasoning_content` (as opencode declares for DeepInfra's Kimi models).
Turn faults (settings.TURN_FAULTS): `faulty_plan` turns a planned turn into the broken one a
server reported; `stream_chunks` renders the empty-`tool_calls` deltas of vllm#54701 and SGLang's
`matched_stop` on an empty turn (sglang#23341).
Fragmentation: N argument fragments, reasoning deltas between fragments, interleaved parallel
calls, or every call whole in one chunk. A model poisoned by broken history writes raw markup.

Tool parsing that fails (`leak`), from public reports:
- consumed / consumed-functions: a K2.6 router consumed the section and call begin markers:
  `NAME:N<|tool_call_argument_begin|>{json}` per call, in a row, then `<|tool_calls_section_end|>`,
  as content (typeclaw PR #344), with or without `functions.`;
- in-arguments: the model opened a new tool section inside the first call's string value, and
  vLLM streamed it as that call's arguments (vLLM 0.24 + K2.6, anomalyco/opencode#37297);
- untooled: the request declares no tools (pi-ai sends `tools: []` after tool history), the model
  calls its history's tools anyway, and SGLang, which parses calls only when `request.tools` is
  set, streams the text with special tokens skipped: `functions.NAME:N{json}`.
- k3-tools: Kimi K3's markup with no K3 parser in front: the response channel and the tools
  channel (`<|open|>tools<|sep|><|open|>call tool="NAME" index="1"<|sep|><|open|>argument key="K"
  type="T"<|sep|>V<|close|>argument<|sep|>…`) as content (grammar: vLLM
  `vllm/tool_parsers/kimi_k3_tool_parser.py`, SGLang `kimik3_detector.py`);
- k3-answer-in-reasoning: K3 skipped the think channel its template prefilled and SGLang's K3
  reasoning parser took the whole answer as reasoning: `reasoning_content` holds
  `ANSWER<|close|>response<|sep|><|close|>message<|sep|>`, content is empty (sglang PR #33995);
- resend: vLLM 0.11.1-0.13.0's Kimi K2 parser streams the calls as `tool_calls`, then at
  `<|tool_calls_section_end|>` sends its buffer as content: the text before the section again and
  every call's markup without the section markers (`kimi_k2_tool_parser.py`, `token_buffer`);
- cut-call: the last call's arguments cut by `max_tokens`, reported as `finish_reason: tool_calls`
  (vllm #47761).
`held_call`: seconds of silence before the first tool-call chunk: vLLM's K3 parser holds a call
until it is complete (32 s for a 17.5K-character `write_file`, vllm PR #50627).
Reasoning that the engine does not split (`think`): prefilled: the K2.5/K2.6 template prefilled
`<think>`, so reasoning and a literal `</think>` arrive as content (smg-project/smg#1873, SGLang
without `force_reasoning`); block: the whole `<think>…</think>` as content (vllm PR #32490). Both
in small pieces, so the tags are split across chunks.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import orjson

from .model import PlannedCall, TurnPlan, copied_id
from .settings import Shape, SimSettings

DONE = "[DONE]"


def _pieces(text: str, n: int) -> list[str]:
    if not text:
        return []
    size = max(1, -(-len(text) // max(1, n)))
    return [text[i : i + size] for i in range(0, len(text), size)]


def server_id(shape: Shape, name: str, number: int) -> str:
    return f"{name}:{number}" if shape == "moonshot" else f"functions.{name}:{number}"


def _reasoning_key(shape: Shape) -> str:
    return "reasoning" if shape == "vllm" else "reasoning_content"


def markup_text(plan: TurnPlan, poisoned_by: str) -> str:
    parts = [
        f"<|tool_call_begin|>{copied_id(poisoned_by, c.name, plan.history_calls + i)}"
        f"<|tool_call_argument_begin|>{c.arguments}<|tool_call_end|>"
        for i, c in enumerate(plan.calls)
    ]
    return "<|tool_calls_section_begin|>" + "".join(parts) + "<|tool_calls_section_end|>"


def consumed_markup_text(plan: TurnPlan, prefix: str) -> str:
    return (
        "".join(
            f"{prefix}{c.name}:{plan.history_calls + i}<|tool_call_argument_begin|>{c.arguments}"
            for i, c in enumerate(plan.calls)
        )
        + "<|tool_calls_section_end|>"
    )


def bare_text(plan: TurnPlan) -> str:
    return "".join(f"functions.{c.name}:{plan.history_calls + i}{c.arguments}" for i, c in enumerate(plan.calls))


def nested_arguments(plan: TurnPlan) -> str:
    """The first call's arguments: a string value opened, then a new tool section with the calls."""
    key = next(iter(orjson.loads(plan.calls[0].arguments)), "path")
    section = "".join(
        f"<|tool_call_begin|>functions.{c.name}:{plan.history_calls + 1 + i}<|tool_call_argument_begin|>"
        f"{c.arguments}<|tool_call_end|>"
        for i, c in enumerate(plan.calls)
    )
    return f'{{"{key}": "<|tool_calls_section_begin|>{section}<|tool_calls_section_end|>'


def _k3_value(value: Any) -> tuple[str, str]:
    """(type attribute, body) of one K3 argument, as the K3 template writes it."""
    if isinstance(value, str):
        return "string", value
    kind = {bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}.get(type(value), "null")
    return kind, orjson.dumps(value).decode()


def _k3_attribute(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;")


def k3_tools_text(plan: TurnPlan) -> str:
    """The turn's calls as K3's tools channel (indexes from 1 within the message)."""
    calls = []
    for i, call in enumerate(plan.calls):
        arguments = "".join(
            f'<|open|>argument key="{_k3_attribute(key)}" type="{kind}"<|sep|>{body}<|close|>argument<|sep|>'
            for key, (kind, body) in ((k, _k3_value(v)) for k, v in orjson.loads(call.arguments).items())
        )
        calls.append(
            f'<|open|>call tool="{_k3_attribute(call.name)}" index="{i + 1}"<|sep|>{arguments}<|close|>call<|sep|>'
        )
    return "<|open|>tools<|sep|>" + "".join(calls) + "<|close|>tools<|sep|>"


def resent_buffer(plan: TurnPlan) -> str:
    """What vLLM 0.11.1-0.13.0 sends as content at the section end: the text before the section
    and the calls' markup, section markers stripped."""
    return plan.content + "".join(
        f"<|tool_call_begin|>functions.{c.name}:{plan.history_calls + i}<|tool_call_argument_begin|>"
        f"{c.arguments}<|tool_call_end|>"
        for i, c in enumerate(plan.calls)
    )


K3_MESSAGE_CLOSE = "<|close|>message<|sep|>"


def effective_plan(plan: TurnPlan, settings: SimSettings) -> TurnPlan:
    """The turn as the client will see it: poisoned by broken history, or its calls leaked."""
    plan, _ = poisoned_plan(plan, settings)
    if settings.leak == "k3-answer-in-reasoning" and not plan.calls:
        return replace(plan, reasoning=plan.content + "<|close|>response<|sep|>" + K3_MESSAGE_CLOSE, content="")
    if not plan.calls or settings.leak in ("none", "resend", "k3-answer-in-reasoning"):
        return plan
    if settings.leak == "k3-tools":
        response = f"<|open|>response<|sep|>{plan.content}<|close|>response<|sep|>"
        return replace(plan, content=response + k3_tools_text(plan) + K3_MESSAGE_CLOSE, calls=[])
    if settings.leak == "cut-call":
        last = plan.calls[-1]
        cut = PlannedCall(last.name, last.arguments[: max(1, len(last.arguments) // 2)])
        return replace(plan, calls=[*plan.calls[:-1], cut])  # the finish still says tool_calls
    if settings.leak == "in-arguments":
        return replace(plan, calls=[PlannedCall(plan.calls[0].name, nested_arguments(plan))])
    if settings.leak == "untooled":
        return replace(plan, content=plan.content + bare_text(plan), calls=[]) if not plan.tools_declared else plan
    prefix = "functions." if settings.leak == "consumed-functions" else ""
    return replace(plan, content=plan.content + consumed_markup_text(plan, prefix), calls=[])


def visible_text(plan: TurnPlan, settings: SimSettings) -> tuple[str, str]:
    """(reasoning field, content) as the engine streams them."""
    reasoning = plan.reasoning if settings.reasoning else ""
    if settings.think == "field" or not reasoning:
        return reasoning, plan.content
    opening = "<think>" if settings.think == "block" else ""
    return "", f"{opening}{reasoning}</think>{plan.content}"


def poisoned_plan(plan: TurnPlan, settings: SimSettings) -> tuple[TurnPlan, str | None]:
    """A poisoned model's calls become markup (or nothing)."""
    poisoned = (
        plan.calls
        and plan.poisoned_by is not None
        and settings.broken_history != "off"
        and settings.shape != "moonshot"
    )
    if not poisoned:
        return plan, None
    assert plan.poisoned_by is not None
    text = markup_text(plan, plan.poisoned_by) if settings.broken_history == "markup" else ""
    return replace(plan, content=text, calls=[]), text


SGLANG_EOS_TOKEN = 163586  # `<|im_end|>` of Kimi K2's tokenizer: what sglang#23341's `matched_stop` shows


def faulty_plan(plan: TurnPlan, kind: str) -> TurnPlan:
    """The turn a failing attempt sends instead of `plan` (content-level turn faults)."""
    if kind == "empty":
        return replace(plan, reasoning="", content="", calls=[])
    if kind == "reasoning-only":
        return replace(plan, reasoning=plan.reasoning or "Thinking about it.", content="", calls=[])
    if kind == "empty-tool-arrays":
        return replace(plan, reasoning="", content="", calls=[], empty_tool_arrays=True)
    if kind in ("invalid-call", "schema-violation") and plan.calls:
        calls = [
            PlannedCall(c.name, _nested_markup(c, plan.history_calls + i) if kind == "invalid-call" else _renamed(c))
            for i, c in enumerate(plan.calls)
        ]
        return replace(plan, calls=calls)
    return plan


def _nested_markup(call: PlannedCall, number: int) -> str:
    """opencode#37297: the next call's markup written into a string of this call's arguments."""
    arguments = orjson.loads(call.arguments)
    key = next((k for k, v in arguments.items() if isinstance(v, str)), None)
    markup = f" <|tool_calls_section_begin|><|tool_call_begin|>functions.{call.name}:{number + 1}"
    if key is None:
        return call.arguments[:-1] + markup
    arguments[key] += markup + "<|tool_call_argument_begin|>"
    return orjson.dumps(arguments).decode()


def _renamed(call: PlannedCall) -> str:
    """Every key misspelt: valid JSON that misses the schema's required properties."""
    return orjson.dumps({f"{k}_name": v for k, v in orjson.loads(call.arguments).items()}).decode()


def _engine_stop_fields(shape: Shape, finish: str | None, streamed: bool) -> dict[str, Any]:
    """What each engine puts beside `finish_reason`. SGLang: `matched_stop` on every choice, the
    end-of-sequence token once the model stopped (sglang 0.5.23 sse_utils.py `StreamChoice`, no
    omit_defaults). vLLM: `stop_reason` on the finishing choice only (chunks dumped with
    exclude_unset, vllm 0.34.0 chat_completion/serving.py), null for an end-of-sequence token;
    on every choice of a whole answer."""
    if shape == "sglang":
        return {"matched_stop": SGLANG_EOS_TOKEN if finish in ("stop", "tool_calls") else None}
    if shape == "vllm" and (finish is not None or not streamed):
        return {"stop_reason": None}
    return {}


def model_list(shape: Shape, served: str) -> dict[str, Any]:
    """`GET /v1/models` as each engine answers it: `owned_by` names the engine and `root` is the
    served model's path (vllm 0.34.0 vllm/entrypoints/serve/engine/protocol.py `ModelCard`, sglang
    0.5.23 sglang/srt/entrypoints/openai/protocol.py `ModelCard`). No `owned_by` of Moonshot's or
    DeepInfra's own API is documented: those shapes answer as a gateway would, with its own name."""
    card: dict[str, Any] = {"id": served, "object": "model", "created": int(time.time())}
    if shape == "vllm":
        card |= {"owned_by": "vllm", "root": served, "parent": None, "max_model_len": 262144, "permission": []}
    elif shape == "sglang":
        card |= {"owned_by": "sglang", "root": served, "max_model_len": 262144}
    else:
        card |= {"owned_by": "kimiwire-simulator"}
    return {"object": "list", "data": [card]}


def _usage(plan: TurnPlan) -> dict[str, int]:
    completion = len(plan.reasoning) // 4 + len(plan.content) // 4 + 8 * len(plan.calls)
    return {"prompt_tokens": 100, "completion_tokens": completion, "total_tokens": 100 + completion}


def _tool_deltas(calls: list[PlannedCall], plan: TurnPlan, settings: SimSettings) -> list[dict[str, Any]]:
    """The deltas (values of `delta`) that carry the tool calls, in wire order."""
    shape = settings.shape
    reasoning_key = _reasoning_key(shape)

    def first(i: int, call: PlannedCall, arguments: str | None) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": server_id(shape, call.name, plan.history_calls + i), "type": "function"}
        function: dict[str, Any] = {"name": call.name}
        if arguments is not None:
            function["arguments"] = arguments
        entry["function"] = function
        if shape != "moonshot":
            entry = {"index": i, **entry}
        return entry

    def fragment(i: int, piece: str) -> dict[str, Any]:
        if shape == "sglang":
            return {"id": None, "index": i, "type": "function", "function": {"name": None, "arguments": piece}}
        if shape == "moonshot":
            return {"function": {"arguments": piece}}
        return {"index": i, "function": {"arguments": piece}}

    if settings.whole:
        return [{"tool_calls": [first(i, c, c.arguments) for i, c in enumerate(calls)]}]
    first_arguments = None if shape == "vllm" else ""
    pieces = [_pieces(c.arguments, settings.fragments) for c in calls]
    deltas: list[dict[str, Any]] = []
    # Without an index nobody (client or proxy) can tell interleaved fragments apart, and Moonshot's
    # index-less deltas come one call after the other.
    if settings.interleave and len(calls) > 1 and shape != "moonshot":
        deltas += [{"tool_calls": [first(i, c, first_arguments)]} for i, c in enumerate(calls)]
        for k in range(max(len(p) for p in pieces)):
            for i, p in enumerate(pieces):
                if k < len(p):
                    deltas.append({"tool_calls": [fragment(i, p[k])]})
                    if settings.reasoning_between and k == 0:
                        deltas.append({reasoning_key: " (checking the arguments)"})
        return deltas
    for i, call in enumerate(calls):
        deltas.append({"tool_calls": [first(i, call, first_arguments)]})
        for k, piece in enumerate(pieces[i]):
            deltas.append({"tool_calls": [fragment(i, piece)]})
            if settings.reasoning_between and k == 0:
                deltas.append({reasoning_key: " (checking the arguments)"})
    return deltas


def stream_chunks(
    plan: TurnPlan, settings: SimSettings, model: str, include_usage: bool, request_id: str = "chatcmpl-sim"
) -> list[dict[str, Any] | str]:
    """Every chunk of the streamed answer, then "[DONE]"."""
    plan = effective_plan(plan, settings)
    reasoning, content = visible_text(plan, settings)
    created = int(time.time())
    base = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        choice.update(_engine_stop_fields(settings.shape, finish, streamed=True))
        choice.update(extra)
        return {**base, "choices": [choice]}

    chunks: list[dict[str, Any] | str] = [chunk({"role": "assistant", "content": ""})]
    if reasoning:
        key = _reasoning_key(settings.shape)
        chunks += [chunk({key: piece}) for piece in _pieces(reasoning, 3)]
    if settings.answer_events and not plan.calls:
        content_pieces = ["tok "] * settings.answer_events
    elif settings.think != "field":
        content_pieces = [content[i : i + 5] for i in range(0, len(content), 5)]  # tags split across chunks
    else:
        content_pieces = _pieces(content, 4)
    chunks += [chunk({"content": piece}) for piece in content_pieces]
    chunks += [chunk(delta) for delta in _tool_deltas(plan.calls, plan, settings)]
    if settings.leak == "resend" and plan.calls:
        chunks.append(chunk({"content": resent_buffer(plan)}))
    finish = plan.finish_reason
    if plan.empty_tool_arrays:
        chunks += [chunk({"tool_calls": []}) for _ in range(3)]
        finish = "tool_calls"
    usage = _usage(plan)
    if settings.shape == "moonshot":
        chunks.append(chunk({}, finish, usage=usage))
    else:
        chunks.append(chunk({}, finish))
        if include_usage:
            chunks.append({**base, "choices": [], "usage": usage})
    chunks.append(DONE)
    return chunks


def completion_body(
    plan: TurnPlan, settings: SimSettings, model: str, request_id: str = "chatcmpl-sim"
) -> dict[str, Any]:
    """The non-streaming answer."""
    plan = effective_plan(plan, settings)
    reasoning, content = visible_text(plan, settings)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content or ("" if settings.shape == "sglang" else None),
    }
    if reasoning:
        message[_reasoning_key(settings.shape)] = reasoning
    if plan.calls:
        message["tool_calls"] = [
            {
                "id": server_id(settings.shape, c.name, plan.history_calls + i),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for i, c in enumerate(plan.calls)
        ]
    choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}
    choice.update(_engine_stop_fields(settings.shape, plan.finish_reason, streamed=False))
    usage = _usage(plan)
    if settings.shape == "moonshot":
        choice["usage"] = usage
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage,
    }

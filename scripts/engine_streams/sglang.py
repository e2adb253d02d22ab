"""SGLang 0.5.5 and 0.5.23: the chunks its chat-completions endpoint streams for one model output,
the copied Kimi reasoning parser and tool-call detector driven as its serving loop drives them."""

from __future__ import annotations

import importlib
import json
import types
from typing import Any

from .outputs import CREATED, K2_SPECIALS, K3_SPECIALS, RID, Scenario, engine_steps, tool_namespace
from .stubs import load_release

# -- SGLang (python/sglang/srt/entrypoints/openai/serving_chat.py `_generate_chat_stream`,
#    `_process_reasoning_stream`, `_process_tool_call_stream`, `_check_for_unstreamed_tool_args`;
#    chunk layout: protocol.py `ChatCompletionStreamResponse` (pydantic), and in 0.5.23 also
#    sse_utils.py `build_sse_content` (msgspec) for role, reasoning, plain content and finish) ------


def sglang_protocol(release: str):
    from pydantic import BaseModel, model_serializer

    class FunctionResponse(BaseModel):
        name: str | None = None
        arguments: str | dict | None = None

    class ToolCall(BaseModel):
        id: str | None = None
        index: int | None = None
        type: str = "function"
        function: FunctionResponse

    class DeltaMessage(BaseModel):
        role: str | None = None
        content: str | None = None
        reasoning_content: str | None = None
        tool_calls: list[ToolCall] | None = None
        hidden_states: object | None = None

        @model_serializer(mode="wrap")
        def _serialize(self, handler):
            data = handler(self)
            if self.hidden_states is None:
                data.pop("hidden_states", None)
            return data

    class Choice(BaseModel):
        index: int
        delta: DeltaMessage
        logprobs: dict | None = None
        finish_reason: str | None = None
        matched_stop: int | str | None = None

        @model_serializer(mode="wrap")
        def _serialize(self, handler):
            data = handler(self)
            if release != "0.5.5" and self.delta.tool_calls is None:
                data["delta"].pop("tool_calls", None)
            return data

    class Response(BaseModel):
        id: str
        object: str = "chat.completion.chunk"
        created: int
        model: str
        choices: list[Choice]
        usage: dict | None = None

    return FunctionResponse, ToolCall, DeltaMessage, Choice, Response


def sglang_stream(release: str, sc: Scenario, split: str) -> bytes:
    k3 = sc.model == "k3"
    load_release(f"sglang-{release}", {})
    reasoning_mod = importlib.import_module("sglang.srt.parser.reasoning_parser")
    if k3:
        detector = importlib.import_module("sglang.srt.function_call.kimik3_detector").KimiK3Detector()
    else:
        detector = importlib.import_module("sglang.srt.function_call.kimik2_detector").KimiK2Detector()
    FunctionResponse, ToolCall, DeltaMessage, Choice, Response = sglang_protocol(release)
    tools = tool_namespace()
    model = "kimi"
    modern = release != "0.5.5"
    request = types.SimpleNamespace(chat_template_kwargs={"thinking": sc.thinking}, continue_final_message=False)
    if modern:
        reasoner = reasoning_mod.ReasoningParser(
            "kimi_k3" if k3 else "kimi_k2",
            True,
            sc.thinking and sc.model != "k2",
            request,
            tool_call_parser_active=True,
        )
    else:
        reasoner = reasoning_mod.ReasoningParser("kimi_k2", True, sc.thinking and sc.model != "k2")
    out: list[str] = []

    def pyd(**delta: Any) -> None:
        chunk = Response(id=RID, created=CREATED, model=model, choices=[Choice(index=0, delta=DeltaMessage(**delta))])
        out.append(f"data: {chunk.model_dump_json()}\n\n")

    def light(**fields: Any) -> None:  # build_sse_content (msgspec, omit_defaults on delta and chunk)
        delta = {"reasoning_content": fields.pop("reasoning_content", None)}
        for key in ("role", "content"):
            if fields.get(key) is not None:
                delta[key] = fields[key]
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": fields.get("finish_reason"),
            "matched_stop": fields.get("matched_stop"),
        }
        chunk = {"id": RID, "object": "chat.completion.chunk", "created": CREATED, "model": model, "choices": [choice]}
        out.append("data: " + json.dumps(chunk, ensure_ascii=False, separators=(",", ":")) + "\n\n")

    has_tool_calls = False
    for n, step in enumerate(engine_steps(sc, K3_SPECIALS if k3 else K2_SPECIALS, split)):
        finishing = step.finish is not None
        if n == 0:
            (light if modern else pyd)(role="assistant", content="")
        delta = step.text
        reasoning_text = None
        if sc.reasoning_parser:  # serving_chat: `if self.reasoning_parser and request.separate_reasoning`
            reasoning_text, delta = reasoner.parse_stream_chunk(delta)
        if modern and finishing and sc.reasoning_parser:
            end_reasoning, end_normal = reasoner.parse_stream_end()
            reasoning_text = (reasoning_text or "") + (end_reasoning or "")
            delta = (delta or "") + (end_normal or "")
        if reasoning_text:
            (light if modern else pyd)(reasoning_content=reasoning_text)
        result = detector.parse_streaming_increment(delta or "", tools)
        normal, calls = result.normal_text, list(result.calls)
        if modern and finishing:
            end = detector.finish(tools)
            normal = (normal or "") + end.normal_text
            calls += end.calls
        if normal:
            pyd(content=normal)
        for call in calls:
            has_tool_calls = True
            if call.name:
                call_id = f"{call.name}:{call.tool_index}" if k3 else f"functions.{call.name}:{call.tool_index}"
            else:
                call_id = None
            tc = ToolCall(
                id=call_id,
                index=call.tool_index,
                function=FunctionResponse(name=call.name or None, arguments=call.parameters),
            )
            pyd(tool_calls=[tc])
        if finishing and detector.prev_tool_call_arr and detector.streamed_args_for_tool:
            index = len(detector.prev_tool_call_arr) - 1
            if index < len(detector.streamed_args_for_tool):
                expected = detector.prev_tool_call_arr[index].get("arguments", {})
                actual = detector.streamed_args_for_tool[index]
                if modern:
                    expected = expected if isinstance(expected, str) else json.dumps(expected, ensure_ascii=False)
                    remaining = expected[len(actual) :] if expected.startswith(actual) else ""
                else:
                    expected = json.dumps(expected, ensure_ascii=False)
                    remaining = expected.replace(actual, "", 1) if actual in expected else ""
                if remaining:
                    pyd(tool_calls=[ToolCall(index=index, function=FunctionResponse(arguments=remaining))])
    finish = "length" if sc.finish == "length" else "stop"
    matched = K2_SPECIALS["<|im_end|>"] if finish == "stop" else None
    incomplete = getattr(detector, "incomplete_tool_call_indices", set()) if modern else set()
    final = "tool_calls" if has_tool_calls and finish == "stop" and not incomplete else finish
    if modern:
        light(finish_reason=final, matched_stop=matched)
    else:
        chunk = Response(
            id=RID,
            created=CREATED,
            model=model,
            choices=[Choice(index=0, delta=DeltaMessage(), finish_reason=final, matched_stop=matched)],
        )
        out.append(f"data: {chunk.model_dump_json()}\n\n")
    out.append("data: [DONE]\n\n")
    return "".join(out).encode()

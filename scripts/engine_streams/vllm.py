"""vLLM 0.10.2 and 0.13.0: the chunks its chat-completions endpoint streams for one model output,
the copied Kimi K2 tool parser and DeepSeek-R1-style reasoning parser (what `--reasoning-parser
kimi_k2` resolved to) driven as serving_chat.py drives them."""

from __future__ import annotations

import importlib
import json
import logging
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .outputs import CREATED, K2_SPECIALS, RID, FakeTokenizer, Scenario, engine_steps, k2_prompt, tool_namespace
from .stubs import AnyStub, fake_module, load_release

# -- vLLM (vllm/entrypoints/openai/serving_chat.py `chat_completion_stream_generator`, the
#    `tool_choice_auto and self.reasoning_parser` branch and the finish handling; layout:
#    protocol.py `ChatCompletionStreamResponse.model_dump_json(exclude_unset=True)`) -----------------


def tool_call_delta_models() -> tuple[Any, Any, Any]:
    """OpenAIBaseModel, DeltaFunctionCall and DeltaToolCall: the same in every release here."""
    from pydantic import BaseModel, ConfigDict

    class OpenAIBaseModel(BaseModel):
        model_config = ConfigDict(extra="allow")

    class DeltaFunctionCall(BaseModel):
        name: str | None = None
        arguments: str | None = None

    class DeltaToolCall(OpenAIBaseModel):
        id: str | None = None
        type: str | None = None
        index: int
        function: DeltaFunctionCall | None = None

    return OpenAIBaseModel, DeltaFunctionCall, DeltaToolCall


def vllm_protocol(release: str) -> types.ModuleType:
    from pydantic import BaseModel, Field, model_validator

    OpenAIBaseModel, DeltaFunctionCall, DeltaToolCall = tool_call_delta_models()

    class FunctionCall(OpenAIBaseModel):
        name: str
        arguments: str

    class ToolCall(OpenAIBaseModel):
        id: str = "x"
        type: str = "function"
        function: FunctionCall

    class ExtractedToolCallInformation(BaseModel):
        tools_called: bool
        tool_calls: list[ToolCall]
        content: str | None = None

    if release == "0.10.2":

        class DeltaMessage(OpenAIBaseModel):
            role: str | None = None
            content: str | None = None
            reasoning_content: str | None = None
            tool_calls: list[DeltaToolCall] = Field(default_factory=list)

    else:

        class DeltaMessage(OpenAIBaseModel):
            role: str | None = None
            content: str | None = None
            reasoning: str | None = None
            reasoning_content: str | None = None
            tool_calls: list[DeltaToolCall] = Field(default_factory=list)

            @model_validator(mode="after")
            def handle_deprecated_reasoning_content(self):
                self.reasoning_content = self.reasoning
                return self

    class Choice(OpenAIBaseModel):
        index: int
        delta: DeltaMessage
        logprobs: dict | None = None
        finish_reason: str | None = None
        stop_reason: int | str | None = None
        token_ids: list[int] | None = None

    class Response(OpenAIBaseModel):
        id: str
        object: str = "chat.completion.chunk"
        created: int
        model: str
        choices: list[Choice]
        usage: dict | None = Field(default=None)

    return fake_module(
        "vllm.entrypoints.openai.protocol",
        DeltaFunctionCall=DeltaFunctionCall,
        DeltaToolCall=DeltaToolCall,
        DeltaMessage=DeltaMessage,
        FunctionCall=FunctionCall,
        ToolCall=ToolCall,
        ExtractedToolCallInformation=ExtractedToolCallInformation,
        ChatCompletionStreamResponseChoice=Choice,
        ChatCompletionStreamResponse=Response,
        ChatCompletionRequest=AnyStub,
        ResponsesRequest=AnyStub,
    )


def is_list_of(value: object, typ: type, *, check: str = "first") -> bool:
    """vllm.utils.is_list_of as released (what register_module uses to accept a list of names)."""
    if not isinstance(value, list):
        return False
    return all(isinstance(v, typ) for v in value) if check == "all" else (not value or isinstance(value[0], typ))


def load_with_reasoning_package(release: str, overrides: dict[str, types.ModuleType]) -> None:
    """Loads vLLM `release` with `vllm.reasoning` as a bare package holding the two names its
    parsers import from it, taken from the copied abs_reasoning_parsers.py."""
    reasoning_pkg = fake_module("vllm.reasoning")
    overrides["vllm.reasoning"] = reasoning_pkg
    load_release(f"vllm-{release}", overrides)
    abstract = importlib.import_module("vllm.reasoning.abs_reasoning_parsers")
    reasoning_pkg.ReasoningParser = abstract.ReasoningParser
    reasoning_pkg.ReasoningParserManager = abstract.ReasoningParserManager


def unstreamed_arguments(expected: str, streamed: str, latest: object) -> str:
    """The finish's remainder of the last call's arguments: what the tool parser parsed less what it
    streamed before this step's own fragment `latest` (serving_chat.py, the `finish_reason` branch)."""
    size = len(latest) if isinstance(latest, str) else 0
    return expected.replace(streamed[:-size] if size > 0 else streamed, "", 1)


def _take_content(delta_message: Any) -> str:
    """The step's text after `</think>`: the tool parser's text from here on, taken out of the delta."""
    if delta_message and delta_message.content:
        text = delta_message.content
        delta_message.content = None
        return text
    return ""


@dataclass
class AutoToolsTurn:
    """serving_chat.py's state for one streamed request with `tool_choice: auto`: with a reasoning
    parser, it sees the text until reasoning ends (`is_reasoning_end` on the prompt or the step's
    ids), then the tool parser sees the content, the first time all of it at once; without one, the
    tool parser sees everything."""

    tool_parser: Any
    reasoner: Any
    extract_reasoning: Callable[..., Any]  # the reasoner's streaming method (0.13.0 renamed it)
    request: Any
    prompt: list[int]
    reasoning_parser: bool
    # 0.10.2 asks whether the prompt ended reasoning only after the reasoning parser has seen the
    # step, and the tool parser takes over from the next step; 0.13.0 asks first and hands the step
    # that ends reasoning to the tool parser at once.
    late_reasoning_end: bool
    previous_text: str = ""
    previous_ids: list[int] = field(default_factory=list)
    reasoning_end: bool = False
    added_content_delta: bool = False
    tools_streamed: bool = False

    def step(self, delta_text: str, output_ids: list[int]) -> Any:
        """The step's delta message (None: nothing to send)."""
        current_text = self.previous_text + delta_text
        current_ids = self.previous_ids + output_ids
        if not self.reasoning_parser:  # the `elif tool_choice_auto:` branch: the tool parser sees everything
            previous = (self.previous_text, self.previous_ids)
            delta_message = self._tools(previous, (current_text, current_ids), (delta_text, output_ids))
        elif self.reasoning_end:
            delta_message = self._content(current_text, current_ids, delta_text, output_ids)
        else:
            reasoned = self._reasoning(current_text, current_ids, delta_text, output_ids)
            delta_message, current_text, current_ids = reasoned
            if self.reasoning_end and not self.late_reasoning_end:
                delta_message = self._content(current_text, current_ids, delta_text, output_ids)
        self.previous_text, self.previous_ids = current_text, current_ids
        return delta_message

    def _reasoning(
        self, current_text: str, current_ids: list[int], delta_text: str, output_ids: list[int]
    ) -> tuple[Any, str, list[int]]:
        """The reasoning parser's delta, and the text and ids the tool parser starts from if the
        step ended reasoning."""
        if not self.late_reasoning_end and self.reasoner.is_reasoning_end(self.prompt):
            self.reasoning_end = True
            return None, current_text, output_ids
        delta_message = self.extract_reasoning(
            self.previous_text, current_text, delta_text, self.previous_ids, current_ids, output_ids
        )
        if self.late_reasoning_end and self.reasoner.is_reasoning_end(self.prompt):
            self.reasoning_end = True
            current_ids = output_ids
            current_text = _take_content(delta_message)
        if self.reasoner.is_reasoning_end(output_ids):
            self.reasoning_end = True
            current_ids = self.reasoner.extract_content_ids(output_ids)
            current_text = _take_content(delta_message)
        return delta_message, current_text, current_ids

    def _content(self, current_text: str, current_ids: list[int], delta_text: str, output_ids: list[int]) -> Any:
        previous, delta = (self.previous_text, self.previous_ids), (delta_text, output_ids)
        if not self.added_content_delta:  # the first content step: all the content so far, as new
            self.added_content_delta = True
            previous, delta = ("", []), (current_text, current_ids)
        return self._tools(previous, (current_text, current_ids), delta)

    def _tools(
        self, previous: tuple[str, list[int]], current: tuple[str, list[int]], delta: tuple[str, list[int]]
    ) -> Any:
        delta_message = self.tool_parser.extract_tool_calls_streaming(
            previous_text=previous[0],
            current_text=current[0],
            delta_text=delta[0],
            previous_token_ids=previous[1],
            current_token_ids=current[1],
            delta_token_ids=delta[1],
            request=self.request,
        )
        if delta_message and delta_message.tool_calls:
            self.tools_streamed = True
        return delta_message


def vllm_stream(release: str, sc: Scenario, split: str) -> bytes:
    protocol = vllm_protocol(release)
    logger_mod = fake_module("vllm.logger", init_logger=logging.getLogger)
    overrides = {"vllm.entrypoints.openai.protocol": protocol, "vllm.logger": logger_mod}
    for name in ("vllm.utils", "vllm.utils.collection_utils"):
        overrides[name] = fake_module(name, is_list_of=is_list_of, import_from_path=AnyStub)
    if release == "0.10.2":
        load_with_reasoning_package(release, overrides)
        tool_mod = importlib.import_module("vllm.entrypoints.openai.tool_parsers.kimi_k2_tool_parser")
    else:
        load_release(f"vllm-{release}", overrides)
        tool_mod = importlib.import_module("vllm.tool_parsers.kimi_k2_tool_parser")
    reasoning_cls = importlib.import_module("vllm.reasoning.deepseek_r1_reasoning_parser").DeepSeekR1ReasoningParser
    tokenizer = FakeTokenizer(K2_SPECIALS)
    tool_parser = tool_mod.KimiK2ToolParser(tokenizer)
    DeltaMessage, Choice, Response = (
        protocol.DeltaMessage,
        protocol.ChatCompletionStreamResponseChoice,
        protocol.ChatCompletionStreamResponse,
    )
    DeltaToolCall, DeltaFunctionCall = protocol.DeltaToolCall, protocol.DeltaFunctionCall
    reasoner = reasoning_cls(tokenizer)
    turn = AutoToolsTurn(
        tool_parser,
        reasoner,
        reasoner.extract_reasoning_content_streaming if release == "0.10.2" else reasoner.extract_reasoning_streaming,
        types.SimpleNamespace(tools=tool_namespace(), tool_choice="auto"),
        k2_prompt(sc),
        sc.reasoning_parser,
        late_reasoning_end=release == "0.10.2",
    )
    out: list[str] = []

    def emit(delta, finish=None, stop_reason=None) -> None:
        kwargs: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        if finish is not None:
            kwargs["stop_reason"] = stop_reason
        if release != "0.10.2" or finish is not None:
            kwargs["token_ids"] = None
        chunk = Response(
            id=RID, object="chat.completion.chunk", created=CREATED, model="kimi", choices=[Choice(**kwargs)]
        )
        out.append(f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n")

    chunk = Response(
        id=RID,
        object="chat.completion.chunk",
        created=CREATED,
        model="kimi",
        choices=[Choice(index=0, delta=DeltaMessage(role="assistant", content=""), logprobs=None, finish_reason=None)],
    )
    out.append(f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n")

    for step in engine_steps(sc, K2_SPECIALS, split, eos=K2_SPECIALS["<|im_end|>"]):
        finish_reason = step.finish
        delta_message = turn.step(step.text, step.ids)
        if delta_message is None:
            if finish_reason is None:
                continue
            delta_message = DeltaMessage()
        if finish_reason is None:
            emit(delta_message)
            continue
        auto_tools_called = len(tool_parser.prev_tool_call_arr) > 0
        index = len(tool_parser.prev_tool_call_arr) - 1 if auto_tools_called else 0
        tc = delta_message.tool_calls
        if tc and tc[0] and tc[0].function and tc[0].function.arguments is not None:
            expected = json.dumps(tool_parser.prev_tool_call_arr[index].get("arguments", {}), ensure_ascii=False)
            streamed = tool_parser.streamed_args_for_tool[index]
            remaining = unstreamed_arguments(expected, streamed, tc[0].function.arguments)
            delta_message = DeltaMessage(
                tool_calls=[
                    DeltaToolCall(
                        index=index, function=DeltaFunctionCall(arguments=remaining).model_dump(exclude_none=True)
                    )
                ]
            )
        final = "tool_calls" if auto_tools_called or turn.tools_streamed else finish_reason
        emit(delta_message, final, None)
    out.append("data: [DONE]\n\n")
    return "".join(out).encode()

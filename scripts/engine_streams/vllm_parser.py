"""vLLM 0.20.0 and 0.34.0: the chunks its chat-completions endpoint streams for one model output,
through the one parser object (`parse_delta` per engine step) over the copied Kimi reasoning and
tool parsers, as chat_completion/serving.py drives it."""

from __future__ import annotations

import importlib
import json
import logging
import sys
import types
from collections.abc import Iterator
from typing import Any

from .outputs import (
    CREATED,
    K2_SPECIALS,
    K3_SPECIALS,
    RID,
    TOOLS,
    EngineStep,
    FakeTokenizer,
    Scenario,
    engine_steps,
    k2_prompt,
)
from .stubs import AnyStub, fake_module
from .vllm import is_list_of, load_with_reasoning_package, tool_call_delta_models, unstreamed_arguments

# -- vLLM 0.34 (vllm/entrypoints/openai/chat_completion/serving.py `chat_completion_stream_generator`
#    and stream_processor.py `ChatStreamProcessor.step`: one parser object, `parse_delta` per engine
#    step; finish from serve/utils/tool_calls_utils.py `resolve_finish_reason`; chunks
#    `model_dump_json(exclude_unset=True, exclude_none=not chunk.choices)`) ---------------------------


def vllm34_protocol() -> tuple[types.ModuleType, types.ModuleType]:
    from pydantic import BaseModel, Field, model_serializer

    OpenAIBaseModel, DeltaFunctionCall, DeltaToolCall = tool_call_delta_models()

    class FunctionCall(OpenAIBaseModel):
        id: str | None = Field(default=None, exclude=True)
        name: str
        arguments: str

    ids = iter(range(10**6))

    class ToolCall(OpenAIBaseModel):
        # as released: `Field(default_factory=make_tool_call_id)`, a random `chatcmpl-tool-<uuid>`
        id: str = Field(default_factory=lambda: f"chatcmpl-tool-{next(ids):032x}")
        type: str = "function"
        function: FunctionCall

    class ExtractedToolCallInformation(BaseModel):
        tools_called: bool
        tool_calls: list[ToolCall]
        content: str | None = None

    class DeltaMessage(OpenAIBaseModel):
        role: str | None = None
        content: str | None = None
        reasoning: str | None = None
        tool_calls: list[DeltaToolCall] = Field(default_factory=list)

        @model_serializer(mode="wrap")
        def _serialize(self, handler):
            data = handler(self)
            if len(data.get("tool_calls", [])) == 0:
                data.pop("tool_calls", None)
            return data

    class Choice(OpenAIBaseModel):
        index: int
        delta: DeltaMessage
        logprobs: dict | None = None
        finish_reason: str | None = None
        stop_reason: int | str | None = None
        token_ids: list[int] | None = None
        weight_versions: list | None = None

    class Response(OpenAIBaseModel):
        id: str
        object: str = "chat.completion.chunk"
        created: int
        model: str
        choices: list[Choice]
        usage: dict | None = Field(default=None)
        system_fingerprint: str | None = None
        prompt_token_ids: list[int] | None = None
        prompt_text: str | None = None
        metrics: dict | None = None
        kv_transfer_params: dict | None = None

    base = fake_module(
        "vllm.entrypoints.generate.base.protocol",
        DeltaFunctionCall=DeltaFunctionCall,
        DeltaToolCall=DeltaToolCall,
        DeltaMessage=DeltaMessage,
        FunctionCall=FunctionCall,
        ToolCall=ToolCall,
        ExtractedToolCallInformation=ExtractedToolCallInformation,
    )

    class FunctionDefinition(OpenAIBaseModel):
        name: str
        description: str | None = None
        parameters: dict | None = None
        strict: bool | None = None

    class ChatCompletionRequest:
        def __init__(self, **fields: Any) -> None:
            self.__dict__.update(fields)

    class ChatCompletionToolsParam(OpenAIBaseModel):
        type: str = "function"
        function: FunctionDefinition

    chat = fake_module(
        "vllm.entrypoints.openai.chat_completion.protocol",
        ChatCompletionToolsParam=ChatCompletionToolsParam,
        ChatCompletionResponseStreamChoice=Choice,
        ChatCompletionStreamResponse=Response,
        ChatCompletionRequest=ChatCompletionRequest,
        ChatCompletionNamedToolChoiceParam=AnyStub,
    )
    return base, chat


def _chat_request(chat: types.ModuleType, sc: Scenario, **release_fields: Any) -> tuple[list[Any], dict[str, Any], Any]:
    """The corpus's one chat turn in the release's classes: its tools, the chat template's kwargs
    (K2.5 is told whether thinking is on) and the request."""
    tools = [chat.ChatCompletionToolsParam(function={"name": n, "parameters": p}) for n, p in TOOLS.items()]
    kwargs = {"thinking": sc.thinking} if sc.model == "k25" else {}
    request = chat.ChatCompletionRequest(
        tools=tools,
        tool_choice="auto",
        messages=[{"role": "user", "content": "Read /tmp/a.txt"}],
        parallel_tool_calls=True,
        include_reasoning=True,
        chat_template_kwargs=kwargs,
        skip_special_tokens=False,
        **release_fields,
    )
    return tools, kwargs, request


def _deltas(
    parser: Any, request: Any, prompt: list[int], all_steps: list[EngineStep], empty: Any, tell_finished: bool
) -> Iterator[tuple[str | None, Any, bool]]:
    """Per engine step that sends a chunk: the engine's finish (on the last step), the parser's
    delta (`empty()` when a finishing step has none) and whether any delta so far carried tool calls.
    `parse_delta` is called once per step; 0.34 also tells it when the step finishes the output."""
    tools_streamed = False
    for step in all_steps:
        finished = {"finished": step.finish is not None} if tell_finished else {}
        delta = parser.parse_delta(
            delta_text=step.text, delta_token_ids=step.ids, request=request, prompt_token_ids=prompt, **finished
        )
        if delta is not None and delta.tool_calls:
            tools_streamed = True
        if delta is None:
            if step.finish is None:
                continue
            delta = empty()
        yield step.finish, delta, tools_streamed


def vllm34_stream(release: str, sc: Scenario, split: str) -> bytes:
    base, chat = vllm34_protocol()
    counter = iter(range(10**6))
    overrides = {
        "vllm.entrypoints.generate.base.protocol": base,
        "vllm.entrypoints.openai.chat_completion.protocol": chat,
        "vllm.logger": fake_module("vllm.logger", init_logger=logging.getLogger),
        "vllm.utils": fake_module("vllm.utils", random_uuid=lambda: f"{next(counter):032x}"),
        "vllm.utils.collection_utils": fake_module(
            "vllm.utils.collection_utils",
            is_list_of=is_list_of,
            as_list=lambda x: x if isinstance(x, list) else list(x),
        ),
    }
    load_with_reasoning_package(release, overrides)
    chat_utils = fake_module("vllm.renderers.chat_utils")
    sys.modules["vllm.renderers.chat_utils"] = chat_utils
    tool_call = importlib.import_module("vllm.renderers.chat_utils.tool_call")
    chat_utils.get_tool_call_id_type = tool_call.get_tool_call_id_type
    chat_utils.make_tool_call_id = tool_call.make_tool_call_id
    abstract = importlib.import_module("vllm.parser.abstract_parser")
    k3 = sc.model == "k3"
    if k3:
        base_cls = importlib.import_module("vllm.parser.kimi_k3").KimiK3Parser
        reasoning_cls = importlib.import_module("vllm.reasoning.kimi_k3_reasoning_parser").KimiK3ReasoningParser
        tool_cls = importlib.import_module("vllm.tool_parsers.kimi_k3_tool_parser").KimiK3ToolParser
    else:
        base_cls = abstract.DelegatingParser
        reasoning_cls = importlib.import_module("vllm.reasoning.kimi_k2_reasoning_parser").KimiK2ReasoningParser
        tool_cls = importlib.import_module("vllm.tool_parsers.kimi_k2_tool_parser").KimiK2ToolParser

    class Parser(base_cls):  # vllm/parser/parser_manager.py `_compose_parser`
        reasoning_parser_cls = reasoning_cls if sc.reasoning_parser else None
        tool_parser_cls = tool_cls
        tool_strict_level = None

    specials = K3_SPECIALS if k3 else K2_SPECIALS
    tokenizer = FakeTokenizer(specials)
    model_config = types.SimpleNamespace(
        hf_config=types.SimpleNamespace(model_type="kimi_k3" if k3 else "kimi_k25"),
        hf_text_config=None,
        hf_overrides=None,
    )
    tools, kwargs, request = _chat_request(chat, sc, response_format=None, structured_outputs=None)
    parser = Parser(tokenizer, tools, chat_template_kwargs=kwargs, model_config=model_config)
    prompt = [1001, specials["<|open|>"], 1002, specials["<|sep|>"]] if k3 else k2_prompt(sc)
    out: list[str] = []
    Response = chat.ChatCompletionStreamResponse
    Choice, DeltaMessage = chat.ChatCompletionResponseStreamChoice, base.DeltaMessage
    first = Response(
        id=RID,
        object="chat.completion.chunk",
        created=CREATED,
        model="kimi",
        prompt_token_ids=None,
        prompt_text=None,
        choices=[Choice(index=0, delta=DeltaMessage(role="assistant", content=""), logprobs=None, finish_reason=None)],
    )
    out.append(f"data: {first.model_dump_json(exclude_unset=True, exclude_none=False)}\n\n")
    all_steps = engine_steps(sc, specials, split, eos=specials["[EOS]"] if k3 else specials["<|im_end|>"])
    for engine_finish, delta, tools_streamed in _deltas(parser, request, prompt, all_steps, DeltaMessage, True):
        finish = None
        if engine_finish is not None:
            finish = "tool_calls" if tools_streamed and engine_finish == "stop" else engine_finish
        if engine_finish is None:
            choice = Choice(index=0, delta=delta, logprobs=None, finish_reason=None, token_ids=None)
        else:
            choice = Choice(
                index=0,
                delta=delta,
                logprobs=None,
                finish_reason=finish,
                stop_reason=None,
                token_ids=None,
                weight_versions=None,
            )
        chunk = Response(
            id=RID,
            object="chat.completion.chunk",
            created=CREATED,
            choices=[choice],
            model="kimi",
            kv_transfer_params=None,
        )
        out.append(f"data: {chunk.model_dump_json(exclude_unset=True, exclude_none=False)}\n\n")
    out.append("data: [DONE]\n\n")
    return "".join(out).encode()


# -- vLLM 0.20 (vllm/entrypoints/openai/chat_completion/serving.py `chat_completion_stream_generator`:
#    the auto-tools branch calls `parser.parse_delta`; the finish keeps the old rules: unstreamed
#    argument remainder, `tool_calls` whenever the tool parser holds a call; protocol in
#    entrypoints/openai/engine/protocol.py and chat_completion/protocol.py) ------------------------


def vllm20_stream(release: str, sc: Scenario, split: str) -> bytes:
    base34, chat34 = vllm34_protocol()
    from pydantic import Field

    class Choice(chat34.ChatCompletionResponseStreamChoice):
        weight_versions: None = Field(default=None, exclude=True)

    class Response(chat34.ChatCompletionStreamResponse):  # 0.20 has no prompt_text/metrics/kv_transfer_params
        pass

    DeltaMessage = base34.DeltaMessage
    # 0.20's engine protocol holds what 0.34's base protocol holds
    engine = fake_module(
        "vllm.entrypoints.openai.engine.protocol", **{k: v for k, v in vars(base34).items() if not k.startswith("__")}
    )
    chat = fake_module(
        "vllm.entrypoints.openai.chat_completion.protocol",
        ChatCompletionRequest=chat34.ChatCompletionRequest,
        ChatCompletionToolsParam=chat34.ChatCompletionToolsParam,
    )
    counter = iter(range(10**6))

    def make_tool_call_id(id_type: str = "random", func_name=None, idx=None) -> str:
        # vllm/entrypoints/chat_utils.py `make_tool_call_id` as released in 0.20.0
        return f"functions.{func_name}:{idx}" if id_type == "kimi_k2" else f"chatcmpl-tool-{next(counter):032x}"

    overrides = {
        "vllm.entrypoints.openai.engine.protocol": engine,
        "vllm.entrypoints.openai.chat_completion.protocol": chat,
        "vllm.entrypoints.chat_utils": fake_module("vllm.entrypoints.chat_utils", make_tool_call_id=make_tool_call_id),
        "vllm.logger": fake_module("vllm.logger", init_logger=logging.getLogger),
        "vllm.utils": fake_module("vllm.utils", random_uuid=lambda: f"{next(counter):032x}"),
        "vllm.utils.collection_utils": fake_module("vllm.utils.collection_utils", is_list_of=is_list_of),
    }
    load_with_reasoning_package(release, overrides)
    abstract = importlib.import_module("vllm.parser.abstract_parser")

    class Parser(abstract._WrappedParser):  # vllm/parser/parser_manager.py
        reasoning_parser_cls = (
            importlib.import_module("vllm.reasoning.kimi_k2_reasoning_parser").KimiK2ReasoningParser
            if sc.reasoning_parser
            else None
        )
        tool_parser_cls = importlib.import_module("vllm.tool_parsers.kimi_k2_tool_parser").KimiK2ToolParser

    tokenizer = FakeTokenizer(K2_SPECIALS)
    tools, kwargs, request = _chat_request(chat34, sc)
    parser = Parser(tokenizer, tools, chat_template_kwargs=kwargs)
    prompt = k2_prompt(sc)
    out: list[str] = []
    first = Response(
        id=RID,
        object="chat.completion.chunk",
        created=CREATED,
        model="kimi",
        prompt_token_ids=None,
        choices=[Choice(index=0, delta=DeltaMessage(role="assistant", content=""), logprobs=None, finish_reason=None)],
    )
    out.append(f"data: {first.model_dump_json(exclude_unset=True)}\n\n")
    all_steps = engine_steps(sc, K2_SPECIALS, split, eos=K2_SPECIALS["<|im_end|>"])
    tool_parser = parser.tool_parser
    for engine_finish, delta, tools_streamed in _deltas(parser, request, prompt, all_steps, DeltaMessage, False):
        if engine_finish is None:
            choice = Choice(index=0, delta=delta, logprobs=None, finish_reason=None, token_ids=None)
        else:
            auto_tools_called = len(tool_parser.prev_tool_call_arr) > 0
            index = len(tool_parser.prev_tool_call_arr) - 1 if auto_tools_called else 0
            tc = delta.tool_calls
            if auto_tools_called and tc and tc[0] and tc[0].function and tc[0].function.arguments is not None:
                args = tool_parser.prev_tool_call_arr[index].get("arguments", {})
                expected = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
                streamed = tool_parser.streamed_args_for_tool[index]
                remaining = unstreamed_arguments(expected, streamed, tc[0].function.arguments)
                # `_create_remaining_args_delta`: id, type and name kept from the delta, the remainder as arguments
                original = next((t for t in delta.tool_calls if t.index == index), None)
                fn = original.function if original else None
                delta = DeltaMessage(
                    tool_calls=[
                        engine.DeltaToolCall(
                            index=index,
                            id=original.id if original else None,
                            type=original.type if original else None,
                            function=engine.DeltaFunctionCall(name=fn.name if fn else None, arguments=remaining),
                        )
                    ]
                )
            finish = "tool_calls" if auto_tools_called or tools_streamed else engine_finish
            choice = Choice(index=0, delta=delta, logprobs=None, finish_reason=finish, stop_reason=None, token_ids=None)
        chunk = Response(id=RID, object="chat.completion.chunk", created=CREATED, choices=[choice], model="kimi")
        out.append(f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n")
    out.append("data: [DONE]\n\n")
    return "".join(out).encode()

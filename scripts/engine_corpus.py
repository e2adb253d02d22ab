"""Regenerates tests/fixtures/engines/corpus.jsonl: the SSE bytes released vLLM and SGLang builds
send for Kimi model outputs, produced by running the Kimi parser code copied from their wheels
(scripts/engine_corpus_copy.py) through each release's own streaming loop.

    .cache/genvenv/bin/python scripts/engine_corpus.py     # needs pydantic, partial-json-parser, regex, orjson

The parser modules run unchanged; only their imports of the rest of the engine are stubbed. The
serving loop around them (which parser sees which text, which chunks go out, finish reasons) is
re-stated here from each release's serving_chat.py, cited per engine below. Each stream is one
model output split into tokens (the real Kimi special-token ids, other text in 1-4 character
tokens) and steps (one or several tokens per engine step)."""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import logging
import pathlib
import re
import sys
import types
from dataclasses import dataclass, field
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "engines"
CORPUS = FIXTURES / "corpus.jsonl"
logging.disable(logging.CRITICAL)

# Kimi K2/K2.5/K2.6 special tokens and ids (tiktoken tokenizer's added tokens; MoonshotAI/Kimi-K2
# issue #128 quotes 163586/163595/163596/163597; the full table as in public tokenizer ports).
K2_SPECIALS = {
    "[EOS]": 163585,
    "<|im_end|>": 163586,
    "<|im_user|>": 163587,
    "<|im_assistant|>": 163588,
    "<|im_system|>": 163594,
    "<|tool_calls_section_begin|>": 163595,
    "<|tool_calls_section_end|>": 163596,
    "<|tool_call_begin|>": 163597,
    "<|tool_call_argument_begin|>": 163598,
    "<|tool_call_end|>": 163599,
    "<|im_middle|>": 163601,
    "<think>": 163606,
    "</think>": 163607,
}
# Kimi K3: the same ids re-spelt (163586 is `<|end_of_msg|>`), channel markers 163587-163589.
K3_SPECIALS = {"[EOS]": 163585, "<|end_of_msg|>": 163586, "<|open|>": 163587, "<|close|>": 163588, "<|sep|>": 163589}


# -- loading the copied modules with stubbed imports ---------------------------------------------


class _AnyMeta(type):
    def __getattr__(cls, name: str) -> Any:
        return _Any

    def __getitem__(cls, item: Any) -> Any:
        return _Any

    def __or__(cls, other: Any) -> Any:
        return _Any

    __ror__ = __or__

    def __iter__(cls):
        return iter(())


class _Any(metaclass=_AnyMeta):
    """What a stubbed import gives: subclassable, callable, a pass-through decorator."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return _Any()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and (isinstance(args[0], type) or callable(args[0])):
            return args[0]
        return _Any()

    def __iter__(self):
        return iter(())

    def __bool__(self) -> bool:
        return False


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Any


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Loads `sglang.*` / `vllm.*` from one release's copied files; stubs the rest of them and
    the engine-only third-party imports (xgrammar, transformers, openai, msgspec)."""

    STUBBED_TOP = ("sglang", "vllm", "xgrammar", "transformers", "openai", "msgspec", "torch")

    def __init__(self, root: pathlib.Path, overrides: dict[str, types.ModuleType]) -> None:
        self.root = root
        self.overrides = overrides

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] not in self.STUBBED_TOP:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=True)

    def create_module(self, spec):
        if spec.name in self.overrides:
            return self.overrides[spec.name]
        source = self.root / (spec.name.replace(".", "/") + ".py")
        module = types.ModuleType(spec.name) if source.exists() else _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        source = self.root / (module.__name__.replace(".", "/") + ".py")
        if module.__name__ not in self.overrides and source.exists():
            module.__file__ = str(source)
            exec(compile(source.read_text(), str(source), "exec"), module.__dict__)


def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []
    module.__dict__.update(attrs)
    return module


def load_release(release: str, overrides: dict[str, types.ModuleType]) -> _Finder:
    for name in list(sys.modules):
        if name.split(".")[0] in _Finder.STUBBED_TOP:
            del sys.modules[name]
    for finder in [f for f in sys.meta_path if isinstance(f, _Finder)]:
        sys.meta_path.remove(finder)
    finder = _Finder(FIXTURES / release, overrides)
    sys.meta_path.insert(0, finder)
    return finder


# -- model outputs and how they are cut into tokens and steps -------------------------------------

WRITE_ARGS = {"path": "/tmp/notes.md", "content": 'line 1\nline "2" \\ end', "options": {"mode": [1, 2], "x": None}}


@dataclass
class Scenario:
    """A model output (raw text with markup) and the turn it means."""

    name: str
    model: str  # k2, k25 (prefilled <think>), k3
    thinking: bool
    output: str
    reasoning: str
    text: str
    calls: list[tuple[str, dict]]
    finish: str  # stop | tool_calls | length
    cut: bool = False  # a call's arguments never closed
    reasoning_parser: bool = True  # the server runs a reasoning parser (off: --reasoning-parser not given)


def k2_call(name: str, index: int, args: dict | str) -> str:
    body = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return f"<|tool_call_begin|>functions.{name}:{index}<|tool_call_argument_begin|>{body}<|tool_call_end|>"


def k2_section(*calls: str) -> str:
    return "<|tool_calls_section_begin|>" + "".join(calls) + "<|tool_calls_section_end|>"


def k3_call(name: str, index: int, args: dict) -> str:
    parts = []
    for key, value in args.items():
        kind = "string" if isinstance(value, str) else "object" if isinstance(value, dict) else "number"
        raw = value if isinstance(value, str) else json.dumps(value)
        parts.append(f'<|open|>argument key="{key}" type="{kind}"<|sep|>{raw}<|close|>argument<|sep|>')
    return f'<|open|>call tool="{name}" index="{index}"<|sep|>' + "".join(parts) + "<|close|>call<|sep|>"


READ = {"path": "/tmp/a.txt"}
EXEC = {"command": "ls -la /tmp"}
CUT = '{"path": "/tmp/notes.md", "content": "partial te'


def scenarios() -> list[Scenario]:
    r = "The user wants the file."
    out: list[Scenario] = []
    for model, prefix in (("k25", ""), ("k2", "<think>")):
        out += [
            Scenario(f"{model}-text", model, True, f"{prefix}{r}</think>Hello there.", r, "Hello there.", [], "stop"),
            Scenario(
                f"{model}-one-call",
                model,
                True,
                f"{prefix}{r}</think>Reading it." + k2_section(k2_call("read", 0, READ)),
                r,
                "Reading it.",
                [("read", READ)],
                "tool_calls",
            ),
        ]
    out += [
        Scenario(
            "k25-two-calls",
            "k25",
            True,
            f"{r}</think>" + k2_section(k2_call("read", 0, READ), k2_call("exec", 1, EXEC)),
            r,
            "",
            [("read", READ), ("exec", EXEC)],
            "tool_calls",
        ),
        Scenario(
            "k25-nested-args",
            "k25",
            True,
            f"{r}</think>" + k2_section(k2_call("write", 0, WRITE_ARGS)),
            r,
            "",
            [("write", WRITE_ARGS)],
            "tool_calls",
        ),
        Scenario(
            "k25-cut-call",
            "k25",
            True,
            f"{r}</think><|tool_calls_section_begin|><|tool_call_begin|>functions.write:0<|tool_call_argument_begin|>{CUT}",
            r,
            "",
            [],
            "length",
            cut=True,
        ),
        Scenario(
            "k25-no-reasoning-parser",
            "k25",
            True,
            f"{r}</think>Reading it." + k2_section(k2_call("read", 0, READ)),
            r,
            "Reading it.",
            [("read", READ)],
            "tool_calls",
            reasoning_parser=False,
        ),
        Scenario("k25-off-text", "k25", False, "Hello there.", "", "Hello there.", [], "stop"),
        Scenario(
            "k25-off-one-call",
            "k25",
            False,
            "Reading it." + k2_section(k2_call("read", 0, READ)),
            "",
            "Reading it.",
            [("read", READ)],
            "tool_calls",
        ),
    ]
    think = f"<|open|>think<|sep|>{r}<|close|>think<|sep|>"
    out += [
        Scenario(
            "k3-text",
            "k3",
            True,
            think + "<|open|>response<|sep|>Hello there.<|close|>response<|sep|>",
            r,
            "Hello there.",
            [],
            "stop",
        ),
        Scenario(
            "k3-two-calls",
            "k3",
            True,
            think
            + "<|open|>response<|sep|>Reading.<|close|>response<|sep|><|open|>tools<|sep|>"
            + k3_call("read", 0, READ)
            + k3_call("exec", 1, EXEC)
            + "<|close|>tools<|sep|>",
            r,
            "Reading.",
            [("read", READ), ("exec", EXEC)],
            "tool_calls",
        ),
    ]
    return out


SPLITS = {"1ch": (1, 1), "1-4ch": (4, 1), "4tok-steps": (4, 3)}  # (max token chars, tokens per step)


_PIECE_IDS: dict[str, int] = {}
_PIECE_TEXT: dict[int, str] = {}


def piece_id(piece: str) -> int:
    """An ordinary-text token's id: one per distinct piece, below the special tokens' range."""
    if piece not in _PIECE_IDS:
        _PIECE_IDS[piece] = 1000 + len(_PIECE_IDS)
        _PIECE_TEXT[_PIECE_IDS[piece]] = piece
    return _PIECE_IDS[piece]


def tokenize(output: str, specials: dict[str, int], max_chars: int) -> list[tuple[str, int]]:
    tokens: list[tuple[str, int]] = []
    i = 0
    size = 0
    while i < len(output):
        special = next((s for s in specials if output.startswith(s, i)), None)
        if special:
            tokens.append((special, specials[special]))
            i += len(special)
            continue
        end = i
        while end < len(output) and not any(output.startswith(s, end) for s in specials):
            end += 1
        if tokens and tokens[-1][0] in ("<|open|>", "<|close|>"):
            # A K3 channel name after its marker is one token ("think", "response", "call", ...).
            name = re.match(r"[a-z_]+", output[i:end])
            if name:
                tokens.append((name.group(), piece_id(name.group())))
                i += len(name.group())
                continue
        while i < end:
            size = size % max_chars + 1
            piece = output[i : min(end, i + size)]
            tokens.append((piece, piece_id(piece)))
            i += len(piece)
    return tokens


def steps(tokens: list[tuple[str, int]], per_step: int) -> list[list[tuple[str, int]]]:
    return [tokens[i : i + per_step] for i in range(0, len(tokens), per_step)]


# -- the engines ----------------------------------------------------------------------------------

TOOLS = {
    "read": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    "exec": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    "write": {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}},
}
RID = "chatcmpl-corpus"
CREATED = 1765000000


@dataclass
class Run:
    events: list[str] = field(default_factory=list)


class FakeTokenizer:
    """Kimi's tokenizer as the parsers see it: the vocabulary of special tokens with real ids."""

    def __init__(self, specials: dict[str, int]) -> None:
        self.specials = specials

    def get_vocab(self) -> dict[str, int]:
        return dict(self.specials)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [i for _, i in tokenize(text, self.specials, 4)]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        by_id = {i: t for t, i in self.specials.items()}
        return "".join(by_id.get(i) or _PIECE_TEXT.get(i, "") for i in ids)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.decode([i]) for i in ids]


def tool_namespace() -> list[Any]:
    return [
        types.SimpleNamespace(
            type="function", function=types.SimpleNamespace(name=n, parameters=p, strict=False, description=None)
        )
        for n, p in TOOLS.items()
    ]


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

    max_chars, per_step = SPLITS[split]
    all_steps = steps(tokenize(sc.output, K3_SPECIALS if k3 else K2_SPECIALS, max_chars), per_step)
    has_tool_calls = False
    for n, step in enumerate(all_steps):
        last = n == len(all_steps) - 1
        finishing = last
        if n == 0:
            (light if modern else pyd)(role="assistant", content="")
        delta = "".join(t for t, _ in step)
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


# -- vLLM (vllm/entrypoints/openai/serving_chat.py `chat_completion_stream_generator`, the
#    `tool_choice_auto and self.reasoning_parser` branch and the finish handling; layout:
#    protocol.py `ChatCompletionStreamResponse.model_dump_json(exclude_unset=True)`) -----------------


def vllm_protocol(release: str) -> types.ModuleType:
    from pydantic import BaseModel, ConfigDict, Field, model_validator

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

    return _module(
        "vllm.entrypoints.openai.protocol",
        DeltaFunctionCall=DeltaFunctionCall,
        DeltaToolCall=DeltaToolCall,
        DeltaMessage=DeltaMessage,
        FunctionCall=FunctionCall,
        ToolCall=ToolCall,
        ExtractedToolCallInformation=ExtractedToolCallInformation,
        ChatCompletionStreamResponseChoice=Choice,
        ChatCompletionStreamResponse=Response,
        ChatCompletionRequest=_Any,
        ResponsesRequest=_Any,
    )


def _is_list_of(value: object, typ: type, *, check: str = "first") -> bool:
    """vllm.utils.is_list_of as released (what register_module uses to accept a list of names)."""
    if not isinstance(value, list):
        return False
    return all(isinstance(v, typ) for v in value) if check == "all" else (not value or isinstance(value[0], typ))


def vllm_stream(release: str, sc: Scenario, split: str) -> bytes:
    protocol = vllm_protocol(release)
    logger_mod = _module("vllm.logger", init_logger=logging.getLogger)
    overrides = {"vllm.entrypoints.openai.protocol": protocol, "vllm.logger": logger_mod}
    for name in ("vllm.utils", "vllm.utils.collection_utils"):
        overrides[name] = _module(name, is_list_of=_is_list_of, import_from_path=_Any)
    if release == "0.10.2":
        reasoning_pkg = _module("vllm.reasoning")
        overrides["vllm.reasoning"] = reasoning_pkg
        load_release(f"vllm-{release}", overrides)
        abs_mod = importlib.import_module("vllm.reasoning.abs_reasoning_parsers")
        reasoning_pkg.ReasoningParser = abs_mod.ReasoningParser
        reasoning_pkg.ReasoningParserManager = abs_mod.ReasoningParserManager
        tool_mod = importlib.import_module("vllm.entrypoints.openai.tool_parsers.kimi_k2_tool_parser")
    else:
        load_release(f"vllm-{release}", overrides)
        tool_mod = importlib.import_module("vllm.tool_parsers.kimi_k2_tool_parser")
    reasoning_cls = importlib.import_module("vllm.reasoning.deepseek_r1_reasoning_parser").DeepSeekR1ReasoningParser
    tokenizer = FakeTokenizer(K2_SPECIALS)
    tool_parser = tool_mod.KimiK2ToolParser(tokenizer)
    reasoner = reasoning_cls(tokenizer)
    extract_reasoning = (
        reasoner.extract_reasoning_content_streaming if release == "0.10.2" else reasoner.extract_reasoning_streaming
    )
    DeltaMessage, Choice, Response = (
        protocol.DeltaMessage,
        protocol.ChatCompletionStreamResponseChoice,
        protocol.ChatCompletionStreamResponse,
    )
    DeltaToolCall, DeltaFunctionCall = protocol.DeltaToolCall, protocol.DeltaFunctionCall
    request = types.SimpleNamespace(tools=tool_namespace(), tool_choice="auto")
    # The prompt's last tokens: K2.5/K2.6 prefill `<think>` (thinking on) or `<think></think>` (off);
    # K2-Thinking's prompt ends at `<|im_middle|>` and the model opens `<think>` itself.
    prompt = [163588, 1001, 163601]
    if sc.model == "k25":
        prompt += [163606] + ([] if sc.thinking else [163607])
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

    max_chars, per_step = SPLITS[split]
    all_steps = steps(tokenize(sc.output, K2_SPECIALS, max_chars), per_step)
    if sc.finish != "length":
        all_steps[-1] = [*all_steps[-1], ("", K2_SPECIALS["<|im_end|>"])]  # EOS: its id, no text
    previous_text, previous_ids = "", []
    reasoning_end = False
    added_content_delta = False
    tools_streamed = False
    for n, step in enumerate(all_steps):
        finish_reason = ("length" if sc.finish == "length" else "stop") if n == len(all_steps) - 1 else None
        delta_text = "".join(t for t, _ in step)
        output_ids = [i for _, i in step]
        current_text = previous_text + delta_text
        current_ids = previous_ids + output_ids
        delta_message = None
        if not sc.reasoning_parser:  # the `elif tool_choice_auto:` branch: the tool parser sees everything
            delta_message = tool_parser.extract_tool_calls_streaming(
                previous_text=previous_text,
                current_text=current_text,
                delta_text=delta_text,
                previous_token_ids=previous_ids,
                current_token_ids=current_ids,
                delta_token_ids=output_ids,
                request=request,
            )
            if delta_message and delta_message.tool_calls:
                tools_streamed = True
        elif release == "0.10.2":
            if not reasoning_end:
                delta_message = extract_reasoning(
                    previous_text, current_text, delta_text, previous_ids, current_ids, output_ids
                )
                if reasoner.is_reasoning_end(prompt):
                    reasoning_end = True
                    current_ids = output_ids
                    if delta_message and delta_message.content:
                        current_text = delta_message.content
                        delta_message.content = None
                    else:
                        current_text = ""
                if reasoner.is_reasoning_end(output_ids):
                    reasoning_end = True
                    current_ids = reasoner.extract_content_ids(output_ids)
                    if delta_message and delta_message.content:
                        current_text = delta_message.content
                        delta_message.content = None
                    else:
                        current_text = ""
            else:
                delta_ids = output_ids
                if not added_content_delta:
                    added_content_delta = True
                    previous_text, previous_ids = "", []
                    delta_text, delta_ids = current_text, current_ids
                delta_message = tool_parser.extract_tool_calls_streaming(
                    previous_text=previous_text,
                    current_text=current_text,
                    delta_text=delta_text,
                    previous_token_ids=previous_ids,
                    current_token_ids=current_ids,
                    delta_token_ids=delta_ids,
                    request=request,
                )
                if delta_message and delta_message.tool_calls:
                    tools_streamed = True
        else:
            if not reasoning_end:
                if reasoner.is_reasoning_end(prompt):
                    reasoning_end = True
                    current_ids = output_ids
                else:
                    delta_message = extract_reasoning(
                        previous_text, current_text, delta_text, previous_ids, current_ids, output_ids
                    )
                    if reasoner.is_reasoning_end(output_ids):
                        reasoning_end = True
                        current_ids = reasoner.extract_content_ids(output_ids)
                        if delta_message and delta_message.content:
                            current_text = delta_message.content
                            delta_message.content = None
                        else:
                            current_text = ""
            if reasoning_end:
                delta_ids = output_ids
                if not added_content_delta:
                    added_content_delta = True
                    previous_text, previous_ids = "", []
                    delta_text, delta_ids = current_text, current_ids
                delta_message = tool_parser.extract_tool_calls_streaming(
                    previous_text=previous_text,
                    current_text=current_text,
                    delta_text=delta_text,
                    previous_token_ids=previous_ids,
                    current_token_ids=current_ids,
                    delta_token_ids=delta_ids,
                    request=request,
                )
                if delta_message and delta_message.tool_calls:
                    tools_streamed = True
        previous_text, previous_ids = current_text, current_ids
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
            latest = len(tc[0].function.arguments) if isinstance(tc[0].function.arguments, str) else 0
            expected = json.dumps(tool_parser.prev_tool_call_arr[index].get("arguments", {}), ensure_ascii=False)
            actual = tool_parser.streamed_args_for_tool[index]
            if latest > 0:
                actual = actual[:-latest]
            remaining = expected.replace(actual, "", 1)
            delta_message = DeltaMessage(
                tool_calls=[
                    DeltaToolCall(
                        index=index, function=DeltaFunctionCall(arguments=remaining).model_dump(exclude_none=True)
                    )
                ]
            )
        final = "tool_calls" if auto_tools_called or tools_streamed else finish_reason
        emit(delta_message, final, None)
    out.append("data: [DONE]\n\n")
    return "".join(out).encode()


# -- vLLM 0.34 (vllm/entrypoints/openai/chat_completion/serving.py `chat_completion_stream_generator`
#    and stream_processor.py `ChatStreamProcessor.step`: one parser object, `parse_delta` per engine
#    step; finish from serve/utils/tool_calls_utils.py `resolve_finish_reason`; chunks
#    `model_dump_json(exclude_unset=True, exclude_none=not chunk.choices)`) ---------------------------


def vllm34_protocol() -> tuple[types.ModuleType, types.ModuleType]:
    from pydantic import BaseModel, ConfigDict, Field, model_serializer

    class OpenAIBaseModel(BaseModel):
        model_config = ConfigDict(extra="allow")

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

    class DeltaFunctionCall(BaseModel):
        name: str | None = None
        arguments: str | None = None

    class DeltaToolCall(OpenAIBaseModel):
        id: str | None = None
        type: str | None = None
        index: int
        function: DeltaFunctionCall | None = None

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

    base = _module(
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

    chat = _module(
        "vllm.entrypoints.openai.chat_completion.protocol",
        ChatCompletionToolsParam=ChatCompletionToolsParam,
        ChatCompletionResponseStreamChoice=Choice,
        ChatCompletionStreamResponse=Response,
        ChatCompletionRequest=ChatCompletionRequest,
        ChatCompletionNamedToolChoiceParam=_Any,
    )
    return base, chat


def vllm34_stream(release: str, sc: Scenario, split: str) -> bytes:
    base, chat = vllm34_protocol()
    counter = iter(range(10**6))
    overrides = {
        "vllm.entrypoints.generate.base.protocol": base,
        "vllm.entrypoints.openai.chat_completion.protocol": chat,
        "vllm.logger": _module("vllm.logger", init_logger=logging.getLogger),
        "vllm.utils": _module("vllm.utils", random_uuid=lambda: f"{next(counter):032x}"),
        "vllm.utils.collection_utils": _module(
            "vllm.utils.collection_utils",
            is_list_of=_is_list_of,
            as_list=lambda x: x if isinstance(x, list) else list(x),
        ),
    }
    reasoning_pkg = _module("vllm.reasoning")
    overrides["vllm.reasoning"] = reasoning_pkg
    load_release(f"vllm-{release}", overrides)
    abs_reasoning = importlib.import_module("vllm.reasoning.abs_reasoning_parsers")
    reasoning_pkg.ReasoningParser = abs_reasoning.ReasoningParser
    reasoning_pkg.ReasoningParserManager = abs_reasoning.ReasoningParserManager
    chat_utils = _module("vllm.renderers.chat_utils")
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
        response_format=None,
        structured_outputs=None,
    )
    parser = Parser(tokenizer, tools, chat_template_kwargs=kwargs, model_config=model_config)
    if k3:
        prompt = [1001, specials["<|open|>"], 1002, specials["<|sep|>"]]
    else:
        prompt = [163588, 1001, 163601]
        if sc.model == "k25":
            prompt += [163606] + ([] if sc.thinking else [163607])
    out: list[str] = []
    first = Response = chat.ChatCompletionStreamResponse
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
    max_chars, per_step = SPLITS[split]
    all_steps = steps(tokenize(sc.output, specials, max_chars), per_step)
    if sc.finish != "length":
        all_steps[-1] = [*all_steps[-1], ("", specials["[EOS]"] if k3 else specials["<|im_end|>"])]
    tools_streamed = False
    for n, step in enumerate(all_steps):
        engine_finish = ("length" if sc.finish == "length" else "stop") if n == len(all_steps) - 1 else None
        delta = parser.parse_delta(
            delta_text="".join(t for t, _ in step),
            delta_token_ids=[i for _, i in step],
            request=request,
            prompt_token_ids=prompt,
            finished=engine_finish is not None,
        )
        if delta is not None and delta.tool_calls:
            tools_streamed = True
        finish = None
        if engine_finish is not None:
            finish = "tool_calls" if tools_streamed and engine_finish == "stop" else engine_finish
        if delta is None:
            if engine_finish is None:
                continue
            delta = DeltaMessage()
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
    engine = _module(
        "vllm.entrypoints.openai.engine.protocol",
        **{
            k: getattr(base34, k)
            for k in (
                "DeltaFunctionCall",
                "DeltaToolCall",
                "DeltaMessage",
                "FunctionCall",
                "ToolCall",
                "ExtractedToolCallInformation",
            )
        },
    )
    chat = _module(
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
        "vllm.entrypoints.chat_utils": _module("vllm.entrypoints.chat_utils", make_tool_call_id=make_tool_call_id),
        "vllm.logger": _module("vllm.logger", init_logger=logging.getLogger),
        "vllm.utils": _module("vllm.utils", random_uuid=lambda: f"{next(counter):032x}"),
        "vllm.utils.collection_utils": _module("vllm.utils.collection_utils", is_list_of=_is_list_of),
    }
    reasoning_pkg = _module("vllm.reasoning")
    overrides["vllm.reasoning"] = reasoning_pkg
    load_release(f"vllm-{release}", overrides)
    abs_reasoning = importlib.import_module("vllm.reasoning.abs_reasoning_parsers")
    reasoning_pkg.ReasoningParser = abs_reasoning.ReasoningParser
    reasoning_pkg.ReasoningParserManager = abs_reasoning.ReasoningParserManager
    abstract = importlib.import_module("vllm.parser.abstract_parser")

    class Parser(abstract._WrappedParser):  # vllm/parser/parser_manager.py
        reasoning_parser_cls = (
            importlib.import_module("vllm.reasoning.kimi_k2_reasoning_parser").KimiK2ReasoningParser
            if sc.reasoning_parser
            else None
        )
        tool_parser_cls = importlib.import_module("vllm.tool_parsers.kimi_k2_tool_parser").KimiK2ToolParser

    tokenizer = FakeTokenizer(K2_SPECIALS)
    tools = [chat34.ChatCompletionToolsParam(function={"name": n, "parameters": p}) for n, p in TOOLS.items()]
    kwargs = {"thinking": sc.thinking} if sc.model == "k25" else {}
    request = chat34.ChatCompletionRequest(
        tools=tools,
        tool_choice="auto",
        messages=[{"role": "user", "content": "Read /tmp/a.txt"}],
        parallel_tool_calls=True,
        include_reasoning=True,
        chat_template_kwargs=kwargs,
        skip_special_tokens=False,
    )
    parser = Parser(tokenizer, tools, chat_template_kwargs=kwargs)
    prompt = [163588, 1001, 163601]
    if sc.model == "k25":
        prompt += [163606] + ([] if sc.thinking else [163607])
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
    max_chars, per_step = SPLITS[split]
    all_steps = steps(tokenize(sc.output, K2_SPECIALS, max_chars), per_step)
    if sc.finish != "length":
        all_steps[-1] = [*all_steps[-1], ("", K2_SPECIALS["<|im_end|>"])]
    tools_streamed = False
    tool_parser = parser.tool_parser
    for n, step in enumerate(all_steps):
        engine_finish = ("length" if sc.finish == "length" else "stop") if n == len(all_steps) - 1 else None
        delta = parser.parse_delta(
            delta_text="".join(t for t, _ in step),
            delta_token_ids=[i for _, i in step],
            request=request,
            prompt_token_ids=prompt,
        )
        if delta and delta.tool_calls:
            tools_streamed = True
        if delta is None:
            if engine_finish is None:
                continue
            delta = DeltaMessage()
        if engine_finish is None:
            choice = Choice(index=0, delta=delta, logprobs=None, finish_reason=None, token_ids=None)
        else:
            auto_tools_called = len(tool_parser.prev_tool_call_arr) > 0
            index = len(tool_parser.prev_tool_call_arr) - 1 if auto_tools_called else 0
            tc = delta.tool_calls
            if auto_tools_called and tc and tc[0] and tc[0].function and tc[0].function.arguments is not None:
                latest = len(tc[0].function.arguments) if isinstance(tc[0].function.arguments, str) else 0
                args = tool_parser.prev_tool_call_arr[index].get("arguments", {})
                expected = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
                actual = tool_parser.streamed_args_for_tool[index]
                if latest > 0:
                    actual = actual[:-latest]
                remaining = expected.replace(actual, "", 1)
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


ENGINES = {
    "sglang-0.5.5": (sglang_stream, "0.5.5", ("k2", "k25")),
    "sglang-0.5.23": (sglang_stream, "0.5.23", ("k2", "k25", "k3")),
    "vllm-0.10.2": (vllm_stream, "0.10.2", ("k2", "k25")),
    "vllm-0.13.0": (vllm_stream, "0.13.0", ("k2", "k25")),
    "vllm-0.20.0": (vllm20_stream, "0.20.0", ("k2", "k25")),
    "vllm-0.34.0": (vllm34_stream, "0.34.0", ("k2", "k25", "k3")),
}


def main() -> None:
    rows = []
    for engine, (run, release, models) in ENGINES.items():
        for sc in scenarios():
            if sc.model not in models:
                continue
            for split in SPLITS:
                body = run(release, sc, split)
                rows.append(
                    {
                        "engine": engine,
                        "scenario": sc.name,
                        "split": split,
                        "model": sc.model,
                        "thinking": sc.thinking,
                        "output": sc.output,
                        "truth": {
                            "reasoning": sc.reasoning,
                            "text": sc.text,
                            "calls": sc.calls,
                            "finish": sc.finish,
                            "cut": sc.cut,
                        },
                        "sse": body.decode(),
                    }
                )
    CORPUS.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(rows)} streams, {CORPUS.stat().st_size} bytes -> {CORPUS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""The model outputs the corpus streams (scenarios with their truth), how an output is cut into
tokens (the real Kimi special-token ids, other text in 1-4 character tokens) and engine steps, and
what every engine's driver shares: the request's tools, the chunk id and the fake tokenizer."""

from __future__ import annotations

import json
import re
import types
from dataclasses import dataclass
from typing import Any, NamedTuple

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


class EngineStep(NamedTuple):
    text: str
    ids: list[int]
    finish: str | None  # on the last step, the engine's reason: `length` when cut at the limit, else `stop`


def engine_steps(sc: Scenario, specials: dict[str, int], split: str, eos: int | None = None) -> list[EngineStep]:
    """`sc`'s output as the engine's steps under `split`; with `eos`, an output that ends (not cut
    at the length limit) ends with that token's id and no text, as vLLM's engine sends it."""
    max_chars, per_step = SPLITS[split]
    all_steps = steps(tokenize(sc.output, specials, max_chars), per_step)
    if eos is not None and sc.finish != "length":
        all_steps[-1] = [*all_steps[-1], ("", eos)]
    finish = "length" if sc.finish == "length" else "stop"
    return [
        EngineStep("".join(t for t, _ in step), [i for _, i in step], finish if n == len(all_steps) - 1 else None)
        for n, step in enumerate(all_steps)
    ]


def k2_prompt(sc: Scenario) -> list[int]:
    """The prompt's last tokens: K2.5/K2.6 prefill `<think>` (thinking on) or `<think></think>` (off);
    K2-Thinking's prompt ends at `<|im_middle|>` and the model opens `<think>` itself."""
    prompt = [K2_SPECIALS["<|im_assistant|>"], 1001, K2_SPECIALS["<|im_middle|>"]]
    if sc.model == "k25":
        prompt += [K2_SPECIALS["<think>"]] + ([] if sc.thinking else [K2_SPECIALS["</think>"]])
    return prompt


# -- what every engine's driver shares -------------------------------------------------------------------

TOOLS = {
    "read": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    "exec": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    "write": {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}},
}
RID = "chatcmpl-corpus"
CREATED = 1765000000


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

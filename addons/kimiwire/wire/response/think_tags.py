"""Reasoning that arrives as `content` with `<think>`/`</think>` tags, split back out (sans-IO).

K2.5/K2.6 chat templates prefill `<think>` at the generation prompt, so the model's output begins
inside reasoning and only writes `</think>`. An engine whose reasoning parser does not expect that
(SGLang's `force_reasoning` off, SMG's `kimi_k25`: smg-project/smg#1873, PR #1992), or that
decides from an earlier `</think>` in the prompt that reasoning is over (vllm PR #32490), streams
the reasoning and a literal `</think>` (or a whole `<think>…</think>` block) as content, the tags
split across chunks.

One splitter per choice: content text in, (reasoning text, content text) out, no tags left.

When text is held (the decision needs it), and for how long:
- at the start of a choice's content, while everything seen is whitespace (at most
  `LEADING_WHITESPACE_LIMIT` characters) or whitespace and a proper prefix of `<think>`/`</think>`:
  at most 64 + 7 characters, only until the first other character;
- afterwards, a tail that is a proper prefix of `</think>` (at most 7 characters, only when the
  text ends in `<`, `</`, …), until the next text decides it; inside reasoning also a proper
  prefix of `<|tool_calls_section_begin|>` (at most 27 characters).
Nothing else is held, so a content stream that never holds a think tag is delayed by nothing
but a trailing `<…` prefix.

What the start decides:
- `<think>` first: reasoning until `</think>`, then content;
- `</think>` first (the reasoning came in its own field): the tag is dropped;
- anything else: content, unless `prefilled` (the request went to a K2.5/K2.6 model with thinking
  on, so its output starts inside reasoning) and no reasoning came in its own field: then the
  content is forwarded at once as reasoning until `</think>`. A copy is kept; if the choice ends
  without `</think>` the text was the answer after all and goes out again as content (the client
  then sees it twice, never loses it). A tool section also ends reasoning, as SGLang's and vLLM's
  Kimi reasoning parsers end it at `<|tool_calls_section_begin|>` (the marker and what follows go
  out as content, where the markup scanner finds the calls); so does a tool-call delta.
- A `</think>` after content already went out is removed (`think.late_close`): what was sent
  cannot be taken back.
"""

from __future__ import annotations

from typing import Literal

OPEN = "<think>"
CLOSE = "</think>"
SECTION_BEGINS = ("<|tool_calls_section_begin|>", "<|tool_call_section_begin|>")
LEADING_WHITESPACE_LIMIT = 64


def _prefix_tail(text: str, token: str) -> int:
    """Length of the longest end of `text` that is a proper start of `token` (which opens with `<`)."""
    at = text.find("<", max(0, len(text) - len(token) + 1))
    while at != -1:
        if token.startswith(text[at:]):
            return len(text) - at
        at = text.find("<", at + 1)
    return 0


def _section_begin(text: str) -> int:
    found = [at for token in SECTION_BEGINS if (at := text.find(token)) != -1]
    return min(found, default=-1)


# Where the splitter is: before any text, in the reasoning, in the content (after `</think>`).
SplitState = Literal["start", "reasoning", "content"]


class ThinkTagSplitter:
    def __init__(self, prefilled: bool = False) -> None:
        self.prefilled = prefilled
        self.state: SplitState = "start"
        self.pending = ""
        self.copy: list[str] | None = None  # content forwarded as reasoning on the prefill assumption
        self.copy_size = 0
        self.events: list[str] = []  # repair kinds, drained by the caller

    @property
    def held(self) -> int:
        return len(self.pending) + self.copy_size

    def passes_unchanged(self, text: str) -> bool:
        """True when `feed(text)` would return ("", text) and hold nothing (a cheap check)."""
        return self.state == "content" and not self.pending and "<" not in text[-len(CLOSE) :] and CLOSE not in text

    def reasoning_seen(self) -> None:
        """The choice streamed reasoning in its own field: its content comes after reasoning."""
        if self.state == "start":
            self.prefilled = False

    def feed(self, text: str) -> tuple[str, str]:
        if self.passes_unchanged(text):
            return "", text
        reasoning: list[str] = []
        content: list[str] = []
        self._take(self.pending + text, reasoning, content)
        return "".join(reasoning), "".join(content)

    def end_reasoning(self) -> tuple[str, str]:
        """A tool call starts: reasoning, if open, is over."""
        if self.state == "reasoning":
            held, self.pending, self.copy, self.copy_size, self.state = self.pending, "", None, 0, "content"
            return held, ""
        if self.state == "start":
            held, self.pending, self.state = self.pending, "", "content"
            return "", held
        return "", ""

    def finish(self) -> tuple[str, str]:
        """The choice ends: what is held goes out."""
        held, self.pending = self.pending, ""
        if self.state == "reasoning":
            copy, self.copy, self.copy_size = self.copy, None, 0
            if copy is not None:
                self.events.append("think.unclosed_resent")
                return held, "".join(copy) + held
            return held, ""
        return "", held

    def _take(self, text: str, reasoning: list[str], content: list[str]) -> None:
        self.pending = ""
        while text:
            if self.state == "start":
                text = self._start(text)
            elif self.state == "reasoning":
                text = self._reasoning(text, reasoning)
            else:
                text = self._content(text, content)

    def _start(self, text: str) -> str:
        stripped = text.lstrip()
        if not stripped:
            if len(text) <= LEADING_WHITESPACE_LIMIT:
                self.pending = text
                return ""
            self.state = "content"
            return text
        if stripped.startswith(OPEN):
            self.state = "reasoning"
            self.events.append("think.open_tag")
            return stripped[len(OPEN) :]
        if stripped.startswith(CLOSE):
            self.state = "content"
            self.events.append("think.orphan_close")
            return stripped[len(CLOSE) :]
        if len(text) - len(stripped) <= LEADING_WHITESPACE_LIMIT and (
            OPEN.startswith(stripped) or CLOSE.startswith(stripped)
        ):
            self.pending = text
            return ""
        if self.prefilled:
            self.state = "reasoning"
            self.copy = []
            self.events.append("think.prefilled")
        else:
            self.state = "content"
        return text

    def _reasoning(self, text: str, reasoning: list[str]) -> str:
        at = text.find(CLOSE)
        section = _section_begin(text)
        if section != -1 and (at == -1 or section < at):
            reasoning.append(text[:section])
            self.state, self.copy, self.copy_size = "content", None, 0
            self.events.append("think.ended_by_tool_section")
            return text[section:]
        if at != -1:
            reasoning.append(text[:at])
            self.state, self.copy, self.copy_size = "content", None, 0
            self.events.append("think.close_tag")
            return text[at + len(CLOSE) :]
        keep = max(_prefix_tail(text, CLOSE), *(_prefix_tail(text, token) for token in SECTION_BEGINS))
        out = text[: len(text) - keep]
        reasoning.append(out)
        if self.copy is not None:
            self.copy.append(out)
            self.copy_size += len(out)
        self.pending = text[len(out) :]
        return ""

    def _content(self, text: str, content: list[str]) -> str:
        at = text.find(CLOSE)
        if at != -1:
            content.append(text[:at])
            self.events.append("think.late_close")
            return text[at + len(CLOSE) :]
        keep = _prefix_tail(text, CLOSE)
        content.append(text[: len(text) - keep])
        self.pending = text[len(text) - keep :]
        return ""


def split_think_tags(text: str) -> tuple[str, str, list[str]]:
    """A whole message's content split at once: (reasoning, content, events). Seen whole, the
    text before the first `</think>` is reasoning even without `<think>`: nothing went out early."""
    splitter = ThinkTagSplitter(prefilled=CLOSE in text)
    reasoning, content = splitter.feed(text)
    more_reasoning, more_content = splitter.finish()
    return reasoning + more_reasoning, content + more_content, splitter.events

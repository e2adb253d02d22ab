"""Text an engine sends again with calls it repeats (sans-IO): vLLM's Kimi parser re-sends its
buffer as content at a tool section's end (choice_calls.ChoiceCalls.recovered_calls tells the
repeated calls); the text that came with them and repeats the end of what the client already
got is dropped."""

from __future__ import annotations

from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.response.markup import CONTENT, MarkupScanner
from kimiwire.wire.response.reasoning_field import TEXT_KEYS


def unrepeated(scanner: MarkupScanner, emitted: str, scanners: dict[str, MarkupScanner], log: RepairLog) -> str:
    """`emitted` (what `scanner` lets out with repeated calls), or "" when it repeats the end of
    what the client already got. With no reasoning parser, vLLM 0.13's buffer holds the
    reasoning, `</think>` and the text (the think splitter sent the first as reasoning and removed
    the tag): then it is the end of the reasoning followed by the end of the text."""
    tail = scanner.tail or ""
    before = tail[: len(tail) - len(emitted)]
    if not emitted.strip() or scanner.field != CONTENT:
        return emitted
    if before.endswith(emitted):
        scanner.tail = before
        log.add("text.repeated", None, "content", emitted[-200:])
        return ""
    if repeats_across_think(emitted, _reasoning_tail(scanners), before):
        scanner.tail = before
        log.add("text.repeated", None, "reasoning and content", emitted[-200:])
        return ""
    return emitted


def _reasoning_tail(scanners: dict[str, MarkupScanner]) -> str:
    for key in TEXT_KEYS[1:]:
        scanner = scanners.get(key)
        if scanner is not None and scanner.tail:
            return scanner.tail
    return ""


def repeats_across_think(text: str, reasoning_tail: str, content_tail: str) -> bool:
    """`text` is an end of the reasoning delivered followed by an end of the content delivered
    (the reasoning part not empty). Bounded: the tails are at most TAIL_LIMIT characters, and
    only the split points the common end of `text` and `content_tail` allows are tried."""
    if not reasoning_tail or len(text) > len(reasoning_tail) + len(content_tail):
        return False
    common = 0
    limit = min(len(text), len(content_tail))
    while common < limit and text[-1 - common] == content_tail[-1 - common]:
        common += 1
    last = reasoning_tail[-1]
    return any(
        text[split - 1] == last and reasoning_tail.endswith(text[:split])
        for split in range(max(1, len(text) - common), len(text) + 1)
    )

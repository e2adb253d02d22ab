"""The per-read fast path of the stream repairer: one byte scan of a whole upstream read decides
that every event in it would pass through the full path unchanged, so it is forwarded as it came
without parsing (most events of a stream are plain content or reasoning deltas).

Conservative by construction: any byte the full path might act on sends the read to the full path.
The read must be whole single-line `data: {...}` events (LF only, nothing left over), each with
exactly one choice, index 0, `finish_reason` null, and none of: tool calls, `<` (Kimi markup and
think tags; also its JSON escape), usage, error objects, `[DONE]`.
"""

from __future__ import annotations


def chunk_needs_repair(chunk: bytes) -> bool:
    """True when some byte of `chunk` may concern a repair (no parsing: substring scans; each
    costs about as much as a tenth of a JSON parse, so only what the checks below leave open)."""
    return (
        b"tool_calls" in chunk
        or chunk.find(b"<") != -1  # <|tool_call...|>, <think>, </think>, and a possible start of either
        or b"\\u003" in chunk  # "<" escaped (\u003c); also a few harmless characters, which is fine
        or b"usage" in chunk
        or chunk.find(b"\r") != -1
    )


def plain_events(chunk: bytes) -> int:
    """The number of events in `chunk` when it is nothing but whole plain text deltas of choice 0
    that the full path forwards unchanged; 0 when the full path must look at it. `[DONE]` and error
    objects fail the `choices` check."""
    if chunk[:7] != b"data: {" or chunk[-2:] != b"\n\n":
        return 0
    if chunk.find(b"\n") == len(chunk) - 2:
        events = 1  # the usual read: one event
    else:
        events = chunk.count(b"\n\n")
        if chunk.count(b"\n") != 2 * events or chunk.count(b"\n\ndata: {") != events - 1:
            return 0  # not all blocks are one `data: {` line (comments, `event:` lines, partial events)
    if (
        chunk.count(b'"choices":[{"index":0,') != events
        or chunk.count(b'"index":') != events
        or chunk.count(b'"finish_reason":') != chunk.count(b'"finish_reason":null')
        or b"},{" in chunk  # a second choice (it could lack an index)
        or chunk_needs_repair(chunk)
    ):
        return 0
    return events


def text_seen(chunk: bytes, keys: tuple[str, ...]) -> list[bool] | None:
    """For each text key, whether some event of a plain chunk carries a non-empty string under
    it; None when a key is not written compactly (`"key":"`), so only a parse can tell."""
    seen = []
    for key in keys:
        name = b'"' + key.encode() + b'"'
        compact = chunk.count(name + b':"')
        if chunk.count(name) != compact:
            return None
        seen.append(compact > chunk.count(name + b':""'))
    return seen

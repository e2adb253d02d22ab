"""What a flow's mark and comment say about its retries (mitmweb's flow list, `~marked`,
`~comment retr`): `kimiwire: retried=2 why=status,empty`, and `ended=retries_exhausted` when no
attempt answered. Read from the record's `attempts` as captures keep them; extra fields in an
attempt are ignored, missing ones cost the word, never an error."""

from __future__ import annotations

from typing import Any

from kimiwire.mitm.flow_endings import RETRY_ENDINGS, FlowEnding, kind_of

MARKER = ":wrench:"  # kimiwire changed or ended the flow
ERROR_MARKER = ":warning:"  # the client got a failure, or kimiwire failed on the flow
__all__ = ["ERROR_MARKER", "MARKER", "RETRY_ENDINGS", "gave_up", "retry_words"]


def retry_words(record: dict[str, Any]) -> list[str]:
    attempts = record.get("attempts")
    if not isinstance(attempts, list):
        return []
    retries = [a for a in attempts[1:] if isinstance(a, dict)]
    if not retries:
        return []
    whys: list[str] = []
    for attempt in retries:
        why = attempt.get("why")
        if isinstance(why, str) and why and why not in whys:
            whys.append(why)
    words = [f"retried={len(retries)}"]
    if whys:
        words.append("why=" + ",".join(whys))
    if gave_up(record):
        words.append("ended=retries_exhausted")
    return words


def gave_up(record: dict[str, Any]) -> bool:
    """No attempt answered: the client got the failure."""
    return kind_of(record.get("ending")) == FlowEnding.RETRIES_EXHAUSTED

"""Flows read from files (`-r`, mitmweb's Open) rather than proxied: they are shown as they were
recorded, never repaired again. kimiwire counts them from their records for `kimi.stats`, and
gives a retried flow of a capture written before retries were marked its mark and comment."""

from __future__ import annotations

from collections import Counter
from typing import Any

from mitmproxy import http

from kimiwire.mitm.flow_notes import ERROR_MARKER, MARKER, gave_up, retry_words


class LoadedFlows:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, flow: http.HTTPFlow) -> None:
        record = flow.metadata.get("kimiwire")
        if not isinstance(record, dict) or "policy" not in record:
            return
        counts = self.counts
        counts["flows"] += 1
        if record.get("errors"):
            counts["flows_with_errors"] += 1
        for repair in record.get("repairs") or []:
            if isinstance(repair, dict):
                counts[f"repair:{repair.get('kind')}"] += 1
        ending = record.get("ending")
        if isinstance(ending, str):
            counts[f"ending:{ending.split(':', 1)[0]}"] += 1
        words = retry_words(record)
        if words:
            counts["retry:flows"] += 1
            attempts = record.get("attempts") or []
            counts["retry:attempts"] += max(0, len(attempts) - 1)
            if gave_up(record):
                counts["retry:exhausted"] += 1
            if "retried=" not in (flow.comment or ""):
                flow.comment = " ".join([flow.comment or "kimiwire:", *words])
                flow.marked = ERROR_MARKER if gave_up(record) else flow.marked or MARKER

    def summary(self) -> dict[str, Any]:
        counts = self.counts

        def group(prefix: str) -> dict[str, int]:
            return {k[len(prefix) :]: v for k, v in sorted(counts.items()) if k.startswith(prefix)}

        return {
            "flows": counts.get("flows", 0),
            "flows_with_errors": counts.get("flows_with_errors", 0),
            "repairs": group("repair:"),
            "retries": group("retry:"),
            "endings": group("ending:"),
        }

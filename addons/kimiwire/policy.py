"""Upstream flavors and the repair policies chosen for them (what the options mean, no IO)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Flavor(StrEnum):
    SELFHOSTED = "selfhosted"  # SGLang / vLLM serving the Kimi chat template
    MOONSHOT = "moonshot"  # api.moonshot.ai / .cn, platform.kimi.ai
    DEEPINFRA = "deepinfra"


FLAVOR_CHOICES = ("auto", *(f.value for f in Flavor))
TOOL_IDS_CHOICES = ("canonical", "keep")
REASONING_CHOICES = ("auto", "strip", "loop", "keep")
TOOL_STREAM_CHOICES = ("whole", "passthrough")
REASONING_FIELD_CHOICES = ("keep", "reasoning_content", "reasoning", "both")

_MOONSHOT_HOST_SUFFIXES = ("moonshot.ai", "moonshot.cn", "kimi.ai", "kimi.com")
_DEEPINFRA_HOST_SUFFIXES = ("deepinfra.com",)


def _host_matches(host: str, suffixes: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == s or host.endswith("." + s) for s in suffixes)


def detect_flavor(host: str) -> Flavor:
    if _host_matches(host, _MOONSHOT_HOST_SUFFIXES):
        return Flavor.MOONSHOT
    if _host_matches(host, _DEEPINFRA_HOST_SUFFIXES):
        return Flavor.DEEPINFRA
    return Flavor.SELFHOSTED


def resolve_flavor(option: str, host: str) -> Flavor:
    return detect_flavor(host) if option == "auto" else Flavor(option)


@dataclass(frozen=True, slots=True)
class Policy:
    """The repairs in force for one flow, after `auto` has been resolved."""

    flavor: Flavor = Flavor.SELFHOSTED
    tool_ids: str = "canonical"
    reasoning: str = "strip"  # strip | loop | keep
    tool_stream: str = "whole"
    reasoning_field: str = "keep"
    stream_buffer_limit: int = 8 * 1024 * 1024

    @classmethod
    def build(
        cls,
        flavor: Flavor,
        tool_ids: str = "canonical",
        reasoning: str = "auto",
        tool_stream: str = "whole",
        reasoning_field: str = "keep",
        stream_buffer_limit: int = 8 * 1024 * 1024,
    ) -> Policy:
        if reasoning == "auto":
            reasoning = "strip" if flavor is Flavor.SELFHOSTED else "loop"
        return cls(flavor, tool_ids, reasoning, tool_stream, reasoning_field, stream_buffer_limit)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Policy:
        return cls(
            Flavor(str(data["flavor"])),
            str(data["tool_ids"]),
            str(data["reasoning"]),
            str(data["tool_stream"]),
            str(data["reasoning_field"]),
            int(data["stream_buffer_limit"]),  # type: ignore[call-overload]
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "flavor": self.flavor.value,
            "tool_ids": self.tool_ids,
            "reasoning": self.reasoning,
            "tool_stream": self.tool_stream,
            "reasoning_field": self.reasoning_field,
            "stream_buffer_limit": self.stream_buffer_limit,
        }

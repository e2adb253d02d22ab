"""The addon's `kimi_*` options as one table, and the frozen `Settings` read from them.

Each `Option` row says everything about one option: its name, mitmproxy type, default, help
text, choices, the parser that turns the option's value into a typed value (refusing a bad one
with the option's name in the message), and which part of the addon it feeds. `register` adds
every row to mitmproxy's loader; `Settings.from_options` reads them all at once, validated.

A new option is one row in `OPTIONS` plus its typed field in `Settings` (named as the option
without `kimi_`); tests/unit/mitm/test_options.py fails until both exist and the README's Options
table lists it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from types import SimpleNamespace
from typing import Any

from mitmproxy import exceptions

from kimiwire.wire import chat_exchanges
from kimiwire.wire.retry.policy import DEFAULT_RETRY_ON, RetryPolicy
from kimiwire.wire.servers.policy import (
    FLAVOR_CHOICES,
    POLICY_OPTIONS,
    Arguments,
    Finish,
    FlavorOption,
    History,
    Markup,
    ReasoningField,
    ReasoningOption,
    RequestCompat,
    ThinkingFields,
    ThinkTags,
    ToolIds,
    ToolStream,
    flavor_option,
)
from kimiwire.wire.stream_endings import EndingLimits, parse_seconds

PREFIX = "kimi_"


class Feeds(StrEnum):
    """The part of the addon an option feeds (what `configure` rebuilds when it changes)."""

    POLICY = "policy"  # the repair policy of each flow (PolicyCache)
    ENDINGS = "endings"  # EndingLimits, every one times kimi_timeout_scale
    RETRY = "retry"  # the RetryPolicy
    CAPTURE = "capture"  # the capture file, redaction, replay credentials
    PROXY = "proxy"  # the proxy's own answers and behaviour (errors, limits, health, start-up, shutdown)


Parser = Callable[[str, Any], Any]  # (option name, option value) -> typed value; ValueError refuses it


def as_is(name: str, value: Any) -> Any:
    """mitmproxy has checked the type already."""
    return value


def seconds(name: str, value: Any) -> float:
    return parse_seconds(value, name)


def scale(name: str, value: Any) -> float:
    factor = parse_seconds(value, name)
    if factor == 0:  # (0 would switch every timeout off)
        raise ValueError(f"{name} must be more than 0")
    return factor


def one_of(choices: tuple[str, ...]) -> Parser:
    def choice(name: str, value: Any) -> str:
        # mitmproxy does not enforce `choices` for --set, so they are checked here (exits at start-up).
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)} (got {value!r})")
        return str(value)

    return choice


def one_flavor(name: str, value: Any) -> FlavorOption:
    return flavor_option(one_of(FLAVOR_CHOICES)(name, value))


def count(name: str, value: Any) -> int:
    if value < 0:
        raise ValueError(f"{name} must be 0 or more")
    return int(value)


def byte_limit(name: str, value: Any) -> int:
    if value < 0:
        raise ValueError(f"{name} must be 0 (no limit) or a number of bytes")
    return int(value)


def buffer_size(name: str, value: Any) -> int:
    if value < 1024:
        raise ValueError(f"{name} must be at least 1024 bytes")
    return int(value)


def file_name(name: str, value: Any) -> str:
    if "/" in value or value in (".", ".."):
        raise ValueError(f"{name} must be a plain file name")
    return str(value)


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    type: type
    default: str | int | bool
    help: str
    feeds: Feeds
    choices: tuple[str, ...] | None = None
    parse: Parser = as_is

    @property
    def field(self) -> str:
        """The `Settings` field it fills."""
        return self.name.removeprefix(PREFIX)

    def value(self, options: Any) -> Any:
        return self.parse(self.name, getattr(options, self.name))


def _choice(name: str, choices: tuple[str, ...], help_text: str) -> Option:
    """The first choice is the default."""
    return Option(name, str, choices[0], help_text, Feeds.POLICY, choices, one_of(choices))


OPTIONS: tuple[Option, ...] = (
    Option(
        "kimi_flavor",
        str,
        "auto",
        "Upstream flavor: auto (from the upstream host, and on a self-hosted one the engine its /v1/models "
        "and first answers name), selfhosted (SGLang or vLLM), sglang, vllm, moonshot, deepinfra, openrouter.",
        Feeds.POLICY,
        FLAVOR_CHOICES,
        one_flavor,
    ),
    # the repair switches, also `--<field>` of scripts/replay (wire/servers/policy.py)
    *(_choice(f"{PREFIX}{field}", choices, help_text) for field, (choices, help_text) in POLICY_OPTIONS.items()),
    Option(
        "kimi_stream_buffer_limit",
        int,
        8 * 1024 * 1024,
        "Most bytes of tool-call arguments and held-back text buffered per stream; past it the "
        "stream is forwarded unrepaired.",
        Feeds.POLICY,
        parse=buffer_size,
    ),
    Option(
        "kimi_max_request_bytes",
        int,
        32 * 1024 * 1024,
        "Largest chat request body, after content-encoding is decoded; a larger one is answered 413 with "
        "an OpenAI-style JSON error (checked while decoding, so a compressed bomb is never inflated); "
        "0 disables.",
        Feeds.PROXY,
        parse=byte_limit,
    ),
    Option(
        "kimi_done_grace",
        str,
        "1",
        "Seconds after data: [DONE] (or after the last finish_reason) before the proxy ends the "
        "client's body itself when the upstream keeps it open.",
        Feeds.ENDINGS,
        parse=seconds,
    ),
    Option(
        "kimi_idle_timeout",
        str,
        "60",
        "Seconds without an upstream event (comments do not count) after the first before a stream is ended "
        "with an error event, or retried when it has no answer yet (never earlier, at most an eighth later: "
        "plain text events are counted, not timed); 0 disables.",
        Feeds.ENDINGS,
        parse=seconds,
    ),
    Option(
        "kimi_tool_idle_timeout",
        str,
        "600",
        "Seconds without an upstream event while a tool call may be under way unseen (a tool section "
        "held, arguments open, or a K3 request with tools: servers hold a call until it is complete) "
        "before the stream is ended like kimi_idle_timeout; 0 disables.",
        Feeds.ENDINGS,
        parse=seconds,
    ),
    Option(
        "kimi_shutdown_grace",
        str,
        "2",
        "Seconds, at SIGTERM/SIGINT, to end open streams cleanly (what was held, a proxy_shutdown error event, "
        "[DONE]) before the proxy stops; 0: streams are torn as the connections close.",
        Feeds.PROXY,  # not scaled by kimi_timeout_scale
        parse=seconds,
    ),
    Option(
        "kimi_first_byte_timeout",
        str,
        "60",
        "Seconds from the request to the upstream's response headers before answering 504 (or retrying: "
        "stall); 0 disables.",
        Feeds.ENDINGS,
        parse=seconds,
    ),
    Option(
        "kimi_first_event_timeout",
        str,
        "90",
        "Seconds from the request to the stream's first event (its time to first token, prefill included) "
        "before the stream is retried (stall) or ended with an error event; 0 disables.",
        Feeds.ENDINGS,
        parse=seconds,
    ),
    Option(
        "kimi_keepalive",
        str,
        "10",
        "While a streaming client has no answer yet (before the first event, during a retry), an SSE "
        "comment `: kimiwire waiting for upstream` after this many seconds of silence; 0 disables.",
        Feeds.ENDINGS,
        parse=seconds,
    ),
    Option(
        "kimi_timeout_scale",
        str,
        "1",
        "Multiplies every time limit (done grace, idle, first byte, first event, keepalive, retry budget and "
        "backoff), so the defaults' ratios can be run faster (tests) or slower.",
        Feeds.ENDINGS,  # and the retry budget and backoff
        parse=scale,
    ),
    Option(
        "kimi_retry_on",
        str,
        DEFAULT_RETRY_ON,
        "When to ask the upstream again, a comma list of: empty, reasoning_only, stall, connect, status, "
        "invalid_call, schema (opt-in), forced_tool. Empty: no retries and no checks (empty turns pass as they "
        "come).",
        Feeds.RETRY,  # its reasons are checked by RetryPolicy.parse
    ),
    Option("kimi_retries", int, 2, "Extra attempts per request after the first (0: none).", Feeds.RETRY, parse=count),
    Option(
        "kimi_gc_freeze",
        bool,
        True,
        "Once started (and after a script reload), keep the objects alive then out of the garbage "
        "collector's full passes (gc.freeze): modules and options are never garbage.",
        Feeds.PROXY,
    ),
    Option(
        "kimi_worker_processes",
        bool,
        True,
        "Repair request bodies from 2 MiB up, and redact them for the capture, in two worker processes "
        "(started at first use, ended after a minute idle), so other streams keep their pace meanwhile; "
        "false does it in the proxy's own process, for environments that forbid spawning processes or "
        "where memory is tight (a worker keeps what a large body's parse grew it to until it exits).",
        Feeds.PROXY,
    ),
    Option(
        "kimi_retry_budget",
        str,
        "200",
        "Seconds for all attempts of one request, counted from the request (at defaults: two attempts that "
        "stall before their first event, and a third).",
        Feeds.RETRY,
        parse=seconds,
    ),
    Option(
        "kimi_retry_backoff",
        str,
        "0.5",
        "Seconds of the first backoff between attempts; it doubles per attempt, with full jitter "
        "(a longer Retry-After is honoured within the budget).",
        Feeds.RETRY,
        parse=seconds,
    ),
    Option(
        "kimi_retry_stream",
        bool,
        True,
        "Retries of a streamed request are streamed; false sends them non-streamed and delivers the answer "
        "as SSE (vLLM's parser loses calls under load only when streaming, vllm#54701).",
        Feeds.RETRY,
    ),
    Option(
        "kimi_hedge_after",
        str,
        "0",
            "Seconds from the request without a first event before a second attempt of a streamed turn starts "
            "beside the first (whichever shows content first answers, the other is cancelled; one extra prefill); "
            "0: off.",
        Feeds.RETRY,
        parse=seconds,
    ),
    Option(
        "kimi_fallback_upstream",
        str,
        "",
            "scheme://host[:port] of a fallback upstream: when the attempts on the primary run out by connect, "
            "status or stall, one attempt goes there (the client's path and original body, repaired for "
            "kimi_fallback_flavor). Empty: none.",
        Feeds.RETRY,
    ),
    Option(
        "kimi_fallback_flavor",
        str,
        "auto",
            "The fallback upstream's flavor (as kimi_flavor; auto: by its host).",
        Feeds.RETRY,
        FLAVOR_CHOICES,
        one_flavor,
    ),
    Option(
        "kimi_fallback_key_env",
        str,
        "",
            "Name of an environment variable holding the fallback's API key (sent as Authorization: Bearer; "
            "never logged or captured). Empty: the client's Authorization goes to the fallback.",
        Feeds.RETRY,
    ),
    Option(
        "kimi_lazy_connect",
        bool,
        True,
        "Set connection_strategy to lazy: in reverse mode mitmproxy's default (eager) drops clients without "
        "any answer when the upstream is down.",
        Feeds.PROXY,
    ),
    Option(
        "kimi_json_errors",
        bool,
        True,
        "Answer upstream failures with OpenAI-style errors (502/504 JSON bodies; an error event, [DONE] and "
        "a clean end mid-stream) instead of mitmproxy's HTML page or a torn connection.",
        Feeds.PROXY,
    ),
    Option(
        "kimi_capture_dir",
        str,
        "captures",
        "Folder for capture files (one per proxy run, every chat-completions flow with what the client "
        "sent, what the upstream sent and what the client received); empty disables capturing.",
        Feeds.CAPTURE,
    ),
    Option(
        "kimi_capture_name",
        str,
        "",
        "File name of this run's capture in kimi_capture_dir (default kimiwire-<start time>-<pid>.mitm).",
        Feeds.CAPTURE,
        parse=file_name,
    ),
    Option(
        "kimi_health_path",
        str,
        chat_exchanges.HEALTH_PATH,
        "Path the proxy answers itself with 200 and kimi.stats as JSON (for load balancers' health checks); "
        "empty forwards it upstream like any other path.",
        Feeds.PROXY,
    ),
    Option(
        "kimi_capture_required",
        bool,
        True,
        "Stop at start-up when kimi_capture_dir cannot be written; false: run on, with a warning repeated "
        "at shutdown and in kimi.stats (later flows are still tried).",
        Feeds.CAPTURE,
    ),
    Option(
        "kimi_redact",
        str,
        "",
        "More header, query parameter and JSON body field names (comma-separated, any case) redacted in "
        "captures, besides every name that looks like a credential.",
        Feeds.CAPTURE,
    ),
    Option(
        "kimi_replay_auth",
        str,
        "",
        "Credential for client replay (-C) of captures, whose credentials are redacted: env:NAME reads "
        "the environment variable NAME, anything else is the credential itself.",
        Feeds.CAPTURE,
    ),
    Option(
        "kimi_error_names_upstream",
        bool,
        False,
        "Name the upstream's address (scheme://host:port) in the error answers sent to clients; off: "
        "they say 'the upstream' (the address stays in the log and the capture).",
        Feeds.PROXY,
    ),
)


def register(loader: Any) -> None:
    """Every row, as a mitmproxy option (the addon's `load`)."""
    for option in OPTIONS:
        loader.add_option(option.name, option.type, option.default, option.help, choices=option.choices)


def names(feeds: Feeds) -> frozenset[str]:
    """The options that feed one part of the addon."""
    return frozenset(option.name for option in OPTIONS if option.feeds is feeds)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every `kimi_*` option's value, parsed and checked; one field per `OPTIONS` row."""

    flavor: FlavorOption
    tool_ids: ToolIds
    reasoning: ReasoningOption
    thinking_fields: ThinkingFields
    history: History
    request_compat: RequestCompat
    tool_stream: ToolStream
    markup: Markup
    arguments: Arguments
    finish: Finish
    think_tags: ThinkTags
    reasoning_field: ReasoningField
    stream_buffer_limit: int
    max_request_bytes: int
    done_grace: float
    idle_timeout: float
    tool_idle_timeout: float
    shutdown_grace: float
    first_byte_timeout: float
    first_event_timeout: float
    keepalive: float
    timeout_scale: float
    retry_on: str
    retries: int
    gc_freeze: bool
    worker_processes: bool
    retry_budget: float
    retry_backoff: float
    retry_stream: bool
    hedge_after: float
    fallback_upstream: str
    fallback_flavor: FlavorOption
    fallback_key_env: str
    lazy_connect: bool
    json_errors: bool
    capture_dir: str
    capture_name: str
    health_path: str
    capture_required: bool
    redact: str
    replay_auth: str
    error_names_upstream: bool

    @classmethod
    def from_options(cls, options: Any, rows: Iterable[Option] = OPTIONS) -> Settings:
        """The settings `options` (mitmproxy's ctx.options) hold; a bad value raises OptionsError
        naming its option."""
        try:
            settings = cls(**{option.field: option.value(options) for option in rows})
            settings.retry_policy()  # the retry reasons are checked where they are parsed
        except ValueError as exc:
            raise exceptions.OptionsError(str(exc)) from None
        return settings

    @classmethod
    def defaults(cls) -> Settings:
        return cls.from_options(SimpleNamespace(**{option.name: option.default for option in OPTIONS}))

    def ending_limits(self) -> EndingLimits:
        return EndingLimits(
            done_grace=self.done_grace,
            idle_timeout=self.idle_timeout,
            first_byte_timeout=self.first_byte_timeout,
            first_event_timeout=self.first_event_timeout,
            tool_idle_timeout=self.tool_idle_timeout,
            keepalive=self.keepalive,
        ).scaled(self.timeout_scale)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy.parse(
            self.retry_on,
            self.retries,
            self.retry_budget * self.timeout_scale,
            self.retry_backoff * self.timeout_scale,
            self.retry_stream,
        )

    def policy_options(self) -> dict[str, Any]:
        """The keyword arguments of `PolicyCache` besides the flavor."""
        return {"stream_buffer_limit": self.stream_buffer_limit} | {
            field: getattr(self, field) for field in POLICY_OPTIONS
        }

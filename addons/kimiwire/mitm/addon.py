"""The mitmproxy adapter: hooks, and the bookkeeping on each flow (the options: mitm/options.py).

Hooks stay thin: they pick the flows, call the sans-IO repairs and record what happened.
An exception inside a hook never breaks a flow: the flow passes through, the error is logged
and recorded on it. Each flow's state between hooks is one `FlowState` (mitm/flow_state.py),
created in the request hook, found by flow id in the later hooks, dropped when the flow ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import orjson
from mitmproxy import command, ctx, exceptions, http

from kimiwire.mitm import client_errors, large_capture, options, proxy_internals, request_limits
from kimiwire.mitm.capture import CaptureFile, saved_state
from kimiwire.mitm.command_types import JSONObject
from kimiwire.mitm.early_head import EarlyHead, LateAnswer
from kimiwire.mitm.fallback import Fallback, Target
from kimiwire.mitm.flow_notes import ERROR_MARKER, MARKER, RETRY_ENDINGS, gave_up, retry_words
from kimiwire.mitm.flow_state import FlowState, FlowStates, loop_running
from kimiwire.mitm.headers import append_header, read_headers, remove_header, set_body, set_header
from kimiwire.mitm.hedge import HedgeRace
from kimiwire.mitm.loaded_flows import LoadedFlows
from kimiwire.mitm.options import Feeds, Settings
from kimiwire.mitm.proxy_internals import EndKind, EndOutcome
from kimiwire.mitm.request_worker import OFFLOAD_BYTES, Raised, RecordedRepairs, RequestWorker
from kimiwire.mitm.retry import (
    Attempt,
    ClientGone,
    Failure,
    Retrier,
    Sink,
    Success,
    client_gone,
    exhausted_events,
    final_events,
    retry_error_message,
)
from kimiwire.mitm.status_stream import HeldError, hold_for_retry, will_retry
from kimiwire.mitm.stream_callable import DecodingStream, ProxyEnd, RepairingStream
from kimiwire.mitm.upstream_probe import UpstreamDetector, reverse_upstreams
from kimiwire.mitm.watchdog import StreamWatchdog
from kimiwire.wire import chat_exchanges, replay_credentials
from kimiwire.wire.content_decoding import (
    BodyDecoder,
    DecodedTooLarge,
    DecodingError,
    content_encoding,
    decode_body,
)
from kimiwire.wire.detection import Detection
from kimiwire.wire.early_answer import events_for_error_body
from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.openai_errors import error_body, error_event
from kimiwire.wire.policy import Policy, PolicyCache
from kimiwire.wire.redaction import Redactor, carries_placeholder, url_for_log
from kimiwire.wire.repairs import RepairLog
from kimiwire.wire.request.repair import RequestRepairResult, repair_request_body
from kimiwire.wire.request.token_limit import clamp_max_tokens
from kimiwire.wire.response.completion_repair import repair_completion_body
from kimiwire.wire.response.continuation import Continuation
from kimiwire.wire.response.stream_repair import StreamRepairer
from kimiwire.wire.response.turn_gate import TurnGate
from kimiwire.wire.retry_outcome import exhausted_answer
from kimiwire.wire.retry_policy import RETRY_STATUSES, decide, lasting_connect_failure, retry_after_seconds
from kimiwire.wire.sse import DONE_EVENT
from kimiwire.wire.stream_endings import KEEPALIVE_COMMENT, EndingLimits

logger = logging.getLogger("kimiwire")

# Endings where the proxy cut the flow short (or answered it itself); the others are clean ends.
CUT_SHORT = frozenset(
    {
        "idle_timeout",
        "first_event_timeout",
        "first_byte_timeout",
        "upstream_error",
        "upstream_error_mid_stream",
        "client_disconnected",
        "closed",
        "request_too_large",
        "request_refused",
        "shutdown",
    }
)

# A compressed upstream chunk (at most 64 KiB per read) that decodes to more than this is a bomb.
_MIN_DECODED_CHUNK = 1 << 20

_NO_LIMIT = 1 << 40

_POLICY_OPTION_NAMES = options.names(Feeds.POLICY)

_REQUEST_HEADERS = frozenset({b"content-type", b"content-encoding", b"accept-encoding"})
_RESPONSE_HEADERS = frozenset({b"content-type", b"content-encoding", b"content-length", b"transfer-encoding"})


class KimiWire:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.limits = EndingLimits()
        self.flows = FlowStates()
        self._shut_down = False  # done() ran: hooks that come later (connections torn down) are ignored
        self.capture: CaptureFile | None = None
        self.viewer_only = False  # no proxy listens and nothing is replayed: no live traffic to capture
        self.loaded = LoadedFlows()
        self.capture_problem: str | None = None
        self.redactor = Redactor()
        self.replay_credential: str | None = None
        self.retrier = Retrier(self.counts)
        self.request_worker = RequestWorker()
        self._capture_tasks: set[asyncio.Task[None]] = set()  # large flows' captures under way
        self.settings = Settings.defaults()  # every kimi_* option, read by `configure` (mitm/options.py)
        # Option values the hooks read on every flow, copied from the settings by `configure`
        # (an option lookup in mitmproxy is slow next to an attribute; a flow made over a dozen of them).
        self.health_path = chat_exchanges.HEALTH_PATH
        self.max_request_bytes = 0
        self.json_errors = True
        self.error_names_upstream = False
        self.shutdown_grace = 2.0
        self._policies = PolicyCache()
        self.fallback: Fallback | None = None
        self.hedge_after = 0.0
        self._fallback_policies: PolicyCache | None = None  # made when first needed
        self.retrier.fallback_for = self._fallback_target
        self.detector = UpstreamDetector(self.retrier.client.get, self._learned)

    # -- options ---------------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        options.register(loader)

    def configure(self, updated: set[str]) -> None:
        settings = self.settings = Settings.from_options(ctx.options)  # raises OptionsError naming a bad value
        self.retrier.policy = settings.retry_policy()
        self.limits = self.retrier.limits = settings.ending_limits()
        self.hedge_after = settings.hedge_after * settings.timeout_scale
        if updated & {"kimi_capture_dir", "kimi_capture_name", "server", "client_replay"}:
            if self.capture is not None:
                self.capture.close()
            folder = settings.capture_dir
            # `-n` without `-C` (mitmweb -n -r FILE: a viewer): no flow will be captured, so no
            # capture file, no folder made private, nothing said about captures.
            self.viewer_only = not ctx.options.server and not ctx.options.client_replay
            self.capture = CaptureFile(folder, settings.capture_name) if folder and not self.viewer_only else None
        if updated & {"kimi_capture_dir", "kimi_capture_name", "kimi_capture_required", "server", "client_replay"}:
            self._check_capture_folder()
        if updated & {"kimi_fallback_upstream", "kimi_fallback_flavor", "kimi_fallback_key_env"}:
            self._configure_fallback()
        if "kimi_redact" in updated:
            self.redactor = Redactor.from_option(settings.redact)
        if "kimi_replay_auth" in updated:
            self.replay_credential, problem = replay_credentials.resolve_credential(settings.replay_auth, os.environ)
            if problem:
                logger.warning("kimiwire: %s; replayed flows go without credentials", problem)
        self._copy_options(updated)

    def _configure_fallback(self) -> None:
        settings = self.settings  # (the flavor is checked with the other options)
        try:
            self.fallback = Fallback.parse(
                settings.fallback_upstream, settings.fallback_flavor, settings.fallback_key_env, os.environ
            )
        except ValueError as exc:
            raise exceptions.OptionsError(str(exc)) from None
        self._fallback_policies = None
        if self.fallback is not None:
            logger.info("kimiwire: fallback upstream %s", self.fallback.describe())

    def _fallback_target(self, flow: http.HTTPFlow) -> Target | None:
        """The fallback attempt for `flow` (the client's own body repaired for the fallback), or None."""
        fallback, state = self.fallback, self.flows.get(flow)
        if fallback is None or state is None or state.client_body is None:
            return None
        if self._fallback_policies is None:
            self._fallback_policies = PolicyCache(fallback.flavor, **self.settings.policy_options())
        policy = self._fallback_policies.policy(fallback.host)
        limits = self.limits
        seconds = max(limits.first_byte_timeout, limits.first_event_timeout) + limits.idle_timeout
        headers = [(k, v) for k, v in state.client_headers or []]
        target = fallback.target(flow.request.path, headers, state.client_body, policy, seconds or 600.0)
        self._note(flow, f"one attempt on the fallback upstream {target.name}")
        return target

    def _copy_options(self, updated: set[str]) -> None:
        settings = self.settings
        self.health_path = settings.health_path
        self.max_request_bytes = settings.max_request_bytes
        self.json_errors = settings.json_errors
        self.error_names_upstream = settings.error_names_upstream
        self.shutdown_grace = settings.shutdown_grace
        if updated & _POLICY_OPTION_NAMES:
            self._fallback_policies = None
            self._policies = PolicyCache(settings.flavor, **settings.policy_options())
            self.detector.enabled = settings.flavor == "auto"
            for host, detection in self.detector.each():
                self._learned(host, detection)

    def _learned(self, host: str, detection: Detection) -> None:
        """The detector found out more about the upstream `host`: `auto` follows it."""
        self._policies.learn(host, detection.flavor(host), detection.switch_models())

    def _check_capture_folder(self) -> None:
        self.capture_problem = None
        if self.capture is None:
            return
        try:
            self.capture.prepare()
        except OSError as exc:
            self.capture_problem = f"cannot write captures in {self.capture.folder}: {exc}"
            if self.settings.capture_required:
                raise exceptions.OptionsError(
                    f"kimiwire: {self.capture_problem} (kimi_capture_dir= disables captures; "
                    "kimi_capture_required=false runs on without them)"
                ) from None
            logger.warning("kimiwire: %s; running on, flows that cannot be written are counted", self.capture_problem)

    def running(self) -> None:
        # Reverse mode connects upstream eagerly by default: when the upstream is down the client
        # is dropped without any answer (and its SDK retries). Lazy connections turn that into an
        # error response the client can read.
        if self.settings.lazy_connect and ctx.options.connection_strategy == "eager" and not self.viewer_only:
            ctx.options.update(connection_strategy="lazy")
            logger.info("kimiwire: connection_strategy set to lazy, so upstream failures reach clients as errors")
        if self.settings.json_errors and not proxy_internals.install_error_answers():
            logger.warning("kimiwire: upstream failures will reach clients as mitmproxy's HTML error page")
        if self.capture is not None:
            read = " (flows read from files are not)" if ctx.options.rfile else ""
            logger.info("kimiwire: live chat flows are captured in %s%s", self.capture.path, read)
        elif self.viewer_only:
            logger.info("kimiwire: no proxy listens: flows read from files are shown as recorded, not repaired again")
        if self.retrier.policy.active and self.retrier.policy.retries > 0:
            self.retrier.client.get()  # the TLS context loads its CA bundle now, not on the first retry
        if self.detector.enabled:
            self.detector.start(reverse_upstreams(ctx.options.mode))
        if self.settings.gc_freeze:
            freeze_startup_heap()

    def stats_summary(self) -> str:
        counts = dict(sorted(self.counts.items()))
        counts["active_tasks"] = self.active_tasks
        counts["pending_error_answers"] = proxy_internals.pending_error_answers()
        return " ".join(f"{k}={v}" for k, v in counts.items())

    @command.command("kimi.stats")
    def stats(self) -> JSONObject:
        """kimiwire's counters as JSON: live traffic (repairs by kind, flows seen, flows with errors, bytes in
        and out), under read_from_files the flows read from files (-r), counted from their records, and
        under upstreams what kimi_flavor=auto found of each upstream (mitm/upstream_probe.py)."""
        counts = dict(self.counts)
        return JSONObject.of(
            {
                "counts": "live traffic through this proxy; flows read from files are under read_from_files",
                "flows": counts.get("flows.chat", 0),
                "flows_with_errors": counts.get("flows.error", 0) + counts.get("addon.error", 0),
                "refused_too_large": counts.get("flows.refused_too_large", 0),
                "bytes_from_upstream": counts.get("bytes.upstream", 0),
                "bytes_to_clients": counts.get("bytes.delivered", 0),
                "repairs": {
                    k: v
                    for k, v in sorted(counts.items())
                    if "." in k and k.split(".")[0] not in ("flows", "bytes", "ending", "addon", "retry")
                },
                "retries": {k[6:]: v for k, v in sorted(counts.items()) if k.startswith("retry.")},
                "endings": {k[7:]: v for k, v in sorted(counts.items()) if k.startswith("ending.")},
                "active_tasks": self.active_tasks,
                "open_flows": len(self.flows),  # flow states not yet freed (requests under way)
                "captured": self.capture.flows_written if self.capture else 0,
                "capture_file": str(self.capture.path) if self.capture and self.capture.flows_written else None,
                "capture_lost": self.capture.flows_lost if self.capture else 0,
                "capture_error": (self.capture.last_error if self.capture else None) or self.capture_problem,
                "read_from_files": self.loaded.summary(),
                "upstreams": self.detector.detections(),
            }
        )

    def done(self) -> Any:
        """At shutdown (SIGTERM, SIGINT) open streams are first ended cleanly, within
        kimi_shutdown_grace; on a script reload everything is let go at once."""
        master = getattr(ctx, "master", None)
        stopping = master is not None and master.should_exit.is_set() and loop_running()
        if stopping and (self._capture_tasks or (self.shutdown_grace > 0 and self._open_streams())):
            return self._done_after_grace()
        self._done_now()
        return None

    def _open_streams(self) -> list[tuple[FlowState, RepairingStream]]:
        return [
            (state, state.stream)
            for state in self.flows.open_states()
            if state.stream is not None and state.flow.live and not state.stream.ended and state.is_chat
        ]

    async def _done_after_grace(self) -> None:
        """Each open stream gets what was held, a proxy_shutdown error event and [DONE], and its
        body ends (the response hook then records and captures it as usual)."""
        streams = self._open_streams() if self.shutdown_grace > 0 else []
        if streams:
            logger.info("kimiwire: shutting down: ending %d open stream(s) cleanly", len(streams))
            endings = [state.spawn(self._end_stream(state, stream, ProxyEnd.SHUTDOWN)) for state, stream in streams]
            _, late = await asyncio.wait(endings, timeout=self.shutdown_grace)
            if late:
                logger.warning("kimiwire: %d stream(s) not ended within kimi_shutdown_grace", len(late))
            await asyncio.sleep(0)  # the response hooks the endings started
        if self._capture_tasks:  # large flows' records are written before the capture is closed
            await asyncio.wait(set(self._capture_tasks))
        self._done_now()

    def _done_now(self) -> None:
        logger.info("kimiwire stats: %s", self.stats_summary())
        self._shut_down = True
        self.detector.cancel()
        self._finish_open_flows()
        if self.capture is not None:
            if self.capture.flows_lost or self.capture_problem:
                problem = f"; {self.capture_problem}" if self.capture_problem else ""
                logger.warning("kimiwire: %s%s", self.capture.summary(), problem)
            elif self.capture.flows_written:
                logger.info("kimiwire: %s", self.capture.summary())
            self.capture.close()
        self.flows.clear()
        self.request_worker.close()

    def _finish_open_flows(self) -> None:
        """At shutdown (SIGTERM, SIGINT) the flows still under way are recorded as they are now:
        delivered is what was written to the client. mitmproxy's error hooks for them come after
        this, while connections are torn down, and are ignored."""
        for state in self.flows.open_states():
            flow = state.flow
            if not state.is_chat or not flow.live:
                continue
            try:
                state.release()
                self._ending(state, "shutdown")
                if state.stream is not None and flow.response is not None:
                    flow.response.content = state.stream.upstream_bytes()
                    self._record_stream(state, state.stream)
            except Exception as exc:
                self._record_error(flow, "shutdown", exc)
            self._flow_over(flow)

    @property
    def active_tasks(self) -> int:
        return self.flows.active_tasks

    def _ending(self, state: FlowState, how: str) -> None:
        """Record how the flow ended (the first call wins); kimi.stats counts it once, when the flow is over."""
        if state.set_ending(how):
            kind = how.split(":", 1)[0]
            if kind in CUT_SHORT or kind in RETRY_ENDINGS:  # findable: ~marked, ~comment ended, ~comment retr
                self._describe(state)

    def _count_ending(self, state: FlowState) -> None:
        """One ending per chat flow in kimi.stats: the one its record keeps (a retry may replace the
        first attempt's), or, for a flow nothing ended early, natural (or error, when it failed)."""
        flow = state.flow
        ending = state.record.setdefault("ending", "natural" if flow.error is None else "error")
        self.counts[f"ending.{str(ending).split(':', 1)[0]}"] += 1

    def policy_for(self, flow: http.HTTPFlow) -> Policy:
        return self._policies.policy(flow.request.host)

    # -- bookkeeping -----------------------------------------------------------------------

    def _record_repairs(self, flow: http.HTTPFlow, phase: str, log: RepairLog) -> None:
        if not log:
            return
        record = self.flows.of(flow).record
        for entry in log.as_list():
            entry["phase"] = phase
            record["repairs"].append(entry)
        self.counts.update(log.counts())
        self._describe(self.flows.of(flow))
        logger.info("kimiwire %s %s %s: %s", phase, flow.request.method, url_for_log(flow.request.path), log.summary())

    def _keep_repairs(self, flow: http.HTTPFlow, phase: str, recorded: RecordedRepairs) -> None:
        """`_record_repairs` for a log the request worker made ready for the record."""
        self.flows.of(flow).record["repairs"].extend(recorded.entries)
        self.counts.update(recorded.counts)
        self._describe(self.flows.of(flow))
        logger.info(
            "kimiwire %s %s %s: %s", phase, flow.request.method, url_for_log(flow.request.path), recorded.summary
        )

    @staticmethod
    def _describe(state: FlowState) -> None:
        """The flow's mark and comment for humans (mitmweb): repairs by kind, a cut-short ending,
        the places where kimiwire failed."""
        flow, record = state.flow, state.record
        counts = Counter(r["kind"] for r in record["repairs"])
        words = [f"{k}={n}" for k, n in sorted(counts.items())] + record.get("flags", []) + retry_words(record)
        ending = str(record.get("ending", "")).split(":", 1)[0]
        if ending in CUT_SHORT:
            words.append(f"ended={ending}")
        if not words and not state.failed_in:
            return
        if gave_up(record):
            flow.marked = ERROR_MARKER  # the client got the failure
        elif not flow.marked:
            flow.marked = MARKER
        flow.comment = " ".join(["kimiwire:", *words, *(f"error in {where}" for where in state.failed_in)])

    def _record_error(self, flow: http.HTTPFlow, where: str, exc: BaseException) -> None:
        logger.exception(
            "kimiwire: %s failed on %s; the flow passes through unrepaired", where, url_for_log(flow.request.url)
        )
        self.flows.of(flow).record["errors"].append(f"{where}: {type(exc).__name__}: {exc}")
        self.counts["addon.error"] += 1
        flow.marked = ERROR_MARKER
        state = self.flows.of(flow)
        state.failed_in.append(where)
        self._describe(state)

    def _note(self, flow: http.HTTPFlow, text: str) -> None:
        self.flows.of(flow).record["notes"].append(text)
        logger.info("kimiwire: %s %s: %s", flow.request.method, url_for_log(flow.request.path), text)

    # -- hooks -----------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not flow.live or self._shut_down or not self.max_request_bytes or not self.json_errors:
            return  # (without error answers the request hook answers 413, once the body is in)
        limit = self.max_request_bytes
        self._guarded(flow, "request size", lambda f: request_limits.enforce(f, limit, self._refused_while_arriving))

    def _refused_while_arriving(self, received: int) -> None:
        self.counts["flows.refused_too_large"] += 1
        logger.info(
            "kimiwire: request body refused after %d bytes (kimi_max_request_bytes=%d)",
            received,
            self.max_request_bytes,
        )

    def request(self, flow: http.HTTPFlow) -> Any:
        if not flow.live:
            self.loaded.add(flow)  # read from a file: it was repaired when it was live
            return None
        if self._shut_down:
            return None
        req = flow.request
        method, path = req.method, req.path
        if chat_exchanges.is_health_check(method, path, self.health_path):
            body = orjson.dumps({"status": "ok", "pid": os.getpid(), **self.stats()})
            flow.response = http.Response.make(200, body, {"content-type": "application/json"})
            return None
        off_loop = None
        try:
            off_loop = self._start_chat_flow(flow, method, path)
        except Exception as exc:
            self._record_error(flow, "request", exc)
        if off_loop is not None:
            return self._request_after(flow, off_loop)  # mitmproxy awaits it before sending the request
        self._request_done(flow)
        return None

    async def _request_after(self, flow: http.HTTPFlow, off_loop: Any) -> None:
        try:
            await off_loop
        except Exception as exc:
            self._record_error(flow, "request", exc)
        self._request_done(flow)

    def _request_done(self, flow: http.HTTPFlow) -> None:
        if flow.is_replay == "request":
            self._guarded(flow, "replay credentials", self._restore_credentials)
        self._guarded(flow, "early head", self._plan_early_head)
        self._guarded(flow, "hedge", self._plan_hedge)

    def _plan_hedge(self, flow: http.HTTPFlow) -> None:
        state = self.flows.get(flow)
        policy = self.retrier.policy
        if self.hedge_after <= 0 or state is None or state.facts is None or not state.facts.stream:
            return
        if flow.response is not None or not policy.watches("stall") or policy.retries < 1:
            return  # (the hedge answers as the stall's retry)
        if not loop_running() or not proxy_internals.usable():
            return
        wait = max(0.0, flow.request.timestamp_start + self.hedge_after - time.time())
        state.hedge_timer = asyncio.get_running_loop().call_later(wait, self._hedge_due, state)

    def _first_sent_event(self, state: FlowState) -> bool:
        """Has the first attempt sent the client an event (more than comments)?"""
        return state.stream is not None and bool(state.stream.times.events_seen)

    def _hedge_due(self, state: FlowState) -> None:
        """kimi_hedge_after passed (a timer callback: never raises): the hedge starts unless the
        first attempt sent an event, or a retry is under way already."""
        state.hedge_timer = None
        flow = state.flow

        def start(_: http.HTTPFlow) -> None:
            context = state.repairs_context
            if context is None or not flow.live or "attempts" in state.record or self._first_sent_event(state):
                return
            if state.stream is not None and (state.stream.ended or state.stream.failed_turn is not None):
                return
            facts, wire_policy = context
            race = HedgeRace(flow, lambda: self._first_sent_event(state), lambda: self._end_first(state), self.counts)
            attempt = Attempt(2, "hedge")
            state.hedge = race
            race.start(
                attempt,
                lambda sink: self.retrier.stream_attempt(
                    flow, attempt, facts, wire_policy, race.continuation, sink, race.success
                ),
            )
            self._note(flow, f"no first event after {self.hedge_after:g} s: a hedged attempt started")

        self._guarded(flow, "hedge", start)

    def _end_first(self, state: FlowState) -> None:
        """The hedge showed content first: the first attempt ends (its retry adopts the hedge)."""
        flow, stream = state.flow, state.stream
        if stream is not None:
            state.spawn(self._end_stream(state, stream, ProxyEnd.FIRST_EVENT))
        elif flow.response is None:
            proxy_internals.close_upstream(flow)

    def _plan_early_head(self, flow: http.HTTPFlow) -> None:
        """A streamed chat request from an HTTP/1 client: an early head and comments while the
        upstream sends no headers (mitm/early_head.py)."""
        state = self.flows.get(flow)
        keepalive = self.limits.keepalive
        if state is None or state.facts is None or not state.facts.stream or flow.response is not None:
            return
        if keepalive <= 0 or not self.json_errors or not loop_running() or not proxy_internals.can_answer(flow):
            return
        state.early_head = EarlyHead(flow, state.record, keepalive, self._early_comment)
        state.early_head.start()

    def _early_comment(self) -> None:
        self.counts["retry.keepalive_comments"] += 1

    def _start_chat_flow(self, flow: http.HTTPFlow, method: str, path: str) -> Any:
        """Every chat flow gets the ending guarantees (first-byte timeout, JSON error answers, a
        watched and cleanly ended stream), whether or not its body can be read and repaired."""
        req = flow.request
        headers = read_headers(req.headers, _REQUEST_HEADERS)
        chat, why_not = chat_exchanges.is_chat_completions(method, path, headers.get(b"content-type", ""))
        if not chat:
            if why_not:
                self._note(flow, f"request not repaired: {why_not}")
            return
        self.counts["flows.chat"] += 1
        detected = self.detector.seen(req.scheme, req.host, req.port, path)
        policy = self.policy_for(flow)
        state = self.flows.start(flow)
        state.policy = policy
        state.facts = RequestFacts()  # until the body says more
        record = state.record
        record["limits"] = self.limits.as_dict()
        record["policy"] = self._policies.as_dict(policy)
        if detected is not None:
            record["detection"] = detected
        record["facts"] = state.facts.as_dict()
        # What the client sent goes into the capture. (Not flow.backup(): it copies the whole flow
        # state on the path to the upstream, which showed up in time to first byte.)
        if self.capture is not None:
            state.client_request = req.get_state()
        # Upstream compression would reach the stream callable still compressed.
        accept_encoding = headers.get(b"accept-encoding")
        if accept_encoding is None:
            append_header(req.headers, b"accept-encoding", b"identity")
        elif accept_encoding != "identity":
            set_header(req.headers, b"accept-encoding", b"identity")
        header = headers.get(b"content-encoding", "")
        # A compressed body goes to the worker whatever its size: a few KB may inflate to the limit.
        if (header or len(req.raw_content or b"") >= OFFLOAD_BYTES) and loop_running():
            return self._prepare_off_loop(state, header)
        raw = self._request_body(state, header)
        if raw is None:
            return None
        self._keep_client_request(state, raw)
        self._start_first_byte_timer(state)
        try:
            self._repair_request(state, raw)
        except Exception as exc:
            self._record_error(flow, "request repair", exc)
        return None

    async def _prepare_off_loop(self, state: FlowState, header: str) -> None:
        """A large body: decoded and repaired in the request worker, the results applied here."""
        encoded = state.flow.request.raw_content or b""
        limit = self.max_request_bytes or _NO_LIMIT
        decoded = await self.request_worker.run(_decoded_request, encoded, header, limit)
        raw = self._request_body(state, header, decoded)
        if raw is None:
            return
        self._keep_client_request(state, raw)
        self._start_first_byte_timer(state)
        if not raw:
            return
        done = await self.request_worker.repair(raw, state.policy or self.policy_for(state.flow))
        if isinstance(done, Raised):
            self._record_error(state.flow, "request repair", done.error)
            return
        try:
            self._apply_request_repair(state, *done)
        except Exception as exc:
            self._record_error(state.flow, "request repair", exc)

    def _keep_client_request(self, state: FlowState, raw: bytes) -> None:
        """With a fallback upstream: the client's own (decoded) body and headers, repaired again for it."""
        if self.fallback is not None and raw:
            state.client_body = raw
            state.client_headers = [
                (k, v) for k, v in state.flow.request.headers.items(multi=True) if k.lower() != "content-encoding"
            ]

    def _start_first_byte_timer(self, state: FlowState) -> None:
        if self.limits.first_byte_timeout > 0 and loop_running():
            state.first_byte_timer = asyncio.get_running_loop().call_later(
                self.limits.first_byte_timeout, self._first_byte_timeout, state
            )

    def _request_body(self, state: FlowState, header: str, decoded: bytes | Raised | None = None) -> bytes | None:
        """The decoded request body, None when there is none to repair. A body that decodes to
        more than kimi_max_request_bytes is answered 413 here, without inflating it further.
        `decoded`: what the request worker made of it already."""
        req = state.flow.request
        encoded = req.raw_content
        if encoded is None:
            self._note(state.flow, "request not repaired: the body was streamed")
            return b""
        limit = self.max_request_bytes or _NO_LIMIT
        try:
            if decoded is None:
                return _decoded_request(encoded, header, limit)
            if isinstance(decoded, Raised):
                raise decoded.error
            return decoded
        except DecodedTooLarge:
            self._refuse_large_request(state, limit)
            return None
        except DecodingError as exc:
            self._note(state.flow, f"request not repaired: cannot decode body ({exc})")
            return b""

    def _refuse_large_request(self, state: FlowState, limit: int) -> None:
        flow = state.flow
        message = f"kimiwire: the request body is larger than {limit} bytes (kimi_max_request_bytes)"
        flow.response = http.Response.make(
            413, error_body(message, "invalid_request_error", "request_too_large"), {"content-type": "application/json"}
        )
        state.record["error_answer"] = 413
        state.record["errors"].append(message)
        self._ending(state, "request_too_large")

    def _repair_request(self, state: FlowState, raw: bytes) -> None:
        if not raw:
            return  # nothing to repair (streamed or undecodable: noted), forwarded as it came
        self._apply_request_repair(state, repair_request_body(raw, state.policy or self.policy_for(state.flow)))

    def _apply_request_repair(
        self, state: FlowState, result: RequestRepairResult, recorded: RecordedRepairs | None = None
    ) -> None:
        flow, req, record = state.flow, state.flow.request, state.record
        state.facts = result.facts
        record["facts"] = result.facts.as_dict()
        for note in result.notes:
            self._note(flow, note)
        if result.refusal is not None:
            self._refuse_request(state, result.refusal)
            return
        if result.skipped:
            self._note(flow, f"request not repaired: {result.skipped}")
            return
        if result.body is not None:
            req.content = result.body
            record["upstream_request"] = result.body
        if recorded is not None and recorded.entries:
            self._keep_repairs(flow, "request", recorded)
        elif result.log:
            self._record_repairs(flow, "request", result.log)

    def _refuse_request(self, state: FlowState, message: str) -> None:
        """A request the upstream is known to refuse and kimiwire cannot make acceptable: answered
        here with the OpenAI-style 400, nothing sent upstream."""
        state.flow.response = http.Response.make(
            400, error_body(message, "invalid_request_error", None), {"content-type": "application/json"}
        )
        state.record["error_answer"] = 400
        state.record["errors"].append(message)
        self._ending(state, "request_refused")

    def _restore_credentials(self, flow: http.HTTPFlow) -> None:
        """Client replay of a capture: its redacted credentials are filled from kimi_replay_auth or removed."""
        req = flow.request
        query = list(req.query.items(multi=True))
        restored = replay_credentials.restore(list(req.headers.items(multi=True)), query, self.replay_credential)
        if restored.changed:
            req.headers = http.Headers([(_raw(k), _raw(v)) for k, v in restored.headers])
            if restored.query != query:
                req.query = restored.query
        if restored.filled:
            self._note(flow, f"replay: credential from kimi_replay_auth put into {', '.join(restored.filled)}")
        left = restored.removed + (["body"] if carries_placeholder(req.raw_content or b"") else [])
        if left:
            why = "no kimi_replay_auth set" if self.replay_credential is None else "not rebuilt from kimi_replay_auth"
            text = f"replayed without redacted credentials ({why}): {', '.join(left)}"
            logger.warning("kimiwire: %s %s %s", req.method, url_for_log(req.path), text)
            state = self.flows.of(flow)
            state.record["notes"].append(text)
            state.record.setdefault("flags", []).append("replay_without_credentials")
            flow.marked = ERROR_MARKER
            self._describe(state)

    def _first_byte_timeout(self, state: FlowState) -> None:
        """The first-byte timer fired: no response headers came in time (a timer callback: never raises)."""
        state.first_byte_timer = None
        flow = state.flow
        if flow.response is not None or not flow.live:
            return
        self._guarded(flow, "first-byte timeout", lambda _: self._answer_first_byte_timeout(state))

    def _answer_first_byte_timeout(self, state: FlowState) -> None:
        flow = state.flow
        seconds = self.limits.first_byte_timeout
        message = f"kimiwire: {self._upstream_name(flow)} sent no response headers within {seconds:g} s"
        self._answer_error(state, proxy_internals.ErrorAnswer(504, error_body(message, "upstream_timeout", 504), b""))
        self._ending(state, "first_byte_timeout")
        state.record["errors"].append(message)
        if not proxy_internals.close_upstream(flow):
            proxy_internals.close_connections(flow, "no upstream connection to close after the first-byte timeout")

    def _hold_status(self, state: FlowState) -> bool:
        """A streamed request's first attempt answered a retryable status that will be retried:
        the client gets a first-time success's headers now, the retry streams (status_stream.py)."""
        flow, response = state.flow, state.flow.response
        assert response is not None
        policy = self.retrier.policy
        if not policy.watches("status") or not proxy_internals.usable():
            return False
        now = time.time()
        retry_after = retry_after_seconds(response.headers.get("retry-after"), now)
        if not will_retry(policy, response.status_code, now - flow.request.timestamp_start, retry_after):
            return False
        state.held_error = hold_for_retry(response, flow.request.data.http_version, retry_after)
        return True

    def _body_timeout(self, state: FlowState) -> None:
        """A whole response body did not finish in time: the upstream is closed, the error hook
        retries it (stall) or answers 504 (a timer callback: never raises)."""
        state.body_timer = None
        flow = state.flow
        if not flow.live or flow.error is not None:
            return

        def close(_: http.HTTPFlow) -> None:
            seconds = self.limits.idle_timeout
            state.record["errors"].append(f"kimiwire: the response body did not finish within {seconds:g} s")
            self._ending(state, "idle_timeout")
            if not proxy_internals.close_upstream(flow):
                proxy_internals.close_connections(flow, "no upstream connection to close after the body timeout")

        self._guarded(flow, "body timeout", close)

    # -- responses -------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if not flow.live or flow.response is None or self._shut_down:
            return
        try:
            self._start_stream(flow)
        except Exception as exc:
            self._record_error(flow, "response headers", exc)

    def _start_stream(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        assert response is not None
        state = self.flows.get(flow)
        if state is not None:
            state.headers_came()
        context = state.repairs_context if state is not None else None
        if state is not None and context is not None:  # a chat flow: the capture keeps the upstream's own headers
            state.upstream_headers = response.headers.fields
        if state is not None and context is not None and context[0].stream and self._hold_status(state):
            return
        headers = read_headers(response.headers, _RESPONSE_HEADERS)
        if state is not None and state.early_head_sent and context is not None:
            content_type = headers.get(b"content-type", "")
            if response.status_code >= 400 or not chat_exchanges.is_event_stream(content_type):
                facts, policy = context
                repair = lambda body: repair_completion_body(body, facts, policy)[0] or body  # noqa: E731
                state.early_head.late = LateAnswer(response.status_code, content_type, repair)
                response.stream = state.early_head.late
                return
        if not chat_exchanges.is_event_stream(headers.get(b"content-type", "")):
            if state is not None and state.is_chat and self.limits.idle_timeout > 0 and loop_running():
                # A whole body comes right after its headers (the server had it ready): one that
                # stops coming is a stall, like a silent stream.
                state.body_timer = asyncio.get_running_loop().call_later(
                    self.limits.idle_timeout, self._body_timeout, state
                )
            return
        if state is None or context is None:
            if not response.stream:
                response.stream = True  # any other event stream: forward it live, untouched
            return
        header = headers.get(b"content-encoding", "")
        encoding = content_encoding(header)
        if encoding is None:
            self._note(flow, f"stream not repaired: unsupported content-encoding {header!r}")
            response.stream = True
            return
        facts, policy = context
        # The rewrite changes the length: the client side is re-framed (mitmproxy pitfall P3).
        if b"content-length" in headers:
            remove_header(response.headers, b"content-length")
        if flow.request.data.http_version == b"HTTP/1.1" and headers.get(b"transfer-encoding") != "chunked":
            set_header(response.headers, b"transfer-encoding", b"chunked")
        repairer = StreamRepairer(facts, policy)
        on_error = lambda exc: self._record_error(flow, "stream repair", exc)  # noqa: E731
        retry = self.retrier.policy
        checks, retry_stall = retry.turn_checks(), retry.watches("stall")
        gate = None
        if (checks or retry_stall) and proxy_internals.usable():
            gate = TurnGate(facts, checks, policy.tool_stream == "whole", policy.stream_buffer_limit, retry_stall)
        if encoding:
            # Asked for identity, sent compressed anyway: decode it, so the client gets a
            # repaired, timed stream (identity) and the capture a readable body.
            self._note(flow, f"the upstream compressed the stream ({encoding}) despite accept-encoding: identity")
            del response.headers["content-encoding"]
            state.upstream_headers = response.headers.fields
            state.record["upstream_content_encoding"] = encoding
            decoder = BodyDecoder(encoding, max(policy.stream_buffer_limit, _MIN_DECODED_CHUNK))
            stream: RepairingStream = DecodingStream(
                repairer, decoder, on_error=on_error, limits=self.limits, gate=gate, retry_stall=retry_stall
            )
        else:
            stream = RepairingStream(
                repairer, on_error=on_error, limits=self.limits, gate=gate, retry_stall=retry_stall
            )
        state.stream = stream
        # The first event's deadline counts from the request (its time to first token).
        stream.times.started_at -= max(0.0, time.time() - flow.request.timestamp_start)
        # Its bound __call__, not the object: mitmproxy calls it once per upstream chunk, and a
        # bound method is called without the type's __call__ lookup (docs/performance.md).
        response.stream = stream.__call__
        if loop_running():
            state.watchdog = StreamWatchdog(
                stream,
                lambda reason: self._end_stream(state, stream, reason),
                state.spawn,
                keepalive=lambda: self._keep_alive(state, stream),
            )
            state.watchdog.plan()

    async def _keep_alive(self, state: FlowState, stream: RepairingStream) -> None:
        """A comment to a client still waiting for an answer (never raises: a timer's task)."""
        try:
            if not (stream.waiting or stream.times.tool_section_open):
                return
            sent = await proxy_internals.send_to_client(state.flow, [KEEPALIVE_COMMENT])
            if sent.kind is proxy_internals.SendKind.SENT:
                stream.delivered += KEEPALIVE_COMMENT
                self.counts["retry.keepalive_comments"] += 1
        except Exception as exc:
            self._record_error(state.flow, "keepalive", exc)

    async def _end_stream(self, state: FlowState, stream: RepairingStream, reason: ProxyEnd) -> EndOutcome:
        flow = state.flow

        def before_end() -> None:
            stream.end_by_proxy(reason)
            self._ending(state, stream.ending)

        outcome = await proxy_internals.end_stream(flow, before_end)
        if outcome.kind is EndKind.CLOSED:
            self._ending(state, str(outcome))
            state.record["errors"].append(f"stream could not be ended cleanly: {outcome.detail}")
        logger.info(
            "kimiwire: %s %s ended by the proxy (%s): %s",
            flow.request.method,
            url_for_log(flow.request.path),
            reason,
            outcome,
        )
        return outcome

    def _guarded(self, flow: http.HTTPFlow, where: str, step: Any) -> None:
        """Run one step of a hook; an exception is logged and recorded, never raised."""
        try:
            step(flow)
        except Exception as exc:
            self._record_error(flow, where, exc)

    def _retry_guarded(self, flow: http.HTTPFlow, find: Callable[[http.HTTPFlow], Any]) -> Any:
        """The retry `find` decides on for this flow, or None; an exception in it costs the retry."""
        try:
            return find(flow)
        except Exception as exc:
            self._record_error(flow, "retry", exc)
            return None

    def response(self, flow: http.HTTPFlow) -> Any:
        if not flow.live or flow.response is None or self._shut_down:
            return None
        retry = self._retry_guarded(flow, self._retry_for_response)
        if retry is not None:
            return self._response_after(flow, retry)  # mitmproxy awaits it before answering the client
        try:
            self._finish_response(flow)
        except Exception as exc:
            self._record_error(flow, "response repair", exc)
        self._flow_over(flow)
        return None

    async def _response_after(self, flow: http.HTTPFlow, retry: Any) -> None:
        try:
            await retry
        except Exception as exc:  # (the retry paths catch their own: this is the last line)
            self._record_error(flow, "retry", exc)
        finally:
            self._guarded(flow, "response repair", self._finish_response)
            self._flow_over(flow)

    # -- retries (the mechanism is described in mitm/retry.py) -------------------------------

    def _retry_for_response(self, flow: http.HTTPFlow) -> Any:
        """The retry a finished response needs (a coroutine), or None."""
        state = self.flows.get(flow)
        if state is None:
            return None
        stream = state.stream  # (only a flow with a repairs context gets one)
        if stream is not None:
            return self._retry_stream(state, stream) if stream.failed_turn is not None else None
        if state.held_error is not None:
            return self._retry_status_stream(state, state.held_error)
        if state.early_head_sent:
            return None  # a late answer went out in the early head's stream (LateAnswer)
        context = state.repairs_context
        if context is None:
            return None
        response = flow.response
        assert response is not None
        policy = self.retrier.policy
        if not policy.active:
            return None
        facts, wire_policy = context
        status = response.status_code
        failure: Failure | None
        if status == 400 and policy.watches("status") and policy.retries > 0:
            return self._retry_clamped(state, facts, wire_policy)
        if status in RETRY_STATUSES and policy.watches("status"):
            raw = response.raw_content or b""
            failure = Failure(
                "status",
                retry_error_message(raw, status),
                retry_after_seconds(response.headers.get("retry-after"), time.time()),
                status,
                raw,
            )
        elif status == 200 and not facts.stream and chat_exchanges.is_json(response.headers.get("content-type", "")):
            _, failure = self.retrier.judge_completion(response.get_content(strict=False) or b"", facts, wire_policy)
            if failure is None:
                return None
            failure.body = response.raw_content or b""
        else:
            return None
        return self._retry_buffered(state, facts, wire_policy, failure)

    def _retry_clamped(self, state: FlowState, facts: RequestFacts, wire_policy: Policy) -> Any:
        """A 400 stating that `max_tokens` leaves no room for the prompt: sent once more with it
        lowered to the room stated (a second refusal reaches the client as it came), or None."""
        flow = state.flow
        response = flow.response
        assert response is not None
        raw = response.raw_content or b""
        clamped = clamp_max_tokens(raw, flow.request.content or b"")
        if clamped is None:
            return None
        flow.request.content = clamped.body
        state.record["upstream_request"] = clamped.body
        log = RepairLog()
        log.add("request.max_tokens_clamped", None, {clamped.field: clamped.before}, {clamped.field: clamped.after})
        self._record_repairs(flow, "request", log)
        self._note(
            flow, f"the upstream stated its limit ({clamped.stated}): sent again with {clamped.field} {clamped.after}"
        )
        failure = Failure("status", retry_error_message(raw, 400), None, 400, raw, final=False)
        return self._retry_buffered(state, facts, wire_policy, failure)

    def _first_attempt(self, state: FlowState, failure: Failure, status: int | None, body: bytes) -> None:
        first = Attempt(1, "first", started=state.flow.request.timestamp_start, status=status)
        first.seconds = time.time() - first.started
        first.outcome, first.detail, first.body = failure.kind, failure.detail, body
        state.record["attempts"] = [first.as_dict()]
        self.counts[f"retry.failed.{failure.kind}"] += 1

    def _retry_ending(self, state: FlowState, how: str) -> None:
        """How a retried flow ended, in place of an attempt's timeout (counted once, when the flow is over); the
        flow is marked and commented with its retries (flow_notes.retry_words: `retried=N why=...`)."""
        state.replace_ending(how)  # kimi.stats counts the flow's last ending once, when it is over
        self._describe(state)

    async def _retry_stream(self, state: FlowState, stream: RepairingStream) -> None:
        """The first attempt's streamed turn gave no answer: retry into the client's open body."""
        flow = state.flow
        gate, verdict = stream.gate, stream.failed_turn
        assert state.repairs_context is not None and gate is not None and verdict is not None
        failure = Failure(verdict.kind, verdict.detail, fallback=gate.discard())
        self._first_attempt(
            state, failure, flow.response.status_code if flow.response else None, stream.upstream_bytes()
        )
        continuation = Continuation(gate.template, gate.role_delivered, gate.seen.reasoning_chars > 0)
        sink = Sink(flow, live=True, delivered=stream.delivered)
        _, success = await self._live_attempts(state, failure, sink, continuation, state.hedge)
        if success:  # the capture's response body: what the answering attempt sent
            stream.upstream = bytearray(success[-1].body)

    async def _retry_status_stream(self, state: FlowState, held: HeldError) -> None:
        """The first attempt's error status was held (the client has 200 headers): the retry
        streams into the client's open body as it comes."""
        raw = bytes(held.body)
        failure = Failure("status", retry_error_message(raw, held.status), held.retry_after, held.status, raw)
        self._first_attempt(state, failure, held.status, raw)
        success = await self._retry_live(state, failure, Sink(state.flow, live=True))
        # The record: the answering (or last) attempt's status, headers and raw body.
        answer = success[-1] if success else None
        state.upstream_body = answer.body if answer else raw
        state.upstream_headers = answer.headers if answer else held.headers

    async def _live_attempts(
        self,
        state: FlowState,
        failure: Failure,
        sink: Sink,
        continuation: Continuation,
        race: HedgeRace | None,
    ) -> tuple[Sink, list[Success]]:
        """The retry's attempts, each one's events into the client's open body as they come (a hedge
        under way taken as the first), the answer ended explicitly when they run out and the flow's
        ending recorded. Never raises; returns the sink the events went to and the answering
        attempt's Success (none when none answered)."""
        flow = state.flow
        context = state.repairs_context
        assert context is not None
        facts, wire_policy = context
        success: list[Success] = []
        adopted = race.adopt() if race is not None else None
        if race is not None and adopted is not None:
            await race.sink.go_live(sink.raw, sink.delivered)
            sink, continuation, success = race.sink, race.continuation, race.success
        try:
            last, made = await self.retrier.run(
                flow,
                state.record,
                failure,
                lambda current: self.retrier.stream_attempt(
                    flow, current, facts, wire_policy, continuation, sink, success
                ),
                sink,
                adopted,
            )
            if last is None and not success:  # (never expected: an answer always leaves its Success)
                last = Failure("connect", "the answering attempt left no answer")
            if last is not None:
                await sink.send(exhausted_events(last, made))
                self._retry_ending(state, f"retries_exhausted:{last.kind}")
            else:
                self._retry_ending(state, "retried")
        except ClientGone:
            self._retry_ending(state, "client_disconnected")
        except Exception as exc:
            self._record_error(flow, "retry", exc)
            self._retry_ending(state, "retries_exhausted:error")
            with contextlib.suppress(Exception):
                await sink.send([error_event("kimiwire: the retry failed", "upstream_error", None), DONE_EVENT])
        return sink, success

    async def _retry_live(
        self, state: FlowState, failure: Failure, sink: Sink, race: HedgeRace | None = None
    ) -> list[Success]:
        """Attempts after `failure` whose events go to the client as they come (`sink`), as after
        a first-time success; the client's answer ends with the failure made explicit when they
        run out. Never raises; returns the answering attempt's Success (none when none answered)."""
        sink, success = await self._live_attempts(state, failure, sink, Continuation({}, False), race or state.hedge)
        with contextlib.suppress(Exception):
            await sink.finish()
        state.record["delivered"] = bytes(sink.delivered)
        return success

    async def _retry_buffered(
        self, state: FlowState, facts: RequestFacts, wire_policy: Policy, failure: Failure
    ) -> None:
        """Nothing has reached the client yet (a non-streamed turn, or an error status): retry and
        replace the response before mitmproxy sends it."""
        response = state.flow.response
        assert response is not None
        self._first_attempt(state, failure, response.status_code, response.raw_content or b"")
        success: list[Success] = []
        sink = Sink(state.flow, live=False)
        last, made = await self._attempts_settled(state, facts, wire_policy, failure, sink, success)
        if state.record.get("ending") == "client_disconnected":
            return
        if last is None:
            answer = success[-1]
            self._retry_ending(state, "retried")
            state.upstream_body = answer.body
            if facts.stream:
                headers = [(k, v) for k, v in answer.headers if k.lower() != b"content-type"]
                _replace(response, 200, [*headers, (b"content-type", b"text/event-stream")], bytes(sink.delivered))
            else:
                _replace(response, answer.status, answer.headers, answer.body)
            return
        self._retry_ending(state, f"retries_exhausted:{last.kind}")
        if last is failure and last.kind == "status":
            return  # no other attempt was made: the client gets the upstream's error as it came
        exhausted = exhausted_answer(last, made, facts.stream, bytes(sink.delivered), "the upstream")
        _replace(response, exhausted.status, [(b"content-type", exhausted.content_type.encode())], exhausted.body)

    async def _attempts_settled(
        self,
        state: FlowState,
        facts: RequestFacts,
        wire_policy: Policy,
        failure: Failure,
        sink: Sink,
        success: list[Success],
    ) -> tuple[Failure | None, int]:
        """The attempts of a buffered retry; (None, attempts) when one answered (its Success last in
        `success`), else the failure the client is told about. A client that leaves, or an
        exception in the retry, ends the attempts as a failure: never an exception to the hook."""
        try:
            last, made = await self._buffered_attempts(state, facts, wire_policy, failure, sink, success)
        except ClientGone:
            self._retry_ending(state, "client_disconnected")
            return failure, len(state.record.get("attempts") or [1])
        except Exception as exc:
            self._record_error(state.flow, "retry", exc)
            detail = f"the retry failed: {type(exc).__name__}"
            return Failure("connect", detail), len(state.record.get("attempts") or [1])
        if last is None and not success:  # (never expected: an answer always leaves its Success)
            return Failure("connect", "the answering attempt left no answer"), made
        return last, made

    def _buffered_attempts(
        self,
        state: FlowState,
        facts: RequestFacts,
        wire_policy: Policy,
        failure: Failure,
        sink: Sink,
        success: list[Success],
    ) -> Any:
        flow = state.flow
        if facts.stream:
            continuation = Continuation({}, False)
            return self.retrier.run(
                flow,
                state.record,
                failure,
                lambda current: self.retrier.stream_attempt(
                    flow, current, facts, wire_policy, continuation, sink, success
                ),
            )
        return self.retrier.run(
            flow,
            state.record,
            failure,
            lambda current: self.retrier.completion_attempt(flow, current, facts, wire_policy, success),
        )

    def _flow_over(self, flow: http.HTTPFlow) -> None:
        """Count the flow's bytes, write it to the capture file and forget its state; never raises."""
        state = self.flows.drop(flow)
        if state is None or not state.is_chat:
            return
        record = state.record
        self._count_ending(state)
        try:
            response = flow.response
            body = state.upstream_body
            if body is None and response is not None:
                body = response.raw_content or b""
            record.setdefault("upstream_request", flow.request.raw_content or b"")
            if response is not None:
                delivered = record.get("delivered")
                if delivered is None:
                    delivered = response.raw_content or b""
                if delivered == body:
                    # Kept once: the flow's response body (`delivered_body` reads it back).
                    record.pop("delivered", None)
                else:
                    record["delivered"] = delivered
                stream = state.stream
                if stream is not None:
                    record["timings"] = {
                        "request": flow.request.timestamp_start,
                        "first_byte": stream.first_byte_at,
                        "last_byte": stream.last_byte_at or time.time(),
                    }
                else:
                    record["timings"] = {
                        "request": flow.request.timestamp_start,
                        "first_byte": response.timestamp_start,
                        "last_byte": response.timestamp_end,
                    }
            req = flow.request
            if (
                response is not None
                and response.status_code == 200
                and self.detector.wants_answer(req.scheme, req.host, req.port)
            ):
                streamed = state.stream is not None
                self.detector.read_answer(req.scheme, req.host, req.port, body or b"", streamed)
            self.counts["bytes.upstream"] += len(body or b"")
            self.counts["bytes.delivered"] += len(record.get("delivered", body or b""))
            if self.capture is not None:
                parts = (flow, state.client_request, state.upstream_headers, body, self.redactor)
                if loop_running() and len(flow.request.raw_content or b"") + len(body or b"") >= OFFLOAD_BYTES:
                    self._capture_off_loop(self.capture, parts)
                else:
                    self.capture.write(saved_state(*parts))
        except Exception as exc:
            self._record_error(flow, "capture", exc)

    def _capture_off_loop(self, capture: CaptureFile, parts: tuple[Any, ...]) -> None:
        """A large flow's capture state (its bodies' redaction walks whole JSON documents) is made in
        the request worker; the record is appended here, on the loop, like every other."""

        async def write(capture: CaptureFile) -> None:
            record = await large_capture.encoded_record(self.request_worker, *parts)
            capture.write(record.error if isinstance(record, Raised) else record)

        task = asyncio.get_running_loop().create_task(write(capture))
        self._capture_tasks.add(task)
        task.add_done_callback(self._capture_tasks.discard)

    def _finish_response(self, flow: http.HTTPFlow) -> None:
        state = self.flows.get(flow)
        if state is None:
            return
        state.release()
        response = flow.response
        assert response is not None
        stream = state.stream
        late = state.early_head.late if state.early_head is not None else None
        if stream is None and late is not None:
            if not late.ended:  # a body that came whole with its head (mitmproxy did not stream it)
                late(response.raw_content or b"")
                response.raw_content = b"".join(late(b""))
            state.upstream_body = bytes(late.body)
            state.record["delivered"] = late.delivered
            return
        if stream is not None:
            if stream.calls == 0:
                # Server replay (or a response set by another addon): the body arrives whole and
                # the stream callable is never called, so repair the whole body here.
                whole = response.raw_content or b""
                repaired = stream(whole) + stream(b"") if whole else stream(b"")
                if stream.failed_turn is not None and stream.gate is not None:
                    # No upstream to ask again here: the failure is made explicit, never silent.
                    verdict = stream.failed_turn
                    tail = final_events(Failure(verdict.kind, verdict.detail, fallback=stream.gate.discard()), 1)
                    stream.delivered += b"".join(tail)
                    repaired += tail
                response.content = b"".join(repaired)
            else:
                # Keep what the upstream really sent as the flow's body; the client's copy is in metadata.
                set_body(response, stream.upstream_bytes())
            self._record_stream(state, stream)
            self._ending(state, stream.ending)
            return
        context = state.repairs_context
        if context is None or not chat_exchanges.is_json(response.headers.get("content-type", "")):
            return
        if response.status_code >= 400:
            return  # upstream errors pass through unchanged
        body = response.get_content(strict=False)
        if not body:
            return
        facts, policy = context
        state.upstream_body = response.raw_content
        new_body, log, why = repair_completion_body(body, facts, policy)
        if why:
            self._note(flow, f"response not repaired: {why}")
            return
        if new_body is not None:
            response.content = new_body
            state.record["delivered"] = new_body
        self._record_repairs(flow, "response", log)

    def error(self, flow: http.HTTPFlow) -> Any:
        if not flow.live or self._shut_down:
            return None
        retry = self._retry_guarded(flow, self._retry_for_error)
        if retry is not None:
            return self._error_after(flow, retry)
        self._guarded(flow, "error hook", self._on_error)
        self._flow_over(flow)
        return None

    async def _error_after(self, flow: http.HTTPFlow, retry: Any) -> None:
        try:
            await retry
        except Exception as exc:  # (the retry paths catch their own: this is the last line)
            self._record_error(flow, "retry", exc)
        finally:
            self._guarded(flow, "error hook", self._on_error)
            self._flow_over(flow)

    def _retry_for_error(self, flow: http.HTTPFlow) -> Any:
        """A failure before response headers (refused, reset, TLS, DNS, first-byte timeout) is
        retried when the answer can reach the client (kimi_json_errors' answer path)."""
        message = flow.error.msg if flow.error else ""
        state = self.flows.get(flow)
        context = state.repairs_context if state is not None else None
        if state is None or context is None or "client disconnect" in message.lower():
            return None
        if flow.response is not None and (state.stream is not None or not _buffered(flow.response)):
            return None  # a streamed response under way ends by its own path
        kind = "stall" if state.record.get("ending") in ("first_byte_timeout", "idle_timeout") else "connect"
        if state.hedge is not None and state.hedge.won:
            kind = "stall"  # the hedge answered first: the first attempt was closed for it
        if not self.retrier.policy.watches(kind) or not self.json_errors:
            return None
        if kind == "connect" and lasting_connect_failure(message):
            return None  # answered at once (502 naming the cause): another attempt would fail the same way
        if not proxy_internals.install_error_answers() or client_gone(flow):
            return None
        return self._retry_before_headers(state, *context, Failure(kind, message or "no response"))

    async def _retry_before_headers(
        self, state: FlowState, facts: RequestFacts, wire_policy: Policy, failure: Failure
    ) -> None:
        flow = state.flow
        race, state.hedge = state.hedge, None  # (kept for the retry that adopts it)
        state.release()  # the first-byte watch must not answer while the retry runs
        response = flow.response  # (headers came when a whole body broke)
        self._first_attempt(state, failure, response.status_code if response else None, b"")
        if facts.stream and response is None and await self._stream_head_sent(state, failure):
            answered = await self._retry_live(state, failure, Sink(flow, live=True, raw=True), race)
            if answered:
                state.upstream_body = answered[-1].body
                state.upstream_headers = answered[-1].headers
            return
        if race is not None:
            race.cancel("the retry is answered whole")
        success: list[Success] = []
        sink = Sink(state.flow, live=False)
        last, made = await self._attempts_settled(state, facts, wire_policy, failure, sink, success)
        record = state.record
        if record.get("ending") == "client_disconnected":
            return
        if last is None:
            answer = success[-1]
            if facts.stream:
                body, content_type = bytes(sink.delivered), "text/event-stream"
            else:
                repaired, log, _ = repair_completion_body(answer.body, facts, wire_policy)
                body, content_type = repaired or answer.body, "application/json"
                self._record_repairs(state.flow, "response", log)
            proxy_internals.set_error_answer(
                state.flow, proxy_internals.ErrorAnswer(answer.status, body, b"", content_type)
            )
            record["error_answer"] = answer.status
            record["delivered"] = body
            state.upstream_body = answer.body
            self._retry_ending(state, "retried")
            return
        # As after a buffered retry: a streamed request's client gets an event stream (the calls the
        # last attempt made, or an error event); a connection failure or a stall its 502 or 504.
        exhausted = exhausted_answer(last, made, facts.stream, bytes(sink.delivered), self._upstream_name(flow))
        proxy_internals.set_error_answer(
            state.flow, proxy_internals.ErrorAnswer(exhausted.status, exhausted.body, b"", exhausted.content_type)
        )
        record["error_answer"] = exhausted.status
        self._retry_ending(state, f"retries_exhausted:{last.kind}")

    async def _stream_head_sent(self, state: FlowState, failure: Failure) -> bool:
        """A streamed request that failed before response headers and will be retried: an HTTP/1
        client gets a first-time success's head now, so the retry streams to it as it comes."""
        flow = state.flow
        elapsed = time.time() - flow.request.timestamp_start
        if not proxy_internals.can_answer(flow):
            return False
        if state.early_head_sent:  # the client has its head: the retry, or its failure, streams into it
            proxy_internals.set_error_answer(flow, proxy_internals.ErrorAnswer(200, b"", b"", raw_sent=True))
            return True
        if not decide(self.retrier.policy, failure.kind, 1, elapsed, 0.0, failure.retry_after).retry:
            return False
        sent = await proxy_internals.send_early_head(flow)  # (the same head an early head is)
        if sent.kind is not proxy_internals.SendKind.SENT:
            return False
        # mitmproxy's protocol error for this flow now only closes the connection (after our end).
        proxy_internals.set_error_answer(flow, proxy_internals.ErrorAnswer(200, b"", b"", raw_sent=True))
        state.record["error_answer"] = 200
        return True

    def _on_error(self, flow: http.HTTPFlow) -> None:
        state = self.flows.of(flow)
        state.release()
        message = flow.error.msg if flow.error else "unknown error"
        state.record["errors"].append(f"flow error: {message}")
        self.counts["flows.error"] += 1
        stream = state.stream
        client_gone = message == "Client disconnected." or "client disconnect" in message.lower()
        if client_gone:
            self._ending(state, "client_disconnected")
        elif flow.response is None and client_errors.is_client_error(flow):
            # The client's request was refused before it was whole (both Content-Length and
            # Transfer-Encoding, CONNECT in reverse mode, a malformed body): mitmproxy answers 400.
            self._ending(state, "client_error")
        elif flow.response is None or (stream is None and _buffered(flow.response)):
            # Before any response: connection refused, reset, TLS or DNS failure, first-byte timeout;
            # or a whole body that broke or stalled before it was complete (nothing was sent yet).
            req = flow.request
            if flow.response is None:
                self.detector.failed(req.scheme, req.host, req.port, req.path)
            cause = client_errors.upstream_cause(flow, message, self.error_names_upstream)
            text = f"kimiwire: {self._upstream_name(flow)} failed before responding: {cause}"
            if state.record.get("ending") == "idle_timeout":
                answer = proxy_internals.ErrorAnswer(504, error_body(text, "upstream_timeout", 504), b"")
            else:
                answer = proxy_internals.ErrorAnswer(502, error_body(text, "upstream_error", 502), b"")
            self._answer_error(state, answer, replace=False)
            self._ending(state, "upstream_error")
        elif state.held_error is not None and self.json_errors and proxy_internals.can_answer(flow):
            # The held error's body broke before the retry began: the client's stream (200 headers
            # sent) ends with the error event and [DONE].
            tail = b"".join(exhausted_events(Failure("connect", f"the upstream failed: {message}"), 1))
            state.record["delivered"] = tail
            self._answer_error(state, proxy_internals.ErrorAnswer(502, b"", tail))
            self._ending(state, "upstream_error_mid_stream")
        elif stream is not None and not stream.ended and self.json_errors and proxy_internals.can_answer(flow):
            # Mid-stream reset or protocol error: end the stream cleanly with an error event. (The
            # tail counts as delivered only where it can be written: HTTP/1, client still there.)
            tail = stream.close_after_upstream_failure(
                f"kimiwire: the upstream connection failed mid-stream: {message}"
            )
            stream.tail_sent(tail)
            self._answer_error(state, proxy_internals.ErrorAnswer(502, b"", tail))
            self._ending(state, "upstream_error_mid_stream")
        if stream is not None and flow.response is not None:
            flow.response.content = stream.upstream_bytes()
            self._record_stream(state, stream)

    def _upstream_name(self, flow: http.HTTPFlow) -> str:
        """How an error answer names the upstream: its address only when the operator chose to show it."""
        return client_errors.upstream_name(flow, self.error_names_upstream)

    def _answer_error(self, state: FlowState, answer: proxy_internals.ErrorAnswer, replace: bool = True) -> None:
        if not self.json_errors:
            return
        record = state.record
        if state.early_head_sent and not answer.tail and not answer.raw_sent:
            # The client has an event-stream head: the error goes out as an event, then [DONE].
            answer.tail = b"".join(events_for_error_body(answer.status, answer.body))
        if replace or "error_answer" not in record:
            proxy_internals.set_error_answer(state.flow, answer, replace)
            record["error_answer"] = answer.status

    def _record_stream(self, state: FlowState, stream: RepairingStream) -> None:
        """What a repaired stream leaves on its flow, however it ended."""
        flow = state.flow
        record = state.record
        stream.settle()
        record["delivered"] = stream.delivered_bytes()
        if stream.error_event is not None:
            record["error_event"] = stream.error_event
        record["stream"] = {
            "events_in": stream.repairer.events_in,
            "upstream_bytes": len(stream.upstream_bytes()),
            "delivered_bytes": len(stream.delivered_bytes()),
            "passthrough": stream.failed or stream.repairer.bypass,
        }
        if stream.repairer.log:
            self._record_repairs(flow, "response", stream.repairer.log)

    def client_disconnected(self, client: Any) -> None:
        proxy_internals.forget_error_answer(client.id)
        proxy_internals.forget_early_head(client.id)


def _decoded_request(encoded: bytes, header: str, limit: int) -> bytes:
    """The request body with its content-encoding decoded (raises DecodedTooLarge past `limit`,
    DecodingError when it cannot be decoded); pure, so the request worker can run it."""
    if len(encoded) > limit:
        raise DecodedTooLarge(limit)
    encoding = content_encoding(header)
    if encoding is None:
        raise DecodingError(f"unsupported content-encoding {header!r}")
    return decode_body(encoded, encoding, limit) if encoding else encoded


def _reason(status: int) -> str:
    """The status's reason phrase as RFC 9110 names it (what uvicorn-based servers send)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _buffered(response: http.Response) -> bool:
    """The response is read whole before the client gets any of it."""
    return not response.stream


def _raw(text: str) -> bytes:
    """Header text back to the bytes mitmproxy decoded it from."""
    return text.encode("utf-8", "surrogateescape")


def _replace(response: http.Response, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """Make `response` (not yet sent) the given one; framing headers are mitmproxy's business, and
    the reason phrase is the status's own (never the replaced response's)."""
    response.status_code = status
    response.reason = _reason(status)
    response.headers = http.Headers(
        [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"transfer-encoding", b"content-encoding")]
    )
    response.content = body


def freeze_startup_heap() -> None:
    """Every full garbage collection walks every tracked object: with mitmproxy's and kimiwire's
    modules that is ~100,000 objects, a cost that grew with
    kimiwire's imports and fell on the streams of that moment. The objects alive once started
    are never garbage; frozen, they are left out of all later passes. A reload unfreezes first, so
    the old module's objects can still be collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()

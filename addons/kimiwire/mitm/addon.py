"""The mitmproxy adapter's entry: `KimiWire`, the hooks, the options (mitm/options.py) and kimi.stats.

Hooks stay thin: they pick the flows and hand each to the collaborator that owns the feature
(one feature per class, as in mitmproxy's own addons/):
- `RequestSide` (mitm/request_side.py): chat flows, body limits, the request repair, credentials;
- `WaitingPlans` (mitm/waiting.py): the early head and the hedge while no upstream headers came;
- `ResponseSide` (mitm/response_side.py): the repairing stream, whole bodies, the error hook's answers;
- `RetryHooks` (mitm/retry_hooks.py): which response or failure is retried, its outcome recorded once;
- `FlowRecorder` (mitm/flow_recorder.py): endings, repairs, notes, errors, marks, the capture write;
- `Shutdown` (mitm/shutdown.py): open streams ended cleanly, then the capture closed.
An exception inside a hook never breaks a flow: the flow passes through, the error is logged
and recorded on it. Each flow's state between hooks is one `FlowState` (mitm/flow_state.py),
created in the request hook, found by flow id in the later hooks, dropped when the flow ends;
its record (`FlowRecord`, mitm/flow_record.py) takes every write.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from mitmproxy import command, ctx, exceptions, http

from kimiwire.mitm import client_errors, options, proxy_internals, request_limits
from kimiwire.mitm.capture import CaptureFile
from kimiwire.mitm.command_types import JSONObject
from kimiwire.mitm.fallback import Fallback, Target
from kimiwire.mitm.flow_recorder import FlowRecorder
from kimiwire.mitm.flow_state import FlowStates
from kimiwire.mitm.loaded_flows import LoadedFlows
from kimiwire.mitm.options import Feeds, Settings
from kimiwire.mitm.request_side import RequestSide
from kimiwire.mitm.request_worker import RequestWorker
from kimiwire.mitm.response_side import ResponseSide
from kimiwire.mitm.retry import (
    Retrier,
)
from kimiwire.mitm.retry_hooks import RetryHooks
from kimiwire.mitm.shutdown import Shutdown
from kimiwire.mitm.upstream_probe import UpstreamDetector, reverse_upstreams
from kimiwire.mitm.waiting import WaitingPlans
from kimiwire.wire import chat_exchanges
from kimiwire.wire.capture import replay_credentials
from kimiwire.wire.capture.redaction import Redactor
from kimiwire.wire.servers.detection import Detection
from kimiwire.wire.servers.policy import AUTO, Policy, PolicyCache
from kimiwire.wire.stream_endings import EndingLimits

logger = logging.getLogger("kimiwire")

_POLICY_OPTION_NAMES = options.names(Feeds.POLICY)


class KimiWire:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.limits = EndingLimits()
        self.flows = FlowStates()
        self.shut_down = False  # done() ran: hooks that come later (connections torn down) are ignored
        self.capture: CaptureFile | None = None
        self.viewer_only = False  # no proxy listens and nothing is replayed: no live traffic to capture
        self.loaded = LoadedFlows()
        self.capture_problem: str | None = None
        self.redactor = Redactor()
        self.replay_credential: str | None = None
        self.retrier = Retrier(self.counts)
        self.request_worker = RequestWorker()
        self.capture_tasks: set[asyncio.Task[None]] = set()  # large flows' captures under way
        self.settings = Settings.defaults()  # every kimi_* option, read by `configure` (mitm/options.py)
        # Option values the hooks read on every flow, copied from the settings by `configure`
        # (an option lookup in mitmproxy is slow next to an attribute; a flow made over a dozen of them).
        self.health_path = chat_exchanges.HEALTH_PATH
        self.max_request_bytes = 0
        self.json_errors = True
        self.error_names_upstream = False
        self.shutdown_grace = 2.0
        self.policies = PolicyCache()
        self.fallback: Fallback | None = None
        self.hedge_after = 0.0
        self._fallback_policies: PolicyCache | None = None  # made when first needed
        self.retrier.fallback_for = self._fallback_target
        self.detector = UpstreamDetector(self.retrier.client.get, self._learned)
        # One feature per collaborator; the hooks below delegate to them.
        self.recorder = FlowRecorder(self)
        self.requests = RequestSide(self)
        self.waiting = WaitingPlans(self)
        self.responses = ResponseSide(self)
        self.retries = RetryHooks(self)
        self.shutdown = Shutdown(self)

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
        self.recorder.note(flow, f"one attempt on the fallback upstream {target.name}")
        return target

    def _copy_options(self, updated: set[str]) -> None:
        settings = self.settings
        self.health_path = settings.health_path
        self.max_request_bytes = settings.max_request_bytes
        self.json_errors = settings.json_errors
        self.error_names_upstream = settings.error_names_upstream
        self.shutdown_grace = settings.shutdown_grace
        self.request_worker.use_processes(settings.worker_processes)
        if updated & _POLICY_OPTION_NAMES:
            self._fallback_policies = None
            self.policies = PolicyCache(settings.flavor, **settings.policy_options())
            self.detector.enabled = settings.flavor == AUTO
            for host, detection in self.detector.each():
                self._learned(host, detection)

    def _learned(self, host: str, detection: Detection) -> None:
        """The detector found out more about the upstream `host`: `auto` follows it."""
        self.policies.learn(host, detection.flavor(host), detection.switch_models())

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
        return self.shutdown.done()

    @property
    def active_tasks(self) -> int:
        return self.flows.active_tasks

    def policy_for(self, flow: http.HTTPFlow) -> Policy:
        return self.policies.policy(flow.request.host)

    # -- bookkeeping -----------------------------------------------------------------------

    # -- hooks -----------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not flow.live or self.shut_down or not self.max_request_bytes or not self.json_errors:
            return  # (without error answers the request hook answers 413, once the body is in)
        limit = self.max_request_bytes
        self.guarded(
            flow, "request size", lambda f: request_limits.enforce(f, limit, self.requests.refused_while_arriving)
        )

    def request(self, flow: http.HTTPFlow) -> Any:
        if not flow.live:
            self.loaded.add(flow)  # read from a file: it was repaired when it was live
            return None
        if self.shut_down:
            return None
        req = flow.request
        method, path = req.method, req.path
        if chat_exchanges.is_health_check(method, path, self.health_path):
            body = orjson.dumps({"status": "ok", "pid": os.getpid(), **self.stats()})
            flow.response = http.Response.make(200, body, {"content-type": "application/json"})
            return None
        off_loop = None
        try:
            off_loop = self.requests.start_chat_flow(flow, method, path)
        except Exception as exc:
            self.recorder.error(flow, "request", exc)
        if off_loop is not None:
            return self._request_after(flow, off_loop)  # mitmproxy awaits it before sending the request
        self._request_done(flow)
        return None

    async def _request_after(self, flow: http.HTTPFlow, off_loop: Any) -> None:
        try:
            await off_loop
        except Exception as exc:
            self.recorder.error(flow, "request", exc)
        self._request_done(flow)

    def _request_done(self, flow: http.HTTPFlow) -> None:
        if flow.is_replay == "request":
            self.guarded(flow, "replay credentials", self.requests.restore_credentials)
        self.guarded(flow, "early head", self.waiting.plan_early_head)
        self.guarded(flow, "hedge", self.waiting.plan_hedge)

    # -- responses -------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if not flow.live or flow.response is None or self.shut_down:
            return
        try:
            self.responses.start_stream(flow)
        except Exception as exc:
            self.recorder.error(flow, "response headers", exc)

    def guarded(self, flow: http.HTTPFlow, where: str, step: Any) -> None:
        """Run one step of a hook; an exception is logged and recorded, never raised."""
        try:
            step(flow)
        except Exception as exc:
            self.recorder.error(flow, where, exc)

    def _retry_guarded(self, flow: http.HTTPFlow, find: Callable[[http.HTTPFlow], Any]) -> Any:
        """The retry `find` decides on for this flow, or None; an exception in it costs the retry."""
        try:
            return find(flow)
        except Exception as exc:
            self.recorder.error(flow, "retry", exc)
            return None

    def response(self, flow: http.HTTPFlow) -> Any:
        if not flow.live or flow.response is None or self.shut_down:
            return None
        retry = self._retry_guarded(flow, self.retries.for_response)
        if retry is not None:
            return self._response_after(flow, retry)  # mitmproxy awaits it before answering the client
        try:
            self.responses.finish_response(flow)
        except Exception as exc:
            self.recorder.error(flow, "response repair", exc)
        self.recorder.flow_over(flow)
        return None

    async def _response_after(self, flow: http.HTTPFlow, retry: Any) -> None:
        try:
            await retry
        except Exception as exc:  # (the retry paths catch their own: this is the last line)
            self.recorder.error(flow, "retry", exc)
        finally:
            self.guarded(flow, "response repair", self.responses.finish_response)
            self.recorder.flow_over(flow)

    # -- retries (the mechanism is described in mitm/retry.py) -------------------------------

    def error(self, flow: http.HTTPFlow) -> Any:
        if not flow.live or self.shut_down:
            return None
        retry = self._retry_guarded(flow, self.retries.for_error)
        if retry is not None:
            return self._error_after(flow, retry)
        self.guarded(flow, "error hook", self.responses.on_error)
        self.recorder.flow_over(flow)
        return None

    async def _error_after(self, flow: http.HTTPFlow, retry: Any) -> None:
        try:
            await retry
        except Exception as exc:  # (the retry paths catch their own: this is the last line)
            self.recorder.error(flow, "retry", exc)
        finally:
            self.guarded(flow, "error hook", self.responses.on_error)
            self.recorder.flow_over(flow)

    def upstream_name(self, flow: http.HTTPFlow) -> str:
        """How an error answer names the upstream: its address only when the operator chose to show it."""
        return client_errors.upstream_name(flow, self.error_names_upstream)

    def client_disconnected(self, client: Any) -> None:
        proxy_internals.forget_error_answer(client.id)
        proxy_internals.forget_early_head(client.id)


def freeze_startup_heap() -> None:
    """Every full garbage collection walks every tracked object: with mitmproxy's and kimiwire's
    modules that is ~100,000 objects, a cost that grew with
    kimiwire's imports and fell on the streams of that moment. The objects alive once started
    are never garbage; frozen, they are left out of all later passes. A reload unfreezes first, so
    the old module's objects can still be collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()

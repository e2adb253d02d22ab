"""`scripts/doctor`: what a Kimi server breaks on the wire, and what a client gets through kimiwire.

It sends a short battery of real requests (doctor/cases.py) to the server directly and through a
kimiwire started for the run (mitmdump with the addon, as a subprocess on 127.0.0.1), prints a table
of what each side got and the options to use. The key comes from the environment (--key-env) and
never reaches the output. Exit codes: 0 nothing left broken through kimiwire, 1 problems left,
2 usage (or no consent), 3 the upstream cannot be reached, 4 the upstream refused the key.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from kimiwire.doctor.cases import CASES, MAX_TOKENS, Answer, Case, read_answer
from kimiwire.launch import Mitmdump
from kimiwire.wire.chat_exchanges import HEALTH_PATH
from kimiwire.wire.servers.detection import Detection, Engine, IdForm, ModelFamily

DEFAULT_MODEL = "kimi-k2-thinking"
MAX_BODY = 8 << 20


class DoctorError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Row:
    case: Case
    direct: Answer
    proxied: Answer


@dataclass
class Report:
    upstream: str
    model: str
    detection: Detection
    proxy_detection: dict[str, Any] | None = None
    kimiwire_options: list[str] = field(default_factory=list)  # --set, beside the defaults
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def left(self) -> list[str]:
        return [f"{r.case.name}: {p}" for r in self.rows for p in r.proxied.problems(r.case)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "upstream": self.upstream,
            "model": self.model,
            "detection": self.detection.as_dict(),
            "kimiwire_detection": self.proxy_detection,
            "kimiwire_options": self.kimiwire_options,
            "cases": [
                {
                    "case": r.case.name,
                    "title": r.case.title,
                    "direct": r.direct.as_dict(r.case),
                    "kimiwire": r.proxied.as_dict(r.case),
                }
                for r in self.rows
            ],
            "options": advice(self),
            "problems_left": self.left,
            "seconds": round(self.seconds, 1),
        }


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="the server's base URL, path included (http://HOST:8000/v1)")
    parser.add_argument("--model", help="the model id to ask (default: the first one GET /models lists)")
    parser.add_argument("--key-env", help="the environment variable that holds the API key (sent as a Bearer token)")
    parser.add_argument("--yes", action="store_true", help="do not ask before spending tokens on a non-local upstream")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (for CI)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="kimi_NAME=VALUE",
        help="an option for the kimiwire the doctor starts (repeatable), to try the options it suggests",
    )
    args = parser.parse_args(argv)
    for spec in args.set:
        if not spec.startswith("kimi_") or "=" not in spec:
            parser.error(f"--set takes kimi_NAME=VALUE (got {spec})")
    return args


def is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private


class Redacted:
    """Everything printed goes through it: the key never reaches the output."""

    def __init__(self, secret: str | None, write: Callable[[str], Any]) -> None:
        self.secret = secret
        self._write = write

    def clean(self, text: str) -> str:
        return text.replace(self.secret, "<key>") if self.secret else text

    def __call__(self, text: str = "") -> None:
        self._write(self.clean(text) + "\n")


def main(argv: Sequence[str] | None = None, out: Callable[[str], Any] = sys.stdout.write) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    key = None
    if args.key_env:
        key = os.environ.get(args.key_env)
        if not key:
            out(f"doctor: the environment variable {args.key_env} is not set (--key-env names it)\n")
            return 2
    say = Redacted(key, out if not args.json else (lambda _: None))
    try:
        report = run(args, key, say)
    except DoctorError as exc:
        if args.json:
            out(Redacted(key, out).clean(orjson.dumps({"error": str(exc), "exit": exc.code}).decode()) + "\n")
        else:
            out(Redacted(key, out).clean(f"doctor: {exc}") + "\n")
        return exc.code
    if args.json:
        out(Redacted(key, out).clean(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode()) + "\n")
    else:
        print_report(report, say)
    return 1 if report.left else 0


def run(args: argparse.Namespace, key: str | None, say: Redacted) -> Report:
    parts = urlsplit(args.upstream)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.query:
        raise DoctorError(f"--upstream takes a base URL like http://HOST:8000/v1 (got {args.upstream})", 2)
    origin, base = f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    started = time.monotonic()
    with httpx.Client(timeout=args.timeout, trust_env=False, headers=headers) as client:
        detection = Detection()
        detection.read_host(parts.hostname)
        listed = _list_models(client, origin + base, detection)
        model = args.model or (listed[0] if listed else DEFAULT_MODEL)
        report = Report(origin + base, model, detection, kimiwire_options=list(args.set))
        requests = 2 * len(CASES)
        say(f"doctor: {origin + base}, model {model}: {detection.summary()}")
        if args.set:
            say(f"doctor: kimiwire runs with {' '.join(args.set)}")
        say(
            f"doctor: {requests} requests ({len(CASES)} direct, {len(CASES)} through kimiwire), "
            f"at most {requests * MAX_TOKENS} completion tokens and about {_prompt_tokens(model)} prompt tokens"
        )
        if not is_local(parts.hostname) and not args.yes and not _consent(say):
            raise DoctorError("not confirmed; --yes skips the question", 2)
        with tempfile.TemporaryDirectory(prefix="kimiwire-doctor-") as confdir:
            options: dict[str, object] = {"kimi_capture_dir": "", "kimi_retries": 1, "kimi_retry_budget": args.timeout}
            options |= dict(spec.split("=", 1) for spec in args.set)
            proxy = Mitmdump(origin, pathlib.Path(confdir), options, verbosity="info")
            try:
                proxy.start()
            except RuntimeError as exc:
                raise DoctorError(f"kimiwire did not start: {exc}", 2 if args.set else 1) from None
            try:
                _battery(client, origin + base, proxy.url + base, model, report)
                report.proxy_detection = _proxy_detection(client, proxy.url)
            finally:
                proxy.stop()
    for row in report.rows:
        if row.direct.status == 200:
            detection.read_answer(row.direct.raw, row.direct.streamed)
    report.seconds = time.monotonic() - started
    return report


def _list_models(client: httpx.Client, base: str, detection: Detection) -> list[str]:
    try:
        response = client.get(base + "/models")
    except httpx.HTTPError as exc:
        raise DoctorError(f"cannot reach {base}: {_why(exc)}", 3) from None
    if response.status_code in (401, 403):
        raise DoctorError(
            f"{base}/models answered HTTP {response.status_code}: the server wants a key "
            "(--key-env NAME names the environment variable that holds it)",
            4,
        )
    if response.status_code != 200 or not detection.read_models(response.content[:MAX_BODY]):
        return []
    return [str(card["id"]) for card in orjson.loads(response.content).get("data", []) if isinstance(card, dict)]


def _why(exc: httpx.HTTPError) -> str:
    cause = exc.__cause__ or exc.__context__
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError) and cause is not None:
        text = str(cause) or text
    return f"{type(exc).__name__}: {text}"


def _prompt_tokens(model: str) -> int:
    sizes = [len(orjson.dumps(case.build(model, []))) for case in CASES]
    return 2 * sum(sizes) // 3  # about 3 bytes a token for JSON and English


def _consent(say: Redacted) -> bool:
    if not sys.stdin.isatty():
        say("doctor: the upstream is not local and nobody can be asked here")
        return False
    return input("Go on? [y/N] ").strip().lower() in ("y", "yes")


def _send(client: httpx.Client, url: str, body: dict[str, Any]) -> Answer:
    try:
        with client.stream("POST", url + "/chat/completions", json=body) as response:
            raw = bytearray()
            for chunk in response.iter_bytes():
                raw += chunk
                if len(raw) > MAX_BODY:
                    break
    except httpx.HTTPError as exc:
        return Answer(error=_why(exc))
    return read_answer(response.status_code, response.headers.get("content-type", ""), bytes(raw))


def _battery(client: httpx.Client, direct_url: str, proxy_url: str, model: str, report: Report) -> None:
    direct_calls: list[dict[str, Any]] = []
    proxied_calls: list[dict[str, Any]] = []
    for case in CASES:
        direct = _send(client, direct_url, case.build(model, direct_calls))
        if direct.status is None and not report.rows:
            raise DoctorError(f"cannot reach {direct_url}: {direct.error}", 3)
        if direct.status in (401, 403):
            raise DoctorError(
                f"{direct_url}/chat/completions answered HTTP {direct.status} ({direct.error}): "
                "--key-env NAME names the environment variable that holds the key",
                4,
            )
        proxied = _send(client, proxy_url, case.build(model, proxied_calls))
        if case.name == "tool_call":
            direct_calls, proxied_calls = direct.calls, proxied.calls
        report.rows.append(Row(case, direct, proxied))


def _proxy_detection(client: httpx.Client, proxy: str) -> dict[str, Any] | None:
    """What kimiwire's `auto` found, from its health answer (kimi.stats)."""
    try:
        stats = client.get(proxy + HEALTH_PATH).json()
    except (httpx.HTTPError, ValueError):
        return None
    upstreams = stats.get("upstreams") if isinstance(stats, dict) else None
    return next(iter(upstreams.values()), None) if isinstance(upstreams, dict) and upstreams else None


# -- the report -------------------------------------------------------------------------------


def _cell(answer: Answer, case: Case) -> list[str]:
    if answer.status is None:
        return ["-", "-", "-", "-", "-", "; ".join(answer.problems(case))]
    finish = ",".join(answer.finish_reasons) or "-"
    ids = ",".join(answer.id_forms) or "-"
    reasoning = ",".join(answer.reasoning_keys) or "-"
    problems = "; ".join(answer.problems(case)) or "ok"
    return [str(answer.status), finish, str(len(answer.calls)), ids, reasoning, problems]


def print_report(report: Report, say: Redacted) -> None:
    header = ["case", "via", "HTTP", "finish", "calls", "ids", "reasoning", "findings"]
    lines = [header]
    for row in report.rows:
        lines.append([row.case.name, "direct", *_cell(row.direct, row.case)])
        lines.append(["", "kimiwire", *_cell(row.proxied, row.case)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    say()
    for line in lines:
        say("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line[:-1])) + "  " + line[-1])
    shapes = sorted({s for row in report.rows for s in row.direct.delta_shape})
    fields = sorted({f for row in report.rows for f in row.direct.engine_fields})
    say()
    say(f"server: {report.detection.summary()}")
    if shapes or fields:
        say(f"server: tool deltas: {', '.join(shapes) or 'OpenAI-like'}; engine fields: {', '.join(fields) or 'none'}")
    if report.proxy_detection is not None:
        found = report.proxy_detection
        signs = ", ".join(e["sign"] for e in found.get("evidence", []) if e.get("strong")) or "no engine sign"
        flavor = _tried_flavor(report) or "kimi_flavor=auto"
        say(f"kimiwire ({flavor}): engine {found.get('engine')}, family {found.get('family')} ({signs})")
    say("options:")
    for tip in advice(report):
        say(f"  {tip}")
    if report.left:
        say(f"left broken through kimiwire: {len(report.left)}")
    say(f"doctor: {len(report.rows) * 2} requests in {report.seconds:.1f} s")


def _tried_flavor(report: Report) -> str | None:
    return next((spec for spec in report.kimiwire_options if spec.startswith("kimi_flavor=")), None)


def advice(report: Report) -> list[str]:
    detection = report.detection
    direct = [r.direct for r in report.rows]
    lines = []
    tried = _tried_flavor(report)
    if tried is not None:
        lines.append(f"{tried}: as tried here (-- --set {tried} for ./scripts/run)")
    elif detection.engine in (Engine.SGLANG, Engine.VLLM):
        lines.append(
            f"kimi_flavor=auto finds {detection.engine.value} by itself; or name it: -- --set kimi_flavor="
            f"{detection.engine.value}"
        )
    elif detection.engine in (Engine.MOONSHOT, Engine.DEEPINFRA):
        lines.append(f"kimi_flavor=auto (the host is {detection.engine.value}'s)")
    elif IdForm.BARE.value in detection.id_forms and not any(a.engine_fields for a in direct):
        lines.append(
            "ids NAME:N and no engine fields: Moonshot's API behind a gateway? then -- --set kimi_flavor=moonshot "
            "(try it: ./scripts/doctor ... --set kimi_flavor=moonshot)"
        )
    else:
        lines.append(
            "engine unknown: kimi_flavor=auto keeps selfhosted; name the engine (-- --set kimi_flavor=sglang|vllm) "
            "when you keep reasoning (kimi_reasoning=loop or keep)"
        )
    if "reasoning" in detection.reasoning_keys:
        lines.append(
            "reasoning comes as `reasoning`: for harnesses that read reasoning_content, "
            "-- --set kimi_reasoning_field=both"
        )
    if detection.family is ModelFamily.K2_5_K2_6:
        lines.append("K2.5/K2.6: thinking is a switch; keep kimi_thinking_fields=translate (default)")
    elif detection.family in (ModelFamily.K2_7_CODE, ModelFamily.K3):
        lines.append(f"{detection.family.value}: thinking cannot be turned off (see the thinking_off case)")
    fixed: dict[str, list[str]] = {}
    for row in report.rows:
        for problem in row.direct.problems(row.case):
            if problem not in row.proxied.problems(row.case):
                fixed.setdefault(problem, []).append(row.case.name)
    if fixed:
        repaired = "; ".join(f"{problem} ({', '.join(cases)})" for problem, cases in fixed.items())
        lines.append(f"kimiwire repaired: {repaired} (defaults; keep them on)")
    if not report.left:
        lines.append("nothing left broken through kimiwire with these options")
    return lines


if __name__ == "__main__":
    sys.exit(main())

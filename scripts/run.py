"""`scripts/run`: mitmdump with the kimiwire addon in reverse mode in front of an upstream, or in
front of the built-in Kimi server simulator when none is named.

Before anything starts it checks the ports (and names the flag that changes them), splits the
upstream URL into the origin mitmdump forwards to and the path the harness keeps in its base URL,
and validates every `--set kimi_*=VALUE`. It stops what it started on SIGINT, SIGTERM and SIGHUP
and leaves no temporary files."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType
from urllib.parse import urlsplit

ROOT = pathlib.Path(__file__).resolve().parents[1]
ADDON = ROOT / "addons" / "kimi.py"
MITMDUMP = pathlib.Path(sys.executable).parent / "mitmdump"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
MODEL = "kimi-k2-thinking"
MODEL_FOR_FLAVOR = {"deepinfra": "moonshotai/Kimi-K2-Thinking"}  # DeepInfra names models by their HF repo


class UsageError(Exception):
    """A problem the user fixes with a flag: one line, exit 2."""


@dataclass(frozen=True)
class Upstream:
    origin: str  # scheme://host[:port], what mitmdump's reverse mode takes
    path: str  # the URL's path without a trailing slash: the harness keeps it in its base URL
    host: str


def split_upstream(url: str) -> Upstream:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--upstream must start with http:// or https:// and name a host (got: {url})")
    if parts.query or parts.fragment:
        raise UsageError(f"--upstream takes a base URL without ?query or #fragment (got: {url})")
    if parts.username or parts.password:
        raise UsageError("--upstream must not carry credentials; the harness sends its own API key")
    try:
        parts.port  # noqa: B018 (validates the port)
    except ValueError:
        raise UsageError(f"--upstream has an invalid port (got: {url})") from None
    return Upstream(f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/"), parts.hostname)


def check_port(host: str, port: int, flag: str) -> None:
    """Binds the port the way the server will, so a busy port is reported before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another port with {flag} N"
            ) from None


def kimi_sets(extra: list[str]) -> list[str]:
    """The `kimi_*` specs among mitmdump's `--set NAME=VALUE` arguments."""
    specs = [arg.removeprefix("--set=") for arg in extra if arg.startswith("--set=")]
    specs += [value for flag, value in itertools.pairwise(extra) if flag == "--set"]
    return [spec for spec in specs if spec.startswith("kimi_")]


@dataclass(frozen=True)
class AddonSettings:
    flavor: str  # resolved for the upstream host
    flavor_option: str
    capture_dir: str
    capture_name: str


def validate_options(specs: list[str], upstream_host: str) -> AddonSettings:
    """Applies the `kimi_*` specs to the addon's own options as mitmdump would, without starting it."""
    from kimiwire.mitm.addon import KimiWire
    from kimiwire.wire.servers.policy import resolve_flavor
    from mitmproxy import exceptions
    from mitmproxy.test import taddons

    with taddons.context(KimiWire()) as tctx:
        try:
            tctx.master.options.set(*specs)
        except exceptions.OptionsError as exc:
            raise UsageError(f"bad --set value: {exc}") from None
        options = tctx.master.options
        return AddonSettings(
            resolve_flavor(options.kimi_flavor, upstream_host).value,
            options.kimi_flavor,
            options.kimi_capture_dir,
            options.kimi_capture_name,
        )


def banner(args: argparse.Namespace, upstream: Upstream, settings: AddonSettings, simulated: bool) -> str:
    listen = f"http://{args.host}:{args.port}"
    base = f"{listen}{upstream.path or '/v1'}"
    how = "detected from the host" if settings.flavor_option == "auto" else "set by kimi_flavor"
    if settings.flavor_option == "auto" and settings.flavor == "selfhosted":
        how += "; the engine and model from its /v1/models and answers, logged when found"
    lines = [f"kimiwire: proxy {listen}  ->  {upstream.origin}   (flavor {settings.flavor}, {how})"]
    if simulated:
        lines.append(f"kimiwire: no --upstream given: the built-in Kimi server simulator answers at {upstream.origin}")
    lines.append(f"kimiwire: harness base URL: {base}")
    if simulated:
        key, auth = "sk-local", ""
        lines.append("kimiwire: API key: any (the simulator checks none)")
    else:
        key, auth = "<your upstream API key>", ' -H "authorization: Bearer $API_KEY"'
        lines.append(
            f"kimiwire: API key: the harness's own; its Authorization header reaches {upstream.origin} unchanged "
            "(captures redact it)"
        )
    if args.workers:
        lines.append(f"kimiwire: {args.workers} mitmdump workers behind HAProxy on {listen}")
    if settings.capture_dir:
        name = settings.capture_name
        if args.workers:
            name = name.removesuffix(".mitm") + "-wK.mitm (K: each worker)"
        where = pathlib.Path(settings.capture_dir) / name
        lines.append(
            f"kimiwire: captures: on, {where}   (./scripts/replay it; --set kimi_capture_dir= turns capturing off)"
        )
    else:
        lines.append("kimiwire: captures: off (kimi_capture_dir is empty)")
    model = MODEL_FOR_FLAVOR.get(settings.flavor, MODEL)
    tools = (
        '[{"type":"function","function":{"name":"read","parameters":{"type":"object",'
        '"properties":{"path":{"type":"string"}},"required":["path"]}}}]'
    )
    lines += [
        "kimiwire: try:",
        f"  curl -sN {base}/chat/completions -H 'content-type: application/json'{auth} -d "
        f'\'{{"model":"{model}","stream":true,"messages":[{{"role":"user","content":"read /w/a.txt"}}],'
        f'"tools":{tools}}}\'',
        "kimiwire: OpenClaw provider (models.providers in ~/.openclaw/openclaw.json; README: Connecting your harness):",
        f'  "kimiwire": {{ baseUrl: "{base}", apiKey: "{key}", api: "openai-completions",',
        f'                models: [{{ id: "{model}", name: "Kimi K2 via kimiwire", reasoning: true, input: ["text"],',
        "                           cost: { input: 0, output: 0, cacheRead: 0, cacheWrite: 0 }, "
        "contextWindow: 131072, maxTokens: 8192 }] }",
    ]
    return "\n".join(lines)


class Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Stop(signum)


def _die_with_parent() -> None:
    """In the child: get SIGTERM if this launcher dies without cleaning up (Linux prctl)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def proxy_command(args: argparse.Namespace, upstream: Upstream, capture_name: str, extra: list[str]) -> list[str]:
    if args.workers:
        command = [sys.executable, str(ROOT / "scripts" / "balance.py"), "--upstream", upstream.origin]
        command += ["--workers", str(args.workers), "--host", args.host, "--port", str(args.port)]
        return [*command, "--capture-name", capture_name, "--", *extra]
    command = [str(MITMDUMP), "--listen-host", args.host, "-p", str(args.port)]
    command += ["--mode", f"reverse:{upstream.origin}", "-s", str(ADDON)]
    if not any(spec.startswith("kimi_capture_name=") for spec in kimi_sets(extra)):
        command += ["--set", f"kimi_capture_name={capture_name}"]
    return [*command, *extra]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="scripts/run",
        description=__doc__,
        epilog="Arguments after -- (and any this script does not know) go to mitmdump, "
        "e.g. -- --set kimi_flavor=moonshot",
    )
    parser.add_argument(
        "--upstream",
        default=os.environ.get("KIMI_UPSTREAM", ""),
        help="the Kimi server's base URL, path included (http://HOST:8000/v1, https://api.moonshot.ai/v1, "
        "https://api.deepinfra.com/v1/openai); default $KIMI_UPSTREAM, else the built-in simulator",
    )
    parser.add_argument("--port", type=int, default=8080, help="the proxy's port (default 8080)")
    parser.add_argument("--host", default="127.0.0.1", help="the proxy's address (default 127.0.0.1)")
    parser.add_argument("--sim-port", type=int, default=8081, help="the simulator's port (default 8081)")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="N mitmdump workers behind HAProxy on --port (scripts/balance.py; needs haproxy); default one mitmdump",
    )
    if "--" in argv:
        cut = argv.index("--")
        args, extra = parser.parse_known_args(argv[:cut])
        return args, extra + argv[cut + 1 :]
    return parser.parse_known_args(argv)


def main(argv: list[str]) -> int:
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_signal)
    try:
        return run(argv)
    except Stop as stop:  # before anything was started
        return 128 + stop.signum


def run(argv: list[str]) -> int:
    args, extra = parse_args(argv)
    simulated = not args.upstream
    try:
        upstream = split_upstream(args.upstream or f"http://127.0.0.1:{args.sim_port}")
        check_port(args.host, args.port, "--port")
        if simulated:
            if args.sim_port == args.port:
                raise UsageError("--sim-port must differ from --port")
            check_port("127.0.0.1", args.sim_port, "--sim-port")
        settings = validate_options(kimi_sets(extra), upstream.host)
    except UsageError as exc:
        print(f"kimiwire: {exc}", file=sys.stderr)
        return 2
    capture_name = settings.capture_name or f"kimiwire-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.mitm"
    settings = AddonSettings(settings.flavor, settings.flavor_option, settings.capture_dir, capture_name)

    sim = None
    mitmdump: subprocess.Popen[bytes] | None = None
    try:
        if simulated:
            from kimiwire.sim.server import SimulatorThread

            sim = SimulatorThread(port=args.sim_port).__enter__()
        print(banner(args, upstream, settings, simulated), flush=True)
        command = proxy_command(args, upstream, capture_name, extra)
        mitmdump = subprocess.Popen(command, cwd=ROOT, preexec_fn=_die_with_parent)
        return mitmdump.wait()
    except Stop as stop:
        return 128 + stop.signum
    finally:
        for signum in STOP_SIGNALS:  # a second Ctrl-C must not interrupt the clean-up
            signal.signal(signum, signal.SIG_IGN)
        if mitmdump is not None:
            stop_process(mitmdump)
        if sim is not None:
            sim.__exit__(None, None, None)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "addons"))
    sys.exit(main(sys.argv[1:]))

"""The harness matrix (scripts/e2e-harness): the simulator plays the model for every harness's
task, every shape is a valid simulator setting, the config snippets in docs/harnesses.md are the ones
the runs write, and a subset runs real harnesses (one shape each, the one that breaks it directly) through
kimiwire."""

import json
import shutil
import socket
import subprocess

import orjson
import pytest
from kimiwire.sim.model import plan_turn
from kimiwire.sim.server import SimulatorThread
from kimiwire.sim.settings import SimSettings

from scripts.e2e_harness import PATHS, judge, proxy_options, run_once
from scripts.harnesses import HARNESSES
from scripts.harnesses.base import API_KEY, KEY_PLACEHOLDER, Run, Workspace
from scripts.harnesses.shapes import SHAPES
from tests.support.mitm import ROOT

HARNESS_DOC = (ROOT / "docs" / "harnesses.md").read_text()


def _tool(name, *required):
    properties = {key: {"type": "string"} for key in required}
    parameters = {"type": "object", "properties": properties, "required": list(required)}
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def _calls(body):
    return [(c.name, orjson.loads(c.arguments)) for c in plan_turn(body).calls]


@pytest.mark.parametrize("name", HARNESSES)
def test_the_simulator_plays_each_harness_task(name, tmp_path):
    # The first turn calls the harness's read tool twice in parallel with the exact paths.
    harness = HARNESSES[name]
    ws = Workspace.create(tmp_path)
    key = "filePath" if name == "opencode" else "command" if name == "mini-swe-agent" else "path"
    tools = [_tool(harness.read_tool, key)]
    calls = _calls({"tools": tools, "messages": [{"role": "user", "content": harness.task(ws)}]})
    a, b, _ = ws.paths
    expected = [{key: f"cat {p}"} if key == "command" else {key: p} for p in (a, b)]
    assert calls == [(harness.read_tool, arguments) for arguments in expected]


def test_the_read_shorthand_takes_the_schema_key_and_stops_at_quotes():
    # opencode's `read` takes `filePath`, and opencode sends the task quoted.
    body = {"tools": [_tool("read", "filePath")], "messages": [{"role": "user", "content": '"read /w/a.txt"'}]}
    assert _calls(body) == [("read", {"filePath": "/w/a.txt"})]


def test_an_explicit_call_is_one_call_and_bad_json_none():
    text = 'call read {"path": "/w/a.txt"} and call read {\\"path\\": \\"/w/b.txt\\"}'
    body = {"tools": [_tool("read", "path")], "messages": [{"role": "user", "content": text}]}
    assert _calls(body) == [("read", {"path": "/w/a.txt"})]


def test_the_simulator_reads_a_chunked_request_body():
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7]) for i in range(0, len(body), 7))
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    with SimulatorThread() as sim, socket.create_connection(("127.0.0.1", sim.port), timeout=10) as conn:
        conn.sendall(head + chunks + b"0\r\n\r\n")
        answer = b""
        while data := conn.recv(65536):
            answer += data
    assert answer.startswith(b"HTTP/1.1 200") and b"Hello!" in answer


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_kimiwire_runs_at_its_defaults_scaled_by_one_factor(shape, tmp_path):
    # Only kimi_timeout_scale shortens time: a per-option value would pin an old default and break
    # the ratios (a stall that is never retried because the idle timeout equals the budget).
    options = proxy_options(shape, 0.1, tmp_path)
    assert options["kimi_timeout_scale"] == "0.1"
    timed = [key for key in options if key.endswith(("_timeout", "_budget", "_backoff", "_grace", "keepalive"))]
    assert timed == []


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_every_shape_is_a_simulator_setting(shape):
    SimSettings().with_overrides(shape.sim)
    assert shape.reproduces


def test_judge_needs_every_token_read_back_and_answered(tmp_path):
    ws = Workspace.create(tmp_path)
    tokens = list(ws.files.values())
    results = [{"messages": [{"role": "tool", "content": f"1: {t}"} for t in tokens]}]
    assert judge(Run(0, "", "", 1.0, results, " ".join(tokens)), ws, [])[0]
    assert not judge(Run(0, "", "", 1.0, results, " ".join(tokens[:2])), ws, [])[0]
    assert not judge(Run(0, "", "", 1.0, results[:0], " ".join(tokens)), ws, [])[0]
    assert not judge(Run(1, "", "", 1.0, results, " ".join(tokens)), ws, [])[0]
    assert not judge(Run(0, "", "", 1.0, results, " ".join(tokens)), ws, ["functionsread0"])[0]


def test_judge_names_calls_that_reached_the_user_as_text(tmp_path):
    # OpenClaw 2026.4.21 strips Kimi's markers: the call's name, index and arguments remain as text.
    ws = Workspace.create(tmp_path)
    stripped = judge(Run(0, "", "", 1.0, [], 'read:0 {"path":"BOOTSTRAP.md"}'), ws, [])[1]
    markup = judge(Run(0, "", "", 1.0, [], 'read:0<|tool_call_argument_begin|>{"path":"a"}'), ws, [])[1]
    prose = judge(Run(0, "", "", 1.0, [], "I read the file: {nothing}"), ws, [])[1]
    assert "reached the user as text" in stripped and "as markup text" in markup
    assert "reached the user" not in prose


@pytest.mark.parametrize("name", HARNESSES)
def test_the_harness_doc_shows_the_config_the_runs_write(name):
    harness = HARNESSES[name]
    for version in harness.versions:
        _, text = harness.config(version, "http://127.0.0.1:8080/v1")
        assert text.strip() in HARNESS_DOC, f"docs/harnesses.md lacks {harness.title} {version}'s config"


@pytest.mark.parametrize("name", HARNESSES)
def test_a_run_writes_its_config_with_the_runs_key_in_place_of_the_placeholder(name, tmp_path):
    harness = HARNESSES[name]
    ws = Workspace.create(tmp_path)
    version = harness.versions[0]
    config_name, readme_text = harness.config(version, "http://127.0.0.1:8080/v1")
    harness.prepare(version, tmp_path / "install", ws, "http://127.0.0.1:8080/v1")
    written = (ws.home / config_name).read_text()
    assert "http://127.0.0.1:8080/v1" in written and KEY_PLACEHOLDER not in written
    if KEY_PLACEHOLDER in readme_text:  # else the config names KEY_ENV, or (mini-swe-agent) none
        assert API_KEY in written


# One shape per harness: the one that breaks it directly (docs/harnesses.md's table), run through kimiwire.
SUBSET = {
    ("openclaw", "2026.9.6"): "moonshot",
    ("pi", "0.73.1"): "moonshot",
    ("pi", "1.6.0"): "moonshot",
    ("opencode", "1.18.33"): "moonshot",
    ("hermes", "0.19.0"): "empty-turn",
    ("mini-swe-agent", "2.4.6"): "empty-turn",
    ("kimi-cli", "1.51.0"): "empty-turn",
}


def _registry_reachable(name):
    tool = "npm" if name in ("openclaw", "pi", "opencode") else "pip"
    if tool == "npm":
        command = [shutil.which("npm") or "npm", "view", "is-number", "version"]
    else:
        command = [str(ROOT / ".venv" / "bin" / "python"), "-m", "pip", "download", "--no-deps", "-d", "/tmp", "six"]
    try:
        return subprocess.run(command, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.timeout(1500)
@pytest.mark.parametrize(("name", "version"), SUBSET, ids=[f"{n}-{v}" for n, v in SUBSET])
def test_the_harness_finishes_through_kimiwire(name, version):
    harness = HARNESSES[name]
    try:
        install_dir = harness.install(version)
    except (RuntimeError, subprocess.SubprocessError) as exc:
        if not _registry_reachable(name):
            pytest.skip(f"the package registry is unreachable, {harness.title} {version} cannot install: {exc}")
        raise
    shape = next(s for s in SHAPES if s.name == SUBSET[name, version])
    outcome = run_once(harness, version, install_dir, shape, PATHS[1], timeout=240, scale=0.1)
    assert outcome.passed, json.dumps(outcome.__dict__)


@pytest.mark.parametrize("on_stderr", [False, True], ids=["stdout", "stderr (2026.4.21)"])
def test_openclaws_answer_is_its_json_payload_text_on_either_stream(on_stderr, tmp_path):
    ws = Workspace.create(tmp_path)
    tokens = list(ws.files.values())
    result = {"payloads": [{"text": "Done. " + " | ".join(tokens)}], "meta": {"finalAssistantRawText": "x"}}
    printed = json.dumps(result, indent=2) + "\n"
    plugins = "[plugins] openai installed bundled runtime deps: ws@^8.20.0\n"
    run = Run(0, "" if on_stderr else printed, plugins + printed if on_stderr else plugins, 1.0, [])
    assert HARNESSES["openclaw"].answer(run, ws) == "Done. " + " | ".join(tokens)

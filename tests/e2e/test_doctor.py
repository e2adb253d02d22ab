"""`scripts/doctor` against the simulator's shapes (each gives its known rows and detection), a
stopped upstream and a server that wants a key: clear messages, exit codes, the key never shown."""

from __future__ import annotations

import subprocess
import time

import orjson
import pytest
from kimiwire.doctor.__main__ import is_local, main
from kimiwire.doctor.cases import CASES, read_answer
from kimiwire.launch import ROOT, free_port
from kimiwire.sim.server import HttpServer, ServerThread, SimulatorThread
from kimiwire.sim.settings import SimSettings
from kimiwire.wire.openai_errors import error_object

SECRET = "sk-doctor-test-0123456789abcdef"


def _doctor(*args: str) -> tuple[int, str]:
    out: list[str] = []
    code = main(list(args), out.append)
    return code, "".join(out)


# shape -> (engine found, the harness case's direct findings, kimiwire's reasoning field)
SHAPES = {
    "sglang": ("sglang", ["markup leak"], ["reasoning_content"]),
    "vllm": ("vllm", ["markup leak"], ["reasoning"]),
    "moonshot": ("unknown", [], ["reasoning_content"]),  # Moonshot's model is not poisoned by ids (sim)
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_each_shape_gives_its_known_rows_in_under_a_minute(shape: str, monkeypatch) -> None:
    engine, harness_direct, reasoning = SHAPES[shape]
    leak = "untooled" if shape == "sglang" else "none"
    monkeypatch.setenv("DOCTOR_TEST_KEY", SECRET)
    with SimulatorThread(SimSettings(shape=shape, leak=leak, served="moonshotai/Kimi-K2.6")) as sim:
        started = time.monotonic()
        code, output = _doctor("--upstream", sim.url + "/v1", "--json", "--key-env", "DOCTOR_TEST_KEY")
        took = time.monotonic() - started
    assert took < 60
    assert SECRET not in output
    report = orjson.loads(output)
    assert code == 0, report["problems_left"]
    assert report["detection"]["engine"] == engine
    assert report["detection"]["family"] == "k2.5/k2.6"
    assert report["model"] == "moonshotai/Kimi-K2.6"
    assert report["kimiwire_detection"]["engine"] == engine
    cases = {c["case"]: c for c in report["cases"]}
    assert list(cases) == [c.name for c in CASES]
    assert cases["harness"]["direct"]["problems"] == harness_direct
    assert cases["harness"]["kimiwire"]["problems"] == [] and cases["harness"]["kimiwire"]["calls"] == 1
    assert cases["parallel"]["direct"]["calls"] == 2 and cases["parallel"]["kimiwire"]["calls"] == 2
    assert cases["tool_call"]["kimiwire"]["id_forms"] == ["functions.NAME:N"]
    assert cases["thinking_on"]["direct"]["reasoning_keys"] == reasoning
    fields = {"sglang": ["matched_stop"], "vllm": ["stop_reason"], "moonshot": []}[shape]
    assert cases["tool_call"]["direct"]["engine_fields"] == fields
    if shape == "sglang":  # `tools: []` after tool history: SGLang leaves the call as text
        assert cases["empty_tools"]["direct"]["problems"] == ["markup leak"]
        assert cases["empty_tools"]["kimiwire"]["problems"] == []
        assert cases["empty_tools"]["kimiwire"]["calls"] == 1
    if shape == "moonshot":
        assert cases["tool_call"]["direct"]["id_forms"] == ["NAME:N"]
        assert any("kimi_flavor=moonshot" in line for line in report["options"])
    else:
        assert any(f"finds {engine}" in line for line in report["options"])


def test_the_table_names_findings_and_options(monkeypatch) -> None:
    with SimulatorThread(SimSettings(shape="vllm")) as sim:
        code, output = _doctor("--upstream", sim.url + "/v1")
    assert code == 0
    lines = output.splitlines()
    harness = lines.index(next(line for line in lines if line.startswith("harness")))
    assert "markup leak" in lines[harness] and lines[harness + 1].split()[0] == "kimiwire"
    assert lines[harness + 1].rstrip().endswith("ok")
    assert "kimi_reasoning_field=both" in output  # vLLM sends `reasoning`
    assert "kimiwire repaired: markup leak (harness)" in output


def test_moonshot_behind_a_gateway_is_suggested_and_the_suggestion_can_be_tried() -> None:
    """A Moonshot-like server on a host `auto` cannot know (the simulator's Moonshot contract):
    harness requests are refused; the doctor suggests kimi_flavor=moonshot, and with it nothing is."""
    with SimulatorThread(SimSettings(shape="moonshot", contract="moonshot", served="kimi-k2.6")) as sim:
        code, output = _doctor("--upstream", sim.url + "/v1", "--json")
        tried_code, tried_output = _doctor("--upstream", sim.url + "/v1", "--json", "--set", "kimi_flavor=moonshot")
    report, tried = orjson.loads(output), orjson.loads(tried_output)
    harness = {c["case"]: c for c in report["cases"]}["harness"]
    assert harness["direct"]["status"] == 400 and harness["kimiwire"]["status"] == 400
    assert code == 1 and any("--set kimi_flavor=moonshot" in line for line in report["options"])
    assert tried_code == 0, tried["problems_left"]
    assert tried["kimiwire_options"] == ["kimi_flavor=moonshot"]
    assert all(c["kimiwire"]["status"] == 200 for c in tried["cases"])
    assert any(c["direct"]["status"] == 400 for c in tried["cases"])


def test_set_takes_only_kimiwire_options() -> None:
    with pytest.raises(SystemExit):
        _doctor("--upstream", "http://127.0.0.1:9/v1", "--set", "mode=regular")


def test_problems_left_through_kimiwire_exit_1(monkeypatch) -> None:
    """A server that fails every attempt of a turn with an empty answer: kimiwire's retry cannot
    fix it, so the table says so and the exit code is 1."""
    with SimulatorThread(SimSettings(shape="sglang", fault="empty:9")) as sim:
        code, output = _doctor("--upstream", sim.url + "/v1", "--json")
    report = orjson.loads(output)
    assert code == 1 and report["problems_left"]
    assert all("empty turn" in c["direct"]["problems"] for c in report["cases"])


def test_a_stopped_upstream_is_named_with_exit_3() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    code, output = _doctor("--upstream", url)
    assert code == 3
    assert output.startswith(f"doctor: cannot reach {url}") and "Connect" in output


class _WantsKey(HttpServer):
    async def _respond(self, method, path, headers, body, writer) -> bool:
        return await self._json(writer, 401, error_object("Invalid Authentication", "invalid_request_error", 401))


def test_a_refused_key_is_named_with_exit_4_and_never_printed(monkeypatch) -> None:
    monkeypatch.setenv("DOCTOR_TEST_KEY", SECRET)
    with ServerThread(_WantsKey()) as server:
        code, output = _doctor("--upstream", server.url + "/v1", "--key-env", "DOCTOR_TEST_KEY")
        json_code, json_output = _doctor("--upstream", server.url + "/v1", "--key-env", "DOCTOR_TEST_KEY", "--json")
    assert code == 4 and json_code == 4
    assert "HTTP 401" in output and "--key-env" in output
    assert orjson.loads(json_output)["exit"] == 4
    assert SECRET not in output + json_output


def test_a_missing_key_variable_is_a_usage_error(monkeypatch) -> None:
    monkeypatch.delenv("DOCTOR_ABSENT_KEY", raising=False)
    code, output = _doctor("--upstream", "http://127.0.0.1:9/v1", "--key-env", "DOCTOR_ABSENT_KEY")
    assert code == 2 and "DOCTOR_ABSENT_KEY is not set" in output


def test_only_local_hosts_go_without_asking() -> None:
    assert is_local("127.0.0.1") and is_local("localhost") and is_local("::1") and is_local("10.1.2.3")
    assert not is_local("api.moonshot.ai") and not is_local("8.8.8.8")


def test_the_script_runs_and_asks_nothing_of_a_local_upstream() -> None:
    with SimulatorThread() as sim:
        result = subprocess.run(
            [str(ROOT / "scripts" / "doctor"), "--upstream", sim.url + "/v1"],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "options:" in result.stdout and "16 requests" in result.stdout


def test_an_answer_is_read_as_a_client_reads_it() -> None:
    stream = (
        b'data: {"choices":[{"index":0,"delta":{"content":"<|tool_calls_section_begin|>"},"finish_reason":null}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    )
    answer = read_answer(200, "text/event-stream", stream)
    assert answer.markup_leak and answer.finish_reasons == ["stop"] and not answer.empty_turn
    refused = read_answer(400, "application/json", b'{"error":{"message":"developer role is not supported"}}')
    assert refused.problems(CASES[0]) == ["HTTP 400: developer role is not supported"]
    empty = read_answer(200, "application/json", b'{"choices":[{"message":{"content":""},"finish_reason":"stop"}]}')
    assert empty.empty_turn and "empty turn" in empty.problems(CASES[3])

"""Real clients finish the multi-turn tool task through the proxy, for every server shape the
simulator offers, and fail without it where the documented bugs say they do."""

import httpx
import pytest

from tests.support.clients import (
    EXPECTED_ANSWER,
    EXPECTED_TOOL_RUNS,
    PIAI_VERSIONS,
    run_openai_sdk,
    run_piai,
    tool_runs,
)
from tests.support.proxied import proxied
from tests.support.streams import Stream
from tests.support.upstream import RecordingUpstream, sse_reply

SHAPES = {
    "sglang": "shape=sglang",
    "sglang-interleaved": "shape=sglang,interleave",
    "sglang-reasoning-between": "shape=sglang,reasoning_between",
    "sglang-whole": "shape=sglang,whole",
    "vllm-interleaved": "shape=vllm,interleave",
    "vllm-reasoning-between": "shape=vllm,reasoning_between,fragments=6",
    "moonshot": "shape=moonshot",
    "moonshot-reasoning-between": "shape=moonshot,reasoning_between",
    "deepinfra-interleaved": "shape=deepinfra,interleave,fragments=2",
}
# Shapes that break pi-ai without the proxy (shared notes, openclaw-client.md §1.3-1.4).
BREAKS_PIAI = {
    "0.67.68": [
        "sglang-interleaved",
        "sglang-reasoning-between",
        "vllm-interleaved",
        "vllm-reasoning-between",
        "moonshot-reasoning-between",
        "deepinfra-interleaved",
    ],
    "0.73.0": [
        "sglang-interleaved",
        "sglang-reasoning-between",
        "vllm-interleaved",
        "vllm-reasoning-between",
        "moonshot",
        "moonshot-reasoning-between",
        "deepinfra-interleaved",
    ],
    # @earendil-works/pi-ai 1.x keys tool deltas by index, and by id when there is none: only
    # Moonshot's index-less, id-less argument fragments still split (measured, 1.6.0).
    "1.6.0": ["moonshot", "moonshot-reasoning-between"],
}
# How the newest pi-ai fails directly, exactly: the first turn's calls as pi-ai hands them to the tools.
_MOONSHOT_SPLIT = [{"id": "read:0", "name": "read", "arguments": {}}] + [{"id": "", "name": "", "arguments": {}}] * 4
EXACT_DIRECT_FAILURE = {
    ("1.6.0", "moonshot"): _MOONSHOT_SPLIT,
    ("1.6.0", "moonshot-reasoning-between"): _MOONSHOT_SPLIT,
}


@pytest.fixture(scope="module")
def proxy(simulator, tmp_path_factory):
    options = {
        "kimi_idle_timeout": 2,
        "kimi_first_byte_timeout": 2,
        "kimi_first_event_timeout": 2,
        "kimi_done_grace": 0.3,
    }
    with proxied(simulator, tmp_path_factory.mktemp("real"), options, save_flows=False) as p:
        yield p


@pytest.fixture(scope="module")
def proxy_without_retries(simulator, tmp_path_factory):
    """The ending guarantees alone: with retries (the default) each of these faults is first
    retried, and multiplied by the client's own retries (tests/e2e/test_e2e_retries.py, README)."""
    options = {
        "kimi_idle_timeout": 2,
        "kimi_first_byte_timeout": 2,
        "kimi_first_event_timeout": 2,
        "kimi_done_grace": 0.3,
        "kimi_retry_on": "",
    }
    with proxied(simulator, tmp_path_factory.mktemp("real-noretry"), options, save_flows=False) as p:
        yield p


def sim_ids(simulator, n):
    return [r["tool_call_ids"] for r in httpx.get(f"{simulator.url}/_sim/requests").json()[-n:]]


@pytest.mark.parametrize("version", PIAI_VERSIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_piai_completes_the_task_through_the_proxy(proxy, simulator, version, shape):
    report = run_piai(version, proxy.url, SHAPES[shape])
    assert tool_runs(report) == EXPECTED_TOOL_RUNS, report
    assert report["outcome"] == "answered" and report["finalText"] == EXPECTED_ANSWER
    # the server saw canonical, sequential ids on every turn
    assert sim_ids(simulator, 1)[0] == ["functions.read:0", "functions.read:1", "functions.exec:2", "functions.read:3"]


@pytest.mark.parametrize("version", PIAI_VERSIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_piai_without_the_proxy_fails_where_documented(simulator, version, shape):
    report = run_piai(version, simulator.url, SHAPES[shape])
    ok = tool_runs(report) == EXPECTED_TOOL_RUNS and report["outcome"] == "answered"
    assert ok is (shape not in BREAKS_PIAI[version]), report
    if (version, shape) in EXACT_DIRECT_FAILURE:
        assert report["turns"][0]["calls"] == EXACT_DIRECT_FAILURE[version, shape], report


@pytest.mark.parametrize("version", PIAI_VERSIONS)
def test_openclaw_style_ids_poison_the_model_without_the_proxy(proxy, simulator, version):
    # OpenClaw 2026.4.21 strips '.' and ':' from ids: the model copies the pattern, its parser
    # fails, and the call leaks as markup in the text after the first round.
    broken = run_piai(version, simulator.url, "shape=sglang", sanitize="strict")
    assert tool_runs(broken) == EXPECTED_TOOL_RUNS[:1]
    assert "<|tool_call" in broken["finalText"]
    fixed = run_piai(version, proxy.url, "shape=sglang", sanitize="strict")
    assert tool_runs(fixed) == EXPECTED_TOOL_RUNS and fixed["finalText"] == EXPECTED_ANSWER


def _answer_without_finish_reason(_request):
    return sse_reply(Stream().chunk({"role": "assistant", "content": ""}).chunk({"content": "Hello"}).done().events)


@pytest.mark.parametrize("version", PIAI_VERSIONS)
def test_a_stream_without_finish_reason_fails_piai_1x_directly(version):
    # @earendil-works/pi-ai 1.x ends the turn with an error when no choice carries a finish_reason;
    # the older line takes the text as the answer.
    with RecordingUpstream(_answer_without_finish_reason) as upstream:
        report = run_piai(version, upstream.url, task="hello")
    if version.startswith("0."):
        assert report["outcome"] == "answered" and report["finalText"] == "Hello", report
    else:
        assert report["outcome"] == "error: Stream ended without finish_reason", report


def test_piai_1x_gets_a_finish_reason_through_the_proxy(tmp_path):
    # kimiwire ends every choice with a finish_reason (lane core, tests/unit/wire/test_do_no_harm.py)
    with proxied(_answer_without_finish_reason, tmp_path) as proxy:
        report = run_piai(PIAI_VERSIONS[-1], proxy.url, task="hello")
    assert report["outcome"] == "answered" and report["finalText"] == "Hello", report


def test_markup_leak_from_an_already_poisoned_model_becomes_tool_calls(simulator, tmp_path):
    # With kimi_tool_ids=keep the mangled ids reach the model, which then leaks raw markup;
    # the response repair still turns it into real calls and the task completes.
    with proxied(simulator, tmp_path, {"kimi_tool_ids": "keep"}, save_flows=False) as proxy:
        report = run_piai("0.67.68", proxy.url, "shape=sglang", sanitize="strict")
    assert tool_runs(report) == EXPECTED_TOOL_RUNS
    assert report["finalText"] == EXPECTED_ANSWER
    assert "markup.recovered_markup=" in proxy.output


@pytest.mark.parametrize("shape", SHAPES)
def test_openai_sdk_completes_the_task_through_the_proxy(proxy, shape):
    report = run_openai_sdk(proxy.url, SHAPES[shape])
    assert [(r["name"], r["arguments"]) for r in report["toolRuns"]] == EXPECTED_TOOL_RUNS, report
    assert report["outcome"] == "answered" and report["finalText"] == EXPECTED_ANSWER
    assert all(t["finish_reason"] in ("tool_calls", "stop") for t in report["turns"])


FAULTS = {
    "done-open": ("fault=done-open", "answered"),
    "stall": ("fault=stall:4", "error"),
    "reset": ("fault=reset:4", "error"),
    "reset-before-response": ("fault=reset:0", "error"),
    "rate-limited": ("fault=status:429", "error"),
    "server-error": ("fault=status:500", "error"),
    "slow-first-byte": ("fault=slow-first-byte:30", "error"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_piai_faults_end_promptly_through_the_proxy(proxy_without_retries, fault):
    sim, expected = FAULTS[fault]
    report = run_piai(
        "0.67.68", proxy_without_retries.url, f"shape=sglang,{sim}", task="read /w/a.txt", turn_timeout_ms=15000
    )
    first = report["turns"][0]
    # Bounded by the proxy's 2 s timeouts, never the 15 s abort. pi-ai 0.67.68 leaves the OpenAI
    # SDK's 2 retries on 5xx in place, so a 504 costs three first-byte timeouts.
    bound = 3 * 2000 + 3000 if fault == "slow-first-byte" else 6000
    assert first["ms"] < bound, report
    if expected == "answered":
        assert tool_runs(report) == EXPECTED_TOOL_RUNS[:1]
    else:
        assert report["outcome"].startswith("error"), report
        assert "aborted" not in report["outcome"]
        if fault == "slow-first-byte":
            assert "504" in report["outcome"] and "no response headers" in report["outcome"]


def test_done_open_hangs_piai_without_the_proxy(simulator):
    report = run_piai(
        "0.67.68", simulator.url, "shape=sglang,fault=done-open,hold=30", task="read /w/a.txt", turn_timeout_ms=3000
    )
    assert report["turns"][0]["stopReason"] == "aborted" or "abort" in report["outcome"]

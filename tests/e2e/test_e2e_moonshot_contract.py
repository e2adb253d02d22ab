"""Moonshot's request contract through mitmdump: the simulator with `contract=moonshot` answers
what Moonshot's API refuses with its 400 (sim/moonshot_validator.py). Requests as the OpenAI SDK
and pi-ai send them are refused direct and accepted through kimiwire, with the client's intent
kept: renamed tools come back under their own names, replayed reasoning is sent as it was kept."""

import json

import httpx
import openai
import pytest
from kimiwire.sim.server import SimulatorThread
from kimiwire.sim.settings import SimSettings

from tests.support.clients import run_piai
from tests.support.conversations import READ_TOOL, assistant, call, tool
from tests.support.proxied import proxied

SIM = "shape=moonshot,contract=moonshot"
# An MCP tool as a harness exposes it: a dotted name and a zod-style nullable union with `type` beside `anyOf`.
CREATE_ISSUE = {
    "type": "function",
    "function": {
        "name": "github.create_issue",
        "description": "Create an issue",
        "parameters": {
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "labels": {"type": "array", "anyOf": [{"items": {"type": "string"}}, {"maxItems": 0}]},
            },
            "required": ["title"],
        },
    },
}
TASKS = [
    "read a.py then read b.py",
    'call github_create_issue {"title": "bug in a"}',
    "read c.py",
    "read d.py then read e.py then read f.py",
    'read a.py and call github_create_issue {"title": "two"}',
    "read g.py",
    "read h.py then read i.py",
    "read j.py then read k.py",
]


@pytest.fixture(scope="module")
def simulator():
    with SimulatorThread(SimSettings(shape="moonshot", contract="moonshot")) as sim:
        yield sim


@pytest.fixture(scope="module")
def proxy(simulator, tmp_path_factory):
    with proxied(simulator, tmp_path_factory.mktemp("moonshot"), {"kimi_flavor": "moonshot"}) as p:
        yield p


def session(base_url: str, model: str = "kimi-k2.6") -> dict:
    """An OpenAI SDK agent loop over TASKS in one growing conversation (several tool loops): the SDK
    keeps no reasoning, and the harness replays every call with its own ids."""
    messages: list[dict] = []
    report = {"requests": 0, "errors": [], "calls": []}
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-test", max_retries=0, timeout=20) as client:
        for task in TASKS:
            messages.append({"role": "user", "content": task})
            for _ in range(6):
                report["requests"] += 1
                try:
                    with client.chat.completions.stream(
                        model=model, messages=messages, tools=[READ_TOOL, CREATE_ISSUE], temperature=0.3
                    ) as stream:
                        completion = stream.get_final_completion()
                except openai.APIError as exc:
                    report["errors"].append(str(exc))
                    return report
                message = completion.choices[0].message
                calls = message.tool_calls or []
                replayed = [call(c.id, c.function.name, c.function.arguments) for c in calls]
                messages.append(assistant(*replayed, content=message.content))
                if not calls:
                    break
                for c in calls:
                    report["calls"].append((c.function.name, json.loads(c.function.arguments)))
                    messages.append(tool(c.id))
    return report


def test_direct_the_first_request_is_refused(simulator):
    report = session(simulator.url)
    assert report["requests"] == 1
    assert report["errors"] == ["Error code: 400 - invalid temperature: only 1 is allowed for this model"]


def test_a_multi_loop_session_through_kimiwire_has_no_400(simulator, proxy):
    httpx.delete(f"{simulator.url}/_sim/requests")
    report = session(proxy.url)
    assert report["errors"] == []
    assert report["requests"] >= 20
    names = [name for name, _ in report["calls"]]
    assert names.count("github.create_issue") == 2 and "github_create_issue" not in names  # back under its own name
    assert ("github.create_issue", {"title": "bug in a"}) in report["calls"]
    seen = httpx.get(f"{simulator.url}/_sim/requests").json()
    assert len(seen) == report["requests"]
    last = seen[-1]["body"]
    assert "temperature" not in last and [t["function"]["name"] for t in last["tools"]] == [
        "read",
        "github_create_issue",
    ]
    replayed = [m.get("reasoning_content") for m in last["messages"] if m.get("tool_calls")]
    assert len(replayed) >= 10 and set(replayed) == {" "}  # every loop, not only the current one
    kinds = {r["kind"] for f in proxy.read_flows() for r in f.metadata.get("kimiwire", {}).get("repairs", [])}
    assert {"compat.tool_name", "compat.tool_schema", "compat.fixed_sampling", "tool.name_restored"} <= kinds


def test_k3_and_k27_sessions_through_kimiwire(simulator, proxy):
    for model in ("kimi-k3", "kimi-k2.7-code"):
        report = session(proxy.url, model)
        assert report["errors"] == [] and len(report["calls"]) >= 10, model


def test_pi_ai_through_kimiwire_keeps_its_reasoning_and_gets_no_400(simulator, proxy):
    httpx.delete(f"{simulator.url}/_sim/requests")
    report = run_piai("1.6.0", proxy.url, sim=SIM, model="kimi-k2.6")
    assert report["outcome"] == "answered", report
    seen = httpx.get(f"{simulator.url}/_sim/requests").json()
    assert seen and all(r["attempt"] > 0 for r in seen)  # (a refused request is recorded with attempt 0)
    last = seen[-1]["body"]
    replayed = [m.get("reasoning_content") for m in last["messages"] if m.get("tool_calls")]
    assert replayed and all(r and r.strip() for r in replayed)  # pi-ai's own reasoning, sent as kept


def test_a_forced_tool_sent_as_auto_is_retried_then_the_answer_delivered(simulator, proxy):
    # K2.7-code refuses `required` while it thinks (and cannot stop thinking): kimiwire sends `auto`
    # and judges the turn on calling a tool. The scripted model answers this task in text every time.
    def ask(base_url, task):
        with openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-test", max_retries=0, timeout=20) as client:
            return client.chat.completions.create(
                model="kimi-k2.7-code",
                messages=[{"role": "user", "content": task}],
                tools=[READ_TOOL],
                tool_choice="required",
                extra_headers={"x-kimi-sim": f"run={task}"},
            )

    with pytest.raises(openai.BadRequestError, match="tool_choice 'required' is incompatible with thinking enabled"):
        ask(simulator.url, "say hi")
    httpx.delete(f"{simulator.url}/_sim/requests")
    reply = ask(proxy.url, "say hi")
    assert reply.choices[0].message.content and not reply.choices[0].message.tool_calls
    seen = httpx.get(f"{simulator.url}/_sim/requests").json()
    assert [r["body"]["tool_choice"] for r in seen] == ["auto", "auto", "auto"]  # the first attempt and 2 retries
    reply = ask(proxy.url, "read a.py")
    assert reply.choices[0].message.tool_calls[0].function.name == "read"


def test_more_tools_than_kimi_for_coding_takes_are_answered_by_kimiwire(simulator, proxy):
    tools = [
        {"type": "function", "function": {"name": f"tool_{i}", "parameters": {"type": "object"}}} for i in range(130)
    ]
    httpx.delete(f"{simulator.url}/_sim/requests")
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-test", max_retries=0, timeout=20)
    with client, pytest.raises(openai.BadRequestError, match=r"too many tools: 130 \(at most 128\)"):
        client.chat.completions.create(
            model="kimi-for-coding", messages=[{"role": "user", "content": "hi"}], tools=tools
        )
    assert httpx.get(f"{simulator.url}/_sim/requests").json() == []  # nothing went upstream

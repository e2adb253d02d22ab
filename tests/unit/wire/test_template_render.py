"""The rewritten request, rendered through the real Kimi-K2-Thinking chat template."""

import hashlib
import re

import orjson
from kimiwire.wire.request.repair import repair_request_body
from kimiwire.wire.servers.policy import Flavor, Policy

from tests.support.conversations import assistant, body, call, tool, user
from tests.support.template import ASSISTANT_TURN, CALL_ID, RETURN_OF, TEMPLATE, THINK, render


def openclaw_history():
    """A three-round tool loop as OpenClaw 2026.4.21 sends it: mangled ids, reasoning replayed."""
    return [
        {"role": "system", "content": "You are a coding agent."},
        user("read a.txt and b.txt, then list the dir"),
        assistant(call("functionsread0", "read", {"path": "a.txt"}), reasoning_content="SECRET-R1 I will read a"),
        tool("functionsread0", "A-CONTENT"),
        assistant(
            call("functionsread0", "read", {"path": "b.txt"}),
            call("functionsexec1", "exec", {"command": "ls"}),
            reasoning_content="SECRET-R2 now b and ls",
        ),
        tool("functionsread0", "B-CONTENT"),
        tool("functionsexec1", "LS-OUTPUT"),
        assistant(content="Done: both files read.", reasoning_content="SECRET-R3 summarise"),
        user("now read c.txt"),
        assistant(call("functionsread02", "read", {"path": "c.txt"}), reasoning_content="SECRET-R4 read c"),
        tool("functionsread02", "C-CONTENT"),
    ]


def repaired_messages(policy):
    result = repair_request_body(orjson.dumps(body(openclaw_history())), policy)
    return orjson.loads(result.body)["messages"]


# sha256 of Kimi-K2-Thinking's chat template as published in ggml-org/llama.cpp,
# models/templates/moonshotai-Kimi-K2-Thinking.jinja (commit 0c3c896e); see tests/fixtures/README.md.
TEMPLATE_SHA256 = "833d0c375531149a922a0f2addf9a66cce8e4503c500fe4ca6a95e9d1ed3c75a"


def test_vendored_template_is_the_published_one():
    assert hashlib.sha256(TEMPLATE.read_bytes()).hexdigest() == TEMPLATE_SHA256, (
        "tests/fixtures/kimi-k2-thinking.jinja changed: restore the published template (tests/fixtures/README.md)"
    )


def test_model_sees_canonical_sequential_ids():
    prompt = render(repaired_messages(Policy.build(Flavor.SELFHOSTED)))
    assert CALL_ID.findall(prompt) == ["functions.read:0", "functions.read:1", "functions.exec:2", "functions.read:3"]


def test_every_return_names_an_id_of_the_preceding_assistant_turn():
    prompt = render(repaired_messages(Policy.build(Flavor.SELFHOSTED)))
    assert RETURN_OF.findall(prompt) == ["functions.read:0", "functions.read:1", "functions.exec:2", "functions.read:3"]
    # Walk the prompt: each Return must name a call of the closest assistant turn before it.
    last_ids: list[str] = []
    for token in re.finditer(r"<\|im_assistant\|>.*?<\|im_end\|>|## Return of (\S+)", prompt, re.S):
        if token.group(0).startswith("<|im_assistant|>"):
            last_ids = CALL_ID.findall(token.group(0))
        else:
            assert token.group(1) in last_ids
    # the tool results keep their content next to the right id
    assert "## Return of functions.read:1\nB-CONTENT" in prompt
    assert "## Return of functions.exec:2\nLS-OUTPUT" in prompt


def test_strip_leaves_no_historical_reasoning_in_the_prompt():
    prompt = render(repaired_messages(Policy.build(Flavor.SELFHOSTED)))
    assert "SECRET-R" not in prompt
    assert all(t == "" for t in THINK.findall(prompt))


def test_without_repair_the_model_sees_the_mangled_ids():
    prompt = render(openclaw_history())
    assert "functionsread0" in CALL_ID.findall(prompt)
    assert "SECRET-R4" in prompt  # the current loop's reasoning is rendered


def test_loop_keeps_reasoning_of_the_current_tool_loop_only():
    prompt = render(repaired_messages(Policy.build(Flavor.DEEPINFRA)))
    turns = ASSISTANT_TURN.findall(prompt)
    thinks = [THINK.search(t).group(1) for t in turns]
    assert thinks == ["", "", "", "SECRET-R4 read c"]

"""The engine corpus: streams the released Kimi parsers of vLLM and SGLang emit (their code copied
from the wheels, run by scripts/engine_corpus.py), fed through kimiwire and assembled the way pi-ai
and the OpenAI guide do. Through kimiwire every case must give the model's exact calls, text,
reasoning and finish, except where the engine never sent part of it: there nothing is invented and
no cut call goes out to run. Never worse than direct, on every case."""

from __future__ import annotations

import hashlib
import re

import pytest

from tests.support import engine_corpus as ec

CASES = ec.load()
# Where the engine lost the end of a call's arguments, pi-ai's partial-JSON parse may guess the rest
# and run it; kimiwire ends such a turn with `length` instead (truncated output never becomes an
# action), so that one difference is not harm.
LOST_CALL_ENDED = {"pi-ai: stop length != toolUse", "guide: finish length != tool_calls"}


def test_the_corpus_covers_each_release_model_and_split_and_stays_small():
    engines = {c.engine for c in CASES}
    assert engines == {"sglang-0.5.5", "sglang-0.5.23", "vllm-0.10.2", "vllm-0.13.0", "vllm-0.20.0", "vllm-0.34.0"}
    assert {c.model for c in CASES} == {"k2", "k25", "k3"}
    assert {c.split for c in CASES} == {"1ch", "1-4ch", "4tok-steps"}
    assert ec.CORPUS.stat().st_size < 3_000_000
    total = sum(p.stat().st_size for p in ec.CORPUS.parent.rglob("*") if p.is_file())
    assert total < 5_000_000


def test_each_copied_parser_module_is_the_released_file_byte_for_byte():
    copied = sorted(ec.CORPUS.parent.rglob("*.py"))
    assert len(copied) >= 20
    for path in copied:
        data = path.read_bytes()
        head, _, _ = data.partition(b"# Third-party code")
        original = data.split(b"\n", 6)[6]
        want = re.search(rb"original file sha256: ([0-9a-f]{64})", head)
        assert want and hashlib.sha256(original).hexdigest() == want.group(1).decode(), path
        assert re.search(rb"release: (vllm|sglang)==[0-9.]+ \(PyPI\)", head), path


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_through_kimiwire_the_client_gets_the_models_calls_text_and_finish(case):
    body = ec.through(case)
    problems = ec.problems(case, body)
    if ec.engine_lost(case):
        assert problems, f"{case.id} passes now: remove it from ec.ENGINE_LOST"
        assert ec.engine_lost_problems(case, body) == []
    else:
        assert problems == []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_through_kimiwire_is_never_worse_than_direct(case):
    body = ec.through(case)
    direct, through = ec.problems(case, case.sse), ec.problems(case, body)
    added = [p for p in through if p not in direct]
    lost_call_ended = bool(added) and set(added) <= LOST_CALL_ENDED and ec.engine_lost(case)
    if lost_call_ended:  # the one difference allowed: a call whose arguments never closed ends the turn
        assert ec.engine_lost_problems(case, body) == []
        assert any("never closed" in p for p in ec.engine_lost_problems(case, case.sse))
    allowed = {p.split(": ", 1)[1] for p in LOST_CALL_ENDED} if lost_call_ended else set()
    for assemble in (ec.piai_problems, ec.guide_problems):
        if not assemble(case, case.sse):
            assert set(assemble(case, body)) <= allowed, assemble.__name__
    assert len(through) <= len(direct) or lost_call_ended
    if ec.engine_lost(case):  # what the engine did send, kimiwire delivers no worse
        assert len(ec.engine_lost_problems(case, body)) <= len(ec.engine_lost_problems(case, case.sse))


def test_the_engine_lost_checks_can_fail():
    """Direct, the engines' own streams fail the weaker checks: a call whose arguments never
    closed runs under `tool_calls`, reasoning and `</think>` come as text."""
    failing = [c.id for c in CASES if ec.engine_lost(c) and ec.engine_lost_problems(c, c.sse)]
    assert "vllm-0.10.2/k2-one-call/4tok-steps" in failing
    assert "vllm-0.13.0/k25-no-reasoning-parser/4tok-steps" in failing
    assert len(failing) >= 10


def test_the_corpus_shows_what_each_release_breaks_direct():
    """The known engine behaviours are in the bytes (so the corpus can fail a regression)."""
    by_id = {c.id: c for c in CASES}
    resend = by_id["vllm-0.13.0/k25-one-call/1-4ch"]
    assert b"<|tool_call_begin|>functions.read:0" in resend.sse  # markup re-sent as content
    assert any("text" in p for p in ec.piai_problems(resend, resend.sse))
    cut = by_id["vllm-0.13.0/k25-cut-call/1ch"]
    assert b'"finish_reason":"tool_calls"' in cut.sse
    k3 = by_id["sglang-0.5.23/k3-two-calls/1ch"]
    assert b'"id":"read:0"' in k3.sse and ec.guide_problems(k3, k3.sse)  # whole arguments in the first delta
    assert b'"finish_reason":"tool_calls"' in by_id["vllm-0.20.0/k25-cut-call/1ch"].sse
    assert b'"finish_reason":"length"' in by_id["vllm-0.34.0/k25-cut-call/1ch"].sse  # fixed by 0.34
    assert b'"kv_transfer_params":null' in by_id["vllm-0.34.0/k3-text/1ch"].sse
    assert b'"matched_stop":163586' in by_id["sglang-0.5.23/k25-text/1ch"].sse
    assert b'"stop_reason":null' in by_id["vllm-0.13.0/k25-text/1ch"].sse


# -- a few streams through a real mitmdump subprocess --------------------------------------------

E2E = [
    "sglang-0.5.5/k25-two-calls/1-4ch",
    "sglang-0.5.23/k3-two-calls/1-4ch",
    "vllm-0.10.2/k25-nested-args/1-4ch",
    "vllm-0.13.0/k25-off-text/1ch",
    "vllm-0.13.0/k25-one-call/1-4ch",  # vLLM re-sends the section as content at its end
    "vllm-0.34.0/k3-two-calls/4tok-steps",
    "vllm-0.10.2/k25-off-text/1ch",  # thinking off: the first step's answer came as reasoning
    "sglang-0.5.5/k25-off-one-call/1-4ch",  # thinking off: the whole answer, call markup included, as reasoning
    "vllm-0.13.0/k25-no-reasoning-parser/1ch",  # the re-sent buffer holds reasoning, </think> and text
]


@pytest.fixture(scope="module")
def corpus_proxy(tmp_path_factory):
    from tests.support.proxied import proxied
    from tests.support.upstream import sse_reply

    by_id = {c.id: c for c in CASES}

    def respond(request):
        case = by_id[request.headers["x-case"]]
        return sse_reply([event + b"\n\n" for event in case.sse.split(b"\n\n") if event])

    with proxied(respond, tmp_path_factory.mktemp("proxy")) as proxy:
        yield proxy


@pytest.mark.parametrize("case_id", E2E)
def test_through_mitmdump_the_client_gets_what_the_repairer_gives_in_process(corpus_proxy, case_id):
    import httpx

    case = next(c for c in CASES if c.id == case_id)
    with httpx.stream(
        "POST",
        f"{corpus_proxy.url}/v1/chat/completions",
        json=case.request_body(),
        headers={"x-case": case_id},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        delivered = b"".join(response.iter_bytes())
    assert ec.problems(case, delivered) == ec.problems(case, ec.through(case)) == []

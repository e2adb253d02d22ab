"""`kimi_flavor=auto` finds the engine and model family: the signs (wire/servers/detection.py) on the
simulator's shapes, the policy they lead to, and the background probe of a real mitmdump."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
import pytest
from kimiwire.mitm.upstream_probe import UpstreamDetector, reverse_upstreams
from kimiwire.sim.model import plan_turn
from kimiwire.sim.server import HttpServer, ServerThread, SimulatorThread
from kimiwire.sim.settings import SimSettings
from kimiwire.sim.shapes import DONE, completion_body, model_list, stream_chunks
from kimiwire.wire.request.repair import repair_request_body
from kimiwire.wire.servers.detection import Detection, Engine, IdForm, ModelFamily, id_form, model_family, models_path
from kimiwire.wire.servers.policy import Flavor, Policy, PolicyCache

from tests.support import engine_corpus
from tests.support.mitm import Mitmdump
from tests.support.proxied import proxied
from tests.support.upstream import TEXT_COMPLETION

READ = {"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}}


def _turn(shape: str, streamed: bool, **settings: object) -> bytes:
    plan = plan_turn({"messages": [{"role": "user", "content": "read /w/a.txt"}], "tools": [READ]})
    sim = SimSettings(shape=shape, **settings)  # type: ignore[arg-type]
    if not streamed:
        return orjson.dumps(completion_body(plan, sim, "m"))
    chunks = stream_chunks(plan, sim, "m", include_usage=True)
    return b"".join(b"data: " + (b"[DONE]" if c == DONE else orjson.dumps(c)) + b"\n\n" for c in chunks)


# shape -> (engine from /v1/models, engine from the answers, reasoning field, id form)
KNOWN = {
    "sglang": (Engine.SGLANG, Engine.SGLANG, "reasoning_content", IdForm.FUNCTIONS),
    "vllm": (Engine.VLLM, Engine.VLLM, "reasoning", IdForm.FUNCTIONS),
    "moonshot": (Engine.UNKNOWN, Engine.UNKNOWN, "reasoning_content", IdForm.BARE),
    "deepinfra": (Engine.UNKNOWN, Engine.UNKNOWN, "reasoning_content", IdForm.FUNCTIONS),
}


@pytest.mark.parametrize("shape", sorted(KNOWN))
@pytest.mark.parametrize("streamed", [True, False])
def test_each_simulator_shape_gives_its_known_detection(shape: str, streamed: bool) -> None:
    listed_engine, answer_engine, reasoning_key, form = KNOWN[shape]
    listing = Detection()
    assert listing.read_models(orjson.dumps(model_list(shape, "moonshotai/Kimi-K2.6")))
    assert listing.engine is listed_engine
    assert listing.family is ModelFamily.K2_5_K2_6
    answers = Detection()
    answers.read_answer(_turn(shape, streamed), streamed)
    assert answers.engine is answer_engine
    assert answers.reasoning_keys == [reasoning_key]
    assert answers.id_forms == [form.value]
    expected_flavor = {Engine.SGLANG: Flavor.SGLANG, Engine.VLLM: Flavor.VLLM}.get(answer_engine, Flavor.SELFHOSTED)
    assert answers.flavor("10.0.0.5") is expected_flavor


def test_every_corpus_stream_names_its_engine() -> None:
    """The engine corpus: streams of the released SGLang and vLLM Kimi parsers (tests/fixtures/engines)."""
    cases = engine_corpus.load()
    assert len(cases) > 100
    for case in cases:
        detection = Detection()
        detection.read_answer(case.sse, True)
        assert detection.engine.value == case.engine.split("-")[0], case.id
        assert detection.flavor("gpu-box").value == case.engine.split("-")[0], case.id
        if case.model == "k3" and case.engine.startswith("sglang") and detection.id_forms:
            assert detection.family is ModelFamily.K3, case.id  # SGLang's kimi_k3 parser writes NAME:N ids
        else:
            # vLLM's K3 ids are random (chatcmpl-tool-...) and K2's say nothing of the family: no guess.
            assert detection.family is not ModelFamily.K3 or case.model == "k3", case.id
            if case.engine.startswith("sglang"):
                assert detection.family is ModelFamily.UNKNOWN, case.id


def test_an_empty_sglang_turn_and_a_whole_vllm_call_still_name_their_engine() -> None:
    empty = Detection()
    empty.read_answer(_turn("sglang", True, fault="empty:1"), True)  # rendered as a clean turn here
    assert empty.engine is Engine.SGLANG
    whole = Detection()
    whole.read_answer(_turn("vllm", True, whole=True, reasoning=False), True)
    assert whole.engine is Engine.VLLM and whole.reasoning_keys == []


def test_a_gateway_listing_says_nothing_and_a_non_listing_is_refused() -> None:
    gateway = Detection()
    assert gateway.read_models(b'{"object":"list","data":[{"id":"kimi-k2-thinking","owned_by":"openai"}]}')
    assert gateway.engine is Engine.UNKNOWN and gateway.family is ModelFamily.K2
    assert not Detection().read_models(b"<html>not found</html>")
    assert not Detection().read_models(b'{"error": "no"}')


def test_strong_signs_that_disagree_keep_the_first_and_say_so() -> None:
    detection = Detection()
    detection.read_models(orjson.dumps(model_list("vllm", "kimi-k2")))
    detection.read_answer(_turn("sglang", True), True)
    assert detection.engine is Engine.VLLM
    assert detection.conflict is not None and "sglang" in detection.conflict


def test_hosts_name_the_provider_and_keep_their_flavor() -> None:
    moonshot = Detection()
    moonshot.read_host("api.moonshot.ai")
    moonshot.read_models(orjson.dumps(model_list("sglang", "kimi-k2.5")))  # a listing cannot turn it self-hosted
    assert moonshot.engine is Engine.MOONSHOT and moonshot.flavor("api.moonshot.ai") is Flavor.MOONSHOT
    router = Detection()
    router.read_host("openrouter.ai")
    assert router.engine is Engine.OPENROUTER and router.flavor("openrouter.ai") is Flavor.OPENROUTER


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("kimi-k2-thinking", ModelFamily.K2),
        ("kimi-k2-0905-preview", ModelFamily.K2),
        ("moonshotai/Kimi-K2-Instruct", ModelFamily.K2),
        ("moonshotai/Kimi-K2.5", ModelFamily.K2_5_K2_6),
        ("accounts/fireworks/models/kimi-k2p6", ModelFamily.K2_5_K2_6),
        ("kimi-k2.7-code", ModelFamily.K2_7_CODE),
        ("kimi-k3", ModelFamily.K3),
        ("Qwen3-32B", ModelFamily.UNKNOWN),
    ],
)
def test_model_family_from_served_names(name: str, family: ModelFamily) -> None:
    assert model_family(name) is family


def test_id_forms_and_models_path() -> None:
    assert [id_form(i) for i in ("functions.read:0", "read:3", "call_0a1b", "x-1")] == [
        IdForm.FUNCTIONS,
        IdForm.BARE,
        IdForm.CALL,
        IdForm.OTHER,
    ]
    assert models_path("/v1/chat/completions") == "/v1/models"
    assert models_path("/v1/openai/chat/completions?x=1") == "/v1/openai/models"
    assert models_path("/other") == "/v1/models"
    assert reverse_upstreams(["reverse:http://127.0.0.1:8000@9000", "regular", "reverse:https://h.example"]) == [
        "http://127.0.0.1:8000",
        "https://h.example",
    ]


def test_the_learned_flavor_refines_auto_and_never_an_explicit_flavor() -> None:
    auto = PolicyCache("auto")
    assert auto.policy("gpu-box").flavor is Flavor.SELFHOSTED
    auto.learn("gpu-box", Flavor.VLLM)
    assert auto.policy("gpu-box").flavor is Flavor.VLLM
    assert auto.policy("other-box").flavor is Flavor.SELFHOSTED
    explicit = PolicyCache("sglang")
    explicit.learn("gpu-box", Flavor.VLLM)
    assert explicit.policy("gpu-box").flavor is Flavor.SGLANG


def test_a_served_name_that_hides_k26_still_gets_the_prefilled_think_rules() -> None:
    """`--served-model-name kimi` over moonshotai/Kimi-K2.6: the listing's root names the family,
    so a request for `kimi` with thinking on is read as starting inside reasoning."""
    detection = Detection()
    listing = {"data": [{"id": "kimi", "owned_by": "vllm", "root": "/models/moonshotai/Kimi-K2.6"}, {"id": "k2-old"}]}
    detection.read_models(orjson.dumps(listing))
    assert detection.switch_models() == ("kimi",)
    assert detection.served_families == {"kimi": ModelFamily.K2_5_K2_6, "k2-old": ModelFamily.K2}
    cache = PolicyCache("auto")
    cache.learn("gpu-box", detection.flavor("gpu-box"), detection.switch_models())
    policy = cache.policy("gpu-box")
    assert policy.flavor is Flavor.VLLM and policy.thinking_switch_models == ("kimi",)
    assert Policy.from_dict(orjson.loads(orjson.dumps(cache.as_dict(policy)))) == policy

    def prefilled(body: dict) -> bool:
        return repair_request_body(orjson.dumps(body), policy).facts.thinking_prefilled

    messages = [{"role": "user", "content": "hi"}]
    assert prefilled({"model": "kimi", "messages": messages})
    assert not prefilled({"model": "kimi", "messages": messages, "thinking": {"type": "disabled"}})
    assert not prefilled({"model": "k2-old", "messages": messages})
    assert not repair_request_body(
        orjson.dumps({"model": "kimi", "messages": messages}), cache.policy("other")
    ).facts.thinking_prefilled


class _ListingOnlyAt(HttpServer):
    """Lists a vLLM model at one path only (None: nowhere), 404 elsewhere; records the paths asked."""

    def __init__(self, listing_path: str | None) -> None:
        super().__init__()
        self.listing_path = listing_path
        self.asked: list[str] = []

    async def _respond(self, method, path, headers, body, writer) -> bool:
        self.asked.append(path)
        if path == self.listing_path:
            return await self._json(writer, 200, model_list("vllm", "moonshotai/Kimi-K2.6"))
        return await self._json(writer, 404, {"error": {"message": "not found"}})


def _probe_scenario(server: _ListingOnlyAt, steps) -> list[Engine]:
    learned: list[Engine] = []
    now = [0.0]

    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            detector = UpstreamDetector(lambda: client, lambda _, d: learned.append(d.engine), clock=lambda: now[0])
            detector.start([f"http://127.0.0.1:{server.port}"])
            await detector.settled()
            for at, step in steps:
                now[0] = at
                step(detector, server.port)
                await detector.settled()

    asyncio.run(scenario())
    return learned


def test_the_listing_is_asked_again_after_failures_bounded_and_beside_the_flows_path() -> None:
    chat = "/v1/openai/chat/completions"
    with ServerThread(_ListingOnlyAt("/v1/openai/models")) as thread:
        server = thread.server
        learned = _probe_scenario(
            server,
            [
                (10.0, lambda d, port: d.seen("http", "127.0.0.1", port, chat)),  # too soon: not asked
                (31.0, lambda d, port: d.seen("http", "127.0.0.1", port, chat)),  # asked beside the path
                (99.0, lambda d, port: d.failed("http", "127.0.0.1", port, chat)),  # listing read: no more
            ],
        )
    assert server.asked == ["/v1/models", "/v1/openai/models"]
    assert learned == [Engine.VLLM]
    with ServerThread(_ListingOnlyAt(None)) as thread:
        server = thread.server
        steps = [
            (30.0 * k, lambda d, port: d.failed("http", "127.0.0.1", port, "/v1/chat/completions")) for k in range(1, 9)
        ]
        assert _probe_scenario(server, steps) == []
    assert server.asked == ["/v1/models"] * UpstreamDetector.MAX_PROBES


def test_hosts_that_clients_name_are_never_asked() -> None:
    with ServerThread(_ListingOnlyAt("/v1/models")) as thread:
        server = thread.server

        async def scenario() -> dict | None:
            async with httpx.AsyncClient() as client:
                detector = UpstreamDetector(lambda: client, lambda *_: None)
                record = detector.seen("http", "127.0.0.1", server.port, "/v1/chat/completions")
                await detector.settled()
                return record

        record = asyncio.run(scenario())
    assert server.asked == [] and record is not None and record["engine"] == "unknown"


class _HangingListing(HttpServer):
    """Never answers GET /v1/models (the connection stays open); answers chat at once."""

    async def _respond(self, method, path, headers, body, writer) -> bool:
        if path.endswith("/models"):
            await asyncio.sleep(60)
            return False
        return await self._json(writer, 200, TEXT_COMPLETION)


def test_a_listing_that_never_comes_is_never_in_a_clients_path(tmp_path) -> None:
    with ServerThread(_HangingListing()) as upstream, proxied(upstream, tmp_path) as proxy:
        started = time.monotonic()
        response = httpx.post(
            proxy.url + "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert response.status_code == 200 and time.monotonic() - started < UpstreamDetector.TIMEOUT
        deadline = time.monotonic() + UpstreamDetector.TIMEOUT + 5
        while not next(iter(_health(proxy)["upstreams"].values()))["probe_problem"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        upstream_state = next(iter(_health(proxy)["upstreams"].values()))
    assert upstream_state["probe_problem"] == f"no answer within {UpstreamDetector.TIMEOUT:g} s"
    assert upstream_state["engine"] == "unknown" and upstream_state["probes"] == 1


def _health(proxy: Mitmdump) -> dict:
    return httpx.get(proxy.url + "/_kimiwire/health", timeout=5).json()


def _wait_for_engine(proxy: Mitmdump, deadline: float = 15.0) -> dict:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        upstreams = _health(proxy)["upstreams"]
        if upstreams and next(iter(upstreams.values()))["engine"] != "unknown":
            return next(iter(upstreams.values()))
        time.sleep(0.1)
    raise AssertionError(f"no engine detected: {_health(proxy)}")


def _chat(proxy: Mitmdump) -> None:
    body = {"model": "kimi-k2-thinking", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 200


def test_mitmdump_asks_the_listing_at_start_and_its_flows_get_the_engine(tmp_path) -> None:
    with SimulatorThread(SimSettings(shape="vllm", served="moonshotai/Kimi-K2.6")) as sim:
        with proxied(sim, tmp_path) as proxy:
            found = _wait_for_engine(proxy)  # no client request: the probe ran at start
            assert found["engine"] == "vllm" and found["family"] == "k2.5/k2.6"
            assert any(e["sign"] == "/v1/models owned_by=vllm" for e in found["evidence"])
            _chat(proxy)
            models_requests = [r for r in sim.simulator.requests if r.path.endswith("/models")]
            assert models_requests == []  # the probe's GET is not a chat request
        flows = proxy.read_flows()
    record = flows[-1].metadata["kimiwire"]
    assert record["policy"]["flavor"] == "vllm"
    assert record["detection"]["engine"] == "vllm" and record["detection"]["from"] == ["/v1/models owned_by=vllm"]
    assert "engine vllm (from /v1/models owned_by=vllm)" in proxy.output and "flavor vllm" in proxy.output


def test_answers_teach_what_a_missing_listing_did_not(tmp_path) -> None:
    """The moonshot shape lists no engine; an SGLang answer (header override) names it."""
    with SimulatorThread(SimSettings(shape="moonshot")) as sim:
        with proxied(sim, tmp_path) as proxy:
            body = {
                "model": "kimi-k2-thinking@shape=sglang",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            }
            first = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=10)
            assert first.status_code == 200
            found = _wait_for_engine(proxy)
            assert found["engine"] == "sglang"
            assert [e["sign"] for e in found["evidence"] if e["strong"]] == ["choices carry matched_stop"]
            _chat(proxy)
        flows = proxy.read_flows()
    assert flows[0].metadata["kimiwire"]["policy"]["flavor"] == "selfhosted"
    assert flows[-1].metadata["kimiwire"]["policy"]["flavor"] == "sglang"


def test_an_explicit_flavor_wins_and_nothing_is_asked(tmp_path) -> None:
    with SimulatorThread(SimSettings(shape="vllm")) as sim:
        with proxied(sim, tmp_path, {"kimi_flavor": "sglang"}) as proxy:
            _chat(proxy)
            _chat(proxy)
            upstream = next(iter(_health(proxy)["upstreams"].values()))
        flows = proxy.read_flows()
    # No probe; the answers are still read (kimi.stats shows what the server is), the policy stays.
    assert upstream["probes"] == 0 and upstream["engine"] == "vllm"
    chats = [flow for flow in flows if "policy" in flow.metadata.get("kimiwire", {})]
    assert len(chats) == 2 and all(flow.metadata["kimiwire"]["policy"]["flavor"] == "sglang" for flow in chats)


def test_a_stopped_upstream_keeps_todays_flavor_and_start_does_not_wait(tmp_path) -> None:
    from kimiwire.launch import free_port

    port = free_port()
    started = time.monotonic()
    with Mitmdump(f"http://127.0.0.1:{port}", tmp_path) as proxy:
        assert time.monotonic() - started < 20
        response = httpx.post(
            proxy.url + "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            timeout=20,
        )
        assert response.status_code == 502
        upstream = next(iter(_health(proxy)["upstreams"].values()))
    assert upstream["engine"] == "unknown" and upstream["probe_problem"]
    assert 1 <= upstream["probes"] <= 3

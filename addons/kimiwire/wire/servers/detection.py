"""What a server says about itself: its engine and the Kimi model family it serves (sans-IO).

Every fact is data with its public source. Strong signs name the engine by themselves; weak ones
(a field name or an id form several servers share) only say what the answers looked like.

Engines, from their released source:
- vLLM 0.34.0 (wheel): `GET /v1/models` lists `ModelCard`s with `owned_by: str = "vllm"` and
  `root` (the model path) (vllm/entrypoints/serve/engine/protocol.py). A streamed chunk is
  dumped with `exclude_unset=True` (vllm/entrypoints/openai/chat_completion/serving.py), and only
  the finishing choice sets `stop_reason` (`ChatCompletionResponseStreamChoice`, chat_completion/
  protocol.py): the key is on the last choice only, null for an end-of-sequence token.
  Reasoning comes as `reasoning` (`DeltaMessage`, vllm/entrypoints/generate/base/protocol.py);
  releases before 0.13 sent `reasoning_content`, 0.13.0 both (tests/fixtures/engines, the corpus
  of released parsers): the field name is a weak sign.
- SGLang 0.5.23 (wheel): `ModelCard.owned_by: str = "sglang"` with `root`
  (sglang/srt/entrypoints/openai/protocol.py). Every streamed choice carries `matched_stop`
  (`StreamChoice` in sglang/srt/entrypoints/openai/sse_utils.py has no omit_defaults; the
  pydantic `ChatCompletionResponseStreamChoice` declares it too), the matched stop token or string
  on the finishing one. Reasoning comes as `reasoning_content`, serialised even when null
  (`StreamDelta` keeps it required).
- Tool-call ids: the kimi_k2 parsers of both keep the model's `functions.NAME:N` (SGLang
  serving_chat.py `_process_tool_call_id`; vLLM vllm/parser/kimi_k2.py `_extract_tool_id_and_name`);
  SGLang's kimi_k3 parser writes `NAME:N`, as Moonshot's API does (shapes in sim/shapes.py), so
  SGLang answering `NAME:N` serves K3;
  any other SGLang parser `call_` + 24 hex digits.
Hosts (wire/servers/policy.py has the Moonshot and DeepInfra suffixes): OpenRouter is openrouter.ai.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from kimiwire.wire.servers.policy import Flavor, detect_flavor

VLLM_SOURCE = "vllm 0.34.0 vllm/entrypoints/serve/engine/protocol.py ModelCard.owned_by"
SGLANG_SOURCE = "sglang 0.5.23 sglang/srt/entrypoints/openai/protocol.py ModelCard.owned_by"


class Engine(StrEnum):
    SGLANG = "sglang"
    VLLM = "vllm"
    MOONSHOT = "moonshot"
    DEEPINFRA = "deepinfra"
    OPENROUTER = "openrouter"
    UNKNOWN = "unknown"

    @property
    def flavor(self) -> Flavor | None:
        """The flavor `auto` takes for this engine; None keeps the one the host gives."""
        return {Engine.SGLANG: Flavor.SGLANG, Engine.VLLM: Flavor.VLLM}.get(self)


class ModelFamily(StrEnum):
    K2 = "k2"  # K2 Instruct / 0905 / Thinking: thinking is the model, not a switch
    K2_5_K2_6 = "k2.5/k2.6"  # thinking on by default, a switch; the template prefills <think>
    K2_7_CODE = "k2.7-code"
    K3 = "k3"
    UNKNOWN = "unknown"


# Model names as servers list them: Moonshot's ids (kimi-k2-thinking, kimi-k2.5), Hugging Face
# repos (moonshotai/Kimi-K2.6), routers' spellings (kimi-k2p5, kimi-k2-5). Checked in order.
_FAMILY_PATTERNS: tuple[tuple[ModelFamily, re.Pattern[str]], ...] = (
    (ModelFamily.K3, re.compile(r"(?<![a-z0-9])k3(?!\d)", re.I)),
    (ModelFamily.K2_7_CODE, re.compile(r"k2(?:[.\-_ ]?|p)7(?!\d)", re.I)),
    (ModelFamily.K2_5_K2_6, re.compile(r"k2(?:[.\-_ ]?|p)[56](?!\d)", re.I)),
    (ModelFamily.K2, re.compile(r"(?<![a-z0-9])k2(?!\d|[.p]\d)", re.I)),
)


def model_family(name: str) -> ModelFamily:
    for family, pattern in _FAMILY_PATTERNS:
        if pattern.search(name):
            return family
    return ModelFamily.UNKNOWN


class IdForm(StrEnum):
    FUNCTIONS = "functions.NAME:N"  # Kimi K2's own, kept by SGLang's and vLLM's kimi_k2 parsers
    BARE = "NAME:N"  # Moonshot's API, SGLang's kimi_k3 parser
    CALL = "call_*"  # a generic parser (OpenAI style)
    OTHER = "other"


_FUNCTIONS_ID = re.compile(r"functions\.[^:\s]+:\d+")
_BARE_ID = re.compile(r"[A-Za-z_][\w\-.]*:\d+")


def id_form(tool_call_id: str) -> IdForm:
    if _FUNCTIONS_ID.fullmatch(tool_call_id):
        return IdForm.FUNCTIONS
    if _BARE_ID.fullmatch(tool_call_id):
        return IdForm.BARE
    if tool_call_id.startswith("call_"):
        return IdForm.CALL
    return IdForm.OTHER


# owned_by values a server is known to use for itself (module docstring); gateways answer
# their own (`openai`, `system`, an organisation), which say nothing.
OWNED_BY: dict[str, tuple[Engine, str]] = {
    "vllm": (Engine.VLLM, VLLM_SOURCE),
    "sglang": (Engine.SGLANG, SGLANG_SOURCE),
}

_HOSTS: tuple[tuple[Engine, tuple[str, ...]], ...] = ((Engine.OPENROUTER, ("openrouter.ai",)),)


@dataclass(frozen=True, slots=True)
class Evidence:
    sign: str  # what was seen, e.g. `/v1/models owned_by=vllm`
    says: str  # what it means, e.g. `engine vllm`
    source: str  # where that is documented
    strong: bool = True


@dataclass
class Detection:
    """What is known of one upstream; grows as the listing and the answers come in."""

    engine: Engine = Engine.UNKNOWN
    family: ModelFamily = ModelFamily.UNKNOWN
    served: list[str] = field(default_factory=list)  # model ids (and roots) the server lists
    # Each listed model id's family, from the id or else its root (`--served-model-name kimi` with
    # root `moonshotai/Kimi-K2.6`): a request naming that id goes to that family.
    served_families: dict[str, ModelFamily] = field(default_factory=dict)
    reasoning_keys: list[str] = field(default_factory=list)
    id_forms: list[str] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    answers_seen: int = 0
    conflict: str | None = None  # strong signs that disagree: the first one is kept

    MAX_SERVED = 16
    MAX_EVIDENCE = 16
    ANSWERS_TO_READ = 8  # answers read after the engine is unknown; reading stops after these

    @property
    def engine_known(self) -> bool:
        return self.engine is not Engine.UNKNOWN

    @property
    def wants_answers(self) -> bool:
        """Answers still teach something: the engine is unknown and few were read."""
        return not self.engine_known and self.answers_seen < self.ANSWERS_TO_READ

    def add(self, evidence: Evidence, engine: Engine | None = None) -> None:
        if evidence not in self.evidence and len(self.evidence) < self.MAX_EVIDENCE:
            self.evidence.append(evidence)
        if engine is None or engine is Engine.UNKNOWN:
            return
        if not self.engine_known:
            self.engine = engine
        elif engine is not self.engine and evidence.strong and self.conflict is None:
            self.conflict = f"{evidence.sign} says {engine.value}, earlier signs {self.engine.value}"

    def add_served(self, name: str) -> None:
        if name and name not in self.served and len(self.served) < self.MAX_SERVED:
            self.served.append(name)
            family = model_family(name)
            if self.family is ModelFamily.UNKNOWN and family is not ModelFamily.UNKNOWN:
                self.family = family

    def switch_models(self) -> tuple[str, ...]:
        """Listed model ids whose thinking is a switch (K2.5/K2.6) though their name may not say so."""
        return tuple(sorted(n for n, f in self.served_families.items() if f is ModelFamily.K2_5_K2_6))

    def flavor(self, host: str) -> Flavor:
        """The flavor `auto` resolves to: the host's, refined to the engine on a self-hosted one."""
        flavor = detect_flavor(host)
        refined = self.engine.flavor
        return refined if flavor is Flavor.SELFHOSTED and refined is not None else flavor

    def summary(self) -> str:
        strong = [e.sign for e in self.evidence if e.strong]
        weak = [e.sign for e in self.evidence if not e.strong]
        engine = f"engine {self.engine.value}"
        if strong:
            engine += f" (from {', '.join(strong)})"
        elif weak and not self.engine_known:
            engine += f" (answers: {', '.join(weak)})"
        family = f"model family {self.family.value}"
        if self.served:
            family += f" (serves {', '.join(self.served[:4])})"
        text = f"{engine}; {family}"
        return f"{text}; conflict: {self.conflict}" if self.conflict else text

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine.value,
            "family": self.family.value,
            "served": list(self.served),
            "served_families": {name: family.value for name, family in self.served_families.items()},
            "reasoning_keys": list(self.reasoning_keys),
            "id_forms": list(self.id_forms),
            "evidence": [
                {"sign": e.sign, "says": e.says, "source": e.source, "strong": e.strong} for e in self.evidence
            ],
            "answers_seen": self.answers_seen,
            "conflict": self.conflict,
        }

    # -- what the server says ---------------------------------------------------------------

    def read_host(self, host: str) -> None:
        for engine, suffixes in _HOSTS:
            host_lower = host.lower().rstrip(".")
            if any(host_lower == s or host_lower.endswith("." + s) for s in suffixes):
                self.add(Evidence(f"host {host}", f"engine {engine.value}", "the provider's API host"), engine)
        flavor = detect_flavor(host)
        suffixes_source = "wire/servers/policy.py host suffixes"
        if flavor is Flavor.MOONSHOT:
            self.add(Evidence(f"host {host}", "engine moonshot", suffixes_source), Engine.MOONSHOT)
        elif flavor is Flavor.DEEPINFRA:
            self.add(Evidence(f"host {host}", "engine deepinfra", suffixes_source), Engine.DEEPINFRA)

    def read_models(self, body: bytes) -> bool:
        """A `/v1/models` answer; False when it is not an OpenAI model list."""
        try:
            listing = orjson.loads(body)
        except orjson.JSONDecodeError:
            return False
        data = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(data, list):
            return False
        for card in data[: self.MAX_SERVED]:
            if not isinstance(card, dict):
                continue
            for key in ("id", "root"):
                if isinstance(card.get(key), str):
                    self.add_served(card[key])
            if isinstance(card.get("id"), str) and card["id"]:
                family = model_family(card["id"])
                if family is ModelFamily.UNKNOWN and isinstance(card.get("root"), str):
                    family = model_family(card["root"])
                self.served_families[card["id"]] = family
            owned_by = card.get("owned_by")
            if isinstance(owned_by, str) and owned_by.lower() in OWNED_BY:
                engine, source = OWNED_BY[owned_by.lower()]
                self.add(Evidence(f"/v1/models owned_by={owned_by}", f"engine {engine.value}", source), engine)
        return True

    def read_answer(self, body: bytes, streamed: bool) -> None:
        """A chat answer as the upstream sent it (an SSE body or one JSON), bounded: the first and
        last events of a stream are read."""
        self.answers_seen += 1
        choices = list(_answer_choices(body, streamed))
        for choice, finishing in choices:
            self._read_choice(choice, finishing)

    def _read_choice(self, choice: dict[str, Any], finishing: bool) -> None:
        if "matched_stop" in choice:
            self.add(
                Evidence(
                    "choices carry matched_stop",
                    "engine sglang",
                    "sglang 0.5.23 sglang/srt/entrypoints/openai/sse_utils.py StreamChoice.matched_stop",
                ),
                Engine.SGLANG,
            )
        elif finishing and "stop_reason" in choice:
            self.add(
                Evidence(
                    "finishing choice carries stop_reason",
                    "engine vllm",
                    "vllm 0.34.0 chat_completion/protocol.py ChatCompletionResponseStreamChoice.stop_reason",
                ),
                Engine.VLLM,
            )
        message = choice.get("delta") if isinstance(choice.get("delta"), dict) else choice.get("message")
        if not isinstance(message, dict):
            return
        for key in ("reasoning_content", "reasoning"):
            if isinstance(message.get(key), str) and message[key] and key not in self.reasoning_keys:
                self.reasoning_keys.append(key)
                self.add(
                    Evidence(f"reasoning as {key}", f"reasoning field {key}", _REASONING_SOURCES[key], strong=False)
                )
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict) and isinstance(call.get("id"), str) and call["id"]:
                form = id_form(call["id"]).value
                if form not in self.id_forms:
                    self.id_forms.append(form)
                    self.add(Evidence(f"tool-call ids {form}", f"id form {form}", _ID_SOURCE, strong=False))
                if form == IdForm.BARE and self.engine is Engine.SGLANG and self.family is ModelFamily.UNKNOWN:
                    self.family = ModelFamily.K3
                    self.add(Evidence("SGLang ids NAME:N", "model family k3", _K3_ID_SOURCE, strong=False))


_REASONING_SOURCES = {
    "reasoning": "vllm 0.34.0 vllm/entrypoints/generate/base/protocol.py DeltaMessage.reasoning (also OpenRouter)",
    "reasoning_content": "sglang 0.5.23 sse_utils.py StreamDelta.reasoning_content (also Moonshot, DeepInfra)",
}
_K3_ID_SOURCE = "sglang 0.5.23 serving_chat.py _process_tool_call_id: the kimi_k3 parser's ids"
_ID_SOURCE = "sglang 0.5.23 serving_chat.py _process_tool_call_id; vllm 0.34.0 vllm/parser/kimi_k2.py"

_EVENTS_READ = 64  # events read from each end of a stream


def _answer_choices(body: bytes, streamed: bool) -> Any:
    """(choice, finishing) pairs of an answer; a stream's first and last events only."""
    if not streamed:
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        for choice in answer.get("choices") or () if isinstance(answer, dict) else ():
            if isinstance(choice, dict):
                yield choice, choice.get("finish_reason") is not None
        return
    lines = [line[5:].strip() for line in body.split(b"\n") if line.startswith(b"data:")]
    if len(lines) > 2 * _EVENTS_READ:
        lines = lines[:_EVENTS_READ] + lines[-_EVENTS_READ:]
    for line in lines:
        if line == b"[DONE]":
            continue
        try:
            chunk = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        for choice in chunk.get("choices") or () if isinstance(chunk, dict) else ():
            if isinstance(choice, dict):
                yield choice, choice.get("finish_reason") is not None


def models_path(chat_path: str) -> str:
    """The model list beside a chat-completions path: `/v1/chat/completions` -> `/v1/models`,
    DeepInfra's `/v1/openai/chat/completions` -> `/v1/openai/models`."""
    path = chat_path.split("?", 1)[0].rstrip("/")
    base = path.removesuffix("/chat/completions") if path.endswith("/chat/completions") else "/v1"
    return f"{base}/models"

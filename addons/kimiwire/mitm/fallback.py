"""A fallback upstream (`kimi_fallback_upstream`): one more attempt, elsewhere, when the attempts on
the primary ran out by `connect`, `status` or `stall` (the DeepInfra / Kimi-K2.5 report recommends
"a fallback provider"). The request is the CLIENT's original body repaired again with the
fallback's own policy (`kimi_fallback_flavor`), sent to the fallback's scheme, host and port with
the client's path; the client's Authorization goes along, or a key read from the environment
variable `kimi_fallback_key_env` names (never logged, never captured: the capture keeps the
client's request). Its answer is repaired with that policy and reaches the client like any
retry's answer."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from kimiwire.wire.facts import RequestFacts
from kimiwire.wire.request.repair import repair_request_body
from kimiwire.wire.servers.policy import FlavorOption, Policy

FALLBACK_KINDS = frozenset({"connect", "status", "stall"})  # failures of the primary itself, not of a turn
_DROPPED = frozenset({"host", "authorization", "content-length", "content-encoding"})


@dataclass(frozen=True)
class Target:
    """Where one attempt goes when it is not the flow's own upstream."""

    url: str
    headers: list[tuple[str, str]]
    body: bytes
    policy: Policy
    facts: RequestFacts
    deadline: float  # the attempt's own budget (time.time())
    name: str  # for the record and the log: scheme://host:port


@dataclass(frozen=True)
class Fallback:
    origin: str  # scheme://host[:port]
    host: str
    flavor: FlavorOption
    key: str | None = None  # the Authorization key from the environment, when one is named

    @classmethod
    def parse(cls, url: str, flavor: FlavorOption, key_env: str, environ: Mapping[str, str]) -> Fallback | None:
        """The option's value, or None when it is empty; ValueError for what cannot be used."""
        if not url:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"kimi_fallback_upstream must be an http(s) URL, got {url!r}")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError("kimi_fallback_upstream takes scheme://host[:port] only: the client's path is sent there")
        key = None
        if key_env:
            key = environ.get(key_env)
            if not key:
                raise ValueError(f"kimi_fallback_key_env names {key_env}, which is not set")
        return cls(f"{parts.scheme}://{parts.netloc}", parts.hostname, flavor, key)

    def target(
        self,
        path: str,
        client_headers: list[tuple[str, str]],
        client_body: bytes,
        policy: Policy,
        seconds: float,
    ) -> Target:
        """The fallback attempt for a request: the client's body repaired with `policy`."""
        repaired = repair_request_body(client_body, policy) if client_body else None
        body = client_body
        facts = RequestFacts()
        if repaired is not None:
            facts = repaired.facts
            if repaired.refusal is None and not repaired.skipped and repaired.body is not None:
                body = repaired.body
        headers = [(k, v) for k, v in client_headers if k.lower() not in _DROPPED]
        authorization = [v for k, v in client_headers if k.lower() == "authorization"]
        if self.key is not None:
            headers.append(("authorization", f"Bearer {self.key}"))
        elif authorization:
            headers.append(("authorization", authorization[0]))
        return Target(self.origin + path, headers, body, policy, facts, time.time() + seconds, self.origin)

    def describe(self) -> str:
        key = "a key from the environment" if self.key is not None else "the client's Authorization"
        return f"{self.origin} (flavor {self.flavor}, {key})"

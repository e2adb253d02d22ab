"""Secrets never reach captures or logs: values are redacted by the *name* that carries them.

A header, query parameter or JSON body field is a credential when one of the words of its name
(split at `-`, `_`, `.`, spaces and camelCase) ends with a credential word, optionally followed by
`id`: `x-goog-api-key`, `apiKey`, `access_token`, `x-auth-token`, `sessionid`, `X-Amz-Signature`,
`openai-organization`, `set-cookie`. Plural `tokens` is not a credential word, so `max_tokens` and
`x-ratelimit-remaining-tokens` stay readable. A short allowlist keeps names the rule catches but
that carry nothing secret. Users add names with `kimi_redact`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote, unquote_plus

import orjson

REDACTED = "[redacted by kimiwire]"
REDACTED_IN_URL = quote(REDACTED)
_REDACTED_BYTES = REDACTED.encode()
_REDACTED_URL_BYTES = REDACTED_IN_URL.encode()

_CREDENTIAL_WORDS = (
    "key|keys|token|secret|secrets|password|passwords|passwd|pwd|passphrase|auth|authorization|signature|sig"
    "|credential|credentials|session|cookie|cookies|organization|project|bearer|jwt"
)
_CREDENTIAL_WORD = re.compile(rf"(?:{_CREDENTIAL_WORDS})(?:id)?$")
_WORD_BREAK = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")
# Caught by the rule, harmless: a routing key for prompt caching (OpenAI, Moonshot), a handshake nonce.
ALLOWED_NAMES = frozenset({"prompt_cache_key", "sec-websocket-key"})
# Names looked up at most this many times before the verdicts are forgotten (any input keeps it small).
_VERDICTS_LIMIT = 4096


def _words(name: str) -> list[str]:
    return [word.lower() for word in _WORD_BREAK.split(name) if word]


class Redactor:
    """Decides which names carry credentials and replaces their values."""

    def __init__(self, extra_names: Iterable[str] = ()) -> None:
        self.extra_names = frozenset(name.strip().lower() for name in extra_names if name.strip())
        self._verdicts: dict[str | bytes, bool] = {}

    @classmethod
    def from_option(cls, value: str) -> Redactor:
        """`kimi_redact`: comma-separated names, matched case-insensitively."""
        return cls(value.split(","))

    def is_secret(self, name: str | bytes) -> bool:
        """`name` (text, or bytes read as latin-1) carries a credential; verdicts are remembered."""
        verdict = self._verdicts.get(name)
        if verdict is None:
            verdict = self._judge(name.decode("latin-1") if isinstance(name, bytes) else name)
            if len(self._verdicts) >= _VERDICTS_LIMIT:
                self._verdicts.clear()
            self._verdicts[name] = verdict
        return verdict

    def _judge(self, name: str) -> bool:
        lowered = name.lower()
        if lowered in self.extra_names:
            return True
        if lowered in ALLOWED_NAMES:
            return False
        return any(_CREDENTIAL_WORD.search(word) for word in _words(name))

    def header_fields(self, fields: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """mitmproxy's serialized header list ((name, value) bytes pairs) with secret values replaced."""
        return [(name, _REDACTED_BYTES if self.is_secret(name) else value) for name, value in fields]

    def path(self, path: bytes) -> bytes:
        """A request path (`/v1/x?key=…&a=1`) with the values of secret query parameters replaced."""
        base, question, query = path.partition(b"?")
        if not question:
            return path
        parts = []
        for part in query.split(b"&"):
            name, equals, _ = part.partition(b"=")
            if equals and self.is_secret(unquote_plus(name.decode("latin-1"))):
                part = name + b"=" + _REDACTED_URL_BYTES
            parts.append(part)
        return base + b"?" + b"&".join(parts)

    def json_body(self, body: bytes) -> bytes:
        """A JSON body with every string value under a secret name replaced, at any depth (objects under
        such names, like a tool schema's `api_key` property, are searched, not replaced). Anything
        that is not JSON, or holds no secret, comes back as the same bytes."""
        if not body or body[:1] not in (b"{", b"["):
            return body
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        if not self._redact_json(data):
            return body
        return orjson.dumps(data)

    def _redact_json(self, data: Any) -> bool:
        """Redact `data` (as orjson.loads made it: exact dicts, lists and texts) in place. Written for
        an agent's history of thousands of nodes, on the loop for every captured flow: exact type
        tests (an `isinstance` against the union `dict | list` is slow) and the remembered
        verdicts read inline."""
        changed = False
        verdicts = self._verdicts
        pending = [data]
        push = pending.append
        while pending:
            node = pending.pop()
            if type(node) is dict:
                for key, value in node.items():
                    kind = type(value)
                    if kind is str:
                        secret = verdicts.get(key)
                        if secret is None:
                            secret = self.is_secret(key)
                        if secret and value != REDACTED:
                            node[key] = REDACTED
                            changed = True
                    elif kind is dict or kind is list:
                        push(value)
            elif type(node) is list:
                for item in node:
                    kind = type(item)
                    if kind is dict or kind is list:
                        push(item)
        return changed


def redacted_bodies(redactor: Redactor, bodies: Sequence[bytes]) -> list[bytes | None]:
    """`redactor.json_body` of each body, None where it is the same bytes (nothing travels back):
    what a worker process computes for a large flow's capture, a parse the proxy's GIL is spared."""
    answers: list[bytes | None] = []
    for body in bodies:
        redacted = redactor.json_body(body)
        answers.append(None if redacted is body else redacted)
    return answers


class KnownRedactions(Redactor):
    """`redactor`, with the answers of `json_body` for some bodies already known (computed elsewhere
    by `redacted_bodies`): those bodies, the very objects, are not parsed again."""

    def __init__(self, redactor: Redactor, bodies: Sequence[bytes], answers: Sequence[bytes | None]) -> None:
        super().__init__()
        self.extra_names = redactor.extra_names
        self._verdicts = redactor._verdicts
        # Keyed by identity; the body is kept beside its answer so that its id cannot be reused.
        pairs = zip(bodies, answers, strict=True)
        self._known = {id(body): (body, body if answer is None else answer) for body, answer in pairs}

    def json_body(self, body: bytes) -> bytes:
        known = self._known.get(id(body))
        if known is not None and known[0] is body:
            return known[1]
        return super().json_body(body)


def url_for_log(url: str) -> str:
    """A URL or path for log lines and error texts: query parameter names kept, every value hidden."""
    base, question, query = url.partition("?")
    if not question:
        return url
    names = [part.partition("=")[0] for part in query.split("&") if part]
    return base + "?" + "&".join(f"{name}=…" for name in names)


def carries_placeholder(value: bytes | str) -> bool:
    raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
    return _REDACTED_BYTES in raw or _REDACTED_URL_BYTES in raw

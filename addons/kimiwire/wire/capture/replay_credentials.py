"""Client replay of a capture: the redaction placeholders are replaced by a real credential
(`kimi_replay_auth`) or removed, never sent upstream.

The credential goes into `authorization` (as `Bearer <credential>` unless it names its own
scheme) and into every header or query parameter whose name ends in `key` (`x-api-key`,
`x-goog-api-key`, `?key=`, `?api_key=`). Other redacted values (cookies, organization, session
tokens) cannot be rebuilt from one credential and are removed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kimiwire.wire.capture.redaction import REDACTED

_KEY_NAME = re.compile(r"key$", re.IGNORECASE)


def resolve_credential(option: str, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """`kimi_replay_auth` -> (credential, problem). `env:NAME` reads the environment; anything else
    is the credential itself; empty means none."""
    if not option:
        return None, None
    if option.startswith("env:"):
        name = option[4:]
        value = environ.get(name, "")
        if not value:
            return None, f"kimi_replay_auth names the environment variable {name}, which is not set"
        return value, None
    return option, None


@dataclass
class Restored:
    headers: list[tuple[str, str]]
    query: list[tuple[str, str]]
    filled: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.filled or self.removed)


def _fill(name: str, credential: str | None, is_header: bool) -> str | None:
    if credential is None:
        return None
    if is_header and name.lower() == "authorization":
        return credential if " " in credential.strip() else f"Bearer {credential}"
    if _KEY_NAME.search(name):
        return credential
    return None


def restore(headers: Sequence[tuple[str, str]], query: Sequence[tuple[str, str]], credential: str | None) -> Restored:
    """Headers and (decoded) query parameters with each placeholder filled or removed."""
    result = Restored([], [])
    for pairs, out, is_header in ((headers, result.headers, True), (query, result.query, False)):
        for name, value in pairs:
            if value != REDACTED:
                out.append((name, value))
                continue
            filled = _fill(name, credential, is_header)
            if filled is None:
                result.removed.append(name)
            else:
                out.append((name, filled))
                result.filled.append(name)
    return result

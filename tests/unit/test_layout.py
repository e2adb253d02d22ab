"""The layout is the architecture: only `kimiwire/mitm/` may import mitmproxy."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "addons" / "kimiwire"


def _imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _outside_mitm_importing(prefix: str) -> list[str]:
    """Modules outside `kimiwire/mitm/` that import `prefix` or a module below it."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "mitm":
            continue
        if any(name == prefix or name.startswith(prefix + ".") for name in _imported_modules(path)):
            offenders.append(str(relative))
    return offenders


def test_only_the_mitm_package_imports_mitmproxy() -> None:
    assert _outside_mitm_importing("mitmproxy") == []


def test_the_sans_io_core_does_not_import_the_mitm_side() -> None:
    assert _outside_mitm_importing("kimiwire.mitm") == []


def test_the_rule_sees_a_mitmproxy_import(tmp_path: pathlib.Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from mitmproxy import http\nimport mitmproxy.ctx\n")
    assert {"mitmproxy", "mitmproxy.ctx"} <= _imported_modules(sample)

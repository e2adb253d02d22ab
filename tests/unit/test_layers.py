"""Every test module sits in a layer folder (tests/conftest.py marks it from there), and the unit
layer starts no process: `pytest -m unit` stays in process, and a file left at the top of tests/
would belong to no layer and run with none of them."""

import ast
import pathlib

from tests.conftest import LAYER_OF_FOLDER, TESTS

# What starts a child process: mitmdump and the simulator process (kimiwire.launch, tests.support.mitm
# and .proxied), subprocess itself, a browser.
PROCESS_STARTERS = {"subprocess", "kimiwire.launch", "tests.support.mitm", "tests.support.proxied", "playwright"}


def _test_files() -> list[pathlib.Path]:
    return sorted(TESTS.rglob("test_*.py"))


def _imported(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_every_test_module_is_in_a_layer_folder():
    outside = [str(p.relative_to(TESTS)) for p in _test_files() if p.relative_to(TESTS).parts[0] not in LAYER_OF_FOLDER]
    assert outside == [], f"move these into one of {sorted(LAYER_OF_FOLDER)} (README, tests): {outside}"


def test_unit_tests_start_no_process():
    starting = {
        str(path.relative_to(TESTS)): sorted(
            name for name in _imported(path) if any(name == s or name.startswith(s + ".") for s in PROCESS_STARTERS)
        )
        for path in _test_files()
        if path.relative_to(TESTS).parts[0] == "unit"
    }
    assert {path: names for path, names in starting.items() if names} == {}, "these belong in tests/e2e/"

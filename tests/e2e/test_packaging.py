"""A wheel built from the project holds every package and module under addons/kimiwire: a
non-editable `pip install .` installs what the wheel holds, and an editable install (scripts/test)
would not notice a package left out. Built offline (no index, no build isolation: the installed
setuptools is the backend), from a copy of the sources so the worktree gets no build/ or egg-info."""

import importlib.util
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
ADDONS = ROOT / "addons"


def _modules_in_sources() -> set[str]:
    """Paths, relative to addons/, of every module of the kimiwire packages (folders with __init__.py)."""
    packages = {init.parent for init in (ADDONS / "kimiwire").rglob("__init__.py")}
    return {str(module.relative_to(ADDONS)) for package in packages for module in package.glob("*.py")}


def test_the_wheel_holds_every_kimiwire_package(tmp_path):
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed: the wheel cannot be built offline (pip install -e '.[test]')")
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(ADDONS, source / "addons", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = tmp_path / "wheels"
    offline = ["--no-deps", "--no-build-isolation", "--no-index"]
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", *offline, "-q", "--wheel-dir", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = wheels.glob("kimiwire-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = {name for name in archive.namelist() if name.startswith("kimiwire/") and name.endswith(".py")}
    expected = _modules_in_sources()
    packages = {pathlib.Path(name).parent for name in expected}
    assert len(packages) > 1 and pathlib.Path("kimiwire/wire/servers") in packages  # the subpackages are looked at
    assert sorted(expected - in_wheel) == [], "modules a non-editable install would leave out"

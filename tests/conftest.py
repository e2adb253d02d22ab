import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
ADDONS = ROOT / "addons"
if str(ADDONS) not in sys.path:
    sys.path.insert(0, str(ADDONS))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


import pytest  # noqa: E402
from kimiwire.sim.server import SimulatorThread  # noqa: E402

TESTS = pathlib.Path(__file__).resolve().parent
# The layer of a test is its top folder under tests/ (markers declared in pyproject.toml).
LAYER_OF_FOLDER = {"unit": "unit", "e2e": "e2e", "real_clients": "clients", "browser": "browser"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = item.path.resolve().relative_to(TESTS).parts[0]
        if layer := LAYER_OF_FOLDER.get(folder):
            item.add_marker(layer)


@pytest.fixture(scope="module")
def simulator():
    """The Kimi server simulator on 127.0.0.1, one per test module."""
    with SimulatorThread() as sim:
        yield sim

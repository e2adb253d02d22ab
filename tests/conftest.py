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


@pytest.fixture(scope="module")
def simulator():
    """The Kimi server simulator on 127.0.0.1, one per test module."""
    with SimulatorThread() as sim:
        yield sim

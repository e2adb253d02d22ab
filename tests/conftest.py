import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
ADDONS = ROOT / "addons"
if str(ADDONS) not in sys.path:
    sys.path.insert(0, str(ADDONS))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

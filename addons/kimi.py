"""mitmproxy entry point: `mitmdump -s addons/kimi.py --mode reverse:http://HOST:PORT`.

Thin on purpose: the logic lives in the `kimiwire` package beside this file.
"""

import pathlib
import sys

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from kimiwire.mitm import contentview  # noqa: E402
from kimiwire.mitm.addon import KimiWire  # noqa: E402

contentview.register()
addons = [KimiWire()]

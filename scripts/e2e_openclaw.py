"""`scripts/e2e-openclaw`: the harness matrix (scripts/e2e_harness.py) for OpenClaw alone, with this
script's old options: --version 2026.4.21|2026.9.6|latest|any release, --shape S|all,
--path direct|kimiwire|both, --direct, --timeout."""

from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "addons"), str(ROOT)]

from scripts import e2e_harness  # noqa: E402
from scripts.harnesses.openclaw import newest_release  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/e2e-openclaw", description=__doc__)
    parser.add_argument("--version", default="2026.4.21")
    parser.add_argument("--shape", default="all")
    parser.add_argument("--path", default="both")
    parser.add_argument("--direct", action="store_true", help="same as --path direct")
    parser.add_argument("--timeout", default="900", help="seconds for one OpenClaw run (the first installs plugins)")
    args = parser.parse_args()
    version = newest_release() if args.version == "latest" else args.version
    path = "direct" if args.direct else args.path
    argv = ["--harness", "openclaw", "--version", version, "--shape", args.shape, "--path", path]
    return e2e_harness.main([*argv, "--timeout", args.timeout])


if __name__ == "__main__":
    sys.exit(main())

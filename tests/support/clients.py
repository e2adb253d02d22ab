"""The real clients (pi-ai, the OpenAI Python SDK) live in scripts/_clients.py, shared with the
demos (scripts import nothing from tests/); this name is that same module, every name included."""

import sys

from scripts import _clients

sys.modules[__name__] = _clients

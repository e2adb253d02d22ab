"""Short ending limits for the end-to-end tests of the ending guarantees (endings, guarantees)."""

from __future__ import annotations

from tests.support.conversations import TOOLS, user

GRACE, IDLE, FIRST_BYTE = 0.3, 1.5, 1.5
# The guarantees themselves, without retries (kimi_retry_on= is today's pass-through); with
# retries the same failures are first retried: tests/e2e/test_e2e_retries.py.
OPTIONS = {
    "kimi_done_grace": GRACE,
    "kimi_idle_timeout": IDLE,
    "kimi_first_byte_timeout": FIRST_BYTE,
    "kimi_tool_idle_timeout": 10 * IDLE,  # the defaults' ratio (600 s to 60 s)
    "kimi_retry_on": "",
}
REQUEST = {"model": "kimi", "messages": [user("hi")], "tools": TOOLS, "stream": True}

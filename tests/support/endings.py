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
    # the defaults' ratios to the idle timeout (600 s and 5 s to 120 s)
    "kimi_tool_idle_timeout": 5 * IDLE,
    "kimi_tool_keepalive": IDLE / 24,
    "kimi_retry_on": "",
}
REQUEST = {"model": "kimi", "messages": [user("hi")], "tools": TOOLS, "stream": True}

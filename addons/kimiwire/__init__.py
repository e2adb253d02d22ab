"""kimiwire: repairs the chat-completions wire between agent harnesses and Kimi K2 servers.

- `wire/`: the sans-IO core (request repairs, response and stream repairs, the SSE codec);
- `inspection/`: captured exchanges assembled, rendered and re-run, also sans-IO;
- `mitm/`: the mitmproxy adapter, the only package that imports mitmproxy;
- `sim/`: a Kimi server simulator, the default upstream of `scripts/run` and the tests.
"""

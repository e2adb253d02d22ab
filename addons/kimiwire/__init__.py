"""kimiwire: repairs the chat-completions wire between agent harnesses and Kimi K2 servers.

Everything below the adapter modules (`addon`, and later `termination`) is sans-IO: plain data
in, plain data out, no mitmproxy imports, so each repair can be tested and reused on its own.
"""

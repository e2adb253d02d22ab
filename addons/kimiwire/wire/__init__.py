"""The sans-IO wire core: chat-completions bytes and plain data in, repaired bytes and records out.

Nothing here imports mitmproxy. `request/` repairs what the harness sends, `response/` what the
server answers (streams and JSON bodies); the modules beside them are shared by both sides.
"""

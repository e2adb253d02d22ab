"""Byte formats in and out: JSON bodies, server-sent events, content encodings, mitmproxy's flow files."""

"""The mitmproxy side: the only package that imports mitmproxy (adapter, stream callable, watchdog,
internals, capture files, contentviews, the replay command)."""

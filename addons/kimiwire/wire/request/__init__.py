"""Request repairs: the chat-completions body a harness sends, made right for a Kimi server."""

"""Response repairs: what a Kimi server answers (SSE streams and JSON bodies), made right for the harness."""

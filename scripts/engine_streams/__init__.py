"""The SSE bytes released vLLM and SGLang builds send for Kimi model outputs, produced by running
the Kimi parser code copied from their wheels through each release's own streaming loop
(scripts/engine_corpus.py writes them to the corpus): the copies loaded with the rest of the
engine stubbed (stubs), the model outputs and their tokens (outputs), and one driver per serving
loop (sglang, vllm, vllm_parser)."""

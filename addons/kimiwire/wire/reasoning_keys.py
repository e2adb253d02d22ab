"""The fields a message or delta may carry reasoning text in: `reasoning_content` (SGLang,
Moonshot, and the only key the Kimi templates read), `reasoning` (vLLM >= 0.17), and
`reasoning_text`, which harnesses replay too. One list for every reader and writer of reasoning;
the first is the canonical one."""

REASONING_KEYS = ("reasoning_content", "reasoning", "reasoning_text")

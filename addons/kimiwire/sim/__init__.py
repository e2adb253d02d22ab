"""A Kimi K2 server simulator: an OpenAI-compatible `/v1/chat/completions` server on 127.0.0.1
that streams the way SGLang, vLLM, Moonshot's API and DeepInfra do, defects included, with a
deterministic scripted model. Used as kimiwire's embedded default upstream, by the tests, the
demo and the benchmarks.

- `settings`: shape, fragmentation and faults, from flags, a request header or the model name;
- `model`: the scripted model (which tools to call, when to answer, how broken history hurts it);
- `shapes`: a planned turn rendered as each server streams it (or answers in one JSON);
- `server`: the asyncio HTTP/1.1 server with the transport faults.
"""

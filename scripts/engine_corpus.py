"""Regenerates tests/fixtures/engines/corpus.jsonl: the SSE bytes released vLLM and SGLang builds
send for Kimi model outputs, produced by running the Kimi parser code copied from their wheels
(scripts/engine_corpus_copy.py) through each release's own streaming loop.

    .cache/genvenv/bin/python scripts/engine_corpus.py     # needs pydantic, partial-json-parser, regex, orjson

The parser modules run unchanged; only their imports of the rest of the engine are stubbed. The
serving loop around them (which parser sees which text, which chunks go out, finish reasons) is
re-stated from each release's serving_chat.py in scripts/engine_streams/, cited per engine there.
Each stream is one model output split into tokens (the real Kimi special-token ids, other text in
1-4 character tokens) and steps (one or several tokens per engine step)."""

from __future__ import annotations

import json
import logging
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.engine_streams.outputs import SPLITS, scenarios  # noqa: E402
from scripts.engine_streams.sglang import sglang_stream  # noqa: E402
from scripts.engine_streams.stubs import FIXTURES  # noqa: E402
from scripts.engine_streams.vllm import vllm_stream  # noqa: E402
from scripts.engine_streams.vllm_parser import vllm20_stream, vllm34_stream  # noqa: E402

CORPUS = FIXTURES / "corpus.jsonl"
logging.disable(logging.CRITICAL)

ENGINES = {
    "sglang-0.5.5": (sglang_stream, "0.5.5", ("k2", "k25")),
    "sglang-0.5.23": (sglang_stream, "0.5.23", ("k2", "k25", "k3")),
    "vllm-0.10.2": (vllm_stream, "0.10.2", ("k2", "k25")),
    "vllm-0.13.0": (vllm_stream, "0.13.0", ("k2", "k25")),
    "vllm-0.20.0": (vllm20_stream, "0.20.0", ("k2", "k25")),
    "vllm-0.34.0": (vllm34_stream, "0.34.0", ("k2", "k25", "k3")),
}


def main() -> None:
    rows = []
    for engine, (run, release, models) in ENGINES.items():
        for sc in scenarios():
            if sc.model not in models:
                continue
            for split in SPLITS:
                body = run(release, sc, split)
                rows.append(
                    {
                        "engine": engine,
                        "scenario": sc.name,
                        "split": split,
                        "model": sc.model,
                        "thinking": sc.thinking,
                        "output": sc.output,
                        "truth": {
                            "reasoning": sc.reasoning,
                            "text": sc.text,
                            "calls": sc.calls,
                            "finish": sc.finish,
                            "cut": sc.cut,
                        },
                        "sse": body.decode(),
                    }
                )
    CORPUS.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(rows)} streams, {CORPUS.stat().st_size} bytes -> {CORPUS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

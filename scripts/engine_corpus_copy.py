"""Copies the Kimi parser modules out of the released vLLM and SGLang wheels into
tests/fixtures/engines/<engine>-<release>/, each with a provenance header (release, path inside
the wheel, sha256 of the wheel and of the original file). Only the parser modules and the helpers
they import from the same package are copied; everything else they import is stubbed at load time
(tests/support/engine_parsers.py).

    python scripts/engine_corpus_copy.py [--cache DIR]

Downloads with `pip download --no-deps` into the cache (default .cache/wheels, outside git)."""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "engines"

# (package, release) -> paths inside the wheel
RELEASES: dict[tuple[str, str], list[str]] = {
    ("sglang", "0.5.5"): [
        "sglang/srt/function_call/kimik2_detector.py",
        "sglang/srt/function_call/base_format_detector.py",
        "sglang/srt/function_call/core_types.py",
        "sglang/srt/function_call/utils.py",
        "sglang/srt/parser/reasoning_parser.py",
    ],
    ("sglang", "0.5.23"): [
        "sglang/srt/function_call/kimik2_detector.py",
        "sglang/srt/function_call/kimik3_detector.py",
        "sglang/srt/function_call/kimik3_format.py",
        "sglang/srt/function_call/base_format_detector.py",
        "sglang/srt/function_call/core_types.py",
        "sglang/srt/function_call/utils.py",
        "sglang/srt/parser/reasoning_parser.py",
    ],
    ("vllm", "0.10.2"): [
        "vllm/entrypoints/openai/tool_parsers/kimi_k2_tool_parser.py",
        "vllm/entrypoints/openai/tool_parsers/abstract_tool_parser.py",
        "vllm/reasoning/deepseek_r1_reasoning_parser.py",
        "vllm/reasoning/abs_reasoning_parsers.py",
    ],
    ("vllm", "0.13.0"): [
        "vllm/tool_parsers/kimi_k2_tool_parser.py",
        "vllm/tool_parsers/abstract_tool_parser.py",
        "vllm/reasoning/deepseek_r1_reasoning_parser.py",
        "vllm/reasoning/basic_parsers.py",
        "vllm/reasoning/abs_reasoning_parsers.py",
    ],
    ("vllm", "0.20.0"): [
        "vllm/parser/abstract_parser.py",
        "vllm/tool_parsers/kimi_k2_tool_parser.py",
        "vllm/tool_parsers/abstract_tool_parser.py",
        "vllm/tool_parsers/utils.py",
        "vllm/reasoning/kimi_k2_reasoning_parser.py",
        "vllm/reasoning/abs_reasoning_parsers.py",
        "vllm/reasoning/identity_reasoning_parser.py",
    ],
    ("vllm", "0.34.0"): [
        *(f"vllm/parser/{name}.py" for name in ("abstract_parser", "kimi_k2", "kimi_k3", "utils")),
        *(
            f"vllm/parser/engine/{name}.py"
            for name in (
                "__init__",
                "adapters",
                "events",
                "incremental_lexer",
                "parser_engine",
                "parser_engine_config",
                "registered_adapters",
                "streaming_parser_engine",
                "token_id_scanner",
            )
        ),
        *(
            f"vllm/tool_parsers/{name}.py"
            for name in (
                "kimi_k2_tool_parser",
                "kimi_k3_tool_parser",
                "abstract_tool_parser",
                "streaming",
                "tool_strict_level",
            )
        ),
        *(
            f"vllm/reasoning/{name}.py"
            for name in (
                "kimi_k2_reasoning_parser",
                "kimi_k3_reasoning_parser",
                "abs_reasoning_parsers",
                "basic_parsers",
            )
        ),
        "vllm/v1/token_buffer.py",
        "vllm/renderers/chat_utils/tool_call.py",
    ],
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wheel_for(package: str, release: str, cache: pathlib.Path) -> pathlib.Path:
    found = sorted(cache.glob(f"{package}-{release}-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"{package}=={release}", "-d", str(cache)],
            check=True,
        )
        found = sorted(cache.glob(f"{package}-{release}-*.whl"))
    return found[0]


def header(package: str, release: str, wheel: pathlib.Path, wheel_sha: str, path: str, file_sha: str) -> str:
    return (
        f"# kimiwire engine corpus: copied byte for byte below this header from the released wheel\n"
        f"#   release: {package}=={release} (PyPI), wheel {wheel.name}\n"
        f"#   wheel sha256: {wheel_sha}\n"
        f"#   path in wheel: {path}\n"
        f"#   original file sha256: {file_sha}\n"
        f"# Third-party code (Apache-2.0), used only as test data to produce the streams this engine emits.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=pathlib.Path, default=ROOT / ".cache" / "wheels")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    for (package, release), paths in RELEASES.items():
        wheel = wheel_for(package, release, args.cache)
        wheel_sha = sha256(wheel.read_bytes())
        target = FIXTURES / f"{package}-{release}"
        with zipfile.ZipFile(wheel) as archive:
            for path in paths:
                data = archive.read(path)
                out = target / path
                out.parent.mkdir(parents=True, exist_ok=True)
                text = header(package, release, wheel, wheel_sha, path, sha256(data))
                out.write_bytes(text.encode() + data)
                print(f"{out.relative_to(ROOT)}  ({len(data)} bytes)")


if __name__ == "__main__":
    main()

"""The client matrix's drivers: real clients running the simulator's multi-round tool task, each
reporting what every tool received and how the run ended, in one shape:
{"toolRuns": [{"name", "arguments"}], "outcome": "answered" | "stopped: R" | "error: ...", "finalText"}.

Python clients run in this process; the Node clients (`openai` npm, the Vercel AI SDK) run every
cell of theirs in one Node process (tests/clients/*_driver.mjs), installed with `npm ci` from the
committed lockfiles into .cache/ like pi-ai."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from typing import Any

import openai

from tests.support.clients import CACHE, CLIENTS, TASK, TOOLS, _run_tool, npm_install, run_openai_sdk

MODEL = "kimi-k2-thinking"
MAX_TURNS = 6
TIMEOUT = 20
NODE_CLIENTS = {"openai-node": "openai-node-6.30.1", "ai-sdk": "ai-sdk-6.0.325"}
NODE_DRIVERS = {"openai-node": "openai_node_driver.mjs", "ai-sdk": "ai_sdk_driver.mjs"}

Report = dict[str, Any]
# One model turn: (the assistant message to send back, its calls as (id, name, raw arguments), finish_reason)
Turn = tuple[dict[str, Any], list[tuple[str, str, Any]], str | None]


def _new_report() -> Report:
    return {"toolRuns": [], "outcome": "unfinished", "finalText": None}


def _error(exc: BaseException) -> str:
    return f"error: {type(exc).__name__}: {exc}"[:400]


def _parsed(raw: Any) -> Any:
    """What the tool receives: the parsed arguments, or the raw text when it is not JSON."""
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _tool_loop(turn: Callable[[list[dict[str, Any]]], Turn]) -> Report:
    """The hand-written agent loop: ask, run every call locally, send the results, until a text answer."""
    report = _new_report()
    messages: list[dict[str, Any]] = [{"role": "user", "content": TASK}]
    try:
        for _ in range(MAX_TURNS):
            message, calls, finish_reason = turn(messages)
            messages.append(message)
            if not calls:
                report["finalText"] = message.get("content")
                report["outcome"] = "answered" if finish_reason == "stop" else f"stopped: {finish_reason}"
                return report
            for call_id, name, raw in calls:
                arguments = _parsed(raw)
                report["toolRuns"].append({"name": name, "arguments": arguments})
                result = _run_tool(name, arguments if isinstance(arguments, dict) else {})
                messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
    except Exception as exc:  # the client failed: that is the cell's result
        report["outcome"] = _error(exc)
    return report


def _assistant(content: str | None, calls: list[tuple[str, str, Any]]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in calls
        ]
    return message


def _openai_client(base_url: str, sim: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{base_url}/v1",
        api_key="sk-test",
        max_retries=0,
        timeout=TIMEOUT,
        default_headers={"x-kimi-sim": sim},
    )


def run_openai_guide(base_url: str, sim: str) -> Report:
    """The OpenAI Python SDK accumulating streamed calls as OpenAI's function-calling guide shows:
    `if index not in final: final[index] = tool_call`, then `.function.arguments +=` for every
    delta, the first included."""
    with _openai_client(base_url, sim) as client:

        def turn(messages: list[dict[str, Any]]) -> Turn:
            stream = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, stream=True)
            final_tool_calls: dict[Any, Any] = {}
            content = ""
            finish_reason = None
            for chunk in stream:
                for tool_call in chunk.choices[0].delta.tool_calls or []:
                    index = tool_call.index
                    if index not in final_tool_calls:
                        final_tool_calls[index] = tool_call
                    final_tool_calls[index].function.arguments += tool_call.function.arguments
                content += chunk.choices[0].delta.content or ""
                finish_reason = chunk.choices[0].finish_reason or finish_reason
            calls = [(c.id, c.function.name, c.function.arguments) for c in final_tool_calls.values()]
            return _assistant(content, calls), calls, finish_reason

        return _tool_loop(turn)


def run_openai_stream_helper(base_url: str, sim: str) -> Report:
    """The OpenAI Python SDK's stream helper (`chat.completions.stream(...).get_final_completion()`)."""
    try:
        report = run_openai_sdk(base_url, sim, turns=MAX_TURNS)
    except Exception as exc:  # the SDK's own accumulation raised: that is the cell's result
        return {**_new_report(), "outcome": _error(exc)}
    return {key: report[key] for key in ("toolRuns", "outcome", "finalText")}


def run_litellm(base_url: str, sim: str) -> Report:
    """litellm as a client: `litellm.completion(stream=True)` on `openai/MODEL` at `api_base`, the
    chunks assembled by `litellm.stream_chunk_builder`."""
    # The bundled cost map, not a download at import time (the tests reach no network).
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True  # no "Provider List" banner per cost-lookup miss
    # Success callbacks only (none are set here); it halves the time of a cell. The stream's parsing
    # and `stream_chunk_builder` are untouched.
    litellm.disable_streaming_logging = True

    def turn(messages: list[dict[str, Any]]) -> Turn:
        chunks = list(
            litellm.completion(
                model=f"openai/{MODEL}",
                api_base=f"{base_url}/v1",
                api_key="sk-test",
                messages=messages,
                tools=TOOLS,
                stream=True,
                timeout=TIMEOUT,
                max_retries=0,
                extra_headers={"x-kimi-sim": sim},
            )
        )
        response = litellm.stream_chunk_builder(chunks, messages=messages)
        choice = response.choices[0]
        calls = [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
        return _assistant(choice.message.content, calls), calls, choice.finish_reason

    return _tool_loop(turn)


def run_langchain(base_url: str, sim: str) -> Report:
    """LangChain: `ChatOpenAI(streaming=True).bind_tools(...)`, the streamed chunks added up
    (`AIMessageChunk.__add__`), tool results sent back as `ToolMessage`s."""
    from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    report = _new_report()
    llm = ChatOpenAI(
        model=MODEL,
        base_url=f"{base_url}/v1",
        api_key="sk-test",
        streaming=True,
        max_retries=0,
        timeout=TIMEOUT,
        default_headers={"x-kimi-sim": sim},
    ).bind_tools(TOOLS)
    messages: list[BaseMessage] = [HumanMessage(TASK)]
    try:
        for _ in range(MAX_TURNS):
            message: Any = None
            for chunk in llm.stream(messages):
                message = chunk if message is None else message + chunk
            messages.append(message)
            if message.invalid_tool_calls:
                for bad in message.invalid_tool_calls:
                    report["toolRuns"].append({"name": bad.get("name"), "arguments": bad.get("args")})
                report["outcome"] = f"error: invalid_tool_calls {message.invalid_tool_calls}"[:400]
                return report
            if not message.tool_calls:
                report["finalText"] = message.content
                finish_reason = message.response_metadata.get("finish_reason")
                report["outcome"] = "answered" if finish_reason == "stop" else f"stopped: {finish_reason}"
                return report
            for call in message.tool_calls:
                report["toolRuns"].append({"name": call["name"], "arguments": call["args"]})
                messages.append(ToolMessage(_run_tool(call["name"], call["args"]), tool_call_id=call["id"]))
    except Exception as exc:
        report["outcome"] = _error(exc)
    return report


PYTHON_CLIENTS: dict[str, Callable[[str, str], Report]] = {
    "openai-py-guide": run_openai_guide,
    "openai-py-stream": run_openai_stream_helper,
    "langchain": run_langchain,
    "litellm": run_litellm,
}
NODE_VARIANTS = {
    "openai-node-guide": ("openai-node", "guide"),
    "openai-node-stream": ("openai-node", "stream"),
    "openai-node-runTools": ("openai-node", "runTools"),
    "ai-sdk": ("ai-sdk", "streamText"),
}


def node_client_dir(client: str) -> Any:
    """The Node client installed with `npm ci` into .cache/, its driver and the shared module beside it."""
    target = npm_install(CLIENTS / NODE_CLIENTS[client], CACHE / NODE_CLIENTS[client])
    for name in (NODE_DRIVERS[client], "matrix_common.mjs"):
        shutil.copy(CLIENTS / name, target / name)
    return target


def run_node_cells(client: str, cells: Iterable[tuple[str, str, str, str]]) -> dict[str, Report]:
    """Every (cell id, base url, simulator settings, variant) of one Node client, in one Node process."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is needed for the client matrix")
    cells = list(cells)
    request = {
        "task": TASK,
        "cells": [{"id": i, "baseUrl": f"{url}/v1", "sim": sim, "variant": v} for i, url, sim, v in cells],
    }
    done = subprocess.run(
        [node, NODE_DRIVERS[client]],
        cwd=node_client_dir(client),
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=60 + 15 * len(cells),
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{client} driver failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[-1])

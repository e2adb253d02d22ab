"""`scripts/sim`: run the Kimi server simulator on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import signal
import sys
from collections.abc import Sequence

from .server import SETTINGS_HEADER, Simulator
from .settings import BROKEN_HISTORY, CONTRACTS, LEAKS, SHAPES, THINKS, SimSettings


def parse_args(argv: Sequence[str] | None = None) -> tuple[SimSettings, int, pathlib.Path | None]:
    """The simulator's defaults, port and replay directory from its command line."""
    parser = argparse.ArgumentParser(
        prog="scripts/sim",
        description="An OpenAI-compatible Kimi K2 server simulator (127.0.0.1 only). Per request, the header "
        f"'{SETTINGS_HEADER}: shape=vllm, interleave, fault=stall:3' or a model name like "
        "'kimi-k2-thinking@shape=vllm,interleave' overrides these defaults.",
    )
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--shape", choices=SHAPES, default="sglang")
    parser.add_argument("--fragments", type=int, default=4, help="argument fragments per tool call")
    parser.add_argument("--interleave", action="store_true", help="interleave parallel calls' fragments")
    parser.add_argument("--reasoning-between", action="store_true", help="reasoning deltas between fragments")
    parser.add_argument("--whole", action="store_true", help="every tool call whole, in one chunk")
    parser.add_argument("--no-reasoning", action="store_true")
    parser.add_argument(
        "--broken-history",
        choices=BROKEN_HISTORY,
        default="markup",
        help="what the model does after non-canonical ids in history",
    )
    parser.add_argument(
        "--fault",
        default="none",
        help="none | stall:N | done-open | reset:N | status:CODE | slow-first-byte:SECONDS, or a turn fault that "
        "fails the first N attempts of each turn: empty:N | reasoning-only:N | empty-tool-arrays:N | status:CODE:N | "
        "refuse:N | stall-first:N | silent:N | headers-stall:N | reasoning-stall:N | invalid-call:N | "
        "schema-violation:N",
    )
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between events")
    parser.add_argument("--hold", type=float, default=300.0, help="seconds a stall or done-open lasts")
    parser.add_argument("--answer-events", type=int, default=0, help="text answers as N one-token events")
    parser.add_argument("--leak", choices=LEAKS, default="none", help="how tool parsing fails on a turn with calls")
    parser.add_argument(
        "--held-call", type=float, default=0.0, help="seconds of silence before the first tool-call chunk"
    )
    parser.add_argument("--think", choices=THINKS, default="field", help="how reasoning reaches the client")
    parser.add_argument(
        "--contract", choices=CONTRACTS, default="off", help="moonshot: answer what Moonshot's API refuses with its 400"
    )
    parser.add_argument("--stamp", action="store_true", help="end each event's text with its send time")
    parser.add_argument("--run", default="", help="a tag that separates the attempt counts of turn faults")
    parser.add_argument(
        "--served", default=SimSettings.served, help="the model GET /v1/models lists (moonshotai/Kimi-K2.6, ...)"
    )
    parser.add_argument("--replay", default="", help="answer streams with this file of --replay-dir (or per request)")
    parser.add_argument(
        "--replay-dir",
        type=pathlib.Path,
        help="a directory of SSE files: the setting replay=NAME answers a stream with NAME's events as they are",
    )
    args = parser.parse_args(argv)
    settings = SimSettings(
        shape=args.shape,
        fragments=args.fragments,
        interleave=args.interleave,
        reasoning_between=args.reasoning_between,
        whole=args.whole,
        reasoning=not args.no_reasoning,
        broken_history=args.broken_history,
        fault=args.fault,
        delay=args.delay,
        hold=args.hold,
        answer_events=args.answer_events,
        stamp=args.stamp,
        leak=args.leak,
        held_call=args.held_call,
        think=args.think,
        contract=args.contract,
        run=args.run,
        served=args.served,
        replay=args.replay,
    )
    try:
        settings.validate()
    except ValueError as exc:
        parser.error(str(exc))

    return settings, args.port, args.replay_dir


def main(argv: Sequence[str] | None = None) -> int:
    settings, port, replay_dir = parse_args(argv)

    async def run() -> None:
        simulator = Simulator(settings, port=port, replay_dir=replay_dir)
        await simulator.start()
        print(f"kimiwire simulator listening at {simulator.url} (shape {settings.shape})", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await simulator.stop()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())

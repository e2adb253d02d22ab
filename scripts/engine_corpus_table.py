"""Prints the engine-corpus table of docs/engines.md: per engine release and scenario, in how many of the
corpus's splits a client gets the model's exact calls, text, reasoning and finish, reading the
engine directly and through kimiwire (pi-ai and OpenAI-guide assembly both). A split whose engine
never sent part of the output is counted as "lost upstream" when kimiwire invents nothing and
sends no cut call to run (tests/support/engine_corpus.py `engine_lost_problems`).

    .venv/bin/python scripts/engine_corpus_table.py"""

from __future__ import annotations

import collections
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "addons")]

from tests.support import engine_corpus as ec  # noqa: E402


def short(problem: str) -> str:
    for key, label in (
        ("cut call", "cut call under tool_calls"),
        ("calls", "wrong calls"),
        ("reasoning", "reasoning wrong"),
        ("text", "text wrong"),
        ("stop", "finish wrong"),
        ("finish", "finish wrong"),
    ):
        if key in problem:
            return label
    return problem[:30]


def main() -> None:
    rows: dict[tuple[str, str], list] = collections.defaultdict(lambda: [0, 0, 0, set(), set(), 0])
    for case in ec.load():
        row = rows[(case.engine, case.scenario)]
        body = ec.through(case)
        direct, through = ec.problems(case, case.sse), ec.problems(case, body)
        row[0] += 1
        row[1] += not direct
        row[2] += not through
        row[3].update(short(p.split(": ", 1)[1]) for p in direct)
        if through and ec.engine_lost(case) and not ec.engine_lost_problems(case, body):
            row[5] += 1
        else:
            row[4].update(short(p.split(": ", 1)[1]) for p in through)
    print("| engine | scenario | direct | through kimiwire |")
    print("|---|---|---|---|")
    for (engine, scenario), (n, d, t, dp, tp, lost) in rows.items():
        direct = f"{d}/{n}" + (f" ({', '.join(sorted(dp))})" if dp else "")
        through = (
            f"{t}/{n}" + (f" + {lost} lost upstream" if lost else "") + (f" ({', '.join(sorted(tp))})" if tp else "")
        )
        print(f"| {engine} | {scenario} | {direct} | {through} |")
    total = [sum(r[i] for r in rows.values()) for i in (0, 1, 2, 5)]
    print(
        f"\nall: direct {total[1]}/{total[0]}, through kimiwire {total[2]}/{total[0]}"
        f" + {total[3]} lost upstream (nothing invented, no cut call run)"
    )


if __name__ == "__main__":
    main()

"""Text laid out for a browser pane (mitmweb's content view): sans-IO.

mitmweb drops empty lines and does not wrap, so a view is made of sections that each open with a
heading line (never a blank line between them), and every line longer than WIDTH is wrapped, its
continuation indented under it."""

from __future__ import annotations

import textwrap

WIDTH = 80
HEADING_WIDTH = 78
RULE = "━"


def heading(title: str) -> str:
    line = f"{RULE * 2} {title} "
    return line + RULE * max(2, HEADING_WIDTH - len(line))


def wrapped(line: str, width: int = WIDTH) -> list[str]:
    if len(line) <= width:
        return [line]
    indent = line[: len(line) - len(line.lstrip(" "))]
    return textwrap.wrap(
        line,
        width=width,
        subsequent_indent=indent + "    ",
        break_long_words=True,
        break_on_hyphens=False,
        replace_whitespace=False,
        drop_whitespace=True,
    ) or [line]


def layout(sections: list[tuple[str, list[str]]]) -> str:
    """Sections (heading, lines) as one text: headings between them, long lines wrapped."""
    out: list[str] = []
    for title, lines in sections:
        out.append(heading(title))
        for line in lines:
            out.extend(wrapped(line))
    return "\n".join(out)

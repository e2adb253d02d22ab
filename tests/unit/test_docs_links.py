"""Every relative link in the README and in docs/ points at a file that exists and, with a `#fragment`, at a
heading of that file (GitHub's anchor for it), so words moved between the README and docs/ stay reachable."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([ROOT / "README.md", ROOT / "captures" / "README.md", *(ROOT / "docs").glob("*.md")])
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    return {anchor(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def broken_links(path: pathlib.Path) -> list[str]:
    broken = []
    for target in _LINK.findall(_CODE.sub("", path.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # an address, not a file here
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        missing = not linked.exists()
        if missing or (fragment and linked.suffix == ".md" and fragment not in anchors(linked.read_text())):
            broken.append(target)
    return broken


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: pathlib.Path) -> None:
    assert broken_links(path) == []


def test_the_check_sees_a_missing_file_and_a_missing_heading(tmp_path: pathlib.Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## Timeouts, and the longest wait\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#timeouts-and-the-longest-wait) [gone](missing.md) [no heading](other.md#retries)"
        " [web](https://example.com/x.md) `[code](missing.md)` [self](#a-heading)\n\n## A heading\n"
    )
    assert broken_links(page) == ["missing.md", "other.md#retries"]


def layout_paths(readme: str) -> list[str]:
    """The paths in the first column of the README's Layout table."""
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return [path for row in rows for path in re.findall(r"`([^`]+)`", row)]


def test_the_layout_table_names_paths_that_exist() -> None:
    paths = layout_paths((ROOT / "README.md").read_text())
    assert "mitm/options.py" in paths  # the table was read
    missing = [p for p in paths if not any((base / p).exists() for base in (ROOT, ROOT / "addons" / "kimiwire"))]
    assert missing == []

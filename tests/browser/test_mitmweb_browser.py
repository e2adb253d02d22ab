"""The README's viewer, `mitmweb -n -s addons/kimi.py -r FILE`, in a real browser: the Debian package's
Chromium driven by Playwright (no downloaded browser). A capture holding one flow of each kind opens;
each flow's Kimi views render their sections in the pane (no blank line lost, no line cut at the
pane's edge); the filters find the retried flows; kimi.stats reads as JSON in the command bar.

KIMIWIRE_DOCS_SCREENSHOTS=1 also writes the screenshots of the main views into docs/."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import time

import httpx
import pytest

from tests.support.flow_kinds import KINDS, make_capture
from tests.support.mitm import ADDON, ROOT, free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MITMWEB = ROOT / ".venv" / "bin" / "mitmweb"
# Flags that work on this project's machines (headless, as root, no network but loopback).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "kimiwire-test"
COLUMNS = ("icon", "path", "method", "status", "size", "time", "comment")
RETRIED = {"empty_retried", "status_retried", "retries_exhausted", "reasoning_only_retried"}

sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (pyproject's test extra)")
if not pathlib.Path(CHROMIUM).exists():
    pytest.skip(
        "needs Chromium: apt-get install chromium (./scripts/test installs it as root)", allow_module_level=True
    )


@pytest.fixture(scope="module")
def mitmweb(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser")
    capture = make_capture(folder)
    port = free_port()
    columns = [arg for column in COLUMNS for arg in ("--set", f"web_columns={column}")]
    args = [str(MITMWEB), "-n", "-s", str(ADDON), "-r", str(capture), "--set", "web_open_browser=false"]
    args += ["--set", f"web_port={port}", "--set", f"web_password={PASSWORD}", "--set", f"confdir={folder / 'conf'}"]
    log = open(folder / "mitmweb.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([*args, *columns], stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                flows = httpx.get(f"{url}/flows", headers={"authorization": f"Bearer {PASSWORD}"}, timeout=2).json()
                if len(flows) == len(KINDS):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("mitmweb did not show the capture:\n" + (folder / "mitmweb.log").read_text())
        yield url, {kind.name: flow["id"] for kind, flow in zip(KINDS, flows, strict=True)}
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
    assert "Traceback" not in (folder / "mitmweb.log").read_text()


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a new empty --user-data-dir
            executable_path=CHROMIUM,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1500, "height": 1000},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def load(page, url: str, state: str) -> None:
    """mitmweb with the state its URL's fragment holds (read once, when the page loads)."""
    page.goto("about:blank")
    page.goto(f"{url}/?token={PASSWORD}#/{state}")


def open_view(page, url: str, flow_id: str, tab: str):
    """The flow's tab in mitmweb (the URL mitmweb itself uses); returns the content view's pre."""
    load(page, url, f"flows/{flow_id}/{tab}")
    pre = page.locator(".contentview pre")
    pre.wait_for(timeout=20_000)
    page.wait_for_function("() => document.querySelector('.contentview pre').innerText.length > 0")
    return pre


def choose_view(page, name: str):
    page.locator(".contentview .controls a", has_text="View:").click()
    page.get_by_role("link", name=name.lower(), exact=True).click()  # the menu lists the registry's keys
    page.wait_for_function(
        "(name) => document.querySelector('.contentview h5').innerText === name", arg=name, timeout=20_000
    )
    return page.locator(".contentview pre")


def assert_laid_out_for_the_pane(pre) -> list[str]:
    lines = pre.locator("div").all_inner_texts()
    assert lines and lines[0].startswith("━━ ")
    assert all(line.strip() for line in lines), "an empty line: the browser shows nothing between sections"
    overflow = pre.evaluate("e => e.scrollWidth - e.clientWidth")
    assert overflow <= 1, f"lines cut at the pane's edge ({overflow} px hidden)"
    return lines


def screenshot(page, name: str) -> None:
    if os.environ.get("KIMIWIRE_DOCS_SCREENSHOTS"):
        page.screenshot(path=str(ROOT / "docs" / f"mitmweb-{name}.png"))


@pytest.mark.parametrize("kind", [kind.name for kind in KINDS])
def test_each_flow_kind_renders_its_sections_in_the_browser(mitmweb, page, kind):
    url, ids = mitmweb
    pre = open_view(page, url, ids[kind], "response")
    assert page.locator(".contentview h5").inner_text() == "Kimi Response"
    text = "\n".join(assert_laid_out_for_the_pane(pre))
    assert "━━ as the upstream sent it" in text and "━━ ending ━" in text
    assert ("━━ attempts: " in text) == (kind in RETRIED)
    if kind in RETRIED:
        assert text.index("━━ attempts: ") < text.index("━━ as the upstream sent it")
    if kind in ("retries_exhausted", "fragmented", "status_retried"):
        screenshot(page, f"response-{kind.replace('_', '-')}")
    pre = open_view(page, url, ids[kind], "request")
    assert page.locator(".contentview h5").inner_text() == "Kimi Request"
    assert "━━ request as the client sent it" in "\n".join(assert_laid_out_for_the_pane(pre))
    if kind == "mangled_ids":
        screenshot(page, "request-mangled-ids")


def test_views_picked_by_hand(mitmweb, page):
    url, ids = mitmweb
    open_view(page, url, ids["retries_exhausted"], "response")
    raw = choose_view(page, "Kimi Attempts Raw")
    assert len(re.findall(r"━━ attempt \d raw body", raw.inner_text())) == 3
    wrong = choose_view(page, "Kimi Request")
    assert wrong.inner_text().startswith("━━ Kimi Request: this is a response")


def test_filters_find_the_retried_flows_and_the_comment_column_shows(mitmweb, page):
    url, _ = mitmweb
    load(page, url, "flows?s=~comment%20retr")
    rows = page.locator(".flow-table tbody tr.has-request")
    page.wait_for_function(
        f"() => document.querySelectorAll('.flow-table tbody tr.has-request').length === {len(RETRIED)}"
    )
    comments = rows.locator("td.col-comment").all_inner_texts()
    assert len(comments) == len(RETRIED) and all("retried=" in c for c in comments), comments
    screenshot(page, "filter-retried")
    load(page, url, "flows?s=~marked%20%26%20~comment%20retries_exhausted")
    page.wait_for_function("() => document.querySelectorAll('.flow-table tbody tr.has-request').length === 1")


def test_kimi_stats_reads_as_json_in_the_command_bar(mitmweb, page):
    url, _ = mitmweb
    load(page, url, "flows?c=1")
    bar = page.locator(".command-input input, .command input").first
    bar.wait_for(timeout=20_000)
    bar.fill("kimi.stats")
    bar.press("Enter")
    result = page.locator(".command-result, .command").filter(has_text='"read_from_files"').first
    result.wait_for(timeout=20_000)
    text = result.inner_text()
    assert f'"read_from_files":{{"flows":{len(KINDS)}' in text.replace(" ", "") and '\\"' not in text

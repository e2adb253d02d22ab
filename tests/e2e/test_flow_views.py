"""The mitmweb views of a capture holding one flow of each kind: laid out for a browser pane
(sections with headings, no blank line, no line past the pane's width), every attempt of a retried
flow shown before the answer, each repair in words, a wrong view picked by hand said so."""

import os
import subprocess

import pytest
from kimiwire.inspection.pane import WIDTH
from kimiwire.inspection.repair_words import describe
from kimiwire.mitm import contentview
from mitmproxy import contentviews
from mitmproxy.test import taddons

from tests.support.flow_kinds import KINDS, make_capture, read_kinds
from tests.support.mitm import ADDON, MITMDUMP


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    return make_capture(tmp_path_factory.mktemp("kinds"))


@pytest.fixture(scope="module")
def flows(capture):
    contentview.register()
    return read_kinds(capture)


def view(message, flow, name="auto"):
    with taddons.context():
        return contentviews.prettify_message(message, flow, name)


@pytest.mark.parametrize("kind", [k.name for k in KINDS])
def test_each_flow_opens_in_the_kimi_views_laid_out_for_a_pane(flows, kind):
    flow = flows[kind]
    response, request = view(flow.response, flow), view(flow.request, flow)
    assert response.view_name == "Kimi Response" and request.view_name == "Kimi Request"
    for text in (response.text, request.text):
        lines = text.splitlines()
        assert lines[0].startswith("━━ ")
        assert all(line.strip() for line in lines), "a blank line: mitmweb drops it, sections run together"
        assert max(len(line) for line in lines) <= WIDTH
        assert "null -> null" not in text and "Traceback" not in text
    assert "━━ as the upstream sent it" in response.text and "━━ ending ━" in response.text
    assert "━━ request as the client sent it" in request.text


@pytest.mark.parametrize(
    ("kind", "statuses", "outcome"),
    [
        ("empty_retried", ["HTTP 200", "HTTP 200"], "answered by a retry"),
        ("status_retried", ["HTTP 503", "HTTP 200"], "answered by a retry"),
        ("reasoning_only_retried", ["HTTP 200", "HTTP 200"], "answered by a retry"),
        ("retries_exhausted", ["HTTP 200"] * 3, "no answer after every attempt"),
    ],
)
def test_every_attempt_is_listed_before_the_answer(flows, kind, statuses, outcome):
    text = view(flows[kind].response, flows[kind]).text
    attempts = [line for line in text.splitlines() if line.startswith("attempt ")]
    assert len(attempts) == len(statuses)
    for number, (line, status) in enumerate(zip(attempts, statuses, strict=True), 1):
        assert line.startswith(f"attempt {number} · ") and status in line and " s" in line
    assert "first try" in attempts[0] and "retry after" in attempts[1]
    assert text.index("━━ attempts: ") < text.index("━━ as the upstream sent it")
    assert text.count("came back (") == len(statuses) and outcome in text
    raw = view(flows[kind].response, flows[kind], "kimi attempts raw").text
    assert raw.count("━━ attempt ") == len(statuses)


def test_a_flow_answered_first_time_lists_no_attempts(flows):
    assert "attempts:" not in view(flows["fragmented"].response, flows["fragmented"]).text


def flat(text: str) -> str:
    """The text with wrapped lines joined (words as they would read unwrapped)."""
    return " ".join(text.split())


def test_repairs_say_which_call_and_what_changed(flows):
    fragmented = flat(view(flows["fragmented"].response, flows["fragmented"]).text)
    assert "stream.tool_call_joined (call 1): its 6 argument deltas joined; sent as 2 deltas" in fragmented
    assert "(in 2 deltas)" in fragmented
    think = flat(view(flows["think_tags"].response, flows["think_tags"]).text)
    assert "think.open_tag: a <think> tag in the content" in think
    leaked = flat(view(flows["leaked_markup"].response, flows["leaked_markup"]).text)
    assert "markup.recovered_consumed (call 0): call read recovered from Kimi tool-call markup" in leaked
    ids = flat(view(flows["mangled_ids"].request, flows["mangled_ids"]).text)
    assert "ids.call (message 1): tool-call id functionsread0 -> functions.read:0" in ids


@pytest.mark.parametrize(
    ("repair", "words"),
    [
        (
            {"kind": "args.empty", "message_index": 1, "before": "", "after": {}, "phase": "response"},
            "args.empty (call 1): arguments were empty, sent as an empty object: (empty) -> {}",
        ),
        (
            {"kind": "think.close_tag", "message_index": None, "before": None, "after": None, "phase": "response"},
            "think.close_tag: a </think> tag in the content: the text before it moved to reasoning",
        ),
        ({"kind": "some.future_kind", "message_index": None, "before": None, "after": None}, "some.future_kind"),
        (
            {"kind": "some.future_kind", "message_index": 2, "before": "a", "after": "b", "phase": "request"},
            "some.future_kind (message 2): a -> b",
        ),
    ],
)
def test_repair_lines(repair, words):
    assert describe(repair) == words


def test_a_wrong_view_picked_by_hand_says_so(flows):
    flow = flows["mangled_ids"]
    on_response = view(flow.response, flow, "kimi request")
    assert on_response.text.startswith("━━ Kimi Request: this is a response")
    on_request = view(flow.request, flow, "kimi response")
    assert on_request.text.startswith("━━ Kimi Response: this is a request")


RETRIED = {
    "empty_retried": ("kimiwire: retried=1 why=empty", ":wrench:"),
    "status_retried": ("kimiwire: retried=1 why=status", ":wrench:"),
    "reasoning_only_retried": ("kimiwire: retried=1 why=reasoning_only", ":wrench:"),
    "retries_exhausted": ("kimiwire: retried=2 why=empty ended=retries_exhausted", ":warning:"),
}


def test_retried_flows_are_marked_commented_and_found_by_filters(flows):
    from mitmproxy import flowfilter

    for kind, (comment, mark) in RETRIED.items():
        # Repairs made on the answering attempt come first (e.g. `stream.tool_call_joined=1`), the retries last, once.
        got = flows[kind].comment
        assert got.startswith("kimiwire: ") and got.endswith(comment.removeprefix("kimiwire: ")), (kind, got)
        assert got.count("retried=") == 1 and flows[kind].marked == mark, (kind, got)
    found = {kind for kind, flow in flows.items() if flowfilter.match("~comment retr", flow)}
    assert found == set(RETRIED)
    assert all(flowfilter.match("~marked", flows[kind]) for kind in RETRIED)


def test_kimi_stats_counts_flows_read_from_files_as_readable_json(flows):
    from kimiwire.mitm.addon import KimiWire
    from kimiwire.mitm.command_types import JSONObject

    addon = KimiWire()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, kimi_capture_dir="")
        for flow in flows.values():
            loaded = flow.copy()
            loaded.live = False
            loaded.comment, loaded.marked = "", ""  # a capture written before retries were marked
            addon.request(loaded)
            if kind_is_retried := loaded.metadata["kimiwire"].get("attempts"):
                assert "retried=" in loaded.comment and loaded.marked, kind_is_retried
        stats = tctx.command(addon.stats)
    assert isinstance(stats, JSONObject)  # mitmweb's command bar shows an object as JSON, a str escaped
    assert stats["flows"] == 0 and stats["counts"].startswith("live traffic")
    read = stats["read_from_files"]
    assert read["flows"] == len(KINDS)
    assert read["retries"] == {"attempts": 5, "exhausted": 1, "flows": 4}
    assert read["endings"]["retried"] == 3 and read["endings"]["idle_timeout"] == 1
    assert read["repairs"]["stream.tool_call_joined"] >= 5


def test_viewer_mode_captures_nothing_and_says_nothing_about_captures(capture, tmp_path):
    """`-n -r FILE` (no proxy, nothing replayed): no capture file, the capture folder left as it is."""
    folder = tmp_path / "captures"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    done = subprocess.run(
        [str(MITMDUMP), "-n", "-r", str(capture), "-s", str(ADDON), "--set", f"confdir={tmp_path / 'conf'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "captured" not in done.stdout and "no proxy listens" in done.stdout
    assert list(folder.iterdir()) == [] and oct(folder.stat().st_mode & 0o777) == oct(0o755)


def test_replay_of_an_unchanged_policy_reports_no_difference_for_any_kind(capture, capsys):
    from kimiwire.mitm.replay import main

    assert main([str(capture)]) == 0
    out = capsys.readouterr().out
    assert f"summary: {len(KINDS)} flows compared, 0 differ, 0 skipped" in out


def test_a_retried_flow_differs_when_its_last_attempt_would_now_answer():
    from kimiwire.inspection.rerun import RetrySource, compare_retried

    role = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    error = b'data: {"error":{"message":"no answer","type":"upstream_empty_turn"}}\n\ndata: [DONE]\n\n'
    delivered = role + error
    still_empty = role + b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    answers = role + b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
    source = RetrySource(200, "text/event-stream", b"", exhausted=True)
    assert compare_retried(b"{}", b"{}", delivered, still_empty, source) == []
    lines = compare_retried(b"{}", b"{}", delivered, answers + b"data: [DONE]\n\n", source)
    assert "choice 0 content: '' -> 'hi'" in lines and any(line.startswith("errors:") for line in lines)


def test_an_attempt_record_with_more_fields_is_shown(flows):
    """Records of another version may keep more per attempt (its repairs, headers): shown, never an error."""
    flow = flows["status_retried"].copy()
    attempts = flow.metadata["kimiwire"]["attempts"]
    attempts[1] = {
        **attempts[1],
        "repairs": [{"kind": "stream.tool_call_joined", "message_index": 0, "before": 5, "after": 1}],
        "headers": [[b"content-type", b"text/event-stream"]],
        "something_new": {"x": 1},
    }
    text = flat(view(flow.response, flow).text)
    assert "repairs on this attempt (1): stream.tool_call_joined (call 0): its 5 argument deltas joined" in text

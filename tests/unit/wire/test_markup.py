import orjson
import pytest
from kimiwire.wire.response import markup
from kimiwire.wire.response.markup import MarkupScanner, embedded_markup, name_from_id

DECLARED = frozenset({"read", "exec"})
SECTION = (
    "<|tool_calls_section_begin|><|tool_call_begin|>functions.read:3<|tool_call_argument_begin|>"
    '{"path": "a.py"}<|tool_call_end|><|tool_call_begin|>functions.exec:4<|tool_call_argument_begin|>'
    '{"command": "ls"}<|tool_call_end|><|tool_calls_section_end|>'
)


def scan(pieces, declared=DECLARED):
    scanner = MarkupScanner(declared)
    text, calls = "", []
    for piece in pieces:
        t, c = scanner.feed(piece)
        text += t
        calls += c
    t, c = scanner.finish()
    return text + t, [(c.name, c.arguments, c.form) for c in calls + c]


EXPECTED_CALLS = [("read", '{"path": "a.py"}', "markup"), ("exec", '{"command": "ls"}', "markup")]


def test_section_in_one_piece():
    assert scan(["Let me look. " + SECTION + " done"]) == ("Let me look.  done", EXPECTED_CALLS)


def test_section_split_at_every_point():
    full = "Before " + SECTION + " after"
    for cut in range(len(full) + 1):
        assert scan([full[:cut], full[cut:]]) == ("Before  after", EXPECTED_CALLS), cut


def test_singular_section_token_and_ids_without_functions_prefix():
    text = (
        '<|tool_call_section_begin|><|tool_call_begin|>read:0<|tool_call_argument_begin|>{"path": "x"}'
        "<|tool_call_end|><|tool_call_section_end|>"
    )
    assert scan([text]) == ("", [("read", '{"path": "x"}', "markup")])


def test_copied_mangled_id_resolves_a_declared_name():
    text = (
        "<|tool_calls_section_begin|><|tool_call_begin|>functionsexec5<|tool_call_argument_begin|>{}<|tool_call_end|>"
    )
    assert scan([text]) == ("", [("exec", "{}", "markup")])
    assert name_from_id("functionsread12", DECLARED) == "read"
    assert name_from_id("functions.web_search:2", frozenset()) == "web_search"


def test_unclosed_section_at_the_end_is_recovered():
    text = 'x<|tool_calls_section_begin|><|tool_call_begin|>functions.read:0<|tool_call_argument_begin|>{"path": "q"}'
    assert scan([text]) == ("x", [("read", '{"path": "q"}', "markup")])


def test_bare_form_recovered_only_for_declared_tools_with_json():
    assert scan(['I will call functions.read:3{"path": "x"} now']) == (
        "I will call  now",
        [("read", '{"path": "x"}', "bare")],
    )
    assert scan(['functions.delete:3{"path": "x"}']) == ('functions.delete:3{"path": "x"}', [])
    assert scan(["functions.read:3{not json}"]) == ("functions.read:3{not json}", [])
    assert scan(["see functions.read:3 for details"]) == ("see functions.read:3 for details", [])


def test_bare_form_split_everywhere():
    full = 'ok functions.read:3{"path": "a}b"} end'
    for cut in range(len(full) + 1):
        assert scan([full[:cut], full[cut:]]) == ("ok  end", [("read", '{"path": "a}b"}', "bare")]), cut


def test_plain_text_passes_at_once_and_holds_back_little():
    scanner = MarkupScanner(DECLARED)
    assert scanner.feed("hello world") == ("hello world", [])
    assert scanner.feed("a <|tool") == ("a ", [])
    assert scanner.pending == "<|tool"
    assert scanner.feed("s are great") == ("<|tools are great", [])


@pytest.mark.parametrize("stray", ["<|tool_call_end|>", "<|tool_calls_section_end|>"])
def test_stray_tokens_are_removed(stray):
    assert scan([f"a{stray}b"]) == ("ab", [])


def test_without_declared_tools_bare_text_is_never_held():
    scanner = MarkupScanner(frozenset())
    assert scanner.feed("functions.") == ("functions.", [])


# -- begin markers consumed by a router (typeclaw PR #344, a K2.6 router) ---------------------------

CONSUMED = 'read:0<|tool_call_argument_begin|>{"path": "a.py"}<|tool_calls_section_end|>'
CONSUMED_TWO = (
    'functions.read:0<|tool_call_argument_begin|>{"path": "a.py"}'
    'functions.exec:1<|tool_call_argument_begin|>{"command": "ls"}<|tool_calls_section_end|>'
)
CONSUMED_EXPECTED = [("read", '{"path": "a.py"}', "consumed")]


def every_split(full, expected_text, expected_calls, declared=DECLARED):
    assert scan([full], declared) == (expected_text, expected_calls)
    for cut in range(len(full) + 1):
        assert scan([full[:cut], full[cut:]], declared) == (expected_text, expected_calls), cut
    for cut in range(1, len(full)):  # three pieces: the second one character long
        assert scan([full[:cut], full[cut : cut + 1], full[cut + 1 :]], declared) == (expected_text, expected_calls)


def test_consumed_begin_markers_at_every_split_point():
    every_split("Let me look. " + CONSUMED + " ok", "Let me look.  ok", CONSUMED_EXPECTED)


def test_consumed_begin_markers_with_functions_prefix_several_in_a_row():
    every_split(
        CONSUMED_TWO,
        "",
        [("read", '{"path": "a.py"}', "consumed"), ("exec", '{"command": "ls"}', "consumed")],
    )


def test_consumed_begin_markers_each_with_its_own_section_end():
    text = CONSUMED + CONSUMED.replace("read:0", "exec:1").replace('{"path": "a.py"}', '{"command": "ls"}')
    every_split(text, "", [("read", '{"path": "a.py"}', "consumed"), ("exec", '{"command": "ls"}', "consumed")])


def test_section_whose_call_begin_was_consumed():
    text = (
        '<|tool_calls_section_begin|>functions.read:0<|tool_call_argument_begin|>{"path": "a.py"}'
        "<|tool_calls_section_end|>"
    )
    every_split("x " + text, "x ", [("read", '{"path": "a.py"}', "markup")])


def test_consumed_form_needs_a_known_name():
    text = 'web:0<|tool_call_argument_begin|>{"q": 1}<|tool_calls_section_end|>'
    assert scan([text]) == ('web:0{"q": 1}', [])
    assert scan([CONSUMED], frozenset()) == ('read:0{"path": "a.py"}', [])


def test_a_word_that_may_become_a_known_head_is_held_one_piece_only():
    scanner = MarkupScanner(DECLARED)
    assert scanner.feed("I will re") == ("I will ", [])
    assert scanner.feed("ad it now") == ("read it now", [])
    assert scanner.feed("note:") == ("note:", [])  # not a known name
    assert scanner.feed("read:2 ") == ("", [])
    assert scanner.feed("is it") == ("read:2 is it", [])
    assert MarkupScanner(frozenset()).feed("read:0") == ("read:0", [])


def test_bare_form_with_history_names_as_known():
    history_known = frozenset({"read"})
    every_split('functions.read:3{"path": "x"}', "", [("read", '{"path": "x"}', "bare")], history_known)


# -- markup inside a call's arguments (vLLM 0.24 + K2.6, anomalyco/opencode#37297) ---------------

NESTED_ARGUMENTS = (
    '{"path": "<|tool_calls_section_begin|><|tool_call_begin|>functions.read:3<|tool_call_argument_begin|>'
    '{"path": "/w/b.txt"}<|tool_call_end|><|tool_calls_section_end|>'
)


def test_embedded_calls_are_found_in_raw_arguments():
    found = embedded_markup(NESTED_ARGUMENTS, DECLARED)
    assert found is not None
    assert [(c.name, c.arguments) for c in found.calls] == [("read", '{"path": "/w/b.txt"}')]
    assert found.incomplete == []
    assert found.remainder == '{"path": "'


def test_embedded_calls_in_an_escaped_string_value():
    arguments = orjson.dumps(
        {"path": '<|tool_call_begin|>functions.read:3<|tool_call_argument_begin|>{"path": "/w/b.txt"}'}
    )
    found = embedded_markup(arguments.decode(), DECLARED)
    assert [(c.name, c.arguments) for c in found.calls] == [("read", '{"path": "/w/b.txt"}')]


def test_an_embedded_call_cut_short_is_never_a_call():
    cut = NESTED_ARGUMENTS.split("/w/b")[0]
    found = embedded_markup(cut, DECLARED)
    assert found.calls == [] and [c.name for c in found.incomplete] == ["read"]


def test_arguments_without_markers_are_left_alone():
    assert embedded_markup('{"path": "functions.read:3 <| x"}', DECLARED) is None


def test_a_head_counts_only_after_whitespace_or_a_marker_and_holding_stays_short():
    glued = 'see(read:0<|tool_call_argument_begin|>{"path": "a.py"}<|tool_calls_section_end|>'
    every_split(glued, 'see(read:0{"path": "a.py"}', [])
    scanner = MarkupScanner(DECLARED)
    long_word = "x" * 5000 + " re"
    assert scanner.feed(long_word) == (long_word[:-2], [])
    assert scanner.pending == "re"


def test_scanners_of_one_tool_set_share_its_heads_and_huge_sets_are_not_remembered():
    first, second = MarkupScanner({"read", "exec"}), MarkupScanner(["exec", "read"])
    assert first._heads is second._heads and "functions.rea" in first._heads and "exe" in first._heads
    assert first.feed("now rea") == ("now ", [])  # "rea" held as before: it may begin `read:0`
    huge = {f"tool_{n:04d}_" + "x" * 60 for n in range(80)}  # 5,600 characters of names
    before = markup._remembered_heads.cache_info().currsize
    assert MarkupScanner(huge)._heads is not MarkupScanner(huge)._heads
    assert markup._remembered_heads.cache_info().currsize == before

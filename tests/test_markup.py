import pytest
from kimiwire.wire.response.markup import MarkupScanner, name_from_id

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

"""The options table (mitm/options.py): every row registered, read into Settings, checked, documented."""

import dataclasses
import pathlib
import re

import pytest
from kimiwire.mitm import options
from kimiwire.mitm.addon import KimiWire
from kimiwire.mitm.options import OPTIONS, Feeds, Settings
from kimiwire.wire.retry.policy import RetryPolicy
from kimiwire.wire.servers.policy import POLICY_OPTIONS
from kimiwire.wire.stream_endings import EndingLimits
from mitmproxy import exceptions
from mitmproxy.test import taddons

README = pathlib.Path(__file__).resolve().parents[3] / "README.md"

# A value each parser refuses (a row with a new parser needs one here).
REFUSED = {
    options.seconds: ["soon", "-1", "nan"],
    options.scale: ["0", "fast"],
    options.count: [-1],
    options.byte_limit: [-1],
    options.buffer_size: [1023],
    options.file_name: ["a/b", ".."],
}


def refused_values(option: options.Option) -> list:
    if option.choices is not None:
        return ["sometimes"]
    if option.name == "kimi_retry_on":  # checked by RetryPolicy.parse
        return ["empty,sometimes"]
    if option.parse is options.as_is:
        return []
    return REFUSED[option.parse]


def test_every_row_is_registered_as_declared():
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        registered = {name: o for name, o in tctx.options._options.items() if name.startswith("kimi_")}
        assert set(registered) == {option.name for option in OPTIONS}
        for option in OPTIONS:
            got = registered[option.name]
            assert (got.typespec, got.default, got.help, got.choices) == (
                option.type,
                option.default,
                option.help,
                option.choices,
            ), option.name
            assert got.help, option.name


def test_one_settings_field_per_row_and_the_names_are_unique():
    assert [f.name for f in dataclasses.fields(Settings)] == [option.field for option in OPTIONS]
    assert all(option.name.startswith("kimi_") for option in OPTIONS)


def test_the_defaults_parse_into_the_default_limits_policy_and_retries():
    settings = Settings.defaults()
    assert settings.ending_limits() == EndingLimits()
    assert settings.retry_policy() == RetryPolicy()
    assert settings.shutdown_grace == 2.0 and settings.timeout_scale == 1.0
    assert settings.policy_options() == {"stream_buffer_limit": 8 * 1024 * 1024} | {
        field: choices[0] for field, (choices, _) in POLICY_OPTIONS.items()
    }


def test_the_settings_the_addon_reads_are_the_options_values():
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        tctx.configure(kw, kimi_shutdown_grace="5", kimi_json_errors=False, kimi_health_path="", kimi_retries=0)
        assert (kw.shutdown_grace, kw.json_errors, kw.health_path) == (5.0, False, "")
        assert kw.settings.retries == 0 and kw.retrier.policy.retries == 0
        with pytest.raises(dataclasses.FrozenInstanceError):
            kw.settings.retries = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "option,value", [(o, v) for o in OPTIONS for v in refused_values(o)], ids=lambda x: getattr(x, "name", str(x))
)
def test_a_bad_value_is_refused_naming_its_option_and_the_settings_stay(option, value):
    kw = KimiWire()
    with taddons.context(kw) as tctx:
        before = kw.settings
        with pytest.raises(exceptions.OptionsError, match=re.escape(option.name)):
            tctx.configure(kw, **{option.name: value})
        assert kw.settings == before


def test_every_option_that_can_be_refused_has_a_bad_value_here():
    checked = [o.name for o in OPTIONS if refused_values(o)]
    assert len(checked) >= 25  # choices, seconds, counts, limits, the file name, the retry reasons


def test_the_policy_rows_feed_the_policy():
    assert options.names(Feeds.POLICY) == {
        "kimi_flavor",
        "kimi_stream_buffer_limit",
        *(f"kimi_{field}" for field in POLICY_OPTIONS),
    }


def test_the_readme_options_table_lists_every_row_with_its_default():
    text = README.read_text()
    section = text.split("\n## Options\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(kimi_\w+)` \| ([^|]+) \|", section, re.MULTILINE))
    assert set(rows) == {option.name for option in OPTIONS}
    for option in OPTIONS:
        default = str(option.default).lower() if option.type is bool else str(option.default)
        documented = rows[option.name].strip()
        assert documented.startswith(f"`{default}`") if default else documented == "(empty)", option.name

"""Nothing leaks: credentials are redacted by name in captures and log lines, and client
replay of a capture puts a real credential back instead of the placeholder."""

import os
import subprocess

import httpx
import orjson
import pytest
from kimiwire.mitm.capture import upstream_request_body
from kimiwire.wire.capture.redaction import REDACTED, Redactor, url_for_log
from kimiwire.wire.capture.replay_credentials import resolve_credential, restore

from tests.support import streams
from tests.support.conversations import assistant, body, call, tool, user
from tests.support.mitm import ROOT, Mitmdump
from tests.support.proxied import proxied
from tests.support.streams import EXEC_ARGS, READ_ARGS
from tests.support.upstream import RecordingUpstream, sse_reply

# Every place a request or a response can carry a credential, each with its own planted value.
QUERY = "api_key=SECRET-q1&key=SECRET-q2&alt=sse"
REQUEST_HEADERS = {
    "authorization": "Bearer SECRET-h1",
    "x-api-key": "SECRET-h2",
    "api-key": "SECRET-h3",
    "x-goog-api-key": "SECRET-h4",
    "x-auth-token": "SECRET-h5",
    "openai-organization": "SECRET-h6",
    "cookie": "session=SECRET-h7",
    "X-Amz-Security-Token": "SECRET-h8",
    "x-custom-thing": "SECRET-h9",  # only through kimi_redact
    "openai-project": "SECRET-h10",
}
BODY_SECRETS = {"api_key": "SECRET-b1", "metadata": {"sessionToken": "SECRET-b2"}}
RESPONSE_HEADERS = {
    "set-cookie": "upstream=SECRET-r1",
    "openai-organization": "SECRET-r2",
    "x-upstream-auth": "SECRET-r3",
    "x-ratelimit-remaining-tokens": "777",
}
REPLAY_KEY = "sk-replay-credential-42"


def chat_request() -> dict:
    request = body(
        [user("read"), assistant(call("functionsread0", "read")), tool("functionsread0", "A"), user("now both")]
    )
    request.update(BODY_SECRETS, max_tokens=123, prompt_cache_key="cache-7")
    return request


def reply(request):
    stream = sse_reply(streams.interleaved([("read", READ_ARGS), ("exec", EXEC_ARGS)]).events)
    stream.headers.update(RESPONSE_HEADERS)
    return stream


@pytest.fixture(scope="module")
def upstream():
    with RecordingUpstream(reply) as up:
        yield up


@pytest.fixture(scope="module")
def planted(upstream, tmp_path_factory):
    """One run through mitmdump with a secret in every place, then the capture and the log."""
    tmp = tmp_path_factory.mktemp("planted")
    # flow_detail=0: mitmproxy's own per-flow listing prints URLs as sent (see README); the rest of
    # the log, debug lines included, is checked.
    options = {"kimi_redact": "X-Custom-Thing", "flow_detail": 0}
    with proxied(upstream, tmp, options, save_flows=False) as proxy:
        r = httpx.post(
            f"{proxy.url}/v1/chat/completions?{QUERY}",
            content=orjson.dumps(chat_request()),
            headers={"content-type": "application/json", **REQUEST_HEADERS},
            timeout=10,
        )
        assert r.status_code == 200 and r.content.endswith(b"data: [DONE]\n\n")
    [capture] = proxy.capture_files()
    return {"proxy": proxy, "capture": capture, "upstream_request": upstream.requests[-1]}


def test_the_planted_secrets_reached_the_upstream(planted):
    # Redaction is for what is stored, not for what is forwarded.
    sent = planted["upstream_request"]
    assert sent.headers["x-goog-api-key"] == "SECRET-h4" and "SECRET-q2" in sent.path
    assert sent.json()["api_key"] == "SECRET-b1"


def test_no_planted_secret_in_the_capture(planted):
    data = planted["capture"].read_bytes()
    assert b"SECRET-" not in data
    [flow] = planted["proxy"].read_flows(planted["capture"])
    for name in REQUEST_HEADERS:
        assert flow.request.headers[name] == REDACTED, name
    assert flow.request.query["api_key"] == REDACTED and flow.request.query["key"] == REDACTED
    assert flow.request.query["alt"] == "sse"
    sent = orjson.loads(flow.request.content)
    assert sent["api_key"] == REDACTED and sent["metadata"]["sessionToken"] == REDACTED
    assert sent["max_tokens"] == 123 and sent["prompt_cache_key"] == "cache-7"
    assert orjson.loads(upstream_request_body(flow))["api_key"] == REDACTED
    for name in ("set-cookie", "openai-organization", "x-upstream-auth"):
        assert flow.response.headers[name] == REDACTED, name
    assert flow.response.headers["x-ratelimit-remaining-tokens"] == "777"


def test_no_planted_secret_in_the_log(planted):
    output = planted["proxy"].output
    assert "SECRET-" not in output
    # kimiwire did log this flow's path, with the query values hidden
    assert "/v1/chat/completions?api_key=…&key=…&alt=…" in output


def replay_capture(capture, tmp_path, upstream, env=None, options=()):
    """`mitmdump -n -C capture` with the addon, against the recording upstream; the requests it got."""
    before = len(upstream.requests)
    args = [str(ROOT / ".venv" / "bin" / "mitmdump"), "-n", "-C", str(capture), "-s", str(ROOT / "addons" / "kimi.py")]
    for option in (f"confdir={tmp_path}", f"kimi_capture_dir={tmp_path / 'c'}", "flow_detail=0", *options):
        args += ["--set", option]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stdout + done.stderr
    return upstream.requests[before:], done.stdout + done.stderr


def test_client_replay_puts_the_credential_back(planted, upstream, tmp_path):
    [resent], output = replay_capture(
        planted["capture"], tmp_path, upstream, {"KW_TEST_KEY": REPLAY_KEY}, ["kimi_replay_auth=env:KW_TEST_KEY"]
    )
    assert resent.headers["authorization"] == f"Bearer {REPLAY_KEY}"
    for name in ("x-api-key", "api-key", "x-goog-api-key"):
        assert resent.headers[name] == REPLAY_KEY, name
    assert f"key={REPLAY_KEY}" in resent.path and "alt=sse" in resent.path
    for name in ("cookie", "x-auth-token", "openai-organization"):  # cannot be rebuilt: removed, not sent
        assert name not in resent.headers, name
    everything_sent = str(resent.headers) + resent.path
    assert "redacted" not in everything_sent
    assert REPLAY_KEY not in output
    # the replay run's own capture does not keep the credential it was given
    [again] = (tmp_path / "c").glob("kimiwire-*.mitm")
    assert REPLAY_KEY.encode() not in again.read_bytes()


def test_client_replay_without_a_credential_says_so(planted, upstream, tmp_path):
    saved = tmp_path / "replayed.mitm"
    [resent], output = replay_capture(planted["capture"], tmp_path, upstream, options=[f"save_stream_file={saved}"])
    assert "authorization" not in resent.headers and "redacted" not in str(resent.headers) + resent.path
    assert "replayed without redacted credentials (no kimi_replay_auth set): authorization" in output
    [flow] = Mitmdump.read_flows(None, saved)
    assert flow.marked and "replay_without_credentials" in flow.comment


def test_an_unset_environment_variable_is_reported():
    assert resolve_credential("env:KW_SURELY_UNSET_VARIABLE", {}) == (
        None,
        "kimi_replay_auth names the environment variable KW_SURELY_UNSET_VARIABLE, which is not set",
    )
    assert resolve_credential("sk-literal", {}) == ("sk-literal", None)
    assert resolve_credential("", {}) == (None, None)


def test_restore_keeps_a_scheme_the_credential_names():
    restored = restore([("Authorization", REDACTED), ("x-other", "1")], [], "Basic dXNlcjpwdw==")
    assert restored.headers == [("Authorization", "Basic dXNlcjpwdw=="), ("x-other", "1")]


@pytest.mark.parametrize(
    "name",
    ["authorization", "X-Goog-Api-Key", "apiKey", "access_token", "sessionid", "X-Amz-Signature", "client_secret"],
)
def test_names_that_look_like_credentials(name):
    redactor = Redactor()
    assert redactor.is_secret(name) and redactor.is_secret(name)  # judged, then remembered
    assert redactor.is_secret(name.encode("latin-1"))  # a header name as mitmproxy stores it


def test_remembered_verdicts_stay_few_and_right():
    redactor = Redactor(["tenant"])
    for i in range(10_000):
        assert redactor.is_secret(f"x-{i}-token") and not redactor.is_secret(f"x-{i}-tokens".encode())
    assert len(redactor._verdicts) <= 4096
    assert redactor.is_secret(b"TENANT") and not redactor.is_secret("prompt_cache_key")


@pytest.mark.parametrize(
    "name", ["max_tokens", "x-ratelimit-remaining-tokens", "prompt_cache_key", "tool_call_id", "content-type"]
)
def test_harmless_names_stay(name):
    assert not Redactor().is_secret(name)


def test_json_bodies_keep_schemas_and_bytes():
    redactor = Redactor()
    schema = b'{"tools":[{"parameters":{"properties":{"api_key":{"type":"string"}}}}]}'
    assert redactor.json_body(schema) is schema  # an object under a secret name is searched, not replaced
    assert redactor.json_body(b"not json, api_key=1") == b"not json, api_key=1"
    assert orjson.loads(redactor.json_body(b'[{"password": "p"}]')) == [{"password": REDACTED}]


def test_log_urls_hide_every_query_value():
    assert url_for_log("http://h/v1/x?key=abc&alt=sse") == "http://h/v1/x?key=…&alt=…"
    assert url_for_log("/v1/x") == "/v1/x"

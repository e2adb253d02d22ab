"""Random sequences of attempt outcomes through the retry machinery, end to end (mitmdump in front of a
scripted upstream): whatever each attempt does (a retryable status, a reset or a stall before or
after the headers, content then a reset or a stall, an empty turn, a streamed or a JSON answer),
every request ends in one well-formed client answer (status line and reason phrase that agree, one
`[DONE]` closing a 200 stream, an OpenAI error object otherwise), is captured once, is counted once
in `kimi.stats`, and leaves no flow state or task behind."""

from __future__ import annotations

import concurrent.futures
import http
import random
import socket
import time

import httpx
import orjson
import pytest
from kimiwire.wire import chat_exchanges
from kimiwire.wire.codecs.sse import SSEDecoder
from mitmproxy.net.http import status_codes

from tests.support.proxied import proxied
from tests.support.streams import Stream
from tests.support.upstream import Reply, json_reply, sse_reply

# Every timeout of the defaults' ratios, scaled down so a stall costs two or three seconds.
SCALE = 0.03
OPTIONS = {
    "kimi_timeout_scale": str(SCALE),
    "kimi_retry_backoff": "0.05",
}
HOLD = 8.0  # how long a stalling upstream keeps its connection: past every scaled timeout
# What a stalling attempt costs at the default timeouts (unscaled seconds): headers 60, first event
# 90, idle 60 (+ an eighth: idle is looked at, not timed), a whole body 60; the budget is 200.
STALL_COST = {"stall_headers": 60, "stall_first": 90, "reasoning_stall": 67.5, "partial_stall": 67.5}
BUDGET = 200
EITHER = "either"
ANSWER = "The answer."
PARTIAL = "Partial"

STATUS = ("s429", "s500", "s503")
BEFORE_CONTENT = ("reset", "stall_headers", "stall_first", "reasoning_stall", "empty")
ANSWERS = ("ok_stream", "ok_json", "partial_reset", "partial_stall")
OUTCOMES = STATUS + BEFORE_CONTENT + ANSWERS


def _stream(*texts: tuple[str, str], finish: bool = True) -> list[bytes]:
    s = Stream(rid="chatcmpl-up").chunk({"role": "assistant", "content": ""})
    for key, text in texts:
        s.chunk({key: text})
    if finish:
        s.chunk({}, "stop").done()
    return s.events


def _completion(content: str) -> dict:
    message = {"role": "assistant", "content": content}
    return {
        "id": "chatcmpl-up",
        "object": "chat.completion",
        "created": 1,
        "model": "kimi-k2-thinking",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }


def reply_for(outcome: str, streamed: bool) -> Reply:
    """What the upstream does on one attempt."""
    if outcome in STATUS:
        code = int(outcome[1:])
        error = {"error": {"message": f"simulated {code}", "type": "server_error", "code": code}}
        reply = json_reply(error, code)
        if code == 429:
            reply.headers["retry-after"] = "0"
        return reply
    if outcome == "reset":
        return Reply(reset_before_headers=True)
    if outcome == "stall_headers":
        return Reply(header_delay=HOLD, reset_before_headers=True)
    if outcome == "ok_json" or (outcome == "ok_stream" and not streamed):
        return json_reply(_completion(ANSWER))
    if not streamed:  # a JSON body cut short: a reset, or the rest never comes
        body = orjson.dumps(_completion(PARTIAL * 20))
        if outcome == "empty":
            return json_reply(_completion(""))
        reply = Reply(pieces=[body[:40], body[40:]], framing="length")
        if outcome in ("partial_stall", "stall_first", "reasoning_stall"):
            reply.pieces, reply.content_length, reply.hold_open = [body[:40]], len(body), HOLD
            return reply
        reply.reset_after = 1
        return reply
    if outcome == "stall_first":
        return sse_reply([], first_gap=HOLD)
    if outcome == "reasoning_stall":
        return sse_reply(_stream(("reasoning_content", "Thinking."), finish=False), hold_open=HOLD)
    if outcome == "empty":
        return sse_reply(_stream())
    if outcome == "ok_stream":
        return sse_reply(_stream(("reasoning_content", "Thinking."), ("content", ANSWER)))
    events = _stream(("content", PARTIAL), finish=False)
    if outcome == "partial_reset":
        return sse_reply(events, reset_after=len(events))
    return sse_reply(events, hold_open=HOLD)


def expected(outcomes: list[str], streamed: bool, attempts: int) -> str | None:
    """The content the client gets when an attempt answers: ANSWER, PARTIAL (content, then a
    break: an error event), None when every attempt failed, EITHER when the answering attempt
    starts so late in the retry budget that a loaded machine may see it cut."""
    spent = 0.0
    for outcome in [*outcomes, "ok_stream", "ok_stream", "ok_stream"][:attempts]:
        answer = None
        if outcome in ("ok_stream", "ok_json"):
            answer = ANSWER
        elif streamed and outcome in ("partial_reset", "partial_stall"):
            answer = PARTIAL
        if answer is not None:
            return answer if spent < BUDGET - 30 else EITHER
        if not streamed and outcome in ("stall_first", "reasoning_stall"):
            outcome = "partial_stall"  # (a JSON body that stops: see reply_for)
        spent += STALL_COST.get(outcome, 0.0)
        if spent >= BUDGET - 30:
            return EITHER if spent < BUDGET else None
    return None


def raw_status_line(url: str, body: bytes) -> bytes:
    """The status line as sent (httpx normalizes nothing, but read it off the wire to be sure)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        sock.sendall(head + body)
        data = b""
        while b"\r\n" not in data:
            more = sock.recv(4096)
            if not more:
                break
            data += more
        return data.split(b"\r\n", 1)[0]


def check_answer(case: int, outcomes: list[str], streamed: bool, response: httpx.Response) -> None:
    context = (case, outcomes, streamed, response.status_code, response.content.decode(errors="replace"))
    # RFC 9110's phrase, or mitmproxy's own for the answers it makes (RFC 2616's "Gateway Time-out")
    phrases = {http.HTTPStatus(response.status_code).phrase, status_codes.RESPONSES.get(response.status_code)}
    assert response.reason_phrase in phrases, context
    want = expected(outcomes, streamed, 3)
    content_type = response.headers.get("content-type", "")
    if streamed and content_type.startswith("text/event-stream"):
        assert response.status_code == 200, context
        decoder = SSEDecoder()
        data = [e.data for e in decoder.feed(response.content) + decoder.end() if e.data is not None]
        assert data and data[-1] == b"[DONE]" and data.count(b"[DONE]") == 1, context
        chunks = [orjson.loads(d) for d in data[:-1]]
        errors = [c for c in chunks if "error" in c]
        deltas = [ch["delta"] for c in chunks if "choices" in c for ch in c["choices"]]
        assert sum(1 for d in deltas if "role" in d) <= 1, context
        assert len({c["id"] for c in chunks if "id" in c}) <= 1, context
        content = "".join(d.get("content") or "" for d in deltas)
        if want == EITHER:
            assert (content == ANSWER and not errors) or (len(errors) == 1 and errors[0] is chunks[-1]), context
        elif want == ANSWER:
            assert content == ANSWER and not errors, context
        elif want == PARTIAL:
            assert content == PARTIAL and len(errors) == 1 and errors[0] is chunks[-1], context
        else:
            assert content == "" and len(errors) == 1 and errors[0] is chunks[-1], context
        return
    assert content_type.startswith("application/json"), context
    body = response.json()
    if want == EITHER:
        assert response.status_code >= 400 or body["choices"][0]["message"]["content"] == ANSWER, context
    elif want == ANSWER:
        assert response.status_code == 200 and body["choices"][0]["message"]["content"] == ANSWER, context
    else:
        assert response.status_code >= 400 and isinstance(body["error"], dict), context
        assert body["error"]["message"], context


def cases(seed: int, count: int) -> list[tuple[list[str], bool]]:
    rand = random.Random(seed)
    out = []
    for _ in range(count):
        outcomes = [rand.choice(OUTCOMES) for _ in range(rand.randint(1, 3))]
        out.append((outcomes, rand.random() < 0.7))
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_random_attempt_outcomes_end_well_are_captured_and_counted_once(tmp_path, seed):
    plan = cases(seed, 36)
    # every single outcome as a first attempt, streamed and not, besides the random sequences
    plan += [([outcome, "ok_stream"], streamed) for outcome in OUTCOMES for streamed in (True, False)]
    seen: dict[str, int] = {}

    def respond(request) -> Reply:
        case = int(request.headers["x-case"])
        attempt = seen[request.headers["x-case"]] = seen.get(request.headers["x-case"], 0) + 1
        outcomes, streamed = plan[case]
        outcome = outcomes[attempt - 1] if attempt <= len(outcomes) else "ok_stream"
        return reply_for(outcome, streamed)

    with proxied(respond, tmp_path, OPTIONS, save_flows=False) as proxy:

        def run(case: int) -> None:
            outcomes, streamed = plan[case]
            body = {"model": "kimi-k2-thinking", "messages": [{"role": "user", "content": "hi"}], "stream": streamed}
            response = httpx.post(
                f"{proxy.url}/v1/chat/completions", json=body, headers={"x-case": str(case)}, timeout=30
            )
            check_answer(case, outcomes, streamed, response)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for future in [pool.submit(run, case) for case in range(len(plan))]:
                future.result()
        deadline = time.monotonic() + 10
        while True:
            stats = httpx.get(f"{proxy.url}{chat_exchanges.HEALTH_PATH}", timeout=5).json()
            if stats["captured"] == len(plan) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert stats["flows"] == len(plan)
        assert stats["captured"] == len(plan) and stats["capture_lost"] == 0, stats
        assert sum(stats["endings"].values()) == len(plan), stats
        assert stats["open_flows"] == 0 and stats["active_tasks"] == 0, stats
        assert "failed on" not in proxy.output, proxy.output[-3000:]
        records = [f for path in proxy.capture_files() for f in proxy.read_flows(path)]
    cases_captured = sorted(int(f.request.headers["x-case"]) for f in records)
    assert cases_captured == list(range(len(plan)))
    for flow in records:
        record = flow.metadata["kimiwire"]
        attempts = record.get("attempts") or [{"attempt": 1}]
        assert [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1)), record
        assert record["ending"], record


def test_the_reason_phrase_follows_the_status_sent(tmp_path):
    """A retried 429 answered 200 says `200 OK`, not the first attempt's `Too Many Requests`."""
    answers = iter([reply_for("s429", False), reply_for("ok_json", False)])
    with proxied(lambda request: next(answers), tmp_path, OPTIONS, save_flows=False) as proxy:
        body = orjson.dumps({"model": "kimi", "messages": [{"role": "user", "content": "hi"}], "stream": False})
        assert raw_status_line(proxy.url, body) == b"HTTP/1.1 200 OK"

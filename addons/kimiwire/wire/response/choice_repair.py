"""One choice of a streamed completion, repaired (sans-IO): its state and every streamed repair
of it, as the OpenAI SDK keeps one `ChoiceEventState` per choice. The stream repairer
(stream_repair.py) decodes events and hands each choice to its ChoiceRepairer.

Every streamed repair of a choice lives here, in `repair` (what it does to a delta) and in
`plain_readiness` / `text_passes` (when it would leave a plain text delta unchanged). The full
path's shortcut (`passes_unchanged`) and the fast path (fast_path.FastPath) ask only those two,
so neither can let a text past a repair that would have changed it; the fast path for argument
fragments (fast_fragments.py) asks `fragments_pass`.

The calls of the choice are its ChoiceCalls (choice_calls.py). The class is still a little over
400 lines because the text repairs share the choice's state: the think splitter's state decides
what the markup scanners see, text a scanner moves goes into the other field's delta, and
recovered calls join the held ones; split apart, each piece would reach into the others' fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kimiwire.wire.reasoning_keys import REASONING_KEYS
from kimiwire.wire.response.answer_in_reasoning import reasoning_as_content
from kimiwire.wire.response.choice_calls import ChoiceCalls
from kimiwire.wire.response.markup import (
    CONTENT,
    MARKER_PREFIX,
    REASONING,
    MarkupScanner,
)
from kimiwire.wire.response.reasoning_field import TEXT_KEYS, rename_reasoning
from kimiwire.wire.response.repeated_text import unrepeated
from kimiwire.wire.response.think_tags import ThinkTagSplitter
from kimiwire.wire.response.tool_call_assembly import Ending
from kimiwire.wire.response.tool_calls import (
    CUT_FINISH_REASONS,
    fix_finish_reason,
    restore_streamed_names,
)
from kimiwire.wire.servers.openrouter import details_only, reasoning_from_details

if TYPE_CHECKING:
    from kimiwire.wire.response.stream_repair import StreamRepairer

_TEXT_ORDER = {key: position for position, key in enumerate(TEXT_KEYS)}


@dataclass(frozen=True, slots=True)
class PlainReadiness:
    """The choice's answer to the fast path's one question: which plain text deltas (one text
    field, no `<`, no line ends, nothing else; fast_path.py) would go out unchanged now."""

    content: bool  # a plain content text passes
    reasoning: bool  # a plain reasoning text passes
    look: bool  # ... once `text_passes` said so for it (a repair must see every text)


class ChoiceRepairer:
    def __init__(self, index: int, stream: StreamRepairer) -> None:
        self.index = index
        self.stream = stream  # what the choices share: facts, policy, log, the chunk template, text flags
        self.tool_calls = ChoiceCalls(index, stream)
        self.needs_finish = False  # calls went out after the choice's last finish_reason
        self.finished = False  # its finish_reason has been seen
        self.finish_delivered: Any = None
        self.scanners: dict[str, MarkupScanner] = {}
        self.think: ThinkTagSplitter | None = None

    @property
    def cut_call(self) -> bool:
        """A K3 call block in the text was cut off (it went out as text)."""
        return any(scanner.cut_call for scanner in self.scanners.values())

    @property
    def calls_delivered(self) -> int:
        return self.tool_calls.delivered

    @property
    def truncated(self) -> bool:
        return self.tool_calls.truncated or self.cut_call

    # -- when a delta passes unchanged (the fast path and the full path's shortcut) ------------

    def plain_readiness(self) -> PlainReadiness | None:
        """The fast path's one question, asked after each read the full path took: None when no
        plain text may pass now (the choice is finished, a repair holds text or renames fields)."""
        stream = self.stream
        if self.finished or stream.policy.reasoning_field != "keep":
            return None
        for scanner in self.scanners.values():
            if scanner.pending or scanner.edge_close or scanner.route != scanner.field:
                return None
        # Think tags: nothing held; content only once the choice's content has begun (before
        # that it may still be reasoning), reasoning once the splitter knows reasoning has its own
        # field (the first reasoning delta tells it).
        content = True
        if stream.split_think:
            think = self.think
            if think is None or think.pending or (think.state == "start" and think.prefilled):
                return None
            content = think.state == "content"
        # With tool names declared, a name may begin at a text's end; a K3 request's reasoning is
        # remembered (the answer may turn out to be in it): the markup scanner sees every text.
        look = stream.scan_markup and (bool(stream.declared) or stream.facts.k3_model)
        return PlainReadiness(content, not stream.reasoning_to_content, look)

    def text_passes(self, key: str, text: str) -> bool:
        """A non-empty text under `key`, alone in a delta, goes out unchanged: every text repair's
        own check."""
        stream = self.stream
        if stream.split_think and key == "content" and not self.splitter().passes_unchanged(text):
            return False
        return not stream.scan_markup or self.scanner(key).passes_unchanged(text)

    def fragments_pass(self) -> bool:
        """The fragment fast path's question (fast_fragments.py): a delta holding nothing but one
        argument fragment of a held call, beside null fields, would only add to that call now.
        `repair` would also end the reasoning of the think-tag splitter (unless its content has
        begun), rename fields, and write out what a scanner moved or noted."""
        stream = self.stream
        policy = stream.policy
        if self.finished or policy.tool_stream != "whole" or policy.reasoning_field != "keep":
            return False
        think = self.think
        if stream.split_think and (think is None or think.state != "content" or think.pending or think.events):
            return False
        return not any(scanner.events or scanner.moved for scanner in self.scanners.values())

    def delivered(self, key: str, text: str) -> None:
        """`text` went out unchanged under `key`: the scanner that remembers what went out keeps it."""
        scanner = self.scanners.get(key)
        if scanner is not None and scanner.keeps_delivered:
            scanner.delivered(text)

    def passes_unchanged(self, choice: dict[str, Any]) -> bool:
        """A text-only delta with nothing to repair (most events): forwarded as it came, at once.
        What `repair` would conclude, without its bookkeeping."""
        if choice.get("finish_reason") is not None or "usage" in choice:
            return False
        delta = choice.get("delta")
        if type(delta) is not dict or delta.get("tool_calls") is not None or details_only(delta):
            return False
        stream = self.stream
        if stream.policy.reasoning_field != "keep" or (stream.reasoning_to_content and _has_reasoning(delta)):
            return False
        if stream.split_think:
            content = delta.get("content")
            splitter = self.splitter()
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if not (type(content) is str and content) and splitter.state == "start" and reasoning:
                splitter.reasoning_seen()
        for key in TEXT_KEYS:
            text = delta.get(key)
            if type(text) is str and text and not self.text_passes(key, text):
                return False
        for key in self.scanners:
            text = delta.get(key)
            if type(text) is str and text:
                self.delivered(key, text)
        return True

    # -- one choice of a chunk -------------------------------------------------------------

    def repair(self, choice: dict[str, Any], chunk: dict[str, Any], after: list[bytes]) -> tuple[bool, bool]:
        """Repair one choice of a chunk in place; events that must follow the chunk go to
        `after`. Returns (changed, keep the choice in the chunk)."""
        stream = self.stream
        policy = stream.policy
        changed = False
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = None
        else:
            if reasoning_from_details(delta, REASONING_KEYS):  # OpenRouter's reasoning_details only
                stream.note_once("reasoning.from_details", "reasoning_details", "reasoning")
                changed = True
            changed = self._texts(delta) or changed
            # `tool_calls: null` (SGLang 0.5.5 writes it in every delta) carries no call: left as sent
            if delta.get("tool_calls") is not None:
                if policy.tool_stream == "whole":
                    tool_deltas = delta.pop("tool_calls")
                    changed = True
                    if isinstance(tool_deltas, list):
                        self.tool_calls.absorb(tool_deltas)
                elif isinstance(delta["tool_calls"], list):
                    if delta["tool_calls"]:
                        self.tool_calls.passed.see(delta["tool_calls"])
                        changed |= restore_streamed_names(delta["tool_calls"], stream.facts, stream.log)
                    elif policy.finish == "fix":  # vllm #54701: `tool_calls: []` deltas
                        del delta["tool_calls"]
                        changed = True
                        stream.note_once("tool_calls.empty_dropped", [], None)
            if rename_reasoning(delta, policy.reasoning_field):
                changed = True
                stream.note_once("reasoning.field_renamed", None, policy.reasoning_field)
        usage = choice.get("usage")
        if policy.finish == "fix" and isinstance(usage, dict) and chunk.get("usage") is None:
            chunk["usage"] = usage
            changed = True
            stream.note_once("usage.hoisted", None, "usage")
        finish = choice.get("finish_reason")
        if finish is None:
            ready = self.tool_calls.take_ready()
            if not ready:
                return changed, not changed or _meaningful(choice)
            after.extend(ready)
            self.needs_finish = True
            return True, _meaningful(choice)
        # The choice is finished: held text goes into this delta, every call is complete, or
        # truncated when the output was cut (`length`).
        if not self.finished:
            self.finished = True
            stream.finished_choices += 1
        if delta is None:
            delta = choice["delta"] = {}
        ready = []
        ending = Ending.CUT if finish in CUT_FINISH_REASONS else Ending.FINISHED
        if self.finish(ending, delta, ready):
            changed = True
        fixed = fix_finish_reason(finish, self.calls_delivered > 0, None, stream.log, policy, truncated=self.truncated)
        self.needs_finish = False
        self.finish_delivered = fixed
        if not ready:
            if fixed != finish:
                choice["finish_reason"] = fixed
                changed = True
            return changed, True
        after.extend(ready)
        finish_choice: dict[str, Any] = {"index": self.index, "delta": {}, "finish_reason": fixed}
        if "usage" in choice:
            finish_choice["usage"] = choice.pop("usage")
        choice["finish_reason"] = None
        after.append(
            stream.encode(
                {
                    **stream.template,
                    "choices": [finish_choice],
                    **({"usage": chunk.pop("usage")} if chunk.get("usage") is not None else {}),
                }
            )
        )
        return True, _meaningful(choice)

    # -- text and markup -------------------------------------------------------------------

    def scanner(self, key: str) -> MarkupScanner:
        scanner = self.scanners.get(key)
        if scanner is None:
            facts = self.stream.facts
            field = CONTENT if key == "content" else REASONING
            scanner = self.scanners[key] = MarkupScanner(
                self.stream.declared,
                field,
                keep_copy=field == REASONING and facts.k3_model,
                # Content's end, and reasoning's (an engine's re-sent buffer may hold both).
                keep_tail=facts.tools_declared,
            )
            if len(self.scanners) > 1:
                # Held texts are flushed in the scanners' order: kept in TEXT_KEYS order, not in the
                # order the fields first came, which differs when the fast path took some texts.
                ordered = sorted(self.scanners.items(), key=lambda item: _TEXT_ORDER.get(item[0], len(_TEXT_ORDER)))
                self.scanners.clear()
                self.scanners.update(ordered)
        return scanner

    def _moved(self, delta: dict[str, Any]) -> bool:
        """Text a scanner moved to the other field (K3 channels) goes into this delta's field."""
        stream = self.stream
        moved_any = False
        for key, scanner in list(self.scanners.items()):
            if scanner.events:
                for kind in scanner.events:
                    stream.note_once(kind)
                    if kind == "k3.answer_in_reasoning":
                        stream.answered_in_reasoning = True
                scanner.events.clear()
            if not scanner.moved:
                continue
            text = "".join(scanner.moved)
            scanner.moved.clear()
            if not text:
                continue
            moved_any = True
            if scanner.field == REASONING:
                previous = delta.get("content")
                delta["content"] = (previous if isinstance(previous, str) else "") + text
                self.scanner("content").delivered(text)
            else:
                stream.add_reasoning(delta, text)
            to = "content" if scanner.field == REASONING else "reasoning"
            stream.log.add(f"k3.moved_to_{to}", None, key, len(text))
        return moved_any

    def splitter(self) -> ThinkTagSplitter:
        if self.think is None:
            self.think = ThinkTagSplitter(prefilled=self.stream.facts.thinking_prefilled)
        return self.think

    def _record_think(self, splitter: ThinkTagSplitter) -> None:
        for kind in splitter.events:
            self.stream.log.add(kind, None, None, None)
        splitter.events.clear()

    def _think(self, delta: dict[str, Any]) -> bool:
        """Reasoning that arrived as content with think tags goes to the reasoning field."""
        stream = self.stream
        splitter = self.splitter()
        for key in ("reasoning_content", "reasoning"):
            if isinstance(delta.get(key), str) and delta[key]:
                stream.reasoning_key = stream.reasoning_key or key
                splitter.reasoning_seen()
        reasoning, content = "", None
        if delta.get("tool_calls"):
            reasoning, content = splitter.end_reasoning()
        text = delta.get("content")
        if isinstance(text, str) and text and (content is not None or not splitter.passes_unchanged(text)):
            more_reasoning, more_content = splitter.feed(text)
            reasoning, content = reasoning + more_reasoning, (content or "") + more_content
        if content is None and not reasoning:
            return False
        self._record_think(splitter)
        if content:
            delta["content"] = content
        else:
            delta.pop("content", None)
        if reasoning:
            stream.add_reasoning(delta, reasoning)
        # The splitter gave the text back as it came (a stream's first content, no tag): the
        # delta is unchanged, and its event goes out as the upstream wrote it, not re-encoded.
        return bool(reasoning) or content != text

    def _flush_think(self, delta: dict[str, Any]) -> bool:
        splitter = self.think
        if splitter is None:
            return False
        reasoning, content = splitter.end_reasoning() if self.tool_calls.any else ("", "")
        more_reasoning, more_content = splitter.finish()
        reasoning, content = reasoning + more_reasoning, content + more_content
        self._record_think(splitter)
        if reasoning:
            self.stream.add_reasoning(delta, reasoning)
        if content and self.stream.scan_markup:
            content, calls = self.scanner("content").feed(content)
            self.tool_calls.recovered_calls("content", calls)
        if content:
            previous = delta.get("content")
            delta["content"] = (previous if isinstance(previous, str) else "") + content
        return bool(reasoning or content)

    def _texts(self, delta: dict[str, Any]) -> bool:
        stream = self.stream
        moved = self._reasoning_to_content(delta) if stream.reasoning_to_content else False
        changed = self._think(delta) if stream.split_think else False
        changed |= moved
        if not stream.scan_markup:
            return changed
        mirrored = isinstance(delta.get("reasoning_content"), str) and delta.get("reasoning_content") == delta.get(
            "reasoning"
        )
        for key in TEXT_KEYS:
            text = delta.get(key)
            if not isinstance(text, str) or not text:
                continue
            if key == "reasoning" and mirrored:  # the same text under both names: scan it once
                mirror = delta.get("reasoning_content")  # gone when the scanner held all of it
                if mirror:
                    delta["reasoning"] = mirror
                else:
                    del delta["reasoning"]
                changed |= mirror != text
                continue
            scanner = self.scanner(key)
            if scanner.edge_start and stream.reasoning_seen:  # not the start of the reasoning field
                scanner.edge_start = False
            emitted, calls = scanner.feed(text)
            if emitted == text and not calls and not scanner.moved and not scanner.events:
                continue
            changed = True
            if calls and self.tool_calls.recovered_calls(key, calls) and emitted and scanner.tail is not None:
                emitted = unrepeated(scanner, emitted, self.scanners, self.stream.log)
            if emitted:
                delta[key] = emitted
            else:
                del delta[key]
        return self._moved(delta) or changed

    def _reasoning_to_content(self, delta: dict[str, Any]) -> bool:
        """Thinking is off: the reasoning of this delta is the answer, and goes out as content."""
        moved = reasoning_as_content(delta)
        if moved:
            self.stream.log.add("reasoning.answer_when_thinking_off", None, "reasoning", len(moved))
        return bool(moved)

    def _flush_texts(self, delta: dict[str, Any]) -> bool:
        changed = self._flush_think(delta)
        for key, scanner in self.scanners.items():
            if not scanner.pending and not scanner.edge_close:
                continue
            emitted, calls = scanner.finish()
            if calls and self.tool_calls.recovered_calls(key, calls) and emitted and scanner.tail is not None:
                emitted = unrepeated(scanner, emitted, self.scanners, self.stream.log)
            if emitted:
                previous = delta.get(key)
                delta[key] = (previous if isinstance(previous, str) else "") + emitted
            changed = True
        return self._moved(delta) or changed

    # -- tool calls ------------------------------------------------------------------------

    def finish(self, ending: Ending, delta: dict[str, Any] | None, out: list[bytes]) -> bool:
        """The one way a choice ends, whatever ended it (its finish_reason, [DONE], the end of the
        body, an error): held text is flushed (into `delta`, else into an event of its own), open
        calls become complete or truncated, and every ready call goes out in order. Returns
        whether text was flushed."""
        own_delta: dict[str, Any] = {} if delta is None else delta
        flushed = self._flush_texts(own_delta)
        if flushed and delta is None and own_delta:
            out.append(self.stream.chunk_event(self.index, own_delta))
            self.stream.see_text(own_delta)
        ready = self.tool_calls.end(ending)
        if ready:
            self.needs_finish = True
            out.extend(ready)
        return flushed

    def finish_reason_at_end(self) -> str | None:
        """The stream ended: the finish_reason this choice still needs (pi-ai 1.x fails the turn
        without one: earendil-works/pi #5793, #8473), or None. `length` when a call was cut off
        (never a call to run), `tool_calls` when calls went out, else `stop`."""
        if self.finished and not self.needs_finish:
            return None
        if self.truncated:
            reason = "length"
        elif self.calls_delivered:
            reason = "tool_calls"
        else:
            reason = "stop"
        self.needs_finish = False
        self.finish_delivered = reason
        if not self.finished:
            self.finished = True
            self.stream.finished_choices += 1
        return reason

    # -- what is held ----------------------------------------------------------------------

    def release(self, out: list[bytes]) -> None:
        """Held text and every held call go out as the upstream sent them, in order."""
        stream = self.stream
        if self.think is not None:
            reasoning, content = self.think.finish()
            if reasoning:
                out.append(stream.chunk_event(self.index, {stream.reasoning_key or "reasoning_content": reasoning}))
            if content:
                out.append(stream.chunk_event(self.index, {"content": content}))
        for key, scanner in self.scanners.items():
            held = scanner.edge_close + scanner.pending
            if held:
                out.append(stream.chunk_event(self.index, {key: held}))
                stream.see_text({key: held})
                scanner.pending = scanner.edge_close = ""
        self.tool_calls.release(out)

    @property
    def holding(self) -> bool:
        return bool(self.tool_calls.assembly.pending) or any(scanner.pending for scanner in self.scanners.values())

    @property
    def buffered(self) -> int:
        held = self.tool_calls.assembly.buffered
        for scanner in self.scanners.values():
            if scanner.pending:
                held += len(scanner.pending)
        if self.think is not None:
            held += self.think.held
        return held

    @property
    def tool_section_open(self) -> bool:
        """A tool call may be under way with nothing for the client to see (StreamRepairer.tool_section_open)."""
        if self.finished:
            return False
        if self.tool_calls.open:
            return True
        return any(scanner.section_open or MARKER_PREFIX in scanner.pending for scanner in self.scanners.values())


def _has_reasoning(delta: dict[str, Any]) -> bool:
    for key in REASONING_KEYS:
        text = delta.get(key)
        if type(text) is str and text:
            return True
    return False


def _meaningful(choice: dict[str, Any]) -> bool:
    if choice.get("finish_reason") is not None or choice.get("logprobs"):
        return True
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return False
    return any(v not in (None, "") for v in delta.values()) or "role" in delta

"""One pass over a request's messages that tells which of Moonshot's message rules can change anything.

The rules (the developer role, the hygiene of `history.py`, the tool renames and the tool results in
place of `moonshot_rules.py`) each walk the whole history; on a long agent history most of them
find nothing to do. This pass reads each message once, before any of them runs, and says for each
rule whether it can act: a rule that cannot is skipped, which gives the same body and records as
running it. Whatever the pass does not recognise (a message that is not an object, `tool_calls`
that is not a list of objects, a name Moonshot refuses) leaves the rule to run as before.

Why Moonshot needs each rule is cited where the rule is defined: `compat.RULES` (the developer
role), `history.moonshot_hygiene`, `moonshot_contract.TOOL_NAME`, `moonshot_rules.tool_results_in_place`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kimiwire.wire.request.moonshot_contract import TOOL_NAME, TOOL_NAME_MAX
from kimiwire.wire.request.tool_ids import _highest_index


@dataclass(frozen=True, slots=True)
class MessageScan:
    """What the messages hold, as far as the Moonshot rules are concerned (True: the rule may act)."""

    developer_role: bool = True  # a `developer` message (compat.developer_role)
    hygiene: bool = True  # an empty assistant message or an empty text part (history.moonshot_hygiene)
    renames: bool = True  # a called tool name Moonshot refuses (tool_name_renames)
    # Some assistant tool-call message not directly followed by exactly one result per call, in the
    # calls' order, ids all strings, or a result outside such a run (tool_results_in_place). When
    # False, each result names its own call's exact id in order: the tool-id canonicalisation
    # re-points each result at its own call (the first open call with that id), so it still holds.
    results_out_of_place: bool = True
    # `history_tool_calls(messages)`, read in the same pass (the request facts); None: not read.
    history: tuple[int, list[str]] | None = None


EVERY_RULE = MessageScan()


def scan_messages(messages: list[Any]) -> MessageScan:
    """EVERY_RULE (and no history) for messages of a shape the pass leaves to the rules themselves:
    one that is not an object, `tool_calls` on a message other than an assistant's, or not a list
    of objects. Where telling would cost a rule's own work (text that is not a plain string), the
    pass says the rule may act, and the rule decides."""
    developer = hygiene = renames = out_of_place = False
    count = 0
    # The string ids of the calls, and of the results, in order: for the facts' next call index, and
    # (with each block's count of results) the results' order.
    call_ids: list[str] = []
    result_ids: list[str] = []
    names: dict[str, None] = {}  # the names the assistant messages call, in order
    pending = 0  # the results the open tool-call message still waits for
    open_calls: Any = None  # that message
    # The hygiene drops an assistant message without calls whose content is empty, and takes empty
    # text parts out of any message's list of parts; other content it leaves alone.
    for message in messages:
        if type(message) is not dict:
            return EVERY_RULE
        role = message.get("role")
        if role == "tool":
            answer_id = message.get("tool_call_id")
            if type(answer_id) is str:
                result_ids.append(answer_id)
            else:
                out_of_place = True
            if pending:
                pending -= 1
            else:  # no call left to answer: a result out of place (or an orphan)
                out_of_place = True
            if message.get("tool_calls"):
                return EVERY_RULE
            if not hygiene and isinstance(message.get("content"), list):
                hygiene = _may_hold_a_blank_part(message["content"])
            continue
        if pending:  # a block whose results are cut short (or come after this message)
            out_of_place = True
        calls = message.get("tool_calls")
        if calls:
            if role != "assistant" or type(calls) is not list:
                return EVERY_RULE
            count += len(calls)
            pending = len(calls)
            open_calls = message
            for call in calls:
                if type(call) is not dict:
                    return EVERY_RULE
                call_id = call.get("id")
                if type(call_id) is str:
                    call_ids.append(call_id)
                else:
                    out_of_place = True
                function = call.get("function")
                name = function.get("name") if type(function) is dict else None
                if type(name) is str:
                    if name:
                        names[name] = None
                    else:
                        renames = True  # an empty name, which Moonshot refuses
                elif isinstance(name, str):  # a str subclass: the rules read it themselves
                    return EVERY_RULE
            if not hygiene and isinstance(message.get("content"), list):
                hygiene = _may_hold_a_blank_part(message["content"])
            continue
        pending = 0
        if hygiene:
            developer = developer or role == "developer"
            continue
        content = message.get("content")
        if role == "assistant":  # without calls: dropped when its content is empty
            if type(content) is str:
                hygiene = not content or content[0].isspace()  # maybe blank: the hygiene decides
            else:
                hygiene = content is None or isinstance(content, list)
        else:
            developer = developer or role == "developer"
            if isinstance(content, list):
                hygiene = _may_hold_a_blank_part(content)
    answered_ids = call_ids
    if pending:
        if messages[-1] is open_calls:  # a trailing call-only message is a turn still open
            answered_ids = call_ids[: len(call_ids) - pending]
        else:
            out_of_place = True
    if answered_ids != result_ids:
        out_of_place = True
    renames = renames or not all(map(acceptable_name, names))
    # (results in place name exactly the calls' ids: their highest index is the calls')
    ids = call_ids if not out_of_place else call_ids + result_ids
    history = (max(count, _highest_index(ids) + 1), list(names))
    return MessageScan(developer, hygiene, renames, out_of_place, history)


def _may_hold_a_blank_part(parts: list[Any]) -> bool:
    """Whether a list of parts may hold a text part the hygiene takes out (text that is not a plain
    string starting with a non-space character may be blank: the hygiene decides)."""
    for part in parts:
        if type(part) is dict:
            if part.get("type") == "text":
                text = part.get("text")
                if type(text) is not str or not text or text[0].isspace():
                    return True
        elif isinstance(part, dict):  # (decoded JSON holds plain dicts only)
            return True
    return False


def acceptable_name(name: str) -> bool:
    return len(name) <= TOOL_NAME_MAX and TOOL_NAME.match(name) is not None


def renames_needed(body: dict[str, Any], scan: MessageScan) -> bool:
    """Whether `tool_name_renames` can find a name to rename: one the history calls (the scan's
    answer) or one the request declares."""
    if scan.renames:
        return True
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and not acceptable_name(name):
            return True
    return False

"""`scripts/replay CAPTURE…`: re-run the current request and response repairs offline on each
saved flow and show what would change compared with what was delivered at the time.

Exit status: 0 when every flow would be delivered the same, 1 when any differs, 2 on input it
cannot read (a missing file, a file that is not a flow file, no flows at all). A file is read up
to its last whole record; a cut or unreadable tail is reported and ignored.
"""

from __future__ import annotations

import argparse
import io as io_module
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from mitmproxy import http, io

from kimiwire.inspection.rerun import compare, compare_retried, rerun_exchange, retry_source
from kimiwire.wire.servers.policy import FLAVOR_CHOICES, POLICY_OPTIONS, Flavor, Policy, resolve_flavor


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/replay",
        description="Re-run kimiwire's repairs offline on captured flows and report what would change.",
    )
    parser.add_argument("captures", nargs="+", type=pathlib.Path, help="capture files (mitmproxy flow files)")
    parser.add_argument("--flavor", choices=FLAVOR_CHOICES, help="override the flavor recorded in each flow")
    for field, (choices, help_text) in POLICY_OPTIONS.items():
        parser.add_argument(f"--{field.replace('_', '-')}", choices=choices, help=f"override kimi_{field}: {help_text}")
    parser.add_argument("--stream-buffer-limit", type=int)
    parser.add_argument("-w", "--write", type=pathlib.Path, help="write the re-repaired flows to this flow file")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only flows that differ and the summary")
    return parser


def policy_for(flow: http.HTTPFlow, recorded: dict[str, Any], args: argparse.Namespace) -> Policy:
    base = Policy.from_dict(recorded) if recorded else Policy.build(Flavor.SELFHOSTED)
    flavor = base.flavor if args.flavor is None else resolve_flavor(args.flavor, flow.request.host)
    reasoning = args.reasoning
    if reasoning is None:
        # The recorded policy has `auto` resolved already; a new flavor re-resolves `auto`.
        reasoning = base.reasoning if args.flavor is None else "auto"
    overrides = {field: getattr(args, field) or getattr(base, field) for field in POLICY_OPTIONS}
    overrides["reasoning"] = reasoning
    return Policy.build(flavor, stream_buffer_limit=args.stream_buffer_limit or base.stream_buffer_limit, **overrides)


class UnreadableCapture(Exception):
    """A file that holds no readable flow at all."""


def _tail_problem(data: bytes) -> str:
    """What the bytes after the last whole record are: a record cut short (a full disk, a killed
    writer) or something that is not a flow record."""
    length, colon, _ = data[:13].partition(b":")
    if colon and length.isdigit() and int(length) + len(length) + 2 > len(data):
        return f"a record cut short ({len(data)} of {int(length) + len(length) + 2} bytes)"
    return f"{len(data)} bytes that are not a flow record"


def read_capture(path: pathlib.Path) -> tuple[list[http.HTTPFlow], str | None]:
    """The HTTP flows of a capture up to its last whole record, and what follows it, if anything."""
    data = path.read_bytes()
    flows: list[http.HTTPFlow] = []
    stream = io_module.BytesIO(data)
    whole = 0
    try:
        for flow in io.FlowReader(stream).stream():
            whole = stream.tell()
            if isinstance(flow, http.HTTPFlow):
                flows.append(flow)
    except Exception as exc:  # mitmproxy raises FlowReadException, ValueError, KeyError... on bad input
        if whole == 0:
            raise UnreadableCapture(f"{path}: not a mitmproxy flow file ({exc})") from None
        return flows, f"{path}: read up to byte {whole}; then {_tail_problem(data[whole:])}, ignored"
    return flows, None


def _read(paths: Sequence[pathlib.Path]) -> list[tuple[pathlib.Path, http.HTTPFlow]]:
    found: list[tuple[pathlib.Path, http.HTTPFlow]] = []
    for path in paths:
        flows, tail = read_capture(path)
        if tail:
            print(f"replay: {tail}", file=sys.stderr)
        found.extend((path, flow) for flow in flows)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        captured = _read(args.captures)
    except (OSError, UnreadableCapture) as exc:
        print(f"replay: cannot read the captures: {exc}", file=sys.stderr)
        return 2
    differing = skipped = 0
    rewritten: list[http.HTTPFlow] = []
    for number, (path, flow) in enumerate(captured, 1):
        record = flow.metadata.get("kimiwire")
        title = f"[{number}] {path.name}: {flow.request.method} {flow.request.pretty_url}"
        if not isinstance(record, dict) or "policy" not in record or flow.response is None:
            skipped += 1
            if not args.quiet:
                print(f"{title}\n    skipped: no kimiwire record or no response")
            continue
        policy = policy_for(flow, record["policy"], args)
        client_request = flow.request.get_content(strict=False) or b""
        upstream_body = flow.response.get_content(strict=False) or b""
        content_type = flow.response.headers.get("content-type", "")
        retried = retry_source(record)
        if retried is not None:  # re-run on the attempt that answered (or the last one)
            result = rerun_exchange(client_request, retried.status, retried.content_type, retried.body, policy)
        else:
            result = rerun_exchange(
                client_request,
                flow.response.status_code,
                content_type,
                upstream_body,
                policy,
                ending=record.get("ending"),
                error_event=record.get("error_event"),
            )
        old_request = record.get("upstream_request") or client_request
        old_delivered = record.get("delivered") or upstream_body
        if retried is not None:
            lines = compare_retried(old_request, result.upstream_request, old_delivered, result.delivered, retried)
        else:
            lines = compare(old_request, result.upstream_request, old_delivered, result.delivered, content_type)
        policy_text = f"{policy.flavor.value}/ids={policy.tool_ids}/reasoning={policy.reasoning}"
        if lines:
            differing += 1
            print(f"{title}\n    policy {policy_text}: DIFFERS")
            print("\n".join("    " + line for line in lines))
        elif not args.quiet:
            print(f"{title}\n    policy {policy_text}: same")
        if args.write:
            copy = flow.copy()
            new_record = dict(record)
            new_record.update(
                policy=policy.as_dict(),
                upstream_request=result.upstream_request,
                delivered=result.delivered,
                repairs=[{**r, "phase": "request"} for r in result.request_log.as_list()]
                + [{**r, "phase": "response"} for r in result.response_log.as_list()],
            )
            copy.metadata["kimiwire"] = new_record
            rewritten.append(copy)
    if args.write:
        with open(args.write, "wb") as f:
            writer = io.FlowWriter(f)
            for flow in rewritten:
                writer.add(flow)
    compared = len(captured) - skipped
    print(f"summary: {compared} flows compared, {differing} differ, {skipped} skipped")
    if not captured:
        print("replay: no flows in the given files", file=sys.stderr)
        return 2
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())

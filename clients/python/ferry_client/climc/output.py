"""Table and JSON rendering for climc.

Tables are boxed like Cloudpods' climc; list tables end with a `Total` line.
JSON is `MessageToDict` with the proto field names (enums as their proto
names, int64 as strings, per the proto3 JSON mapping), pretty-printed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import Any, TextIO

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message


def message_to_dict(msg: Message) -> dict[str, Any]:
    try:
        return json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
    except TypeError:  # protobuf < 5.26 spells the option differently
        return json_format.MessageToDict(msg, preserving_proto_field_name=True,  # type: ignore[call-arg]
                                         including_default_value_fields=True)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Message):
        return message_to_dict(obj)
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def to_json(obj: Any) -> str:
    return json.dumps(_jsonable(obj), indent=2, ensure_ascii=False)


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, timestamp_pb2.Timestamp):
        return fmt_time(value)
    return str(value)


def fmt_time(ts: timestamp_pb2.Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A boxed table; a cell may hold several lines."""
    grid = [[cell(v).split("\n") for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in grid:
        for i, lines in enumerate(row):
            widths[i] = max(widths[i], *(len(x) for x in lines))
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(values: Sequence[str]) -> str:
        return "|" + "|".join(f" {v.ljust(w)} " for v, w in zip(values, widths, strict=True)) + "|"

    out = [sep, line(headers), sep]
    for row in grid:
        height = max((len(c) for c in row), default=1)
        for k in range(height):
            out.append(line([c[k] if k < len(c) else "" for c in row]))
    out.append(sep)
    return "\n".join(out)


def render_kv(pairs: Iterable[tuple[str, Any]]) -> str:
    """A Field/Value table, as `climc *-show` prints."""
    return render_table(("Field", "Value"), [(k, v) for k, v in pairs])


class Output:
    """Where a command writes. `note` is progress text: stdout for tables,
    stderr with JSON so that stdout stays one JSON document."""

    def __init__(self, fmt: str, stdout: TextIO, stderr: TextIO) -> None:
        self.fmt = fmt
        self.stdout = stdout
        self.stderr = stderr

    @property
    def json(self) -> bool:
        return self.fmt == "json"

    def write(self, text: str) -> None:
        self.stdout.write(text if text.endswith("\n") else text + "\n")
        self.stdout.flush()

    def note(self, text: str) -> None:
        stream = self.stderr if self.json else self.stdout
        stream.write(text + "\n")
        stream.flush()

    def emit_json(self, obj: Any) -> None:
        self.write(to_json(obj))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]],
              footer: str | None = None) -> None:
        text = render_table(headers, rows)
        if footer:
            text += "\n" + footer
        self.write(text)

    def kv(self, pairs: Iterable[tuple[str, Any]]) -> None:
        self.write(render_kv(pairs))


def total_footer(count: int, total: int | None = None, next_token: str = "") -> str:
    parts = [f"Total: {total if total is not None else count}"]
    if total is not None and total != count:
        parts.append(f"Shown: {count}")
    if next_token:
        parts.append(f"Next: --page-token {next_token}")
    return "***  " + "  ".join(parts) + "  ***"

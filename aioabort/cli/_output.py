"""Turning records into JSON, tables and lines for the command line."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .._state import TaskRecord, TaskState
from .._timeline import TaskEvent
from .._types import utcnow

STATE_STYLES = {
    TaskState.PENDING: "dim",
    TaskState.STARTED: "cyan",
    TaskState.ABORTING: "yellow",
    TaskState.SUCCESS: "green",
    TaskState.FAILURE: "red",
    TaskState.ABORTED: "magenta",
}


def printable(value: object) -> str:
    """``str(value)`` safe to write to a terminal: every control or format character (ESC,
    BEL, C1 controls such as CSI, bidirectional overrides) is shown as its escape (``\\x1b``,
    ``\\u202e``) instead of being sent. Records hold text from anyone who could create one
    (a request's path, a task's message), and none of it may drive the operator's terminal.
    Keep the result out of rich markup: wrap it in :class:`rich.text.Text`."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def safe_json(data: Any, *, indent: int | None = None) -> str:
    """JSON for the terminal and for scripts: valid JSON whose C1 controls and format
    characters are written as ``\\u`` escapes (JSON already escapes C0 controls)."""
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in " \n" else _json_escape(ch) for ch in text)


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON spells an astral character as a surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def record_to_json(record: TaskRecord) -> dict[str, Any]:
    """A stable JSON form of a record (the ``--json`` output of ``tasks`` and ``show``), with
    ``ignoring_abort_for``: seconds the task has ignored its abort (guarantee G16), or null."""
    return {**record.to_dict(), "ignoring_abort_for": _ignored(record)}


def _ignored(record: TaskRecord) -> float | None:
    seconds = record.ignoring_abort()
    return None if seconds is None else round(seconds, 1)


def age(record: TaskRecord, now: datetime | None = None) -> str:
    now = now or utcnow()
    seconds = (now - record.created_at).total_seconds()
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def state_text(state: TaskState) -> Text:
    return Text(state.value, style=STATE_STYLES[state])


def state_label(record: TaskRecord) -> Text:
    """The state, and for a task that ignores its abort, for how long."""
    text = state_text(record.state)
    seconds = record.ignoring_abort()
    if seconds is not None:
        text.append(f" ignoring its abort {seconds:.0f}s", style="bold red")
    return text


def outcome_text(record: TaskRecord) -> str:
    """The reason or error, in a few words."""
    if record.error is not None:
        return str(record.error)
    if record.reason is not None:
        return str(record.reason)
    return ""


#: Columns given up, in this order, while the table is wider than the terminal (a compact
#: PROGRESS is the percentage without its bar); ``show ID`` has them all.
_DROPPED_FIRST = ("MESSAGE", "PROGRESS", "REASON / ERROR", "NAME")
#: The least width (padding and border included) a free-text column is worth showing at.
_TEXT_MIN = 11


def tasks_table(
    records: list[TaskRecord], *, title: str | None = None, width: int | None = None
) -> Table:
    """The listing as a table for a terminal ``width`` columns wide. Ids never wrap (operators
    copy them): the id column keeps its width; a column with nothing to show is left out, and
    the ones that do not fit are given up (:data:`_DROPPED_FIRST`)."""
    compact = False
    cells: dict[str, tuple[Callable[[TaskRecord], Any], dict[str, Any], int]] = {
        "NAME": (lambda r: Text(printable(r.name or "")), {}, _TEXT_MIN),
        "STATE": (state_label, {}, 11),
        "PROGRESS": (lambda r: _progress(r, compact), {"no_wrap": True}, 18),
        "MESSAGE": (lambda r: Text(printable(r.message or "")), {"overflow": "fold"}, _TEXT_MIN),
        "AGE": (age, {"justify": "right", "no_wrap": True}, 8),
        "REASON / ERROR": (lambda r: Text(printable(outcome_text(r))), {"overflow": "fold"}, 11),
    }
    shown = [
        h for h, (cell, _, _) in cells.items() if h in ("STATE", "AGE") or any(map(cell, records))
    ]
    id_width = 4 + max((len(printable(r.id)) for r in records), default=2)
    for header in _DROPPED_FIRST:
        if width is None or id_width + sum(cells[h][2] for h in shown) <= width:
            break
        if header == "PROGRESS" and header in shown and not compact:
            compact, cells["PROGRESS"] = True, (cells["PROGRESS"][0], {"no_wrap": True}, 7)
        elif header in shown:
            shown.remove(header)
    table = Table(title=title, expand=False)
    table.add_column("ID", no_wrap=True, overflow="fold")  # folds only past the terminal
    for header in shown:
        table.add_column(header, **cells[header][1])
    for record in records:
        table.add_row(Text(printable(record.id)), *(cells[h][0](record) for h in shown))
    return table


def _progress(record: TaskRecord, compact: bool) -> Any:
    """A bar and a percentage (``compact``: the percentage), or ``""`` for a task that reports
    none."""
    if record.progress is None:
        return ""
    if compact:
        return f"{record.progress:4.0%}"
    grid = Table.grid(padding=(0, 1))
    grid.add_row(
        ProgressBar(total=1.0, completed=record.progress, width=10), f"{record.progress:4.0%}"
    )
    return grid


def record_line(record: TaskRecord) -> str:
    """One plain line per record, for pipes."""
    parts = [record.id, record.state.value]
    seconds = record.ignoring_abort()
    if seconds is not None:
        parts.append(f"ignoring-abort={seconds:.0f}s")
    if record.name:
        parts.append(f"name={record.name}")
    if record.progress is not None:
        parts.append(f"progress={record.progress:.0%}")
    outcome = outcome_text(record)
    if outcome:
        parts.append(outcome)
    return printable("  ".join(parts))


def record_details(record: TaskRecord) -> list[tuple[str, str]]:
    data = record_to_json(record)
    rows: list[tuple[str, str]] = []
    for key, value in data.items():
        if value is None:
            continue
        if key == "reason":
            value = str(record.reason)
        elif key == "error":
            value = str(record.error)
        elif key == "progress":
            value = f"{record.progress:.0%}"
        elif not isinstance(value, str):  # JSON values, as --json shows them (false, not False)
            value = json.dumps(value, ensure_ascii=False)
        rows.append((key, printable(value)))
    return rows


def event_line(event: TaskEvent) -> str:
    """One event of a timeline, for a terminal: when, what, who, and the detail."""
    parts = [event.at.isoformat(timespec="milliseconds"), event.kind]
    if event.by is not None:
        parts.append(f"by {event.by}")
    if event.detail is not None:
        parts.append(event.detail)
    return printable("  ".join(parts))

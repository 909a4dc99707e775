"""``aioabort tasks`` (the listing, ``--watch``, ``--unclaimed``) and ``aioabort show``
(one record, ``--follow``)."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import NoReturn

import click
from rich.text import Text

from .._app import App
from .._backend import Unclaimed
from .._errors import TaskNotFound
from .._state import TaskRecord
from .._timeline import TaskEvent
from . import _live, _output
from ._common import (
    EXIT_NOT_FOUND,
    FOLLOW_EXIT,
    cli,
    console,
    dump,
    duration,
    label_option,
    make_app,
    run,
    run_live,
    state_option,
)


@cli.command()
@state_option("Only tasks in this state (repeatable).")
@click.option("--name", help="Only tasks with this name.")
@label_option("Only tasks with this label (repeatable: all must match).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0))
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON for scripts (one array; with --watch, one object per change).",
)
@click.option(
    "--watch",
    is_flag=True,
    help="Keep the listing live: redrawn in place on a terminal, one line per change "
    "otherwise, until Ctrl-C (exit 0).",
)
@click.option(
    "--unclaimed",
    is_flag=True,
    help="List instead the tasks nobody can run: queued longer than --unclaimed-after on a "
    "queue where no live worker registered their name, by queue and name.",
)
@click.option(
    "--unclaimed-after",
    "unclaimed_after",
    default="1m",
    show_default=True,
    callback=duration,
    metavar="DURATION",
    help="How long a task waits before it counts as unclaimed: 30s, 15m, 12h, 7d.",
)
@click.pass_context
def tasks(
    ctx: click.Context,
    states: list[str] | None,
    name: str | None,
    labels: dict[str, str],
    limit: int,
    offset: int,
    as_json: bool,
    watch: bool,
    unclaimed: bool,
    unclaimed_after: timedelta,
) -> None:
    """List tasks, newest first.

    A warning on stderr follows the listing when tasks wait that no live worker can run
    (another version's names, a queue nobody serves): `--unclaimed` lists them.
    """
    app = make_app(ctx)
    if unclaimed:
        if watch:
            raise click.UsageError("--unclaimed lists once; it does not go with --watch")
        _unclaimed(app, unclaimed_after, as_json)
        return

    async def query() -> list[TaskRecord]:
        return await app.tasks(
            states=states,
            name=name,
            labels=labels or None,
            limit=limit,
            offset=offset,
        )

    if watch:
        _watch_tasks(app, query, as_json)
        return

    async def go() -> tuple[list[TaskRecord], list[Unclaimed]]:
        async with app:
            return await query(), await app.unclaimed(queued_for=unclaimed_after)

    records, waiting = run(go)
    _print_listing(records, as_json)
    if waiting:
        _warn_unclaimed(waiting)


def _print_listing(records: list[TaskRecord], as_json: bool) -> None:
    """JSON, a table on a terminal, or a line per record."""
    if as_json:
        dump([_output.record_to_json(r) for r in records])
    elif sys.stdout.isatty():
        terminal = console()
        title = f"{len(records)} task(s)"
        terminal.print(_output.tasks_table(records, title=title, width=terminal.width))
    else:
        for record in records:
            click.echo(_output.record_line(record))


def _warn_unclaimed(waiting: list[Unclaimed]) -> None:
    """After the listing, on stderr: the queued tasks no live worker can run."""
    count = sum(group.count for group in waiting)
    names = ", ".join(
        f"{_output.printable(group.name)} on {_output.printable(group.queue)} ({group.count})"
        for group in waiting[:3]
    )
    more = f" and {len(waiting) - 3} more" if len(waiting) > 3 else ""
    click.echo(
        f"warning: {count} queued task(s) no live worker can run: {names}{more}. "
        "See `aioabort tasks --unclaimed`.",
        err=True,
    )


def _unclaimed(app: App, queued_for: timedelta, as_json: bool) -> None:
    """``tasks --unclaimed``: the groups of queued tasks nobody can run."""

    async def go() -> list[Unclaimed]:
        async with app:
            return await app.unclaimed(queued_for=queued_for)

    waiting = run(go)
    if as_json:
        dump(
            [
                {
                    "queue": g.queue,
                    "name": g.name,
                    "count": g.count,
                    "oldest": g.oldest.isoformat(),
                }
                for g in waiting
            ]
        )
        return
    if not waiting:
        click.echo("Every queued task has a live worker that can run it.")
        return
    for group in waiting:
        click.echo(
            f"{group.count:>7}  {_output.printable(group.name)}  "
            f"queue={_output.printable(group.queue)}  "
            f"oldest {group.oldest.isoformat(timespec='seconds')}"
        )
    click.echo(
        "No live worker registered these names on these queues: start one that does "
        "(a newer or older version), or abort them.",
        err=True,
    )


Query = Callable[[], Awaitable[list[TaskRecord]]]


def _watch_tasks(app: App, query: Query, as_json: bool) -> None:
    """``tasks --watch``: a table redrawn in place on a terminal, else a line per change;
    Ctrl-C exits 0."""
    if sys.stdout.isatty() and not as_json:
        _watch_table(app, query)
    else:
        _watch_lines(app, query, as_json)


def _watch_table(app: App, query: Query) -> None:
    from rich.live import Live

    with Live(console=console(), auto_refresh=False) as live:

        def draw(records: list[TaskRecord]) -> None:
            title = f"{len(records)} task(s), live: Ctrl-C to quit"
            live.update(
                _output.tasks_table(records, title=title, width=live.console.width), refresh=True
            )

        run_live(lambda: _live.watch_listing(app, query, draw), on_interrupt=0)


def _watch_lines(app: App, query: Query, as_json: bool) -> None:
    printed: dict[str, str] = {}  # by id, the last line printed

    def as_line(record: TaskRecord) -> str:
        if as_json:
            return _output.safe_json(_output.record_to_json(record))
        return _output.record_line(record)

    def lines(records: list[TaskRecord]) -> None:
        for line in _live.changed_lines(printed, records, as_line):
            click.echo(line if as_json else f"{_live.stamp()}  {line}")
        sys.stdout.flush()

    run_live(lambda: _live.watch_listing(app, query, lines), on_interrupt=0)


@cli.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Then print every change (state, progress, the abort, the end) until the task "
    "has ended; with --json, one JSON object per line, the last one terminal.",
)
@click.pass_context
def show(ctx: click.Context, task_id: str, as_json: bool, follow: bool) -> None:
    """Show one task's record and its timeline. Exits 1 if there is no such task.

    With --follow it exits when the task has ended: 0 SUCCESS, 5 FAILURE, 6 ABORTED
    (1 no such task, 3 a store error, 130 Ctrl-C).
    """
    app = make_app(ctx)
    if follow:
        _follow(app, task_id, as_json)
        return

    async def go() -> tuple[TaskRecord, list[TaskEvent]] | None:
        async with app:
            handle = app.handle(task_id)
            try:
                return await handle.record(), await handle.events()
            except TaskNotFound:
                return None

    found = run(go)
    if found is None:
        _no_such_task(task_id, as_json)
    record, events = found
    if as_json:
        dump({**_output.record_to_json(record), "events": [e.to_dict() for e in events]})
        return
    _print_details(record)
    if events:
        click.echo("timeline (oldest first)")
        for event in events:
            click.echo(f"  {_output.event_line(event)}")


def _follow(app: App, task_id: str, as_json: bool) -> None:
    printed: list[TaskRecord] = []

    def emit(record: TaskRecord) -> None:
        if as_json:
            click.echo(_output.safe_json(_output.record_to_json(record)))
        elif not printed:
            _print_details(record)
        else:
            click.echo(f"{_live.stamp()}  {_output.record_line(record)}")
        sys.stdout.flush()
        printed.append(record)

    last = run_live(lambda: _live.follow(app, task_id, emit))
    if last is None:
        _no_such_task(task_id, as_json)
    raise SystemExit(FOLLOW_EXIT[last.state])


def _print_details(record: TaskRecord) -> None:
    details = _output.record_details(record)
    width = max(len(k) for k, _ in details)
    for key, value in details:
        click.echo(f"{key:<{width}}  {value}")


def _no_such_task(task_id: str, as_json: bool) -> NoReturn:
    """``show``: exit 1, saying so (``null`` with ``--json``)."""
    if as_json:
        dump(None)
    console(err=True).print(Text(f"no task with id {_output.printable(repr(task_id))}"))
    raise SystemExit(EXIT_NOT_FOUND)

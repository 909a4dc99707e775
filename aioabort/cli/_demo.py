"""``aioabort demo``: the main job, end to end, on a throwaway SQLite file.

A worker runs in this process; report jobs are queued with ``delay()``; one is aborted while
still queued (it never runs), one is aborted from this process while it runs, one from a
separate ``aioabort abort`` process; the rest finish and return a result.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.live import Live

from .._abortable import current_scope
from .._app import App
from .._errors import AioabortError
from .._state import TaskRecord, TaskState
from .._types import utcnow
from .._worker import Worker
from . import _output
from ._common import cli

STEPS = 20


class _Narrator:
    """Prints what happens: above a live table on a terminal, as plain lines in a pipe."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self.console = console
        self.quiet = quiet
        self.live: Live | None = None

    def say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text)


def _make_app(url: str, step: float, seen_after: dict[str, float]) -> Any:
    app = App(url)

    @app.task(name="build_report")
    async def build_report(report_no: int) -> dict[str, Any]:
        """A stand-in for real work: 20 sections, each an await."""
        scope = current_scope()
        try:
            for section in range(1, STEPS + 1):
                await asyncio.sleep(step)  # the real work would await here
                await scope.report(section / STEPS, f"section {section} of {STEPS}")
        finally:
            if scope.is_aborted() and scope.reason is not None:
                delay = utcnow() - scope.reason.at
                seen_after[scope.id] = delay.total_seconds() * 1000
        return {"report": report_no, "pages": STEPS * 3}

    return app, build_report


async def _abort_from_another_process(url: str, task_id: str, narrator: _Narrator) -> None:
    command = [
        sys.executable,
        "-m",
        "aioabort",
        "--db",
        url,
        "abort",
        task_id,
        "--reason",
        "disk is filling up",
        "--by",
        "ops-console",
        "--yes",
    ]
    narrator.say(
        f"[bold]→ another process[/bold] runs [cyan]aioabort abort {task_id} "
        "--reason 'disk is filling up' --yes[/cyan]"
    )
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    narrator.say(f"  it printed [dim]{out.decode().strip()}[/dim] (exit {proc.returncode})")


async def _refresh(app: App, narrator: _Narrator) -> None:
    if narrator.live is None:
        return
    while True:
        records = sorted(await app.tasks(), key=lambda r: r.id)
        live = narrator.live
        live.update(
            _output.tasks_table(records, title="aioabort demo: live", width=live.console.width)
        )
        await asyncio.sleep(0.1)


async def _tour(
    url: str, count: int, step: float, narrator: _Narrator
) -> tuple[list[TaskRecord], dict[str, float], Any]:
    seen_after: dict[str, float] = {}
    app, build_report = _make_app(url, step, seen_after)
    ids = [f"report-{i}" for i in range(1, count + 1)]
    queued_one, here, elsewhere = ids[-1], ids[1], ids[2]
    async with app:
        worker = Worker(app, concurrency=count - 1)
        worker_task = asyncio.create_task(worker.run())
        refresher = asyncio.create_task(_refresh(app, narrator))
        try:
            await worker.started.wait()
            narrator.say(
                f"A worker runs in this process ({count - 1} at a time). Queued {count} jobs "
                "with [cyan]await build_report.delay(n)[/cyan]; each has 20 sections."
            )
            handles = {
                task_id: await build_report.apply([n], task_id=task_id)
                for n, task_id in enumerate(ids, start=1)
            }
            await asyncio.sleep(step * 2)
            narrator.say(
                f"[bold]→ this process[/bold] aborts {queued_one}, still queued: "
                f"[cyan]await handle.abort('no longer needed')[/cyan]"
            )
            await handles[queued_one].abort("no longer needed", by="demo-user")
            await asyncio.sleep(step * 1)
            await _abort_from_another_process(url, elsewhere, narrator)
            await asyncio.sleep(step * 2)
            narrator.say(
                f"[bold]→ this process[/bold] aborts {here}, running: "
                "[cyan]await handle.abort(reason='user clicked cancel')[/cyan]"
            )
            recorded = await handles[here].abort(reason="user clicked cancel", by="demo-user")
            narrator.say(f"  abort() returned {recorded}: the request is committed")
            results = {}
            for task_id, handle in handles.items():
                try:
                    results[task_id] = await handle.result(timeout=60)
                except AioabortError as exc:  # TaskAborted, shown below
                    results[task_id] = exc
        finally:
            worker.stop()
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
            await worker_task
        records = sorted(await app.tasks(), key=lambda r: r.id)
    return records, seen_after, results


def run_demo(*, count: int, keep: bool, step: float, as_json: bool) -> int:
    """Run the tour; returns 0 if every task ended as expected."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console.soft_wrap = True
    tmp = Path(tempfile.mkdtemp(prefix="aioabort-demo-"))
    url = f"sqlite:///{tmp / 'demo.db'}"
    narrator = _Narrator(console, quiet=as_json)
    narrator.say("[bold]aioabort demo[/bold]: stop running coroutines from anywhere.")
    narrator.say(f"Store: a throwaway SQLite file, [cyan]{url}[/cyan]\n")
    try:
        records, seen_after, results = _show_tour(url, count, step, narrator, as_json)
    finally:
        if keep:
            narrator.say(f"\nKept the store: {tmp / 'demo.db'} (try: aioabort --db {url} tasks)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    ok = _as_expected(records)
    if as_json:
        print(
            json.dumps(
                {
                    "ok": ok,
                    "tasks": [_output.record_to_json(r) for r in records],
                    "abort_seen_after_ms": {k: round(v, 2) for k, v in seen_after.items()},
                },
                indent=2,
            )
        )
    else:
        _what_happened(narrator, records, seen_after, results)
    return 0 if ok else 1


def _show_tour(
    url: str, count: int, step: float, narrator: _Narrator, as_json: bool
) -> tuple[list[TaskRecord], dict[str, float], Any]:
    """Run the tour under a live table on a terminal, else with a line per record at the end
    (nothing with ``--json``)."""
    console = narrator.console
    if not console.is_terminal or as_json:
        records, seen_after, results = asyncio.run(_tour(url, count, step, narrator))
        if not as_json:
            console.print()
            for record in records:
                console.print(_output.record_line(record))
        return records, seen_after, results
    with Live(console=console, refresh_per_second=10) as live:
        narrator.live = live
        records, seen_after, results = asyncio.run(_tour(url, count, step, narrator))
        final = _output.tasks_table(records, title="aioabort demo: final", width=console.width)
        live.update(final)
    narrator.live = None
    return records, seen_after, results


def _as_expected(records: list[TaskRecord]) -> bool:
    """The last job aborted while queued (it never ran), the second and third aborted while
    running, the others done."""
    ids = [r.id for r in records]
    aborted_while_queued, aborted_here, aborted_elsewhere = ids[-1], ids[1], ids[2]
    by_id = {r.id: r for r in records}
    return (
        all(by_id[i].state is TaskState.ABORTED for i in (aborted_here, aborted_elsewhere))
        and by_id[aborted_while_queued].state is TaskState.ABORTED
        and by_id[aborted_while_queued].started_at is None
        and all(
            r.state is TaskState.SUCCESS
            for r in records
            if r.id not in (aborted_here, aborted_elsewhere, aborted_while_queued)
        )
    )


def _what_happened(
    narrator: _Narrator, records: list[TaskRecord], seen_after: dict[str, float], results: Any
) -> None:
    narrator.say("\n[bold]What happened[/bold]")
    for record in records:
        reason = record.reason
        if record.state is TaskState.ABORTED and reason is not None and record.started_at is None:
            narrator.say(
                f"  {record.id}: [magenta]ABORTED[/magenta] while still queued — it never ran "
                f'("{reason.message}")'
            )
        elif record.state is TaskState.ABORTED and reason is not None:
            delay = seen_after.get(record.id)
            where = "this process" if reason.by == "demo-user" else "another process"
            after = f"; the body was cancelled {delay:.1f} ms after the request" if delay else ""
            narrator.say(
                f"  {record.id}: [magenta]ABORTED[/magenta] from {where} at "
                f'{record.progress or 0:.0%}: "{reason.message}" (by {reason.by}){after}'
            )
        else:
            narrator.say(
                f"  {record.id}: [green]{record.state.value}[/green], "
                f"handle.result() returned {results.get(record.id)!r}"
            )
    narrator.say(
        "\nEach abort was committed to the store first; the job stopped at its next await, and "
        "its record says why.\nNext: docs/quickstart.md, or [cyan]aioabort --help[/cyan]"
    )


@cli.command()
@click.option(
    "--tasks",
    "count",
    default=5,
    show_default=True,
    type=click.IntRange(4, 12),
    help="How many report jobs to run.",
)
@click.option("--keep", is_flag=True, help="Keep the SQLite file and print its path.")
@click.option(
    "--step",
    default=0.15,
    show_default=True,
    type=click.FloatRange(0.001, 2.0),
    help="Seconds per job step (each job has 20).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the final records as JSON.")
def demo(count: int, keep: bool, step: float, as_json: bool) -> None:
    """The tour: report jobs run, one is aborted here, one from another process."""
    raise SystemExit(run_demo(count=count, keep=keep, step=step, as_json=as_json))

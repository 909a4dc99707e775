"""``aioabort demo``: an end-to-end tour on a throwaway SQLite file, readable by a newcomer."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.live import Live

from .._app import App
from .._scope import abortable
from .._state import TaskRecord, TaskState
from . import _output

STEPS = 20


class _Narrator:
    """Prints what happens: above a live table on a terminal, as plain lines in a pipe."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self.console = console
        self.quiet = quiet
        self.live: Live | None = None

    def say(self, text: str) -> None:
        if self.quiet:
            return
        self.console.print(text)


async def _abort_from_another_process(url: str, task_id: str, narrator: _Narrator) -> int:
    command = [
        sys.executable,
        "-m",
        "aioabort",
        "--db",
        url,
        "abort",
        task_id,
        "--reason",
        "operator: disk is filling up",
        "--by",
        "ops-console",
        "--yes",
    ]
    narrator.say(
        f"[bold]→ another process[/bold] runs [cyan]aioabort abort {task_id} "
        "--reason 'operator: disk is filling up' --yes[/cyan]"
    )
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    narrator.say(f"  it printed: [dim]{out.decode().strip()}[/dim] (exit {proc.returncode})")
    return proc.returncode or 0


async def _tour(
    url: str, count: int, step: float, narrator: _Narrator
) -> tuple[list[TaskRecord], dict[str, float]]:
    ids = [f"report-{i}" for i in range(1, count + 1)]
    here, elsewhere = ids[1], ids[2]
    seen_after: dict[str, float] = {}

    async def job(task_id: str) -> None:
        async with abortable(task_id, name="build-report", suppress=True) as scope:
            try:
                for section in range(1, STEPS + 1):
                    await asyncio.sleep(step)  # the real work would await here
                    await scope.report(section / STEPS, f"section {section} of {STEPS}")
            finally:
                if scope.is_aborted() and scope.reason is not None:
                    delay = datetime.now(UTC) - scope.reason.at
                    seen_after[task_id] = delay.total_seconds() * 1000

    async with App(url) as app:
        narrator.say(
            f"Started {count} report jobs, each inside [cyan]async with "
            "aioabort.abortable(task_id)[/cyan]; 20 sections each."
        )
        jobs = [asyncio.create_task(job(task_id)) for task_id in ids]
        refresher = asyncio.create_task(_refresh(app, narrator))
        try:
            await asyncio.sleep(step * 5)
            narrator.say(
                f"[bold]→ this process[/bold] calls [cyan]await app.handle({here!r})"
                ".abort(reason='user clicked cancel')[/cyan]"
            )
            recorded = await app.handle(here).abort(reason="user clicked cancel", by="demo-user")
            narrator.say(f"  abort() returned {recorded}: the request is committed")
            await asyncio.sleep(step * 3)
            await _abort_from_another_process(url, elsewhere, narrator)
            await asyncio.gather(*jobs)
        finally:
            refresher.cancel()
            for task in jobs:
                task.cancel()
            await asyncio.gather(refresher, *jobs, return_exceptions=True)
        records = sorted(await app.tasks(), key=lambda r: r.id)
    return records, seen_after


async def _refresh(app: App, narrator: _Narrator) -> None:
    if narrator.live is None:
        return
    while True:
        records = sorted(await app.tasks(), key=lambda r: r.id)
        narrator.live.update(_output.tasks_table(records, title="aioabort demo: live"))
        await asyncio.sleep(0.1)


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
        if console.is_terminal and not as_json:
            with Live(console=console, refresh_per_second=10, transient=False) as live:
                narrator.live = live
                records, seen_after = asyncio.run(_tour(url, count, step, narrator))
                live.update(_output.tasks_table(records, title="aioabort demo: final"))
            narrator.live = None
        else:
            records, seen_after = asyncio.run(_tour(url, count, step, narrator))
            if not as_json:
                console.print()
                for record in records:
                    console.print(_output.record_line(record))
    finally:
        if keep:
            narrator.say(f"\nKept the store: {tmp / 'demo.db'} (try: aioabort --db {url} tasks)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    expected_aborted = {f"report-{i}" for i in (2, 3)}
    ok = all(
        (r.state is TaskState.ABORTED) == (r.id in expected_aborted)
        and (r.state in (TaskState.ABORTED, TaskState.SUCCESS))
        for r in records
    )
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
        return 0 if ok else 1
    narrator.say("\n[bold]What happened[/bold]")
    for record in records:
        if record.state is TaskState.ABORTED and record.reason is not None:
            delay = seen_after.get(record.id)
            where = "this process" if record.reason.by == "demo-user" else "another process"
            after = f", the body was cancelled {delay:.1f} ms after the request" if delay else ""
            narrator.say(
                f"  {record.id}: [magenta]ABORTED[/magenta] from {where}: "
                f'"{record.reason.message}" (by {record.reason.by}){after}'
            )
        else:
            narrator.say(f"  {record.id}: [green]{record.state.value}[/green], all 20 sections")
    narrator.say(
        "\nEach abort was recorded in the store first; the job stopped at its next await, and "
        "its record says why.\nNext: docs/quickstart.md"
    )
    return 0 if ok else 1

"""``aioabort abort``: by id or by label, with ``--wait``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click
from rich.text import Text

from .._app import App
from .._errors import TaskNotFound
from .._handle import AbortHandle
from .._state import AbortVerdict, TaskState, abort_verdict
from . import _live, _output
from ._common import (
    EXIT_ABORTED,
    EXIT_FINISHED,
    EXIT_NOT_ABORTED,
    EXIT_NOT_FOUND,
    EXIT_TIMEOUT,
    cli,
    confirm,
    console,
    label_option,
    make_app,
    run,
    run_live,
    state_option,
    yes_option,
)


@dataclass
class Result:
    """What ``abort`` did to one task; with ``--wait``, how it ended."""

    id: str
    outcome: AbortVerdict
    #: The state after the request (after ``--wait``: the one it ended in); ``None``: no task.
    state: str | None
    #: ``--wait``: still running when the wait ended; ``None``: no wait.
    running: bool | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "outcome": self.outcome, "state": self.state}
        if self.running is not None:
            data["running"] = self.running
        return data

    def text(self) -> str:
        if self.outcome == "already_finished":
            words = f"already finished ({self.state})"
        else:
            words = self.outcome.replace("_", " ")
        if self.running is not None and self.outcome != "not_found":
            words += ", still running" if self.running else f", ended {self.state}"
        return _output.printable(f"{self.id}: {words}")


def exit_code(results: Sequence[Result]) -> int:
    """The exit code of ``abort ID...``, the first that applies: 7 a task still running when
    ``--wait`` gave up, 5 a task ``--wait`` saw end otherwise than ABORTED (it finished despite
    the abort), 2 a task already finished, 1 a task not found, else 0."""
    if any(result.running for result in results):
        return EXIT_TIMEOUT
    if any(
        result.running is False
        and result.outcome in ("aborted", "already_aborting")
        and result.state != TaskState.ABORTED.value
        for result in results
    ):
        return EXIT_NOT_ABORTED
    outcomes = {result.outcome for result in results}
    if "already_finished" in outcomes:
        return EXIT_FINISHED
    return EXIT_NOT_FOUND if "not_found" in outcomes else EXIT_ABORTED


@cli.command()
@click.argument("task_ids", nargs=-1, metavar="[ID...]")
@label_option("Abort every task with these labels instead of IDs (repeatable: all must match).")
@state_option("With --label: only tasks in this state (repeatable; default PENDING and STARTED).")
@click.option("--dry-run", is_flag=True, help="With --label: list what would be aborted.")
@click.option(
    "--reason",
    default="aborted from the command line",
    show_default=True,
    help="The message stored with the abort (code 'user').",
)
@click.option("--by", help="Who asks (default: host:pid).")
@yes_option()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per id.")
@click.option(
    "--wait",
    is_flag=True,
    help="Return only when every task has really stopped (its cleanup done, its end recorded).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="With --wait: give up after this long (exit 7, naming the tasks still running).",
)
@click.pass_context
def abort(
    ctx: click.Context,
    task_ids: tuple[str, ...],
    labels: dict[str, str],
    states: list[str] | None,
    dry_run: bool,
    reason: str,
    by: str | None,
    yes: bool,
    as_json: bool,
    wait: bool,
    timeout: float | None,
) -> None:
    """Ask tasks to stop: the IDs given, or every task with --label KEY=VALUE. The request
    is recorded; each task stops at its next await.

    Exit codes: 0 every task aborted (or already aborting; with --wait: every task ended
    ABORTED; with --label: done, or nothing matched), 1 a task was not found, 2 a task had
    already finished (2 also for a usage error, such as an unknown option), 3 a store error,
    4 not confirmed, 5 (--wait) a task ended otherwise (it finished despite the abort), 7
    (--wait) the timeout passed with tasks still running, 130 interrupted (Ctrl-C).
    """
    if timeout is not None and not wait:
        raise click.UsageError("--timeout goes with --wait")
    if labels:
        if task_ids:
            raise click.UsageError("give IDs or --label, not both")
        _abort_matching(ctx, labels, states, dry_run, reason, yes, as_json)
        return
    if states or dry_run:
        raise click.UsageError("--state and --dry-run go with --label")
    if not task_ids:
        raise click.UsageError("give the IDs of the tasks to abort, or --label KEY=VALUE")
    app = make_app(ctx)
    listed = _output.printable(", ".join(task_ids))
    confirm(f"Abort {len(task_ids)} task(s): {listed}?", yes, action="abort")
    results = run_live(  # Ctrl-C (while --wait waits): exit 130
        lambda: _abort_each(app, task_ids, reason, by, wait=wait, timeout=timeout)
    )
    for result in results:
        click.echo(_output.safe_json(result.to_json()) if as_json else result.text())
    running = [result.id for result in results if result.running]
    if running:
        listed = _output.printable(", ".join(running))
        console(err=True).print(Text(f"still running after {timeout:g}s: {listed}"))
    raise SystemExit(exit_code(results))


async def _abort_each(
    app: App,
    task_ids: Sequence[str],
    reason: str,
    by: str | None,
    *,
    wait: bool,
    timeout: float | None,
) -> list[Result]:
    async with app:
        results = [await _abort_one(app.handle(task_id), reason, by) for task_id in task_ids]
        if wait:
            waiting = [result.id for result in results if result.outcome != "not_found"]
            ended, running = await _live.wait_all(app, waiting, timeout)
            for result in results:
                if result.id in ended:
                    result.state = ended[result.id].state.value
                result.running = result.id in running
    return results


async def _abort_one(handle: AbortHandle, reason: str, by: str | None) -> Result:
    recorded = await handle.abort(reason, by=by)
    try:
        state: TaskState | None = (await handle.record()).state
    except TaskNotFound:
        state = None
    return Result(handle.id, abort_verdict(recorded, state), None if state is None else state.value)


def _abort_matching(
    ctx: click.Context,
    labels: dict[str, str],
    states: list[str] | None,
    dry_run: bool,
    reason: str,
    yes: bool,
    as_json: bool,
) -> None:
    """``abort --label``: a preview (the count), a confirmation, then the bulk abort."""
    app = make_app(ctx)
    filter_text = ", ".join(f"{k}={v}" for k, v in labels.items())

    async def preview() -> list[str]:
        async with app:
            return await app.abort_many(labels=labels, states=states, dry_run=True)

    matching = run(preview)
    if dry_run or not matching:
        for task_id in matching:
            click.echo(
                _output.safe_json({"id": task_id}) if as_json else _output.printable(task_id)
            )
        if not as_json:
            console(err=True).print(
                Text(f"{len(matching)} task(s) match {filter_text}", style="dim")
            )
        return
    confirm(f"Abort {len(matching)} task(s) matching {filter_text}?", yes, action="abort")

    async def go() -> list[str]:
        async with app:
            return await app.abort_many(reason=reason, labels=labels, states=states)

    for task_id in run(go):
        shown = {"id": task_id, "outcome": "aborted"}
        click.echo(_output.safe_json(shown) if as_json else _output.printable(task_id))

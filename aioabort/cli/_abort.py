"""``aioabort abort``: by id or by label, with ``--wait``."""

from __future__ import annotations

from typing import Any

import click
from rich.text import Text

from .._errors import TaskNotFound
from .._state import TaskState
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
)


@cli.command()
@click.argument("task_ids", nargs=-1, metavar="[ID...]")
@label_option("Abort every task with these labels instead of IDs (repeatable: all must match).")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in TaskState], case_sensitive=False),
    help="With --label: only tasks in this state (repeatable; default PENDING and STARTED).",
)
@click.option("--dry-run", is_flag=True, help="With --label: list what would be aborted.")
@click.option(
    "--reason",
    default="aborted from the command line",
    show_default=True,
    help="The message stored with the abort (code 'user').",
)
@click.option("--by", help="Who asks (default: host:pid).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
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
    states: tuple[str, ...],
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

    async def go() -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        async with app:
            for task_id in task_ids:
                handle = app.handle(task_id)
                recorded = await handle.abort(reason, by=by)
                try:
                    state = (await handle.record()).state
                except TaskNotFound:
                    results.append({"id": task_id, "outcome": "not_found", "state": None})
                    continue
                outcome = (
                    "aborted"
                    if recorded
                    else "already_finished"
                    if state.is_terminal
                    else "already_aborting"
                )
                results.append({"id": task_id, "outcome": outcome, "state": state.value})
            if wait:
                waiting = [r["id"] for r in results if r["outcome"] != "not_found"]
                ended, running = await _live.wait_all(app, waiting, timeout)
                for result in results:
                    if result["id"] in ended:
                        result["state"] = ended[result["id"]].state.value
                    result["running"] = result["id"] in running
        return results

    results = run_live(go)  # Ctrl-C (while --wait waits): exit 130
    code = EXIT_ABORTED
    for result in results:
        if result["outcome"] == "not_found":
            code = max(code, EXIT_NOT_FOUND) if code != EXIT_FINISHED else code
        elif result["outcome"] == "already_finished":
            code = EXIT_FINISHED
        if as_json:
            click.echo(_output.safe_json(result))
        else:
            words = {
                "aborted": "aborted",
                "already_aborting": "already aborting",
                "already_finished": f"already finished ({result['state']})",
                "not_found": "not found",
            }[result["outcome"]]
            if wait and result["outcome"] != "not_found":
                words += ", still running" if result["running"] else f", ended {result['state']}"
            click.echo(_output.printable(f"{result['id']}: {words}"))
    if wait:
        running = [r["id"] for r in results if r.get("running")]
        if any(
            r["outcome"] in ("aborted", "already_aborting")
            and not r["running"]
            and r["state"] != TaskState.ABORTED.value
            for r in results
        ):
            code = EXIT_NOT_ABORTED
        if running:
            listed = _output.printable(", ".join(running))
            console(err=True).print(Text(f"still running after {timeout:g}s: {listed}"))
            code = EXIT_TIMEOUT
    raise SystemExit(code)


def _abort_matching(
    ctx: click.Context,
    labels: dict[str, str],
    states: tuple[str, ...],
    dry_run: bool,
    reason: str,
    yes: bool,
    as_json: bool,
) -> None:
    """``abort --label``: a preview (the count), a confirmation, then the bulk abort."""
    app = make_app(ctx)
    wanted = [s.upper() for s in states] or None
    filter_text = ", ".join(f"{k}={v}" for k, v in labels.items())

    async def preview() -> list[str]:
        async with app:
            return await app.abort_many(labels=labels, states=wanted, dry_run=True)

    matching = run(preview)
    if dry_run or not matching:
        for task_id in matching:
            click.echo(_output.safe_json({"id": task_id}) if as_json else task_id)
        if not as_json:
            console(err=True).print(
                Text(f"{len(matching)} task(s) match {filter_text}", style="dim")
            )
        return
    confirm(f"Abort {len(matching)} task(s) matching {filter_text}?", yes, action="abort")

    async def go() -> list[str]:
        async with app:
            return await app.abort_many(reason=reason, labels=labels, states=wanted)

    for task_id in run(go):
        click.echo(_output.safe_json({"id": task_id, "outcome": "aborted"}) if as_json else task_id)

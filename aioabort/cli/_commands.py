"""The click commands behind ``aioabort``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.text import Text

from .. import __version__
from .._app import App
from .._backend import Unclaimed
from .._errors import AioabortError, StoreUnavailable, TaskNotFound
from .._state import TaskRecord, TaskState
from . import _live, _output

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes of ``aioabort abort`` (also documented in docs/cli.md).
EXIT_ABORTED = 0
EXIT_NOT_FOUND = 1
EXIT_FINISHED = 2
EXIT_DECLINED = 4
#: ``abort --wait``: a task ended otherwise than ABORTED (it finished despite the abort).
EXIT_NOT_ABORTED = 5
#: ``abort --wait``: the timeout passed with tasks still running.
EXIT_TIMEOUT = 7
#: Ctrl-C.
EXIT_INTERRUPTED = 130
#: Seconds between flushes of the worker's batched log lines (warnings go out at once).
LOG_FLUSH = 0.5
#: Any aioabort error (bad URL, store unavailable...).
EXIT_ERROR = 3

STATE_NAMES = [s.value for s in TaskState]


def _console(err: bool = False) -> Console:
    return Console(stderr=err, highlight=False, soft_wrap=not sys.stdout.isatty())


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def runner() -> T:
        return await coro_fn()

    try:
        return asyncio.run(runner())
    except AioabortError as exc:
        _fail(str(exc))


def _fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit 3 (an aioabort error)."""
    _console(err=True).print(Text("error: ", style="red") + Text(_output.printable(message)))
    raise SystemExit(EXIT_ERROR)


def _make_app(ctx: click.Context, *, create: bool = False) -> App:
    """The App on ``--db``. Unless ``create`` (``db init``), a SQLite path with no file is
    refused: a mistyped path must not answer from a new, empty store."""
    url = ctx.obj.get("db") if ctx.obj else None
    if not url:
        raise click.UsageError("no store given: pass --db URL or set AIOABORT_URL")
    try:
        app = App(url)
    except AioabortError as exc:
        raise click.UsageError(str(exc)) from exc
    if not create and url.lower().startswith("sqlite:"):
        from ..backends.sqlite import parse_path

        path = parse_path(url)
        if path != ":memory:" and not os.path.exists(path):
            _fail(
                f"no SQLite store at {path!r}: the file does not exist. Check the path, or "
                "create the store with `aioabort db init` (a worker creates it too)"
            )
    return app


def _confirm(question: str, yes: bool, *, action: str) -> None:
    """Go on with ``--yes``, or when the operator says yes on a terminal; otherwise exit 4
    (without a terminal there is nobody to ask: scripts pass ``--yes``)."""
    if yes:
        return
    if not sys.stdin.isatty():
        _console(err=True).print(Text(f"refusing to {action} without confirmation: pass --yes"))
        raise SystemExit(EXIT_DECLINED)
    if not click.confirm(question):
        raise SystemExit(EXIT_DECLINED)


def _dump(data: Any) -> None:
    click.echo(_output.safe_json(data, indent=2))


def _db_option(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """``--db`` given after the subcommand: it wins over one given before it."""
    if value is not None:
        ctx.ensure_object(dict)
        ctx.obj["db"] = value


class _Commands(click.Group):
    """A group whose every command also takes ``--db`` after its name
    (``aioabort tasks --db URL`` as well as ``aioabort --db URL tasks``)."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group):
            cmd.params.append(
                click.Option(
                    ["--db"],
                    metavar="URL",
                    expose_value=False,
                    callback=_db_option,
                    help="The store, as before the command (sqlite:///path.db, postgresql://...).",
                )
            )
        super().add_command(cmd, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    envvar="AIOABORT_URL",
    metavar="URL",
    help="The store: sqlite:///path.db or postgresql://user@host/db  [env: AIOABORT_URL]",
)
@click.version_option(__version__, prog_name="aioabort")
@click.pass_context
def cli(ctx: click.Context, db: str | None) -> None:
    """Stop running coroutines from anywhere, and see why they stopped.

    Start with `aioabort demo`: a 20-second tour on a throwaway SQLite file.
    """
    ctx.ensure_object(dict)
    ctx.obj["db"] = db


def _labels(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE")
        labels[key] = text
    return labels


def _label_option(help: str) -> Callable[[F], F]:
    """``--label KEY=VALUE`` (repeatable), parsed into a dict."""
    return click.option(
        "--label", "labels", multiple=True, callback=_labels, metavar="KEY=VALUE", help=help
    )


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    """``30s``, ``15m``, ``12h``, ``7d`` as a timedelta."""
    found = _DURATION.fullmatch(value.strip())
    if found is None:
        raise click.BadParameter(f"{value!r} is not a duration like 30s, 15m, 12h or 7d")
    try:
        return timedelta(seconds=float(found.group(1)) * _UNIT_SECONDS[found.group(2)])
    except OverflowError:
        raise click.BadParameter(
            f"{value!r} is too long a duration (at most {timedelta.max.days}d)"
        ) from None


@cli.command()
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(STATE_NAMES, case_sensitive=False),
    help="Only tasks in this state (repeatable).",
)
@click.option("--name", help="Only tasks with this name.")
@_label_option("Only tasks with this label (repeatable: all must match).")
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
    callback=_duration,
    metavar="DURATION",
    help="How long a task waits before it counts as unclaimed: 30s, 15m, 12h, 7d.",
)
@click.pass_context
def tasks(
    ctx: click.Context,
    states: tuple[str, ...],
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
    app = _make_app(ctx)
    if unclaimed:
        if watch:
            raise click.UsageError("--unclaimed lists once; it does not go with --watch")
        _unclaimed(app, unclaimed_after, as_json)
        return

    async def query() -> list[TaskRecord]:
        return await app.tasks(
            states=[s.upper() for s in states] or None,
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

    records, waiting = _run(go)
    if as_json:
        _dump([_output.record_to_json(r) for r in records])
    elif sys.stdout.isatty():
        console = _console()
        title = f"{len(records)} task(s)"
        console.print(_output.tasks_table(records, title=title, width=console.width))
    else:
        for record in records:
            click.echo(_output.record_line(record))
    if waiting:
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

    waiting = _run(go)
    if as_json:
        _dump(
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


def _watch_tasks(app: App, query: Callable[[], Awaitable[list[TaskRecord]]], as_json: bool) -> None:
    render: Callable[[list[TaskRecord]], None]
    if sys.stdout.isatty() and not as_json:
        from rich.live import Live

        def title(records: list[TaskRecord]) -> str:
            return f"{len(records)} task(s), live: Ctrl-C to quit"

        with Live(console=_console(), auto_refresh=False) as live:

            def draw(records: list[TaskRecord]) -> None:
                table = _output.tasks_table(records, title=title(records), width=live.console.width)
                live.update(table, refresh=True)

            _run_live(lambda: _live.watch_listing(app, query, draw), on_interrupt=0)
        return
    printed: dict[str, str] = {}  # by id, the last line printed

    def as_line(record: TaskRecord) -> str:
        if as_json:
            return _output.safe_json(_output.record_to_json(record))
        return _output.record_line(record)

    def lines(records: list[TaskRecord]) -> None:
        for line in _live.changed_lines(printed, records, as_line):
            click.echo(line if as_json else f"{_live.stamp()}  {line}")
        sys.stdout.flush()

    render = lines
    _run_live(lambda: _live.watch_listing(app, query, render), on_interrupt=0)


def _run_live(coro_fn: Callable[[], Awaitable[T]], *, on_interrupt: int = EXIT_INTERRUPTED) -> T:
    """Like :func:`_run`, and Ctrl-C ends the view cleanly with ``on_interrupt``."""
    try:
        return _run(coro_fn)
    except KeyboardInterrupt:
        raise SystemExit(on_interrupt) from None


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
    """Show one task's record. Exits 1 if there is no such task.

    With --follow it exits when the task has ended: 0 SUCCESS, 5 FAILURE, 6 ABORTED
    (1 no such task, 3 a store error, 130 Ctrl-C).
    """
    app = _make_app(ctx)
    if follow:
        _follow(app, task_id, as_json)
        return

    async def go() -> TaskRecord | None:
        async with app:
            try:
                return await app.handle(task_id).record()
            except TaskNotFound:
                return None

    record = _run(go)
    if record is None:
        if as_json:
            _dump(None)
        _console(err=True).print(Text(f"no task with id {_output.printable(repr(task_id))}"))
        raise SystemExit(EXIT_NOT_FOUND)
    if as_json:
        _dump(_output.record_to_json(record))
        return
    _print_details(record)


@cli.command()
@click.argument("task_ids", nargs=-1, metavar="[ID...]")
@_label_option("Abort every task with these labels instead of IDs (repeatable: all must match).")
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
    app = _make_app(ctx)
    listed = _output.printable(", ".join(task_ids))
    _confirm(f"Abort {len(task_ids)} task(s): {listed}?", yes, action="abort")

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

    results = _run_live(go)  # Ctrl-C (while --wait waits): exit 130
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
            _console(err=True).print(Text(f"still running after {timeout:g}s: {listed}"))
            code = EXIT_TIMEOUT
    raise SystemExit(code)


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

    last = _run_live(lambda: _live.follow(app, task_id, emit))
    if last is None:
        if as_json:
            _dump(None)
        _console(err=True).print(Text(f"no task with id {_output.printable(repr(task_id))}"))
        raise SystemExit(EXIT_NOT_FOUND)
    raise SystemExit(_live.FOLLOW_EXIT[last.state])


def _print_details(record: TaskRecord) -> None:
    details = _output.record_details(record)
    width = max(len(k) for k, _ in details)
    for key, value in details:
        click.echo(f"{key:<{width}}  {value}")


def _load_app(target: str) -> App:
    """Import ``module:attribute`` (the current directory first on the path, as uvicorn does)."""
    import importlib

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter(
            "expected MODULE:APP, e.g. myproject.tasks:app", param_hint="TARGET"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(
            f"cannot import {module_name!r}: {exc}", param_hint="TARGET"
        ) from exc
    try:
        obj = getattr(module, attribute)
    except AttributeError:
        raise click.BadParameter(
            f"module {module_name!r} has no attribute {attribute!r}", param_hint="TARGET"
        ) from None
    if not isinstance(obj, App):
        raise click.BadParameter(
            f"{target} is a {type(obj).__name__}, not an aioabort.App", param_hint="TARGET"
        )
    return obj


@cli.command()
@click.argument("target", metavar="MODULE:APP")
@click.option(
    "--concurrency",
    "-c",
    default=10,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Tasks run at once.",
)
@click.option(
    "--queue",
    "-q",
    "queues",
    multiple=True,
    default=("default",),
    show_default=True,
    help="A queue to claim from (repeatable).",
)
@click.option(
    "--grace",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0, 3600),
    help="On SIGTERM/SIGINT, seconds running tasks get before they are aborted.",
)
@click.option(
    "--kill-after",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0, 3600),
    metavar="SECONDS",
    help="After the abort, seconds tasks get to stop before the worker gives up on them "
    "(records them FAILURE, cause 'killed', or requeues the retryable ones) and exits.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--wait-for-store",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="At start, keep trying an unreachable store this long before giving up (exit 3).",
)
@click.pass_context
def worker(
    ctx: click.Context,
    target: str,
    concurrency: int,
    queues: tuple[str, ...],
    grace: float,
    kill_after: float,
    log_level: str,
    wait_for_store: float,
) -> None:
    """Run the tasks of the App at MODULE:APP that are queued with delay().

    --db (or AIOABORT_URL) is set before MODULE is imported, for an App built with App().
    The first SIGTERM or SIGINT stops claiming and gives running tasks --grace seconds, then
    aborts them with reason code 'shutdown' and gives them --kill-after seconds to stop. A
    second signal aborts them at once and exits within seconds. Tasks that ignored their abort
    are recorded FAILURE (cause 'killed'), or back on the queue if retryable, and the process
    exits without waiting for them (exit code 130 after a second signal, 1 otherwise).
    """
    import signal

    from .._worker import Worker

    if ctx.obj.get("db"):
        os.environ["AIOABORT_URL"] = ctx.obj["db"]
    app = _load_app(target)
    # Lines are written in batches (at once for warnings and errors, else at least every
    # LOG_FLUSH seconds): a write per task line would cost the worker's throughput.
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    batched = logging.handlers.MemoryHandler(
        capacity=500, flushLevel=logging.WARNING, target=to_stderr
    )
    logging.basicConfig(level=log_level.upper(), handlers=[batched])

    async def go() -> None:
        await _open_when_reachable(app, wait_for_store)
        async with _closing(app):
            runner = Worker(
                app, concurrency=concurrency, queues=queues, grace=grace, kill_after=kill_after
            )
            loop = asyncio.get_running_loop()
            signals: list[int] = []

            def on_signal(signum: int) -> None:
                signals.append(signum)
                if len(signals) == 1:
                    runner.stop()
                else:
                    runner.kill()

            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, on_signal, signum)

            async def flush_logs() -> None:
                while True:
                    await asyncio.sleep(LOG_FLUSH)
                    batched.flush()

            flusher = asyncio.ensure_future(flush_logs())
            click.echo(
                f"aioabort worker: {app.url}, queues {', '.join(queues)}, concurrency "
                f"{concurrency}, tasks: {', '.join(sorted(app.registry)) or 'none'}",
                err=True,
            )
            try:
                await runner.run()
            finally:
                flusher.cancel()
                batched.flush()
            stats = runner.statistics()
            click.echo(
                f"aioabort worker stopped: {stats.succeeded} succeeded, {stats.failed} failed, "
                f"{stats.aborted} aborted, {stats.requeued} requeued",
                err=True,
            )
            if runner.abandoned:
                # Tasks that ignore their abort may never end, and asyncio.run() would wait
                # for them: close the App (bounded), then leave without them.
                click.echo(
                    f"aioabort worker: gave up on {len(runner.abandoned)} task(s) that ignored "
                    f"their abort: {', '.join(runner.abandoned)}",
                    err=True,
                )
                with contextlib.suppress(Exception, TimeoutError):
                    await asyncio.wait_for(app.aclose(), 10)
                sys.stderr.flush()
                sys.stdout.flush()
                os._exit(EXIT_INTERRUPTED if len(signals) > 1 else 1)

    _run(go)


async def _open_when_reachable(app: App, patience: float) -> None:
    """Open the App, retrying for ``patience`` seconds while the store is unreachable (a
    database restarting as the worker starts): a deploy's ordering must not kill workers."""
    deadline = time.monotonic() + patience
    delay = 0.2
    while True:
        try:
            await app.open()
            return
        except StoreUnavailable as exc:
            if time.monotonic() + delay > deadline:
                raise
            logging.getLogger("aioabort.worker").warning(
                "the store is unreachable; retrying",
                extra={"action": "store_unreachable", "error": str(exc)},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


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
    app = _make_app(ctx)
    wanted = [s.upper() for s in states] or None
    filter_text = ", ".join(f"{k}={v}" for k, v in labels.items())

    async def preview() -> list[str]:
        async with app:
            return await app.abort_many(labels=labels, states=wanted, dry_run=True)

    matching = _run(preview)
    if dry_run or not matching:
        for task_id in matching:
            click.echo(_output.safe_json({"id": task_id}) if as_json else task_id)
        if not as_json:
            _console(err=True).print(
                Text(f"{len(matching)} task(s) match {filter_text}", style="dim")
            )
        return
    _confirm(f"Abort {len(matching)} task(s) matching {filter_text}?", yes, action="abort")

    async def go() -> list[str]:
        async with app:
            return await app.abort_many(reason=reason, labels=labels, states=wanted)

    for task_id in _run(go):
        click.echo(_output.safe_json({"id": task_id, "outcome": "aborted"}) if as_json else task_id)


@cli.command()
@click.option(
    "--older-than",
    "older_than",
    required=True,
    callback=_duration,
    metavar="DURATION",
    help="Delete finished records that ended longer ago than this: 30s, 15m, 12h, 7d.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help='Print {"purged": N}.')
@click.pass_context
def purge(ctx: click.Context, older_than: timedelta, yes: bool, as_json: bool) -> None:
    """Delete finished records (SUCCESS, FAILURE, ABORTED) older than --older-than, with their
    abort-log rows, in batches. A running or queued task is never deleted.

    Exit codes: 0 done, 3 a store error, 4 not confirmed.
    """
    app = _make_app(ctx)
    question = f"Delete the finished records of {app.url} that ended more than {older_than} ago?"
    _confirm(_output.printable(question), yes, action="purge")

    async def go() -> int:
        async with app:
            return await app.purge(older_than=older_than)

    removed = _run(go)
    if as_json:
        _dump({"purged": removed})
    else:
        click.echo(f"purged {removed} finished record(s)")


@contextlib.asynccontextmanager
async def _closing(app: App) -> AsyncIterator[App]:
    try:
        yield app
    finally:
        await app.aclose()


@cli.group(cls=_Commands)
def db() -> None:
    """Manage the store's schema."""


@db.command("init")
@click.pass_context
def db_init(ctx: click.Context) -> None:
    """Create (or migrate) the schema. Other commands do this on first use too."""
    app = _make_app(ctx.find_root(), create=True)

    async def go() -> None:
        async with app:
            pass

    _run(go)
    click.echo(f"store ready: {app.url}")


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
    from ._demo import run_demo

    raise SystemExit(run_demo(count=count, keep=keep, step=step, as_json=as_json))

"""``aioabort worker``: import the App, run its tasks; the process's policy (signals, log
batching, waiting for the store at start, leaving without tasks that ignore their abort)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import NoReturn

import click

from .._app import App
from .._backoff import Backoff
from .._errors import StoreUnavailable
from .._worker import Worker
from . import _output
from ._common import EXIT_ABANDONED, EXIT_INTERRUPTED, EXIT_STUBBORN, cli, run

#: Seconds between flushes of the worker's batched log lines (warnings go out at once).
LOG_FLUSH = 0.5


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
    "--kill-stubborn",
    default=None,
    type=click.FloatRange(min=0, min_open=True, max=86400),
    metavar="SECONDS",
    help="Give up on a task still running SECONDS after its abort reached it: stop claiming, "
    "drain the other tasks as on SIGTERM, record it FAILURE (cause 'killed') and exit 75 for "
    "the supervisor to restart the worker. Default: never.",
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
    kill_stubborn: float | None,
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
    With --kill-stubborn, a task that ignores its abort that long ends the same way, and the
    worker drains the others and exits 75, for its supervisor to start it again.
    """
    if ctx.obj.get("db"):
        os.environ["AIOABORT_URL"] = ctx.obj["db"]
    if ctx.obj.get("notifier"):  # an App() built without notifier= reads it
        os.environ["AIOABORT_NOTIFIER"] = ctx.obj["notifier"]
    app = _load_app(target)
    logs = _batched_logs(log_level)

    async def go() -> None:
        await _open_when_reachable(app, wait_for_store)
        async with _closing(app):
            runner = Worker(
                app,
                concurrency=concurrency,
                queues=queues,
                grace=grace,
                kill_after=kill_after,
                kill_stubborn=kill_stubborn,
            )
            signals = _stop_on_signals(runner)
            async with _flushing(logs):
                click.echo(
                    f"aioabort worker: {app.url}, queues {', '.join(queues)}, concurrency "
                    f"{concurrency}, tasks: {', '.join(sorted(app.registry)) or 'none'}",
                    err=True,
                )
                await runner.run()
            stats = runner.statistics()
            click.echo(
                f"aioabort worker stopped: {stats.succeeded} succeeded, {stats.failed} failed, "
                f"{stats.aborted} aborted, {stats.requeued} requeued",
                err=True,
            )
            if runner.abandoned:
                await _leave_without(app, runner, interrupted=len(signals) > 1)

    run(go)


def _batched_logs(log_level: str) -> logging.handlers.MemoryHandler:
    """Log to stderr in batches (at once for warnings and errors, else at least every
    :data:`LOG_FLUSH` seconds, see :func:`_flushing`): a write per task line would cost the
    worker's throughput."""
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    batched = logging.handlers.MemoryHandler(
        capacity=500, flushLevel=logging.WARNING, target=to_stderr
    )
    logging.basicConfig(level=log_level.upper(), handlers=[batched])
    return batched


@contextlib.asynccontextmanager
async def _flushing(logs: logging.handlers.MemoryHandler) -> AsyncIterator[None]:
    """Flush the batched lines every :data:`LOG_FLUSH` seconds, and at the end."""

    async def flush_logs() -> None:
        while True:
            await asyncio.sleep(LOG_FLUSH)
            logs.flush()

    flusher = asyncio.ensure_future(flush_logs())
    try:
        yield
    finally:
        flusher.cancel()
        logs.flush()


def _stop_on_signals(runner: Worker) -> list[int]:
    """The first SIGTERM or SIGINT stops the worker gracefully, a second one kills its tasks;
    returns the list of the signals received (so far)."""
    signals: list[int] = []

    def on_signal(signum: int) -> None:
        signals.append(signum)
        if len(signals) == 1:
            runner.stop()
        else:
            runner.kill()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return signals


async def _leave_without(app: App, runner: Worker, *, interrupted: bool) -> NoReturn:
    """Tasks that ignore their abort may never end, and ``asyncio.run()`` would wait for them:
    close the App (bounded), then leave without them (exit 75 after --kill-stubborn gave up
    on one, 130 after a second signal, else 1)."""
    abandoned = runner.abandoned
    click.echo(
        f"aioabort worker: gave up on {len(abandoned)} task(s) that ignored "
        f"their abort: {_output.printable(', '.join(abandoned))}",
        err=True,
    )
    with contextlib.suppress(Exception, TimeoutError):
        await asyncio.wait_for(app.aclose(), 10)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(
        EXIT_STUBBORN if runner.stubborn else EXIT_INTERRUPTED if interrupted else EXIT_ABANDONED
    )


async def _open_when_reachable(app: App, patience: float) -> None:
    """Open the App, retrying for ``patience`` seconds while the store is unreachable (a
    database restarting as the worker starts): a deploy's ordering must not kill workers."""
    deadline = time.monotonic() + patience
    backoff = Backoff(0.2, 5.0)
    while True:
        try:
            await app.open()
            return
        except StoreUnavailable as exc:
            if time.monotonic() + backoff.peek() > deadline:
                raise
            logging.getLogger("aioabort.worker").warning(
                "the store is unreachable; retrying",
                extra={"action": "store_unreachable", "error": str(exc)},
            )
            await asyncio.sleep(backoff.next())


@contextlib.asynccontextmanager
async def _closing(app: App) -> AsyncIterator[App]:
    try:
        yield app
    finally:
        await app.aclose()

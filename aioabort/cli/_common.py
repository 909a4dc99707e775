"""What every command shares: the ``aioabort`` group and its ``--db`` (before or after the
command), the App on it, the exit codes, the confirmation, running a coroutine, and the
options parsed the same way everywhere (``--label``, ``--state``, durations).

Each command module adds its commands to :data:`cli`; only the helpers here are shared.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.text import Text

from .. import __version__
from .._app import App
from .._errors import AioabortError, UsageError
from .._state import TaskState
from .._types import parse_labels
from . import _output

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes (also documented in docs/cli.md). ``abort``: every task aborted.
EXIT_ABORTED = 0
#: No such task (``show``, ``abort``).
EXIT_NOT_FOUND = 1
#: ``worker``: it left without tasks that ignored their abort (after one signal).
EXIT_ABANDONED = 1
#: ``abort``: a task had already finished.
EXIT_FINISHED = 2
#: Any aioabort error (bad URL, store unavailable...).
EXIT_ERROR = 3
#: Not confirmed (``abort``, ``purge``).
EXIT_DECLINED = 4
#: ``abort --wait``: a task ended otherwise than ABORTED (it finished despite the abort).
EXIT_NOT_ABORTED = 5
#: ``show --follow``: the task ended FAILURE.
EXIT_ENDED_FAILURE = 5
#: ``show --follow``: the task ended ABORTED.
EXIT_ENDED_ABORTED = 6
#: ``abort --wait``: the timeout passed with tasks still running.
EXIT_TIMEOUT = 7
#: ``worker --kill-stubborn``: it gave up on a task that ignored its abort, drained and left,
#: for its supervisor to start it again (``EX_TEMPFAIL``).
EXIT_STUBBORN = 75
#: Ctrl-C (``worker``: a second signal).
EXIT_INTERRUPTED = 130

#: How ``show --follow`` exits, by the state the task ended in.
FOLLOW_EXIT = {
    TaskState.SUCCESS: 0,
    TaskState.FAILURE: EXIT_ENDED_FAILURE,
    TaskState.ABORTED: EXIT_ENDED_ABORTED,
}

STATE_NAMES = [s.value for s in TaskState]


def console(err: bool = False) -> Console:
    return Console(stderr=err, highlight=False, soft_wrap=not sys.stdout.isatty())


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``coro_fn()`` to its end; an aioabort error exits 3 with its message."""

    async def runner() -> T:
        return await coro_fn()

    try:
        return asyncio.run(runner())
    except AioabortError as exc:
        fail(str(exc))


def run_live(coro_fn: Callable[[], Awaitable[T]], *, on_interrupt: int = EXIT_INTERRUPTED) -> T:
    """Like :func:`run`, and Ctrl-C ends the view cleanly with ``on_interrupt``."""
    try:
        return run(coro_fn)
    except KeyboardInterrupt:
        raise SystemExit(on_interrupt) from None


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit 3 (an aioabort error)."""
    console(err=True).print(Text("error: ", style="red") + Text(_output.printable(message)))
    raise SystemExit(EXIT_ERROR)


def make_app(ctx: click.Context, *, create: bool = False) -> App:
    """The App on ``--db``. Unless ``create`` (``db init``), a SQLite path with no file is
    refused: a mistyped path must not answer from a new, empty store."""
    url = ctx.obj.get("db") if ctx.obj else None
    if not url:
        raise click.UsageError("no store given: pass --db URL or set AIOABORT_URL")
    try:
        app = App(url, notifier=ctx.obj.get("notifier"))
    except AioabortError as exc:
        raise click.UsageError(str(exc)) from exc
    if not create and url.lower().startswith("sqlite:"):
        from ..backends.sqlite import parse_path

        path = parse_path(url)
        if path != ":memory:" and not os.path.exists(path):
            fail(
                f"no SQLite store at {path!r}: the file does not exist. Check the path, or "
                "create the store with `aioabort db init` (a worker creates it too)"
            )
    return app


def yes_option() -> Callable[[F], F]:
    """``--yes``: what :func:`confirm` is told."""
    return click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")


def confirm(question: str, yes: bool, *, action: str) -> None:
    """Go on with ``--yes``, or when the operator says yes on a terminal; otherwise exit 4
    (without a terminal there is nobody to ask: scripts pass ``--yes``)."""
    if yes:
        return
    if not sys.stdin.isatty():
        console(err=True).print(Text(f"refusing to {action} without confirmation: pass --yes"))
        raise SystemExit(EXIT_DECLINED)
    if not click.confirm(question):
        raise SystemExit(EXIT_DECLINED)


def dump(data: Any) -> None:
    click.echo(_output.safe_json(data, indent=2))


def _db_option(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """``--db`` given after the subcommand: it wins over one given before it."""
    if value is not None:
        ctx.ensure_object(dict)
        ctx.obj["db"] = value


class Commands(click.Group):
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


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    envvar="AIOABORT_URL",
    metavar="URL",
    help="The store: sqlite:///path.db or postgresql://user@host/db  [env: AIOABORT_URL]",
)
@click.option(
    "--notifier",
    envvar="AIOABORT_NOTIFIER",
    metavar="URL",
    help="A push channel beside the store: redis://host:6379/0 or nats://host:4222  "
    "[env: AIOABORT_NOTIFIER]",
)
@click.version_option(__version__, prog_name="aioabort")
@click.pass_context
def cli(ctx: click.Context, db: str | None, notifier: str | None) -> None:
    """Stop running coroutines from anywhere, and see why they stopped.

    Start with `aioabort demo`: a 20-second tour on a throwaway SQLite file.
    """
    ctx.ensure_object(dict)
    ctx.obj["db"] = db
    ctx.obj["notifier"] = notifier


def _labels(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    try:
        return parse_labels(values)
    except UsageError as exc:
        raise click.BadParameter(str(exc)) from None


def label_option(help: str) -> Callable[[F], F]:
    """``--label KEY=VALUE`` (repeatable), parsed into a dict."""
    return click.option(
        "--label", "labels", multiple=True, callback=_labels, metavar="KEY=VALUE", help=help
    )


def _states(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[str] | None:
    return [value.upper() for value in values] or None


def state_option(help: str) -> Callable[[F], F]:
    """``--state NAME`` (repeatable, any case), parsed into state names, or ``None``: any."""
    return click.option(
        "--state",
        "states",
        multiple=True,
        type=click.Choice(STATE_NAMES, case_sensitive=False),
        callback=_states,
        help=help,
    )


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``12h``, ``7d`` (a decimal number allowed) as a timedelta.

    :raises ValueError: not such a duration, or longer than a timedelta holds."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"{text!r} is not a duration like 30s, 15m, 12h or 7d")
    try:
        return timedelta(seconds=float(found.group(1)) * _UNIT_SECONDS[found.group(2)])
    except OverflowError:
        raise ValueError(
            f"{text!r} is too long a duration (at most {timedelta.max.days}d)"
        ) from None


def duration(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    """The callback of a ``DURATION`` option: :func:`parse_duration`, a usage error if not."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None

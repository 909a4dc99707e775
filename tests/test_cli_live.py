"""Live views: ``show --follow``, ``abort --wait``, ``tasks --watch``: the real command in a
subprocess (a pseudo-terminal for the live table) against a task run here, on both stores."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

import aioabort
from aioabort import TaskState
from aioabort.cli._live import REDRAW_INTERVAL

from ._processes import cli, in_terminal, python, started
from .conftest import has_state, wait_until

pytestmark = pytest.mark.real_stores  # the command runs in another process


@asynccontextmanager
async def running_task(
    app: aioabort.App, task_id: str, *, cleanup: asyncio.Event | None = None
) -> AsyncIterator[tuple[asyncio.Task[None], asyncio.Queue[float | None]]]:
    """A task in a scope here; put progress values on the queue (``None``: return)."""
    steps: asyncio.Queue[float | None] = asyncio.Queue()
    entered = asyncio.Event()

    async def body() -> None:
        async with aioabort.abortable(task_id, app=app, suppress=True) as scope:
            entered.set()
            try:
                while (value := await steps.get()) is not None:
                    await scope.report(value, f"at {value:.0%}")
            finally:
                if cleanup is not None:
                    async with scope.cleanup(timeout=30):
                        await cleanup.wait()

    task = asyncio.create_task(body())
    await entered.wait()
    try:
        yield task, steps
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_show_follow_json_prints_each_change_and_exits_by_the_end(store_url: str) -> None:
    async with (
        aioabort.App(store_url) as app,
        running_task(app, "followed") as (task, steps),
        started(cli("--db", store_url, "show", "followed", "--follow", "--json")) as proc,
    ):
        lines: list[dict[str, object]] = []

        async def line() -> dict[str, object]:
            lines.append(json.loads(await proc.line()))
            return lines[-1]

        assert (await line())["state"] == "STARTED"
        for value in (0.25, 0.5, 0.75):
            await asyncio.sleep(aioabort.AbortScope.report_interval)  # written at once
            await steps.put(value)
            while (await line())["progress"] != value:  # each change, in order
                pass
        await steps.put(None)
        await task
        while (await line())["state"] != "SUCCESS":
            pass
        assert await proc.exit_code(30) == 0
        assert await proc.rest() == ""  # the terminal record was the last line
    assert [entry["progress"] for entry in lines if entry["progress"]][:3] == [0.25, 0.5, 0.75]


@pytest.mark.parametrize(
    ("end", "code"), [(TaskState.ABORTED, 6), (TaskState.FAILURE, 5)], ids=["aborted", "failed"]
)
async def test_show_follow_exit_code_says_how_it_ended(
    store_url: str, end: TaskState, code: int
) -> None:
    async with aioabort.App(store_url) as app:
        entered = asyncio.Event()

        async def body() -> None:
            async with aioabort.abortable("ends", app=app, suppress=True):
                entered.set()
                await asyncio.sleep(3600) if end is TaskState.ABORTED else await asyncio.sleep(0)
                raise ValueError("it broke")

        task = asyncio.create_task(body())
        await entered.wait()
        async with started(cli("--db", store_url, "show", "ends", "--follow")) as proc:
            first = await proc.line()
            assert first.startswith("id"), first  # the record, as `show` prints it
            if end is TaskState.ABORTED:
                await app.handle("ends").abort("stop following")
            await asyncio.gather(task, return_exceptions=True)
            assert await proc.exit_code(30) == code
            assert end.value in await proc.rest()


async def test_show_follow_of_an_unknown_task_exits_1(store_url: str) -> None:
    async with aioabort.App(store_url):
        pass
    async with started(cli("--db", store_url, "show", "nobody", "--follow")) as proc:
        assert await proc.exit_code(30) == 1


async def test_abort_wait_returns_after_the_cleanup(store_url: str) -> None:
    cleanup = asyncio.Event()
    async with (
        aioabort.App(store_url) as app,
        running_task(app, "slow-cleanup", cleanup=cleanup) as (task, _),
        started(cli("--db", store_url, "abort", "slow-cleanup", "--yes", "--wait")) as proc,
    ):
        await wait_until(lambda: has_state(app, "slow-cleanup", TaskState.ABORTING))
        assert proc.returncode is None  # recorded, but the cleanup holds the task
        cleanup.set()
        await task
        assert await proc.exit_code(30) == 0
        assert "slow-cleanup: aborted, ended ABORTED" in proc.stdout
        record = await app.handle("slow-cleanup").record()
        assert record.state is TaskState.ABORTED


async def test_abort_wait_timeout_names_the_tasks_still_running(store_url: str) -> None:
    cleanup = asyncio.Event()
    command = cli(
        "--db", store_url, "abort", "stuck-cleanup", "--yes", "--wait", "--timeout", "0.5"
    )
    async with (
        aioabort.App(store_url) as app,
        running_task(app, "stuck-cleanup", cleanup=cleanup),
        started(command) as proc,
    ):
        assert await proc.exit_code(30) == 7
        assert "still running after 0.5s: stuck-cleanup" in proc.stderr
        assert await app.handle("stuck-cleanup").state() is TaskState.ABORTING
        cleanup.set()


async def test_tasks_watch_in_a_terminal_updates_in_place(store_url: str) -> None:
    async with (
        aioabort.App(store_url) as app,
        running_task(app, "watched") as (task, steps),
        in_terminal(
            cli("--db", store_url, "tasks", "--watch"), columns=160, stdin=True
        ) as terminal,
    ):
        await terminal.shows("watched")
        await steps.put(0.5)
        await terminal.shows("50%")
        await app.handle("watched").abort("from the test")
        await task
        await terminal.shows("ABORTED")
        terminal.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert await terminal.exit_code(30) == 0
    text = terminal.text
    assert "\x1b[2J" not in text and "\x1b[?1049h" not in text  # never the whole screen
    frames = text.count("live: Ctrl-C to quit")
    # Redrawn when the listing changed (started, progress, aborting, aborted, and the safety
    # net's re-read), not at every tick of a timer.
    assert 3 <= frames <= 8, frames


async def test_tasks_watch_in_a_pipe_prints_a_line_per_change(store_url: str) -> None:
    async with (
        aioabort.App(store_url) as app,
        running_task(app, "piped") as (task, steps),
        started(cli("--db", store_url, "tasks", "--watch")) as proc,
    ):
        seen: list[str] = []

        async def until(text: str) -> None:
            while not seen or text not in seen[-1]:
                seen.append(await proc.line())

        await until("STARTED")
        await steps.put(0.5)
        await until("progress=50%")
        # A change the line does not show (50% still): the record differs, the line must not
        # be printed again. Given the watch time to read it (five redraw intervals).
        await asyncio.sleep(aioabort.AbortScope.report_interval)  # else the report waits
        await steps.put(0.501)
        await wait_until(lambda: _progress_is(app, "piped", 0.501))
        await asyncio.sleep(5 * REDRAW_INTERVAL)
        await app.handle("piped").abort("from the test")
        await task
        await until("ABORTED")
        proc.send_signal(signal.SIGINT)
        assert await proc.exit_code(30) == 0
    assert all("piped" in line for line in seen)
    shown = [line.split(None, 1)[1] for line in seen]  # without the time stamp
    assert len(shown) == len(set(shown)), seen


async def _progress_is(app: aioabort.App, task_id: str, value: float) -> bool:
    return (await app.handle(task_id).record()).progress == value


async def test_abort_wait_interrupted_exits_130(store_url: str) -> None:
    """Ctrl-C while ``abort --wait`` waits for a task that ignores its abort: exit 130, no
    traceback; the abort request stands."""
    release = asyncio.Event()
    async with aioabort.App(store_url) as app:
        entered = asyncio.Event()

        async def stubborn() -> None:
            async with aioabort.abortable("stubborn", app=app):
                entered.set()
                with anyio.CancelScope(shield=True):  # ignores its abort until released
                    await release.wait()
                await asyncio.sleep(0)  # then stops at its next await

        task = asyncio.create_task(stubborn())
        await asyncio.wait_for(entered.wait(), 10)
        try:
            async with started(
                cli("--db", store_url, "abort", "stubborn", "--yes", "--wait")
            ) as proc:
                await wait_until(lambda: has_state(app, "stubborn", TaskState.ABORTING), timeout=30)
                proc.send_signal(signal.SIGINT)
                assert await proc.exit_code(30) == 130
                assert "Traceback" not in proc.stderr
        finally:
            release.set()
            with pytest.raises(aioabort.TaskAborted):
                await asyncio.wait_for(task, 10)
        assert (await app.handle("stubborn").record()).state is TaskState.ABORTED


#: Starts the CLI with SIGINT ignored, as a shell without job control starts a background job
#: (and a test suite started from one): the ignored disposition survives exec.
_IGNORING_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.executable, [sys.executable, '-m', 'aioabort', *sys.argv[1:]])"
)


async def test_ctrl_c_stops_the_cli_even_when_sigint_was_ignored(store_url: str) -> None:
    """``aioabort`` takes SIGINT back (Python leaves an inherited "ignore" in place), so Ctrl-C
    still ends a live view."""
    async with (
        aioabort.App(store_url) as app,
        running_task(app, "ignored-sigint"),
        started(python("-c", _IGNORING_SIGINT, "--db", store_url, "tasks", "--watch")) as proc,
    ):
        assert "ignored-sigint" in await proc.line()  # running, its first listing printed
        proc.send_signal(signal.SIGINT)
        assert await proc.exit_code(10) == 0

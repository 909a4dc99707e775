"""Real subprocesses: an abort from this process stops a body in another one; a killed owner
does not leave its task STARTED."""

from __future__ import annotations

import asyncio
import signal

import pytest

import aioabort
from aioabort import TaskState

from ._processes import Process, child_scope
from .conftest import has_state, wait_until

pytestmark = pytest.mark.real_stores  # they start other processes

#: The launcher under the name tests/test_postgres.py and tests/test_pgbouncer.py import.
child = child_scope


async def read_line(proc: Process, timeout: float = 20) -> str:
    """The child's next line (for the modules that import it; :meth:`Process.line`)."""
    return await proc.line(timeout)


async def test_abort_from_another_process(app: aioabort.App, store_url: str) -> None:
    async with child_scope(store_url, "remote-1") as proc:
        assert await proc.line() == "READY"
        handle = app.handle("remote-1")
        assert await handle.state() is TaskState.STARTED
        assert await handle.abort("stop over there") is True
        assert await proc.line() == "ABORTED user stop over there"
        assert await proc.exit_code(20) == 0
    record = await handle.wait(timeout=10)
    assert record.state is TaskState.ABORTED
    assert record.reason is not None and record.reason.message == "stop over there"
    assert record.owner != app.owner


async def test_level_triggered_across_processes(app: aioabort.App, store_url: str) -> None:
    async with child_scope(store_url, "remote-2", "--swallow") as proc:
        assert await proc.line() == "READY"
        await app.handle("remote-2").abort()
        assert await proc.line() == "SWALLOWED"
        assert await proc.line() == "ABORTED user"
    assert await app.handle("remote-2").state() is TaskState.ABORTED


async def test_killed_owner_is_reaped_as_lost_keeping_the_abort(store_url: str) -> None:
    async with aioabort.App(store_url, heartbeat_interval=0.1, stale_after=1.0) as app:
        async with child_scope(store_url, "orphan", "--stubborn") as proc:
            assert await proc.line() == "READY"
            await app.handle("orphan").abort("about to kill")
            assert await proc.line() == "SWALLOWED"  # still inside its scope: ABORTING
            proc.send_signal(signal.SIGKILL)
            await proc.exit_code()
        assert await app.handle("orphan").state() is TaskState.ABORTING
        record = await app.handle("orphan").wait(timeout=15)
        assert record.state is TaskState.FAILURE
        assert record.error is not None and record.error.cause == "lost"
        assert record.reason is not None and record.reason.message == "about to kill"


async def test_killed_owner_without_abort_is_reaped(store_url: str) -> None:
    async with aioabort.App(store_url, heartbeat_interval=0.1, stale_after=1.0) as app:
        async with child_scope(store_url, "orphan-2") as proc:
            assert await proc.line() == "READY"
            proc.send_signal(signal.SIGKILL)
            await proc.exit_code()
        assert await app.handle("orphan-2").state() is TaskState.STARTED
        record = await app.handle("orphan-2").wait(timeout=15)
        assert record.state is TaskState.FAILURE
        assert record.error is not None and record.error.cause == "lost"
        assert record.reason is None


async def test_child_stopped_by_sigterm_has_no_record_left_running(store_url: str) -> None:
    """SIGTERM without a handler kills the child outright: the reaper still ends the task."""
    async with aioabort.App(store_url, heartbeat_interval=0.1, stale_after=1.0) as reaper:
        async with child_scope(store_url, "termed") as proc:
            assert await proc.line() == "READY"
            proc.send_signal(signal.SIGTERM)
            await proc.exit_code()
        record = await reaper.handle("termed").wait(timeout=15)
        assert record.state is TaskState.FAILURE


async def test_wall_clock_jumps_do_not_reap_live_owners(store_url: str) -> None:
    """Liveness is judged by heartbeat counters on a monotonic clock: a live owner whose
    recorded wall-clock time jumps an hour back (or forward) keeps its tasks."""
    async with (
        aioabort.App(store_url, heartbeat_interval=0.1, stale_after=0.5) as reaper,
        aioabort.App(store_url, heartbeat_interval=0.1, stale_after=0.5) as live,
    ):
        release = asyncio.Event()

        async def body() -> None:
            async with aioabort.abortable("survivor", app=live):
                await release.wait()

        task = asyncio.create_task(body())
        await wait_until(lambda: has_state(reaper, "survivor", TaskState.STARTED))
        for shift in (-3600.0, 3600.0):
            await _shift_last_seen(store_url, live.owner, shift)
            for _ in range(3):
                assert await reaper.reap() == []
                await asyncio.sleep(0.3)
            assert await reaper.handle("survivor").state() is TaskState.STARTED
        release.set()
        await task
        assert await reaper.handle("survivor").state() is TaskState.SUCCESS


async def _shift_last_seen(store_url: str, owner: str, seconds: float) -> None:
    if store_url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(store_url[len("sqlite:///") :], isolation_level=None)
        try:
            conn.execute(
                "UPDATE aioabort_owners SET last_seen = last_seen + ? WHERE id = ?",
                (seconds, owner),
            )
        finally:
            conn.close()
        return
    import asyncpg

    from aioabort.backends.postgres import parse_url

    dsn, schema = parse_url(store_url)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f"UPDATE {schema}.owners SET last_seen = last_seen + make_interval(secs => $1) "
            "WHERE id = $2",
            seconds,
            owner,
        )
    finally:
        await conn.close()


async def test_a_waiter_sees_every_end_of_tasks_run_in_another_process(store_url: str) -> None:
    """The abort and the end of a task run in another process often land in the same
    millisecond of the record's clock; the waiter must still wake for the end (a SQLite
    watcher that told changes apart by id and time alone missed about one in twenty)."""
    count = 60
    async with (
        child_scope(store_url, "twice", "--repeat", str(count)) as proc,
        aioabort.App(store_url) as app,
    ):
        for i in range(count):
            assert await proc.line() == f"READY {i}"
            await app.handle(f"twice-{i}").abort("again")
            record = await app.handle(f"twice-{i}").wait(timeout=10)
            assert record.state is TaskState.ABORTED
            assert await proc.line() == f"CANCELLED {i}"

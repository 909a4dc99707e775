"""Nothing stuck, nothing lost: cancellations at the edges of a scope, store writes that fail,
an App that closes while its store errors. Runs against every store."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import aioabort
from aioabort import TaskState
from aioabort._liveness import Liveness

from .conftest import fill, wait_until

RUNNING = (TaskState.STARTED, TaskState.ABORTING)


async def running_records(app: aioabort.App) -> list[str]:
    return [record.id for record in await app.tasks(states=RUNNING, limit=10_000)]


# -- a cancellation while a scope is entering ------------------------------------------------


async def test_task_group_sibling_failure_leaves_no_record_running(app: aioabort.App) -> None:
    """200 scopes entering in a TaskGroup while a sibling fails: each one that was recorded
    ends (the group's cancellation is an outer one: FAILURE), none stays STARTED."""

    async def scoped(i: int) -> None:
        async with aioabort.abortable(f"tg-{i}", app=app):
            await asyncio.sleep(60)

    async def failing() -> None:
        await asyncio.sleep(0)
        raise ValueError("a sibling failed")

    with pytest.raises(ExceptionGroup):
        async with asyncio.TaskGroup() as group:
            for i in range(200):
                group.create_task(scoped(i))
            group.create_task(failing())
    assert await running_records(app) == []
    ended = await app.tasks(states=[TaskState.FAILURE], limit=10_000)
    assert ended, "no scope got as far as recording its start"
    for record in ended:
        assert record.error is not None and record.error.cause == "cancelled"
    # and no waiter is left hanging on any of them
    for record in ended[:5]:
        await app.handle(record.id).wait(timeout=5)


@pytest.mark.parametrize("yields", [0, 1, 2, 3, 5, 8])
async def test_cancel_right_after_entering_began_leaves_no_record_running(
    app: aioabort.App, yields: int
) -> None:
    for n in range(10):
        task_id = f"entering-{yields}-{n}"

        async def enter(tid: str = task_id) -> None:
            async with aioabort.abortable(tid, app=app):
                await asyncio.sleep(60)

        task = asyncio.create_task(enter())
        for _ in range(yields):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        try:
            record = await app.handle(task_id).record()
        except aioabort.TaskNotFound:
            continue  # cancelled before anything was written
        assert record.state.is_terminal, record


async def test_abort_of_a_scope_cancelled_while_entering_does_not_hang(
    app: aioabort.App,
) -> None:
    task = asyncio.create_task(_enter_and_sleep(app, "cancelled-at-entry"))
    await wait_until(
        lambda: _exists(app, "cancelled-at-entry"), what="the start to be recorded", timeout=10
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await app.handle("cancelled-at-entry").abort("too late")
    record = await app.handle("cancelled-at-entry").wait(timeout=5)
    assert record.state.is_terminal


async def _enter_and_sleep(app: aioabort.App, task_id: str) -> None:
    async with aioabort.abortable(task_id, app=app):
        await asyncio.sleep(60)


async def _exists(app: aioabort.App, task_id: str) -> bool:
    try:
        await app.handle(task_id).record()
    except aioabort.TaskNotFound:
        return False
    return True


# -- end writes that fail are retried until they land ----------------------------------------


@contextmanager
def sqlite_write_lock(path: str) -> Iterator[sqlite3.Connection]:
    """Another connection holds the database's write lock until the block ends."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=0.1)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def sqlite_path(url: str) -> str:
    return url[len("sqlite:///") :]


@pytest.fixture
def short_sqlite_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SQLite store locked by another writer gives up within a fraction of a second."""
    from aioabort.backends.sqlite import SQLiteStore

    monkeypatch.setattr(SQLiteStore, "busy_timeout", 0.05)
    monkeypatch.setattr(SQLiteStore, "write_budget", 0.3)


@pytest.mark.usefixtures("short_sqlite_budget")
async def test_end_write_that_failed_lands_once_the_lock_is_released(sqlite_url: str) -> None:
    async with aioabort.App(sqlite_url) as app:
        with sqlite_write_lock(sqlite_path(sqlite_url)) as lock:
            lock.execute("ROLLBACK")  # the scope's start gets through...
            async with aioabort.abortable("locked-out", app=app):
                lock.execute("BEGIN IMMEDIATE")  # ...its end does not: the lock outlasts it
            assert app.redo.pending() == ["locked-out"]
            assert await app.handle("locked-out").state() is TaskState.STARTED
        # The lock is gone: the kept write lands by itself, and a waiter sees the end.
        record = await app.handle("locked-out").wait(timeout=10)
        assert record.state is TaskState.SUCCESS
        await wait_until(lambda: app.redo.pending() == [], what="the redo to forget it")


async def test_end_write_that_failed_on_a_full_disk_lands_once_there_is_room(
    small_disk: Path,
) -> None:
    url = f"sqlite:///{small_disk / 'aioabort.db'}"
    async with aioabort.App(url) as app:
        async with aioabort.abortable("disk-full", app=app):
            filler = fill(small_disk)
            for i in range(200):  # use up the WAL's spare room
                try:
                    await app.create(f"padding-{i}", name="x" * 150)
                except aioabort.StoreError:
                    break
        assert app.redo.pending() == ["disk-full"]
        assert await app.handle("disk-full").state() is TaskState.STARTED
        filler.unlink()
        record = await app.handle("disk-full").wait(timeout=10)
        assert record.state is TaskState.SUCCESS


# -- closing while the store errors ----------------------------------------------------------


@pytest.mark.usefixtures("short_sqlite_budget")
async def test_aclose_completes_when_the_store_errors(sqlite_url: str) -> None:
    app = aioabort.App(sqlite_url, shutdown_grace=5)
    await app.open()
    entered = asyncio.Event()

    async def body() -> aioabort.AbortScope:
        async with aioabort.abortable("open-at-close", app=app, suppress=True) as scope:
            entered.set()
            await asyncio.sleep(60)
        return scope

    task = asyncio.create_task(body())
    await entered.wait()
    liveness = app._liveness
    assert liveness is not None and liveness.is_running()
    with sqlite_write_lock(sqlite_path(sqlite_url)):
        await asyncio.wait_for(app.aclose(), 30)
    assert not app.is_open
    assert not liveness.is_running()
    scope = await asyncio.wait_for(task, 5)  # stopped by the local shutdown all the same
    assert scope.reason is not None and scope.reason.code == "shutdown"
    await app.aclose()  # a second close does nothing
    with pytest.raises(aioabort.AppClosed):
        _ = app.store
    # The record is still running (nothing could be written), and another App reaps it.
    async with aioabort.App(sqlite_url, heartbeat_interval=0.1, stale_after=0.3) as other:
        await wait_until(
            lambda: _is_terminal(other, "open-at-close"), what="the reaper", timeout=15
        )


async def _is_terminal(app: aioabort.App, task_id: str) -> bool:
    return (await app.handle(task_id).state()).is_terminal


# -- a remembered abort belongs to the run it was meant for ----------------------------------


def _retry_app(
    url: str, ran: list[str], hold: asyncio.Event, poll_interval: float | None = None
) -> aioabort.App:
    app = aioabort.App(url, poll_interval=poll_interval)

    @app.task(retryable=True, name="reliability.retry_me")
    async def retry_me() -> str:
        scope = aioabort.current_scope()
        ran.append(f"aborted at start: {scope.is_aborted()}")
        try:
            await asyncio.sleep(3600)
        finally:
            async with scope.cleanup(timeout=30):
                await hold.wait()  # keeps the shutdown abort on the record a while
        return "never"

    return app


@pytest.mark.parametrize("listening", [True, False], ids=["b_listens", "b_reads_it_later"])
async def test_stale_shutdown_abort_does_not_hit_the_next_run(
    store_url: str, listening: bool
) -> None:
    """Worker A shuts down; its retryable task goes back to the queue. Worker B's watcher saw
    A's shutdown abort go by (no scope of its own for it) and must not deliver it to the run
    B then claims: that run was never asked to stop. B's watcher sees it as it happens (B has
    a waiter), or, with nothing to tell, reads it only once B's worker starts, as its run
    starts."""
    ran: list[str] = []
    hold = asyncio.Event()
    a = _retry_app(store_url, ran, hold)
    b = _retry_app(store_url, ran, hold, poll_interval=0.05)
    async with a, b:
        if listening:
            await b.watcher.want_ends()  # as a waiter does: B reads every change
        handle = await a.send_task("reliability.retry_me")
        worker_a = aioabort.Worker(a, grace=0.05)
        run_a = asyncio.create_task(worker_a.run())
        await wait_until(lambda: len(ran) == 1, what="worker A to start the task")
        worker_a.stop()  # after the grace: an abort with code shutdown
        if listening:
            await wait_until(
                lambda: b.watcher.statistics().notices >= 1, what="B's watcher to see the abort"
            )
        hold.set()
        await asyncio.wait_for(run_a, 10)
        assert (await handle.record()).state is TaskState.PENDING
        worker_b = aioabort.Worker(b)
        run_b = asyncio.create_task(worker_b.run())
        try:
            await wait_until(lambda: len(ran) == 2, what="worker B to start the task")
            assert ran == ["aborted at start: False", "aborted at start: False"]
            record = await handle.record()
            assert record.state is TaskState.STARTED and record.reason is None
            assert record.attempts == 2
            assert await handle.abort("a real abort of the second run") is True
            ended = await handle.wait(timeout=10)
            assert ended.state is TaskState.ABORTED
            assert ended.reason is not None and ended.reason.code == "user"
            # Listening, B's watcher saw both aborts: the stale one went by without hitting its
            # run. Read later, the stale one is not even there: the record, requeued, no longer
            # carries it (a watcher reads the reason on the record as it is now).
            seen = 2 if listening else 1
            await wait_until(lambda: b.watcher.statistics().notices >= seen, what="the aborts")
        finally:
            worker_b.stop()
            await asyncio.wait_for(run_b, 10)


# -- a reaper that dies mid-count ------------------------------------------------------------


async def test_a_new_reaper_carries_on_the_count_of_the_one_that_died(store_url: str) -> None:
    """The lease holder dies while it counts down on a quiet owner: the next holder does not
    start the count again (a full ``stale_after`` more) but carries it on from the owner's last
    beat by the store's clock, checking the counter itself only for two beats. Counted in the
    new holder's reaping rounds: about 3, where restarting the count took ``stale_after``'s 20."""
    interval, stale_after = 0.05, 1.0  # stale after 20 beats

    def app() -> aioabort.App:
        return aioabort.App(store_url, heartbeat_interval=interval, stale_after=stale_after)

    async with app() as first, app() as second:
        await wait_until(lambda: _liveness(first).reaping or _liveness(second).reaping)
        holder, heir = (first, second) if _liveness(first).reaping else (second, first)
        holder_live, heir_live = _liveness(holder), _liveness(heir)
        async with app() as dying:
            entered = asyncio.Event()

            async def body() -> None:
                async with aioabort.abortable("orphaned", app=dying, suppress=True):
                    entered.set()
                    await asyncio.sleep(3600)

            task = asyncio.create_task(body())
            await entered.wait()
            assert not _liveness(dying).reaping
            await _liveness(dying).stop()  # its owner falls silent, as a dead process would
            silent_from = holder_live.rounds
            # The holder counts 16 of the 20 beats, then dies too (it stops beating).
            await wait_until(lambda: holder_live.rounds >= silent_from + 16, timeout=30)
            assert holder_live.reaping
            await holder_live.stop()
            rounds_before = heir_live.reaper_rounds
            record = await heir.handle("orphaned").wait(timeout=30)
            rounds = heir_live.reaper_rounds - rounds_before
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert record.state is TaskState.FAILURE
    assert record.error is not None and record.error.cause == "lost"
    assert 1 <= rounds <= 8, rounds


def _liveness(app: aioabort.App) -> Liveness:
    assert app._liveness is not None
    return app._liveness

"""Abort scopes: delivery, outcomes and races. Runs against every store."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import aioabort
from aioabort import AbortReason, TaskAborted, TaskState

from .conftest import has_state, wait_until


async def run_until_aborted(
    app: aioabort.App, task_id: str, entered: asyncio.Event, **kwargs: object
) -> aioabort.AbortScope:
    async with aioabort.abortable(task_id, app=app, **kwargs) as scope:  # type: ignore[arg-type]
        entered.set()
        await asyncio.sleep(60)
    return scope


async def test_abort_cancels_body_and_records_reason(app: aioabort.App) -> None:
    entered = asyncio.Event()
    task = asyncio.create_task(run_until_aborted(app, "t1", entered))
    await entered.wait()
    assert await app.handle("t1").state() is TaskState.STARTED
    assert await app.handle("t1").abort(reason="user pressed stop", by="alice") is True
    with pytest.raises(TaskAborted) as info:
        await asyncio.wait_for(task, 5)
    assert info.value.task_id == "t1"
    assert info.value.reason is not None
    assert (info.value.reason.code, info.value.reason.message, info.value.reason.by) == (
        "user",
        "user pressed stop",
        "alice",
    )
    record = await app.handle("t1").record()
    assert record.state is TaskState.ABORTED
    assert record.reason == info.value.reason
    assert record.finished_at is not None and record.started_at is not None


async def test_level_triggered_against_a_body_that_swallows(app: aioabort.App) -> None:
    deliveries = 0
    entered = asyncio.Event()

    async def stubborn() -> aioabort.AbortScope:
        nonlocal deliveries
        async with aioabort.abortable("stubborn", suppress=True) as scope:
            entered.set()
            for _ in range(3):
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    deliveries += 1  # swallowed: the scope must cancel again at the next await
            await asyncio.sleep(60)
        return scope

    task = asyncio.create_task(stubborn())
    await entered.wait()
    await app.handle("stubborn").abort()
    scope = await asyncio.wait_for(task, 5)
    assert deliveries == 3
    assert scope.aborted
    assert await app.handle("stubborn").state() is TaskState.ABORTED


async def test_suppress_exits_quietly_with_reason(app: aioabort.App) -> None:
    entered = asyncio.Event()
    task = asyncio.create_task(run_until_aborted(app, "quiet", entered, suppress=True))
    await entered.wait()
    await app.handle("quiet").abort(AbortReason("timeout", "too slow"))
    scope = await asyncio.wait_for(task, 5)
    assert scope.aborted is True
    assert scope.reason is not None and scope.reason.code == "timeout"


async def test_body_that_completes_is_success(app: aioabort.App) -> None:
    async with aioabort.abortable("done", name="adder") as scope:
        await asyncio.sleep(0)
    assert not scope.aborted and scope.reason is None
    record = await app.handle("done").record()
    assert (record.state, record.name, record.error) == (TaskState.SUCCESS, "adder", None)
    assert record.owner == app.owner


async def test_body_that_raises_is_failure(app: aioabort.App) -> None:
    with pytest.raises(ZeroDivisionError):
        async with aioabort.abortable("boom"):
            await asyncio.sleep(0)
            1 / 0  # noqa: B018
    record = await app.handle("boom").record()
    assert record.state is TaskState.FAILURE
    assert record.error is not None
    assert (record.error.cause, record.error.type) == ("exception", "ZeroDivisionError")


async def test_swallowed_abort_then_return_is_success_with_request_kept(
    app: aioabort.App,
) -> None:
    entered = asyncio.Event()

    async def body() -> aioabort.AbortScope:
        async with aioabort.abortable("ignores") as scope:
            entered.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                pass  # swallow, then return without another await
        return scope

    task = asyncio.create_task(body())
    await entered.wait()
    assert await app.handle("ignores").abort("stop") is True
    scope = await asyncio.wait_for(task, 5)
    assert scope.aborted is False
    assert scope.reason is not None and scope.reason.message == "stop"
    record = await app.handle("ignores").record()
    assert record.state is TaskState.SUCCESS
    assert record.reason is not None and record.reason.message == "stop"
    assert await app.handle("ignores").is_aborted() is True


async def test_outer_cancellation_passes_through_and_records_failure(app: aioabort.App) -> None:
    entered = asyncio.Event()
    task = asyncio.create_task(run_until_aborted(app, "outer", entered))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    record = await app.handle("outer").record()
    assert record.state is TaskState.FAILURE
    assert record.error is not None and record.error.cause == "cancelled"
    assert record.reason is None


async def test_anyio_outer_scope_cancel_passes_through(app: aioabort.App) -> None:
    with anyio.CancelScope() as outer:
        async with aioabort.abortable("anyio-outer"):
            outer.cancel()
            await asyncio.sleep(60)
    assert outer.cancelled_caught
    assert await app.handle("anyio-outer").state() is TaskState.FAILURE


async def test_asyncio_timeout_around_the_scope(app: aioabort.App) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            async with aioabort.abortable("timed-around"):
                await asyncio.sleep(60)
    record = await app.handle("timed-around").record()
    assert record.state is TaskState.FAILURE
    assert record.error is not None and record.error.cause == "cancelled"


async def test_asyncio_timeout_inside_the_scope(app: aioabort.App) -> None:
    async with aioabort.abortable("timed-inside") as scope:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(60)
        await asyncio.sleep(0)
    assert not scope.aborted
    assert await app.handle("timed-inside").state() is TaskState.SUCCESS


async def test_abort_inside_a_timeout_is_not_a_timeout(app: aioabort.App) -> None:
    entered = asyncio.Event()

    async def body() -> None:
        async with asyncio.timeout(30):
            await run_until_aborted(app, "in-timeout", entered)

    task = asyncio.create_task(body())
    await entered.wait()
    await app.handle("in-timeout").abort()
    with pytest.raises(TaskAborted):
        await asyncio.wait_for(task, 5)


async def test_task_group_sibling_failure_cancels_scope_as_outer(app: aioabort.App) -> None:
    entered = asyncio.Event()

    async def failing_sibling() -> None:
        await entered.wait()
        raise RuntimeError("sibling failed")

    with pytest.raises(ExceptionGroup) as info:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(run_until_aborted(app, "tg", entered))
            tg.create_task(failing_sibling())
    assert info.group_contains(RuntimeError)
    assert not info.group_contains(TaskAborted)
    assert await app.handle("tg").state() is TaskState.FAILURE


async def test_an_id_aborted_before_it_started_never_runs_its_body(
    app: aioabort.App, other_app: aioabort.App
) -> None:
    """Entering an id aborted before it started (queued then aborted, or aborted early with
    ``create=True`` from another App) raises TaskAborted before the body runs: not even the
    code before the body's first await runs. Nothing is written; the id can be tried again."""
    handle = await app.create("queued", name="job")
    assert await handle.abort("never mind") is True
    assert await other_app.handle("early").abort("too early", create=True) is True
    ran: list[str] = []
    for task_id, message in [
        ("queued", "never mind"),
        ("early", "too early"),
        ("early", "too early"),
    ]:
        with pytest.raises(TaskAborted) as info:
            async with aioabort.abortable(task_id, app=app):
                ran.append(task_id)  # a side effect before any await
                await asyncio.sleep(60)  # pragma: no cover
        assert info.value.task_id == task_id
        assert info.value.reason is not None and info.value.reason.message == message
        record = await app.handle(task_id).record()
        assert record.state is TaskState.ABORTED and record.started_at is None
    assert ran == []
    with pytest.raises(aioabort.NoCurrentScope):
        aioabort.current_scope()


async def test_suppressed_an_id_aborted_before_it_started_stops_at_the_first_await(
    app: aioabort.App,
) -> None:
    """With ``suppress=True`` entering never raises, so the body runs until its first await,
    where the abort stops it; the scope says so."""
    await app.handle("early-quiet").abort("too early", create=True)
    steps: list[str] = []
    async with aioabort.abortable("early-quiet", app=app, suppress=True) as scope:
        steps.append("before the first await")
        assert scope.is_aborted()
        await asyncio.sleep(60)
        steps.append("after it")  # pragma: no cover
    assert steps == ["before the first await"]
    assert scope.aborted and scope.reason is not None and scope.reason.message == "too early"
    assert (await app.handle("early-quiet").record()).state is TaskState.ABORTED


async def test_pending_record_is_started_by_the_scope(app: aioabort.App) -> None:
    handle = await app.create("p1")
    async with aioabort.abortable("p1"):
        assert await handle.state() is TaskState.STARTED
    assert await handle.state() is TaskState.SUCCESS


async def test_abort_after_finish_returns_false_and_writes_nothing(app: aioabort.App) -> None:
    async with aioabort.abortable("finished"):
        pass
    handle = app.handle("finished")
    before = await handle.record()
    statements = app.store.statistics().statements
    assert await handle.abort("too late") is False
    after = await handle.record()
    assert after == before
    assert after.reason is None
    # BEGIN, the guarded UPDATE, the read of the record, ROLLBACK/COMMIT, then our record() read
    assert app.store.statistics().statements - statements <= 6


async def test_abort_of_unknown_id_returns_false_and_creates_nothing(app: aioabort.App) -> None:
    assert await app.handle("nobody").abort() is False
    with pytest.raises(aioabort.TaskNotFound):
        await app.handle("nobody").state()
    assert await app.tasks() == []


async def test_two_aborts_at_once_first_reason_wins(app: aioabort.App) -> None:
    entered = asyncio.Event()
    task = asyncio.create_task(run_until_aborted(app, "twice", entered))
    await entered.wait()
    results = await asyncio.gather(*(app.handle("twice").abort(f"reason {i}") for i in range(5)))
    assert sorted(results) == [False, False, False, False, True]
    winner = f"reason {results.index(True)}"
    with pytest.raises(TaskAborted) as info:
        await asyncio.wait_for(task, 5)
    assert info.value.reason is not None and info.value.reason.message == winner
    assert (await app.handle("twice").record()).reason == info.value.reason


async def test_two_aborts_from_two_apps_first_reason_wins(
    app: aioabort.App, other_app: aioabort.App
) -> None:
    entered = asyncio.Event()
    task = asyncio.create_task(run_until_aborted(app, "race", entered))
    await entered.wait()
    a, b = await asyncio.gather(
        app.handle("race").abort("from app"), other_app.handle("race").abort("from other")
    )
    assert [a, b].count(True) == 1
    winner = "from app" if a else "from other"
    with pytest.raises(TaskAborted) as info:
        await asyncio.wait_for(task, 10)
    assert info.value.reason is not None and info.value.reason.message == winner


class _WriteBlocker:
    """Holds the store's write lock (SQLite) or the task's row lock (PostgreSQL) from a
    connection of its own, so a write aioabort starts waits until ``release()``."""

    def __init__(self, store_url: str) -> None:
        self.url = store_url
        self.held = False
        self._sqlite: Any = None
        self._pg: Any = None
        self._tx: Any = None

    async def hold(self, task_id: str) -> None:
        if self.url.startswith("sqlite"):
            import sqlite3

            self._sqlite = sqlite3.connect(self.url[len("sqlite:///") :], isolation_level=None)
            self._sqlite.execute("BEGIN IMMEDIATE")
        else:
            import asyncpg

            from aioabort.backends.postgres import parse_url

            dsn, schema = parse_url(self.url)
            self._pg = await asyncpg.connect(dsn)
            self._tx = self._pg.transaction()
            await self._tx.start()
            await self._pg.execute(
                f"SELECT 1 FROM {schema}.tasks WHERE id = $1 FOR UPDATE", task_id
            )
        self.held = True

    async def queued(self, count: int) -> bool:
        """Whether ``count`` writes wait on the lock. PostgreSQL: backends waiting on a lock
        in this database; SQLite: after five loop turns (its writes run one at a time, in
        order, on the store's own thread, so a write handed to it first commits first)."""
        if self._pg is None:
            for _ in range(5):  # loop turns, not time: the write -> its thread's queue
                await asyncio.sleep(0)
            return True
        waiting = await self._pg.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return bool(waiting >= count)

    async def release(self) -> None:
        if self._sqlite is not None:
            self._sqlite.execute("COMMIT")
            self._sqlite.close()
        if self._pg is not None:
            await self._tx.commit()
            await self._pg.close()


@pytest.mark.real_stores  # it holds a lock of the SQL stores from outside
async def test_abort_during_the_final_write(app: aioabort.App, store_url: str) -> None:
    """The body returned; its SUCCESS write is in flight when an abort arrives."""
    blocker = _WriteBlocker(store_url)

    async def body() -> aioabort.AbortScope:
        async with aioabort.abortable("final-write", suppress=True) as scope:
            await blocker.hold("final-write")  # the final write will wait on this lock
        return scope

    task = asyncio.create_task(body())
    try:
        await wait_until(lambda: blocker.held, what="the lock to be taken")
        await wait_until(lambda: blocker.queued(1), what="the end write to wait on the lock")
        # The abort comes after: behind the end write on the row lock, or on the pool's
        # connection the end write holds; either way it runs after the end commits.
        abort = asyncio.create_task(app.handle("final-write").abort("late"))
        for _ in range(5):  # loop turns, not time: abort() -> its shielded store call -> queued
            await asyncio.sleep(0)
        assert not task.done() and not abort.done()  # both wait on the lock
    finally:
        await blocker.release()
    scope = await asyncio.wait_for(task, 10)
    recorded = await asyncio.wait_for(abort, 10)
    record = await app.handle("final-write").record()
    # The finish was queued first, so it commits first: SUCCESS, and the late abort is refused.
    assert record.state is TaskState.SUCCESS
    assert recorded is False and record.reason is None
    assert scope.aborted is False


async def test_abort_racing_completion_never_overwrites(app: aioabort.App) -> None:
    """Many bodies finishing while aborts land: every record ends consistent."""
    ids = [f"race-{i}" for i in range(40)]

    async def body(task_id: str) -> bool:
        try:
            async with aioabort.abortable(task_id):
                await asyncio.sleep(0.001 * (int(task_id.split("-")[1]) % 5))
        except TaskAborted:
            return True
        return False

    tasks = [asyncio.create_task(body(i)) for i in ids]
    await wait_until(lambda: len(app.watcher.scopes()) > 0 or all(t.done() for t in tasks))
    recorded = await asyncio.gather(*(app.handle(i).abort("race") for i in ids))
    aborted = await asyncio.gather(*tasks)
    for task_id, was_recorded, was_aborted in zip(ids, recorded, aborted, strict=True):
        record = await app.handle(task_id).record()
        assert record.state.is_terminal
        if was_aborted:
            assert record.state is TaskState.ABORTED and was_recorded
        if record.state is TaskState.SUCCESS:
            assert not was_aborted
            assert (record.reason is not None) == was_recorded
        if not was_recorded:
            assert record.reason is None


async def test_is_aborted_from_a_thread(app: aioabort.App) -> None:
    entered = threading.Event()
    loops = 0

    def blocking_work() -> bool:
        nonlocal loops
        scope = aioabort.current_scope()  # the context is copied into the thread
        entered.set()
        while not scope.is_aborted():
            loops += 1
            threading.Event().wait(0.001)
        return True

    async def body() -> aioabort.AbortScope:
        async with aioabort.abortable("threaded", suppress=True) as scope:
            saw = await anyio.to_thread.run_sync(blocking_work)
            assert saw
            await scope.checkpoint()
        return scope

    task = asyncio.create_task(body())
    await wait_until(entered.is_set, what="the thread to start")
    await app.handle("threaded").abort()
    scope = await asyncio.wait_for(task, 5)
    assert scope.aborted and loops > 0


async def test_checkpoint_raises_once_aborted(app: aioabort.App) -> None:
    spins = 0
    entered = asyncio.Event()

    async def cpu_loop() -> aioabort.AbortScope:
        nonlocal spins
        async with aioabort.abortable("cpu", suppress=True) as scope:
            entered.set()
            while True:
                spins += 1
                await scope.checkpoint()
        return scope  # pragma: no cover

    task = asyncio.create_task(cpu_loop())
    await entered.wait()
    await app.handle("cpu").abort()
    scope = await asyncio.wait_for(task, 5)
    assert scope.aborted and spins > 0


async def test_on_abort_runs_on_the_loop_not_inline(app: aioabort.App) -> None:
    calls: list[tuple[str, int]] = []
    entered = asyncio.Event()
    stopped_early: list[bool] = []

    async def body() -> None:
        async with aioabort.abortable("cb", suppress=True) as scope:
            scope.on_abort(lambda reason: calls.append((reason.message, threading.get_ident())))
            stop = scope.on_abort(lambda reason: calls.append(("never", 0)))
            stopped_early.append(stop())
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(body())
    await entered.wait()
    # The watcher's delivery only schedules the callback (call_soon); it never runs inline.
    # (Through abort() the callback may run during abort's own awaits, so that is not a test.)
    app.watcher.deliver("cb", AbortReason(AbortReason.USER, "cb reason"))
    assert calls == []
    await asyncio.wait_for(task, 5)
    await wait_until(lambda: bool(calls))
    assert calls == [("cb reason", threading.get_ident())]
    assert stopped_early == [True]


async def test_on_abort_when_already_aborted_runs_at_once_and_stop_after_run(
    app: aioabort.App,
) -> None:
    await app.create("cb-late")
    await app.handle("cb-late").abort("early")
    ran = asyncio.Event()
    async with aioabort.abortable("cb-late", suppress=True) as scope:
        stop = scope.on_abort(lambda reason: ran.set())
        with anyio.CancelScope(shield=True):
            await asyncio.wait_for(ran.wait(), 5)
        assert stop() is False  # it already ran


async def test_on_abort_callback_errors_are_logged_not_raised(
    app: aioabort.App, caplog: pytest.LogCaptureFixture
) -> None:
    def bad(reason: AbortReason) -> None:
        raise RuntimeError("callback bug")

    good = asyncio.Event()
    entered = asyncio.Event()

    async def body() -> None:
        async with aioabort.abortable("cb-bad", suppress=True) as scope:
            scope.on_abort(bad)
            scope.on_abort(lambda reason: good.set())
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(body())
    await entered.wait()
    await app.handle("cb-bad").abort()
    await asyncio.wait_for(task, 5)
    await asyncio.wait_for(good.wait(), 5)
    assert "on_abort callback failed" in caplog.text


async def test_cleanup_is_shielded_and_bounded(app: aioabort.App) -> None:
    entered = asyncio.Event()
    cleaned: list[str] = []

    async def body() -> None:
        async with aioabort.abortable("cleanup", suppress=True) as scope:
            try:
                entered.set()
                await asyncio.sleep(60)
            finally:
                async with scope.cleanup(timeout=5):
                    await asyncio.sleep(0.01)  # would be cancelled again without the shield
                    cleaned.append("released")
                async with scope.cleanup(timeout=0.05) as bounded:
                    await asyncio.sleep(60)
                cleaned.append(f"bounded:{bounded.cancelled_caught}")

    task = asyncio.create_task(body())
    await entered.wait()
    await app.handle("cleanup").abort()
    await asyncio.wait_for(task, 5)
    assert cleaned == ["released", "bounded:True"]


async def test_current_scope_inside_and_outside(app: aioabort.App) -> None:
    with pytest.raises(aioabort.NoCurrentScope):
        aioabort.current_scope()
    async with aioabort.abortable("outer-scope") as outer:
        assert aioabort.current_scope() is outer
        async with aioabort.abortable("inner-scope") as inner:
            assert aioabort.current_scope() is inner
        assert aioabort.current_scope() is outer
    assert (await app.handle("inner-scope").record()).parent_id == "outer-scope"
    async with aioabort.abortable("outer-2"), aioabort.abortable("detached", detached=True):
        pass
    assert (await app.handle("detached").record()).parent_id is None


async def test_cross_app_abort_is_delivered(app: aioabort.App, other_app: aioabort.App) -> None:
    """Another App on the same store (own connections, own watcher) stops the body."""
    entered = asyncio.Event()
    task = asyncio.create_task(run_until_aborted(app, "cross", entered))
    await entered.wait()
    assert await other_app.handle("cross").abort("from elsewhere") is True
    with pytest.raises(TaskAborted):
        await asyncio.wait_for(task, 10)
    record = await other_app.handle("cross").wait(timeout=10)
    assert record.state is TaskState.ABORTED
    assert app.watcher.statistics().deliveries >= 1


async def test_report_stores_progress_rate_limited(app: aioabort.App) -> None:
    async with aioabort.abortable("progress") as scope:
        before = app.store.statistics().statements
        for i in range(1, 101):
            await scope.report(i / 100, f"step {i}")
        burst = app.store.statistics().statements - before
        record = await app.handle("progress").record()
        assert record.progress is not None and record.progress < 1.0  # later ones held back
    # A hundred reports in a burst cost one write (a few statements), not a hundred.
    assert burst <= 6
    record = await app.handle("progress").record()
    assert (record.progress, record.message) == (1.0, "step 100")  # flushed at exit
    assert record.state is TaskState.SUCCESS


async def test_report_flushes_the_held_value_after_the_interval(app: aioabort.App) -> None:
    async with aioabort.abortable("progress-2") as scope:
        await scope.report(0.1)
        await scope.report(0.5, "halfway")

        async def flushed() -> bool:
            return (await app.handle("progress-2").record()).progress == 0.5

        await wait_until(flushed, timeout=5, what="the held report")


@pytest.mark.parametrize("progress", [-0.1, 1.5, "half", True, float("nan")])
async def test_report_rejects_bad_progress(app: aioabort.App, progress: object) -> None:
    async with aioabort.abortable("bad-progress") as scope:
        with pytest.raises(aioabort.UsageError):
            await scope.report(progress)  # type: ignore[arg-type]
    assert (await app.handle("bad-progress").record()).progress is None


async def test_report_outside_the_body_is_refused(app: aioabort.App) -> None:
    async with aioabort.abortable("closed-scope") as scope:
        pass
    with pytest.raises(aioabort.UsageError):
        await scope.report(0.5)


async def test_outer_timeout_then_abort_in_the_cleanup_record_and_raise_agree(
    app: aioabort.App,
) -> None:
    """The timeout fires first; the abort lands while the body cleans up. The timeout
    propagates (rule 1), so the record says FAILURE (cancelled), the abort request kept."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            async with aioabort.abortable("timeout-then-abort", app=app) as scope:
                try:
                    await asyncio.sleep(60)
                finally:
                    await app.handle("timeout-then-abort").abort("during the cleanup")
                    await asyncio.sleep(60)  # cancelled by the abort at once
    assert not scope.aborted
    record = await app.handle("timeout-then-abort").record()
    assert record.state is TaskState.FAILURE
    assert record.error is not None and record.error.cause == "cancelled"
    assert record.reason is not None and record.reason.message == "during the cleanup"


async def test_abort_then_outer_timeout_in_the_cleanup_record_and_raise_agree(
    app: aioabort.App,
) -> None:
    """The abort comes first; the timeout fires during the abort's shielded cleanup. The
    caller sees the timeout, and so does the record: the outer cancellation wins."""
    entered = asyncio.Event()

    async def body() -> None:
        async with asyncio.timeout(None) as deadline:
            async with aioabort.abortable("abort-then-timeout", app=app) as scope:
                entered.set()
                try:
                    await asyncio.sleep(60)
                finally:
                    deadline.reschedule(asyncio.get_running_loop().time() + 0.05)
                    async with scope.cleanup(timeout=30):
                        await asyncio.sleep(60)  # the timeout cuts this

    task = asyncio.create_task(body())
    await entered.wait()
    await app.handle("abort-then-timeout").abort("first")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(task, 10)
    record = await app.handle("abort-then-timeout").record()
    assert record.state is TaskState.FAILURE
    assert record.error is not None and record.error.cause == "cancelled"
    assert record.reason is not None and record.reason.message == "first"


async def test_a_thread_is_waited_for_and_the_record_tells_the_truth(app: aioabort.App) -> None:
    """scope.to_thread(): an abort cannot stop a thread, so the scope waits for it; a thread
    that ran to the end despite the abort ends SUCCESS with the request kept, and the record
    never said ABORTED while it still wrote."""
    rows: list[int] = []
    started = threading.Event()
    states_while_writing: list[TaskState] = []

    def write_rows() -> int:
        started.set()
        for i in range(30):
            time.sleep(0.01)  # a blocking library that never looks at the abort
            rows.append(i)
        return len(rows)

    async def body() -> int:
        async with aioabort.abortable("threaded", app=app) as scope:
            return await scope.to_thread(write_rows)
        raise AssertionError("not reached: the scope suppresses nothing")  # pragma: no cover

    task = asyncio.create_task(body())
    await asyncio.to_thread(started.wait, 10)
    assert await app.handle("threaded").abort("stop writing") is True
    states_while_writing.append(await app.handle("threaded").state())
    assert await task == 30 and rows == list(range(30))
    record = await app.handle("threaded").record()
    assert states_while_writing == [TaskState.ABORTING]
    assert record.state is TaskState.SUCCESS  # it ran to the end: the truth
    assert record.reason is not None and record.reason.message == "stop writing"


async def test_a_thread_that_looks_at_the_abort_stops_and_ends_aborted(app: aioabort.App) -> None:
    """raise_if_aborted() in the thread (current_scope() works there): TaskAborted out of
    the body ends the task ABORTED, and the thread stopped writing at once."""
    rows: list[int] = []
    started = threading.Event()

    def write_rows() -> None:
        scope = aioabort.current_scope()  # the scope is visible in the thread
        started.set()
        for i in range(10_000):
            scope.raise_if_aborted()
            time.sleep(0.005)
            rows.append(i)

    async def body() -> None:
        async with aioabort.abortable("threaded-2", app=app) as scope:
            await scope.to_thread(write_rows)

    task = asyncio.create_task(body())
    await asyncio.to_thread(started.wait, 10)
    assert await app.handle("threaded-2").abort("stop writing") is True
    with pytest.raises(aioabort.TaskAborted) as info:
        await asyncio.wait_for(task, 10)
    assert info.value.reason is not None and info.value.reason.message == "stop writing"
    written = len(rows)
    assert written < 10_000
    record = await app.handle("threaded-2").record()
    assert record.state is TaskState.ABORTED
    assert len(rows) == written  # nothing written after the end was recorded


async def test_raise_if_aborted_in_the_body_ends_aborted_or_is_suppressed(
    app: aioabort.App,
) -> None:
    async with aioabort.abortable("sync-check", app=app, suppress=True) as scope:
        scope.raise_if_aborted()  # no abort yet: nothing happens
        await app.handle("sync-check").abort("now")
        scope.raise_if_aborted()
        raise AssertionError("not reached")  # pragma: no cover
    assert scope.aborted and (await app.handle("sync-check").state()) is TaskState.ABORTED


def test_under_trio_aioabort_says_what_it_runs_on(tmp_path: Path) -> None:
    """Not a TypeError deep inside a driver: a UsageError naming asyncio and what runs."""
    import anyio

    async def main() -> None:
        async with aioabort.App(f"sqlite:///{tmp_path / 'x.db'}"):
            pass  # pragma: no cover

    with pytest.raises(aioabort.UsageError, match=r"runs on asyncio.*under trio"):
        anyio.run(main, backend="trio")


async def test_a_task_that_ignores_its_abort_is_visible(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """DESIGN rule 16: the record shows when the abort reached the running scope; a task still
    running ``ignored_abort_after`` seconds later is shown as ignoring it — in the log, in
    the CLI's and the router's JSON — until it ends."""
    from aioabort.cli._output import record_to_json
    from aioabort.web._api import record_json

    release = threading.Event()
    async with aioabort.App(store_url, ignored_abort_after=0.2) as app:

        async def body() -> None:
            async with aioabort.abortable("stubborn", app=app, suppress=True) as scope:
                await scope.to_thread(release.wait, 30)  # a thread that does not look

        task = asyncio.create_task(body())
        handle = app.handle("stubborn")
        await wait_until(lambda: has_state(app, "stubborn", TaskState.STARTED))
        assert (await handle.record()).abort_delivered_at is None
        assert await handle.abort("stop now") is True

        async def ignored() -> bool:
            return (await handle.record()).ignoring_abort(0.2) is not None

        await wait_until(ignored, what="the task to be shown as ignoring its abort")
        record = await handle.record()
        assert record.state is TaskState.ABORTING and record.abort_delivered_at is not None
        assert record_json(app, record)["ignoring_abort_for"] >= 0.2
        await wait_until(
            lambda: any(getattr(r, "action", "") == "abort_ignored" for r in caplog.records),
            what="the warning",
        )
        assert record_to_json(record)["ignoring_abort_for"] is None  # the CLI's 30 s: not yet

        async def marked() -> bool:  # the App's ignored_abort_after: on the timeline too
            return "abort_ignored" in [e.kind for e in await handle.events()]

        await wait_until(marked, what="abort_ignored on the timeline")
        release.set()
        await asyncio.wait_for(task, 10)
        final = await handle.record()
    assert final.state is TaskState.SUCCESS  # the thread ran to its end: the truth
    assert final.ignoring_abort(0.2) is None and final.abort_delivered_at is not None

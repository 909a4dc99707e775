"""The producer handle and the App: states, waiting, results, listing."""

from __future__ import annotations

import asyncio
import contextlib
from typing import assert_type

import pytest

import aioabort
from aioabort import AbortHandle, TaskAborted, TaskFailed, TaskState
from aioabort._types import JSONValue

from .conftest import wait_until


async def test_wait_returns_when_the_task_ends(app: aioabort.App) -> None:
    release, entered = asyncio.Event(), asyncio.Event()

    async def body() -> None:
        async with aioabort.abortable("waited"):
            entered.set()
            await release.wait()

    task = asyncio.create_task(body())
    await entered.wait()
    handle = app.handle("waited")
    waiter = asyncio.create_task(handle.wait(timeout=10))
    async with contextlib.aclosing(handle.watch()) as records:
        first = await anext(records)  # what wait() sees first: running, so it waits on
        assert first.state is TaskState.STARTED
        release.set()
        seen = [first.state, *[r.state async for r in records]]
    assert seen[-1] is TaskState.SUCCESS and TaskState.SUCCESS not in seen[:-1]
    record = await waiter
    assert record.state is TaskState.SUCCESS
    await task


async def test_wait_times_out(app: aioabort.App) -> None:
    """The error names the task, the timeout and the state it was left in."""
    await app.create("forever")
    message = r"task 'forever' has not ended after 0\.05s \(it is PENDING\)"
    with pytest.raises(TimeoutError, match=message):
        await app.handle("forever").wait(timeout=0.05)
    with pytest.raises(TimeoutError, match=message):
        await app.handle("forever").result(timeout=0.05)


async def test_wait_for_unknown_task(app: aioabort.App) -> None:
    with pytest.raises(aioabort.TaskNotFound):
        await app.handle("ghost").wait(timeout=1)


async def test_wait_across_apps_sees_final_state(
    app: aioabort.App, other_app: aioabort.App
) -> None:
    entered = asyncio.Event()

    async def body() -> None:
        async with aioabort.abortable("seen", app=app, suppress=True):
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(body())
    await entered.wait()
    handle = other_app.handle("seen")
    assert await handle.abort() is True
    record = await handle.wait(timeout=10)
    assert record.state is TaskState.ABORTED
    await task


async def test_result_raises_outcomes(app: aioabort.App) -> None:
    await app.create("to-abort")
    await app.handle("to-abort").abort("no")
    with pytest.raises(TaskAborted) as aborted:
        await app.handle("to-abort").result(timeout=1)
    assert aborted.value.reason is not None and aborted.value.reason.message == "no"

    with pytest.raises(ValueError):
        async with aioabort.abortable("to-fail"):
            raise ValueError("bad")
    with pytest.raises(TaskFailed) as failed:
        await app.handle("to-fail").result(timeout=1)
    assert failed.value.error is not None and failed.value.error.message == "bad"

    async with aioabort.abortable("to-succeed"):
        pass
    assert await app.handle("to-succeed").result(timeout=1) is None


async def test_is_aborted_is_celerys_meaning(app: aioabort.App) -> None:
    await app.create("c")
    assert await app.handle("c").is_aborted() is False
    await app.handle("c").abort()
    assert await app.handle("c").is_aborted() is True
    # An id with no record: False, as abort() answers there (Celery's is_aborted() too).
    assert await app.handle("unknown").is_aborted() is False
    assert await app.handle("unknown").abort() is False
    with pytest.raises(aioabort.TaskNotFound):
        await app.handle("unknown").record()  # nothing was written


async def test_a_cancel_that_races_ahead_of_its_work(
    app: aioabort.App, other_app: aioabort.App
) -> None:
    """abort(create=True) of an id with no record records it aborted before it started: the
    scope that enters it later, in any process, stops at its first await."""
    assert await other_app.handle("early").abort("too late to start", create=True) is True
    assert await other_app.handle("early").abort("again", create=True) is False  # first wins
    ran = False
    with pytest.raises(TaskAborted) as info:
        async with aioabort.abortable("early", app=app):
            await asyncio.sleep(30)
            ran = True
    assert not ran
    assert info.value.reason is not None and info.value.reason.message == "too late to start"
    record = await app.handle("early").record()
    assert record.state is TaskState.ABORTED and record.started_at is None


async def test_create_rejects_taken_id_and_writes_nothing(app: aioabort.App) -> None:
    await app.create("taken", name="first")
    with pytest.raises(aioabort.TaskAlreadyExists):
        await app.create("taken", name="second")
    record = await app.handle("taken").record()
    assert record.name == "first" and record.state is TaskState.PENDING


async def test_create_generates_ids(app: aioabort.App) -> None:
    a, b = await app.create(), await app.create()
    assert a.id != b.id and len(a.id) == 32


async def test_tasks_lists_and_filters(app: aioabort.App) -> None:
    await app.create("one", name="n1")
    await app.create("two", name="n2")
    async with aioabort.abortable("three", name="n1"):
        pass
    assert {r.id for r in await app.tasks()} == {"one", "two", "three"}
    assert [r.id for r in await app.tasks(states=["SUCCESS"])] == ["three"]
    assert {r.id for r in await app.tasks(states=[TaskState.PENDING])} == {"one", "two"}
    assert {r.id for r in await app.tasks(name="n1")} == {"one", "three"}
    assert len(await app.tasks(limit=1)) == 1
    with pytest.raises(aioabort.UsageError):
        await app.tasks(states=["RUNNING"])
    with pytest.raises(aioabort.UsageError):
        await app.tasks(limit=0)


async def test_reasons_round_trip(app: aioabort.App) -> None:
    await app.create("r")
    reason = aioabort.AbortReason("disconnect", "client went away ✓ ünïcode", by="edge-1")
    await app.handle("r").abort(reason)
    stored = (await app.handle("r").record()).reason
    assert stored is not None
    assert (stored.code, stored.message, stored.by) == ("disconnect", reason.message, "edge-1")
    assert abs((stored.at - reason.at).total_seconds()) < 0.001
    assert stored.at.tzinfo is not None


async def test_default_by_names_host_and_pid(app: aioabort.App) -> None:
    import os

    await app.create("by")
    await app.handle("by").abort("x")
    stored = (await app.handle("by").record()).reason
    assert stored is not None and stored.by is not None and stored.by.endswith(f":{os.getpid()}")


async def test_handles_compare_by_id(app: aioabort.App) -> None:
    assert app.handle("x") == app.handle("x")
    assert app.handle("x") != app.handle("y")
    assert len({app.handle("x"), app.handle("x")}) == 1
    assert "x" in repr(app.handle("x"))


async def test_a_waiter_is_not_woken_by_other_tasks_changes(
    app: aioabort.App, other_app: aioabort.App
) -> None:
    """DESIGN rule 13: a change wakes only the waiters of the ids it names. Other tasks
    changing, here or in another App, cost an idle waiter nothing."""
    await app.create("waited-on")
    waiters = [asyncio.create_task(app.handle("waited-on").wait(timeout=60)) for _ in range(5)]
    await wait_until(lambda: app.watcher.statistics().waited_ids == 1, what="the waiters")
    before = app.watcher.statistics()
    for i in range(10):  # other tasks start and end, in this App and in another
        async with aioabort.abortable(f"other-{i}", app=app if i % 2 else other_app):
            pass
    await wait_until(lambda: app.watcher.statistics().changes > before.changes + 5)
    after = app.watcher.statistics()
    assert after.wakeups == before.wakeups  # no waiter of "waited-on" woke
    assert not any(w.done() for w in waiters)
    await other_app.handle("waited-on").abort("now it changes")  # from elsewhere: one wake
    records = await asyncio.gather(*waiters)
    assert {r.state for r in records} == {TaskState.ABORTED}
    assert app.watcher.statistics().wakeups - after.wakeups >= 1
    assert app.watcher.statistics().waited_ids == 0  # the shared event went with its waiters


async def test_waiters_on_one_task_share_one_read(
    app: aioabort.App, other_app: aioabort.App
) -> None:
    """DESIGN rule 13: a change of a task with many waiters in a process costs one read."""
    await app.create("shared")
    watcher = app.watcher
    # Nothing but the abort below may wake the waiters: a change of "shared" this App's
    # watcher has yet to report (SQLite's poller sees the create's write a moment later)
    # would make them read again. A change made after it, once reported, is behind it.
    await watcher.want_ends()  # as a waiter does before it reads
    with watcher.waiting("later") as next_change:
        reported = next_change()
        await other_app.handle("later").abort("a later change", create=True)
        await asyncio.wait_for(reported.wait(), 10)
    count = 20
    start = watcher.statistics().shared_reads
    waiters = [asyncio.create_task(app.handle("shared").wait(timeout=60)) for _ in range(count)]
    # Every waiter has its first record once the one read they all share is over (a waiter
    # being registered is not enough: its first read may not have begun).
    await wait_until(
        lambda: (
            watcher.statistics().shared_reads - start == count - 1
            and "shared" not in watcher._reads
        ),
        what="the waiters to share their first read",
    )
    before = watcher.statistics().shared_reads
    statements = app.store.statistics().statements
    assert app._liveness is not None
    beats = app._liveness.rounds
    await other_app.handle("shared").abort("one change")
    records = await asyncio.gather(*waiters)
    assert {r.state for r in records} == {TaskState.ABORTED}
    assert watcher.statistics().shared_reads - before == count - 1
    heartbeats = 3 * (app._liveness.rounds - beats)  # a beat that fell in (up to 3 statements)
    # The one read (and a re-read), whatever the number of waiters.
    assert app.store.statistics().statements - statements <= 2 + heartbeats


async def test_keep_alives_of_a_watch_read_nothing(
    app: aioabort.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """watch(every=) yields the last record again while nothing changes (an SSE stream's
    keep-alive) without reading it: an idle stream costs the store nothing."""
    await app.create("quiet")
    reads: list[str] = []
    get = app.store.get

    async def counted(task_id: str) -> aioabort.TaskRecord | None:
        reads.append(task_id)
        return await get(task_id)

    monkeypatch.setattr(app.store, "get", counted)
    woken = app.watcher.statistics().wakeups
    seen: list[aioabort.TaskRecord] = []
    async with contextlib.aclosing(app.handle("quiet").watch(every=0.01)) as records:
        async for record in records:
            seen.append(record)
            if len(seen) == 20:
                break
    assert all(r == seen[0] for r in seen)
    # One read, and one more only for each time a change of "quiet" woke the watch (SQLite's
    # detector may still report the create), never for a keep-alive.
    assert len(reads) == 1 + app.watcher.statistics().wakeups - woken


async def test_a_handle_is_typed_by_its_tasks_result(app: aioabort.App) -> None:
    """``AbortHandle[R]``: a task returning R gives handles whose ``result()`` is R (mypy
    checks the ``assert_type`` lines of this module); a handle by id holds a JSON value."""

    @app.task
    async def double(n: int) -> list[int]:
        return [n, n]

    spawned = await double.spawn(21)
    assert_type(spawned, AbortHandle[list[int]])
    assert assert_type(await spawned.result(timeout=10), list[int]) == [21, 21]
    assert_type(await double.delay(1), AbortHandle[list[int]])
    assert_type(await double.apply([2]), AbortHandle[list[int]])
    by_id = app.handle(spawned.id)
    assert_type(by_id, AbortHandle[JSONValue])
    assert_type(by_id, AbortHandle)  # the default
    assert assert_type(await by_id.result(timeout=10), JSONValue) == [21, 21]

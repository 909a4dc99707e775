"""The change watcher's cost does not grow with the scopes open in its process: one statement
per poll, plus what each change costs its store to read, with 1 open scope and with 1,000."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import aioabort

from .conftest import STORES, wait_until

#: Statements a store's watcher runs to read one change another App committed, beyond its
#: poll, in a process that waits on no task: SQLite reads the abort log (and which records
#: changed only while something waits); PostgreSQL's notification carries the abort with
#: its reason, so it reads nothing.
COST_PER_CHANGE = {"sqlite": 1, "postgres": 0}
#: Tasks another App creates and aborts while the scopes are open: two commits each.
NOISE = 5


@pytest.fixture(params=STORES)
def kind_and_url(request: pytest.FixtureRequest) -> tuple[str, str]:
    kind: str = request.param
    return kind, request.getfixturevalue(f"{kind}_url")


async def test_watcher_statements_do_not_grow_with_open_scopes(
    kind_and_url: tuple[str, str],
) -> None:
    kind, url = kind_and_url
    async with watched_app(url) as app, watched_app(url) as producer:
        extra_1 = await extra_statements(app, producer, 1)
        extra_1000 = await extra_statements(app, producer, 1000)
    # Every commit may be read in a poll of its own, and the heartbeats of opening are allowed.
    bound = COST_PER_CHANGE[kind] * (2 * NOISE + 2)
    assert 0 <= extra_1 <= bound
    assert 0 <= extra_1000 <= bound  # reading 1,000 open scopes' ids would show up here


def watched_app(url: str) -> aioabort.App:
    """An App whose watcher polls every 20 ms. Its heartbeats are a minute apart: each is a
    commit the SQLite watcher rightly reads; at the default 5 s, a busy machine fitted three
    into the count."""
    return aioabort.App(url, poll_interval=0.02, heartbeat_interval=60.0, stale_after=120.0)


async def extra_statements(app: aioabort.App, producer: aioabort.App, count: int) -> int:
    """The statements ``app``'s watcher ran beyond one per poll while ``count`` scopes were
    open in it and ``producer`` created and aborted :data:`NOISE` tasks of its own."""
    release = asyncio.Event()
    entered = 0

    async def body(i: int) -> None:
        nonlocal entered
        async with aioabort.abortable(f"scope-{count}-{i}", app=app):
            entered += 1
            await release.wait()

    tasks = [asyncio.create_task(body(i)) for i in range(count)]
    try:
        await wait_until(lambda: entered == count, what="the scopes to open")
        before = app.watcher.statistics()
        assert before.open_scopes == count
        for i in range(NOISE):
            await producer.create(f"noise-{count}-{i}")
            await abort_seen(app, producer.handle(f"noise-{count}-{i}"))
        await wait_until(lambda: app.watcher.statistics().polls >= before.polls + 5)
        after = app.watcher.statistics()
    finally:
        release.set()
        await asyncio.gather(*tasks)
    return (after.statements - before.statements) - (after.polls - before.polls)


async def test_sqlite_reads_which_records_changed_only_while_something_waits(
    sqlite_url: str,
) -> None:
    """A worker or a producer that waits on no task reads no rows of the other processes'
    writes: each change costs it the abort log's read alone. A waiter adds the changed-ids
    read, from the moment it starts waiting, and loses no change."""
    async with (
        watched_app(sqlite_url) as app,
        watched_app(sqlite_url) as producer,
        aioabort.abortable("held", app=app),  # a scope here: aborts are read
    ):
        alone, seen_alone = await statements_and_changes(app, producer, "alone")
        await producer.create("waited")
        waiter = asyncio.create_task(app.handle("waited").wait(timeout=60))
        await wait_until(lambda: app.watcher.statistics().waited_ids == 1, what="the waiter")
        waiting, seen_waiting = await statements_and_changes(app, producer, "waiting")
        await producer.handle("waited").abort("a change of its own")
        assert (await waiter).state is aioabort.TaskState.ABORTED
    # One statement per change alone, two while waiting. (A poll's counters move while the
    # statistics are read, so each count may be off by one.)
    assert alone <= seen_alone + 1
    assert waiting >= 2 * seen_waiting - 1


async def test_sqlite_reads_nothing_of_other_writes_with_nothing_to_tell(
    sqlite_url: str,
) -> None:
    """A process with no scope, no waiter and no worker (a producer that only queues) runs no
    statement for other processes' commits; once it opens a scope it reads from where it
    left off, so an abort written before the scope's own start is not lost."""
    async with watched_app(sqlite_url) as app, watched_app(sqlite_url) as producer:
        before = app.watcher.statistics()
        for i in range(20):  # 40 commits
            await producer.create(f"noise-{i}")
            await producer.handle(f"noise-{i}").abort()
        async with aioabort.abortable("late", app=app, suppress=True) as scope:
            await producer.handle("late").abort("read from where it left off")
            await asyncio.sleep(30)  # bounded: cancelled by the abort
        assert scope.aborted
        after = app.watcher.statistics()
    # Only while the scope was open: the checks after its start, the abort and its end (a
    # commit may take two), each data_version and the abort log; the first of them read the
    # 20 aborts it had not seen. (A process that read them would check once per commit: 40.)
    assert after.polls - before.polls <= 10, (before, after)
    assert after.statements - before.statements <= 2 * (after.polls - before.polls)
    assert after.notices - before.notices == 21


async def test_sqlite_watcher_woken_while_watching_does_not_spin(sqlite_url: str) -> None:
    """Scopes opening and closing tell the store each time the first opens and the last
    closes; a watcher that already watches (here for a waiter) is not woken by it, and does
    not check over and over: one external change costs it a check or two."""
    async with watched_app(sqlite_url) as app, watched_app(sqlite_url) as producer:
        await app.watcher.want_ends()  # as a waiter does: it watches from now on
        for i in range(5):
            async with aioabort.abortable(f"opened-{i}", app=app):
                pass
        await producer.create("marker")
        await producer.create("marker-2")
        before = app.watcher.statistics()
        await abort_seen(app, producer.handle("marker"))
        await abort_seen(app, producer.handle("marker-2"))
        after = app.watcher.statistics()
    # Two commits (each may take two checks), and the bursts' checks after them (one every
    # poll interval for 20 ms); a watcher that spins checks hundreds of times meanwhile.
    assert after.polls - before.polls <= 20, (before, after)


async def statements_and_changes(
    app: aioabort.App, producer: aioabort.App, tag: str
) -> tuple[int, int]:
    """The statements ``app``'s watcher ran beyond one per poll, and the changes it saw,
    while ``producer`` created and aborted :data:`NOISE` tasks."""
    before = app.watcher.statistics()
    for i in range(NOISE):
        await producer.create(f"{tag}-{i}")
        await abort_seen(app, producer.handle(f"{tag}-{i}"))
    after = app.watcher.statistics()
    changes = after.changes - before.changes
    assert changes >= NOISE  # each abort was seen
    return (after.statements - before.statements) - (after.polls - before.polls), changes


async def abort_seen(app: aioabort.App, handle: aioabort.AbortHandle[Any]) -> None:
    """Abort through another App's ``handle``; return once ``app``'s watcher saw it."""
    notices = app.watcher.statistics().notices
    assert await handle.abort() is True
    await wait_until(lambda: app.watcher.statistics().notices > notices, what="the abort")

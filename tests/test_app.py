"""The App: closing aborts what is open, a scope that outlives the grace, an App never closed.
Runs against every store. (Closing while the store errors: test_reliability.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import aioabort
from aioabort import TaskState

from .conftest import has_state, wait_until


async def test_closing_the_app_aborts_open_scopes_with_shutdown(store_url: str) -> None:
    app = aioabort.App(store_url, shutdown_grace=5)
    await app.open()
    entered = asyncio.Event()

    async def body() -> aioabort.AbortScope:
        async with aioabort.abortable("at-close", app=app, suppress=True) as scope:
            entered.set()
            await asyncio.sleep(60)
        return scope

    task = asyncio.create_task(body())
    await entered.wait()
    await app.aclose()
    scope = await task
    assert scope.aborted and scope.reason is not None and scope.reason.code == "shutdown"
    async with aioabort.App(store_url) as reader:
        record = await reader.handle("at-close").record()
    assert record.state is TaskState.ABORTED
    assert record.reason is not None and record.reason.code == "shutdown"


async def test_scope_outliving_the_grace_is_ended_lost(store_url: str) -> None:
    app = aioabort.App(store_url, shutdown_grace=0.05)
    await app.open()
    entered = asyncio.Event()
    release = asyncio.Event()

    async def stubborn() -> None:
        async with aioabort.abortable("stubborn-close", app=app, suppress=True):
            entered.set()
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    pass

    task = asyncio.create_task(stubborn())
    await entered.wait()
    await app.aclose()
    async with aioabort.App(store_url) as reader:
        record = await reader.handle("stubborn-close").record()
    assert record.state is TaskState.FAILURE
    assert record.error is not None and record.error.cause == "lost"
    release.set()
    await task  # its own end write fails quietly against the closed store


async def test_unclosed_app_warns(store_url: str) -> None:
    app = aioabort.App(store_url)
    await app.open()
    with pytest.warns(ResourceWarning, match="never closed"):
        app.__del__()
    await app.aclose()


async def test_an_idle_app_costs_one_heartbeat_per_interval(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle App runs its heartbeat (with the reaper lease: one statement on PostgreSQL,
    two on SQLite, three for the lease's holder, which also reads the quiet owners) per
    interval; the reaping transaction only when an owner died (and as a sweep every
    SWEEP_EVERY rounds), and only in the holder.

    The beats are 20 ms apart to make the test short; the lease lasts 100 of them (2 s), not
    the default 2, so that a loop stalled for 40 ms on a busy machine does not hand the lease
    over mid-count (the other App rightly takes an expired lease: that is not what this
    test measures)."""
    from aioabort._liveness import SWEEP_EVERY

    monkeypatch.setattr("aioabort._liveness.LEASE_BEATS", 100.0)

    async with (
        aioabort.App(store_url, heartbeat_interval=0.02, stale_after=10) as app,
        aioabort.App(store_url, heartbeat_interval=0.02, stale_after=10) as other,
    ):
        apps = (app, other)
        lives = [a._liveness for a in apps if a._liveness is not None]
        assert len(lives) == 2
        await wait_until(lambda: lives[0].rounds >= 1 and lives[1].rounds >= 1)
        await wait_until(lambda: lives[0].reaping or lives[1].reaping)
        before = [
            (live.rounds, a.store.statistics().statements)
            for live, a in zip(lives, apps, strict=True)
        ]
        await wait_until(lambda: all(live.rounds >= 2 * SWEEP_EVERY + 2 for live in lives))
        after = [
            (live.rounds, a.store.statistics().statements)
            for live, a in zip(lives, apps, strict=True)
        ]
        reapers = [live.reaper_rounds for live in lives]
    assert min(reapers) <= 1 <= max(reapers), reapers  # one holds the lease; the other waits
    sqlite = store_url.startswith("sqlite")
    for (rounds, statements), (rounds2, statements2), reaper in zip(
        before, after, reapers, strict=True
    ):
        done, spent = rounds2 - rounds, statements2 - statements
        holder = reaper > 1
        # The holder also ends expired queued tasks: one more statement per beat.
        per_beat = (4 if holder else 2) if sqlite else (2 if holder else 1)
        sweeps = (done // SWEEP_EVERY + 1) if holder else 0
        assert per_beat * done - 2 <= spent <= per_beat * done + 2 + 6 * sweeps, (done, spent)


async def test_purge_deletes_finished_records_only(app: aioabort.App) -> None:
    """Never a running or queued record; finished ones of every end state, older than the
    cutoff; the abort log with them."""
    from datetime import timedelta

    async with aioabort.abortable("done", app=app):
        pass
    await app.create("queued")
    await app.create("aborted-early")
    await app.handle("aborted-early").abort("never ran")
    release = asyncio.Event()
    entered = asyncio.Event()

    async def running() -> None:
        async with aioabort.abortable("running", app=app):
            entered.set()
            await release.wait()

    task = asyncio.create_task(running())
    await entered.wait()
    assert await app.purge(older_than=timedelta(days=1)) == 0  # none is that old
    assert await app.purge(older_than=timedelta(0)) == 2
    left = {r.id: r.state for r in await app.tasks()}
    assert left == {"queued": TaskState.PENDING, "running": TaskState.STARTED}
    release.set()
    await task
    with pytest.raises(aioabort.UsageError):
        await app.purge(older_than=3600)  # type: ignore[arg-type]


async def test_purge_of_zero_takes_what_ended_this_instant(app: aioabort.App) -> None:
    """``older_than=0`` purges a record that ended in the same clock tick as the purge (a
    store's clock reads whole milliseconds): "ended at or before the cutoff"."""
    from datetime import timedelta

    for n in range(40):
        await app.create(f"t{n}")
        await app.handle(f"t{n}").abort("not needed")
        assert await app.purge(older_than=timedelta(0)) == 1, n


async def test_retention_purges_in_the_background(store_url: str) -> None:
    from datetime import timedelta

    from aioabort._liveness import SWEEP_EVERY

    async with aioabort.App(
        store_url, heartbeat_interval=0.01, stale_after=5, retention=timedelta(milliseconds=1)
    ) as app:
        async with aioabort.abortable("old", app=app):
            pass
        await app.create("kept")
        liveness = app._liveness
        assert liveness is not None
        rounds = liveness.reaper_rounds

        async def purged() -> bool:
            return [r.id for r in await app.tasks()] == ["kept"]

        await wait_until(purged, what="the retention's purge")
        assert liveness.reaper_rounds >= rounds + 1 and SWEEP_EVERY > 1
    with pytest.raises(aioabort.UsageError):
        aioabort.App(store_url, retention=timedelta(0))


async def test_tasks_by_the_start_of_their_id(app: aioabort.App) -> None:
    """``id_prefix`` (the dashboard's search box) matches the start of the id, literally:
    ``%`` and ``_`` are not wildcards, case matters, and it combines with the other filters."""
    for task_id in ("report-1", "report-10", "report-2", "Report-3", "rep%x", "rep_y", "数据-1"):
        await app.create(task_id, name="export" if task_id.endswith("1") else "other")

    async def ids(**filters: Any) -> list[str]:
        return sorted(r.id for r in await app.tasks(**filters))

    assert await ids(id_prefix="report-1") == ["report-1", "report-10"]
    assert await ids(id_prefix="report-") == ["report-1", "report-10", "report-2"]
    assert await ids(id_prefix="rep%") == ["rep%x"]
    assert await ids(id_prefix="rep_") == ["rep_y"]
    assert await ids(id_prefix="数据") == ["数据-1"]
    assert await ids(id_prefix="report", name="export") == ["report-1"]
    assert await ids(id_prefix="report", states=["ABORTED"]) == []
    assert await ids(id_prefix="zzz") == []
    assert len(await ids(id_prefix="")) == 7  # empty: no filter
    with pytest.raises(aioabort.UsageError, match="id_prefix"):
        await app.tasks(id_prefix=5)  # type: ignore[arg-type]


async def test_labels_are_stored_and_filtered(app: aioabort.App) -> None:
    @app.task(name="export")
    async def export() -> None: ...

    first = await export.apply(labels={"user": "alice", "kind": "csv"})
    await export.apply(labels={"user": "bob", "kind": "csv"})
    await export.apply()
    async with aioabort.abortable("inline", app=app, labels={"user": "alice"}):
        pass
    assert (await first.record()).labels == {"user": "alice", "kind": "csv"}
    alice = await app.tasks(labels={"user": "alice"})
    assert {r.id for r in alice} == {first.id, "inline"}
    both = await app.tasks(labels={"user": "alice", "kind": "csv"})
    assert [r.id for r in both] == [first.id]  # every given label must match
    # Whichever label is rarest drives the filter; the others must all match too.
    assert [r.id for r in await app.tasks(labels={"kind": "csv", "user": "alice"})] == [first.id]
    assert await app.tasks(labels={"kind": "csv", "user": "alice", "extra": "no"}) == []
    assert await app.tasks(labels={"user": "alice", "kind": "xml"}) == []
    assert await app.tasks(labels={"user": "carol"}) == []
    assert {r.id for r in await app.tasks(labels={"kind": "csv"}, name="export")} == {
        first.id,
        (await app.tasks(labels={"user": "bob"}))[0].id,
    }
    # An existing record's labels never change: not by a create, not by a scope that enters it.
    with pytest.raises(aioabort.TaskAlreadyExists):
        await export.apply(task_id=first.id, labels={"user": "mallory"})
    await app.create("queued")
    async with aioabort.abortable("queued", app=app, labels={"user": "mallory"}):
        pass
    assert (await app.handle("queued").record()).labels == {}
    assert await app.tasks(labels={"user": "mallory"}) == []
    for bad in ({"user": 1}, {"bad key": "x"}, {"k": "x" * 201}, "user=alice"):
        with pytest.raises(aioabort.UsageError):
            await app.tasks(labels=bad)  # type: ignore[arg-type]
        with pytest.raises(aioabort.UsageError):
            await export.apply(labels=bad)  # type: ignore[arg-type]


async def test_abort_many_by_labels(app: aioabort.App, other_app: aioabort.App) -> None:
    """The same rules as abort(): queued ones end ABORTED at once, a running one is stopped
    where it runs (here: another App), a finished one is left alone, the first reason wins;
    a dry run changes nothing."""
    for i in range(2):
        await app.create(f"q-{i}")

    @app.task(name="job")
    async def job() -> None: ...

    queued = [await job.apply(labels={"user": "alice"}) for _ in range(2)]
    bob = await job.apply(labels={"user": "bob"})
    async with aioabort.abortable("done", app=app, labels={"user": "alice"}):
        pass
    entered = asyncio.Event()

    async def running() -> None:
        async with aioabort.abortable("running", app=other_app, labels={"user": "alice"}):
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(running())
    await entered.wait()
    expected = {h.id for h in queued} | {"running"}
    preview = await app.abort_many(labels={"user": "alice"}, dry_run=True)
    assert set(preview) == expected
    assert {(await h.record()).state for h in queued} == {TaskState.PENDING}
    aborted = await app.abort_many(reason="alice asked", labels={"user": "alice"})
    assert set(aborted) == expected
    with pytest.raises(aioabort.TaskAborted):
        await asyncio.wait_for(task, 10)
    for task_id in expected:
        record = await app.handle(task_id).wait(timeout=10)
        assert record.state is TaskState.ABORTED
        assert record.reason is not None and record.reason.message == "alice asked"
    assert (await bob.record()).state is TaskState.PENDING
    assert (await app.handle("done").state()) is TaskState.SUCCESS
    assert await app.abort_many(reason="again", labels={"user": "alice"}) == []
    with pytest.raises(aioabort.UsageError):
        await app.abort_many(reason="everything")  # no filter: refused


async def test_abort_many_stops_scopes_here_and_their_children(app: aioabort.App) -> None:
    """A batch is recorded in one go, and still delivered as abort() would: a scope of this
    App stops, its queued child is aborted with reason code ``parent``; an id the batch names
    twice is recorded once, and a second batch with another reason records nothing."""

    @app.task(name="child")
    async def child() -> None: ...

    entered, kids = asyncio.Event(), []

    async def parent(i: int) -> None:
        async with aioabort.abortable(f"parent-{i}", app=app, labels={"team": "red"}):
            kids.append(await child.delay())
            entered.set() if len(kids) == 2 else None
            await asyncio.sleep(60)

    running = [asyncio.create_task(parent(i)) for i in range(2)]
    await asyncio.wait_for(entered.wait(), 10)
    aborted = await app.abort_many(reason="red team stops", labels={"team": "red"})
    assert sorted(aborted) == ["parent-0", "parent-1"]
    for task in running:
        with pytest.raises(aioabort.TaskAborted):
            await asyncio.wait_for(task, 10)
    for kid in kids:
        record = await kid.record()
        assert record.state is TaskState.ABORTED and record.reason is not None
        assert record.reason.code == "parent" and "red team stops" in record.reason.message
    # Straight to the store: duplicates and unknown ids in one batch.
    await app.create("twice")
    outcomes = await app.store.request_aborts(
        ["twice", "nobody", "twice"], aioabort.AbortReason("user", "once")
    )
    assert [o.recorded for o in outcomes] == [True, False, False]
    record = await app.handle("twice").record()
    assert record.state is TaskState.ABORTED and record.reason is not None
    assert record.reason.message == "once"
    later = await app.store.request_aborts(["twice"], aioabort.AbortReason("user", "later"))
    assert [o.recorded for o in later] == [False]  # the first reason wins


async def test_abort_many_goes_in_batches(app: aioabort.App) -> None:
    from aioabort._app import ABORT_BATCH

    count = 2 * ABORT_BATCH + 7

    @app.task(name="many")
    async def many() -> None: ...

    await asyncio.gather(*(many.apply(labels={"batch": "b1"}) for _ in range(count)))
    aborted = await app.abort_many(reason="all of them", labels={"batch": "b1"})
    assert len(aborted) == len(set(aborted)) == count
    assert (await app.counts())[TaskState.ABORTED] == count


def after_each_read(
    monkeypatch: pytest.MonkeyPatch, store: aioabort.Store, hook: Callable[[int], Awaitable[None]]
) -> None:
    """Run ``hook(n)`` after the n-th page a listing of ``store`` read (before it returns):
    what other processes do between two pages of a bulk abort, made deterministic."""
    reads = 0
    for method in ("list_tasks", "list_ids"):
        original = getattr(store, method, None)
        if original is None:
            continue

        async def read(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            nonlocal reads
            page = await _original(*args, **kwargs)
            reads += 1
            await hook(reads)
            return page

        monkeypatch.setattr(store, method, read)


async def test_abort_many_misses_no_match_while_other_matches_end(
    app: aioabort.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every task that matched for the whole call is aborted, however many other matching
    tasks end while it reads its pages (paging by offset over a shrinking set skipped some:
    3,000 queued and 600 newer ones ending left 529 queued on SQLite)."""
    monkeypatch.setattr("aioabort._app.ABORT_BATCH", 4)

    @app.task(name="waits")
    async def waits() -> None: ...

    queued = [(await waits.apply(labels={"team": "t"})).id for _ in range(12)]
    entered: list[int] = []
    release = asyncio.Event()

    async def newer(i: int) -> None:
        async with aioabort.abortable(f"newer-{i}", app=app, labels={"team": "t"}):
            entered.append(i)
            await release.wait()

    running = [asyncio.create_task(newer(i)) for i in range(8)]
    await wait_until(lambda: len(entered) == 8)

    async def the_newer_ones_end(page: int) -> None:
        if page == 1:
            release.set()
            await asyncio.gather(*running)

    after_each_read(monkeypatch, app.store, the_newer_ones_end)
    aborted = await app.abort_many(reason="team t stops", labels={"team": "t"})
    assert set(queued) <= set(aborted)
    assert {(await app.handle(i).record()).state for i in queued} == {TaskState.ABORTED}
    assert {r.state for r in await app.tasks(name=None, limit=100)} == {
        TaskState.ABORTED,
        TaskState.SUCCESS,
    }


async def test_list_ids_pages_by_a_cursor(app: aioabort.App) -> None:
    """The store's ``list_ids`` (what a bulk abort reads): the ids ``list_tasks`` would find,
    in id order, a page at a time from a cursor, whatever changes behind it."""
    for task_id in ("c", "a", "d", "b"):
        await app.create(task_id, name="x" if task_id != "d" else "y")
    await app.handle("b").abort()
    pending = [TaskState.PENDING]
    store = app.store
    assert await store.list_ids(states=pending, name="x", limit=2) == ["a", "c"]
    assert await store.list_ids(states=pending, name="x", after="a", limit=2) == ["c"]
    await app.handle("a").abort()  # behind the cursor: changes nothing ahead of it
    assert await store.list_ids(states=pending, after="a", limit=5) == ["c", "d"]
    assert await store.list_ids(after="b", limit=5) == ["c", "d"]
    assert await store.list_ids(states=[TaskState.ABORTED], limit=5) == ["a", "b"]


async def test_unclaimed_counts_queued_work_only(app: aioabort.App) -> None:
    """A record made by ``create()`` (or a scope) waits for a scope, not a worker: it has no
    queue (on every store) and no worker is missing for it; queued work with no worker is."""
    from datetime import timedelta

    await app.create("made", name="made-by-create")
    await app.create("made-nameless")

    @app.task(name="orphan")
    async def orphan() -> None: ...

    await orphan.delay()
    assert (await app.handle("made").record()).queue is None

    async def listed() -> list[tuple[str, str, int]]:
        groups = await app.unclaimed(queued_for=timedelta(0))
        return [(u.queue, u.name, u.count) for u in groups]

    await wait_until(lambda: _nonempty(listed()), what="the orphan listed")
    assert await listed() == [("default", "orphan", 1)]


async def _nonempty(listing: Awaitable[list[tuple[str, str, int]]]) -> bool:
    return bool(await listing)


async def test_creates_of_one_id_in_one_commit_keep_their_own_labels(app: aioabort.App) -> None:
    """Two producers create the same id at once (one group commit): one wins, with its own
    labels and arguments; the other gets TaskAlreadyExists and leaves no trace."""

    @app.task(name="labelled")
    async def labelled(who: str) -> None: ...

    first, second = await asyncio.gather(
        labelled.apply(["first"], task_id="same", labels={"who": "first"}),
        labelled.apply(["second"], task_id="same", labels={"who": "second"}),
        return_exceptions=True,
    )
    outcomes = {"first": first, "second": second}
    won = [who for who, outcome in outcomes.items() if isinstance(outcome, aioabort.AbortHandle)]
    lost = [who for who, outcome in outcomes.items() if who not in won]
    assert len(won) == 1 and isinstance(outcomes[lost[0]], aioabort.TaskAlreadyExists)
    record = await app.handle("same").record()
    assert record.labels == {"who": won[0]}
    assert record.args == {"args": [won[0]], "kwargs": {}}
    assert [r.id for r in await app.tasks(labels={"who": won[0]})] == ["same"]
    assert await app.tasks(labels={"who": lost[0]}) == []


async def test_watch_sees_every_progress_step(
    app: aioabort.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A progress write wakes the task's waiters (``watch()``, SSE, ``show --follow``) on
    every store: each step is seen while the task still runs."""
    monkeypatch.setattr(aioabort.AbortScope, "report_interval", 0.0)
    seen = {step: asyncio.Event() for step in (1, 2, 3)}

    async def body() -> None:
        async with aioabort.abortable("stepping", app=app) as scope:
            for step, shown in seen.items():
                await scope.report(step / 4, f"step {step}")
                await shown.wait()

    task = asyncio.create_task(body())
    await wait_until(lambda: has_state(app, "stepping", TaskState.STARTED))
    steps = []

    async def follow() -> None:
        async for record in app.handle("stepping").watch():
            if record.message is not None and record.state is TaskState.STARTED:
                step = int(record.message.split()[-1])
                if step not in steps:
                    steps.append(step)
                    seen[step].set()

    await asyncio.wait_for(asyncio.gather(follow(), task), 10)
    assert steps == [1, 2, 3]

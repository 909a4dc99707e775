"""Time is data: countdown/eta (``not_before``), expires (``expires_at``) and a per-call time
limit, on every store; the worker sleeps until the next due time, and an expired queued task
ends ABORTED (code ``expired``) whichever process sees it first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import aioabort
from aioabort import AbortReason, InvalidOption, TaskState

from .conftest import wait_until


class Timed:
    """An App with a few tasks; ``ran`` records every body run."""

    def __init__(self, url: str, **settings: Any) -> None:
        self.app = aioabort.App(url, **settings)
        self.ran: list[str] = []
        app, ran = self.app, self.ran

        @app.task(name="note")
        async def note(label: str) -> str:
            ran.append(label)
            return label

        @app.task(name="slow")
        async def slow() -> None:
            await asyncio.sleep(3600)

        self.note, self.slow = note, slow
        self._workers: list[tuple[aioabort.Worker, asyncio.Task[None]]] = []

    def start_worker(self, **options: Any) -> aioabort.Worker:
        worker = aioabort.Worker(self.app, **options)
        self._workers.append((worker, asyncio.create_task(worker.run())))
        return worker

    async def stop_workers(self) -> None:
        for worker, task in self._workers:
            worker.stop()
            await asyncio.wait_for(task, 30)
        self._workers.clear()


@pytest.fixture
async def timed(store_url: str) -> AsyncIterator[Timed]:
    lab = Timed(store_url)
    async with lab.app:
        try:
            yield lab
        finally:
            await lab.stop_workers()


def close(a: datetime | None, b: datetime | None) -> bool:
    """Equal to the millisecond (SQLite keeps times as seconds in a float)."""
    return a is not None and b is not None and abs((a - b).total_seconds()) < 0.002


async def test_countdown_sets_not_before_and_no_worker_starts_it_earlier(timed: Timed) -> None:
    timed.start_worker()
    before = datetime.now(UTC)
    handle = await timed.note.apply(["later"], countdown=0.3)
    queued = await handle.record()
    assert queued.state is TaskState.PENDING and queued.not_before is not None
    assert queued.not_before >= before + timedelta(seconds=0.3)
    assert await handle.result(timeout=10) == "later"
    record = await handle.record()
    assert record.started_at is not None and record.started_at >= queued.not_before
    assert record.to_dict()["not_before"] == queued.not_before.isoformat()


async def test_eta_is_stored_as_given_and_a_past_eta_runs_now(timed: Timed) -> None:
    eta = datetime.now(UTC) + timedelta(seconds=0.2)
    handle = await timed.note.apply(["at eta"], eta=eta)
    past = await timed.note.apply(["past"], eta=datetime.now(UTC) - timedelta(hours=1))
    assert close((await handle.record()).not_before, eta)
    timed.start_worker()
    assert await past.result(timeout=10) == "past"
    assert await handle.result(timeout=10) == "at eta"
    started = (await handle.record()).started_at
    assert started is not None and started >= eta - timedelta(milliseconds=2)


async def test_claims_take_the_earliest_due_first_and_none_before_its_time(timed: Timed) -> None:
    store = timed.app.runtime.store
    later = await timed.note.apply(["later"], countdown=3600)
    plain = await timed.note.apply(["plain"])
    earlier = await timed.note.apply(["earlier"], eta=datetime.now(UTC) - timedelta(minutes=5))
    due = await store.next_due(["default"], ["note"])
    assert due.claimable is not None and due.claimable <= 0 and due.expiring is None
    first = await store.claim(owner="o", queues=["default"], limit=1, names=["note"])
    second = await store.claim(owner="o", queues=["default"], limit=5, names=["note"])
    assert [r.id for r in first] == [earlier.id] and [r.id for r in second] == [plain.id]
    assert not await store.has_pending(["default"], ["note"])
    due = await store.next_due(["default"], ["note"])
    assert due.claimable is not None and 3500 < due.claimable <= 3600
    assert (await later.record()).state is TaskState.PENDING
    assert (await store.next_due(["other"], None)).claimable is None


async def test_an_expired_task_ends_aborted_when_a_waiter_sees_it(timed: Timed) -> None:
    # No worker runs: the waiter wakes at the expiry and ends the task itself.
    handle = await timed.note.apply(["never"], expires=0.2)
    assert (await handle.record()).expires_at is not None
    record = await handle.wait(timeout=10)
    assert record.state is TaskState.ABORTED and record.started_at is None
    assert record.reason is not None and record.reason.code == AbortReason.EXPIRED
    assert record.reason.by is not None and record.reason.by.startswith("expiry@")
    with pytest.raises(aioabort.TaskAborted) as caught:
        await handle.result(timeout=1)
    assert caught.value.reason is not None and caught.value.reason.code == "expired"


async def test_a_worker_never_runs_an_expired_task(timed: Timed) -> None:
    store = timed.app.runtime.store
    handle = await timed.note.apply(["too late"], expires=0.2)
    fine = await timed.note.apply(["in time"], countdown=0.3, expires=3600)
    # Claims skip it even before anyone has ended it.
    await wait_until(
        lambda: _expired_by_now(store, handle.id), timeout=10, what="the expiry to pass"
    )
    assert await store.claim(owner="o", queues=["default"], limit=5, names=["note"]) == []
    worker = timed.start_worker()
    assert await fine.result(timeout=10) == "in time"

    async def ended() -> bool:
        found = await store.get(handle.id)  # a plain read: the worker ends it, not this test
        return found is not None and found.state is TaskState.ABORTED

    await wait_until(ended, timeout=10, what="the worker to end the expired task")
    assert timed.ran == ["in time"] and worker.statistics().claimed == 1


async def _expired_by_now(store: aioabort.Store, task_id: str) -> bool:
    record = await store.get(task_id)
    assert record is not None and record.expires_at is not None
    return record.expires_at < datetime.now(UTC)


async def test_the_reaper_ends_expired_tasks_where_no_worker_or_waiter_runs(
    store_url: str,
) -> None:
    lab = Timed(store_url, heartbeat_interval=0.1, stale_after=1.0)
    async with lab.app:
        store = lab.app.runtime.store
        handle = await lab.note.apply(["never"], expires=0.2)

        async def ended() -> bool:
            found = await store.get(handle.id)
            return found is not None and found.state is TaskState.ABORTED

        await wait_until(ended, timeout=10, what="the reaper to end the expired task")
        record = await store.get(handle.id)
        assert record is not None and record.reason is not None
        assert record.reason.code == "expired" and lab.ran == []


async def test_a_per_call_time_limit_overrides_the_tasks_own(timed: Timed) -> None:
    timed.start_worker()
    handle = await timed.slow.apply(time_limit=0.2)
    assert (await handle.record()).time_limit == 0.2
    record = await handle.wait(timeout=10)
    assert record.state is TaskState.ABORTED
    assert record.reason is not None and record.reason.code == AbortReason.TIMEOUT


async def test_spawn_takes_a_time_limit_too(timed: Timed) -> None:
    handle = await timed.slow.apply(spawn=True, time_limit=0.2)
    record = await handle.wait(timeout=10)
    assert record.reason is not None and record.reason.code == "timeout"


async def test_an_idle_worker_wakes_at_the_due_time_not_by_polling(timed: Timed) -> None:
    # The safety-net poll is a minute: only the timer (armed from the store's earliest
    # not_before, re-armed by the push of new work) can start these in time.
    await timed.note.apply(["in an hour"], countdown=3600)
    worker = timed.start_worker(poll_interval=60)
    await asyncio.wait_for(worker.started.wait(), 10)
    store = timed.app.runtime.store
    before = store.statistics().statements
    handle = await timed.note.apply(["soon"], countdown=0.3)
    assert await handle.result(timeout=10) == "soon"
    # Queueing, a read at the push, one at the due time, the claim, the end, and on SQLite the
    # two reads that start the waiter's view of changes: a handful of statements, not one
    # per poll.
    assert store.statistics().statements - before <= 14
    assert timed.ran == ["soon"]


BAD_OPTIONS: list[dict[str, Any]] = [
    {"countdown": -1},
    {"countdown": "10"},
    {"countdown": True},
    {"countdown": float("nan")},
    {"countdown": timedelta(seconds=-5)},
    {"countdown": 10**12},
    {"eta": datetime(2030, 1, 1)},  # naive
    {"eta": "2030-01-01T00:00:00Z"},
    {"countdown": 5, "eta": datetime(2030, 1, 1, tzinfo=UTC)},
    {"expires": -1},
    {"expires": 0},
    {"expires": datetime(2030, 1, 1)},  # naive
    {"expires": datetime(2000, 1, 1, tzinfo=UTC)},  # already past
    {"countdown": 60, "expires": 30},  # expires before it may start
    {"eta": datetime(2030, 1, 2, tzinfo=UTC), "expires": datetime(2030, 1, 1, tzinfo=UTC)},
    {"time_limit": 0},
    {"time_limit": -3},
    {"time_limit": "60"},
    {"spawn": True, "countdown": 5},
    {"spawn": True, "expires": 5},
]


@pytest.mark.parametrize("options", BAD_OPTIONS, ids=repr)
async def test_bad_options_are_refused_at_the_call_and_nothing_is_written(
    timed: Timed, options: dict[str, Any]
) -> None:
    with pytest.raises(InvalidOption):
        await timed.note.apply(["x"], **options)
    assert await timed.app.tasks() == []


async def test_timedelta_and_datetime_forms_are_accepted(timed: Timed) -> None:
    eta = datetime.now(UTC) + timedelta(minutes=5)
    a = await timed.note.apply(["a"], countdown=timedelta(minutes=1), expires=timedelta(hours=1))
    b = await timed.note.apply(["b"], eta=eta, expires=eta + timedelta(minutes=1))
    ra, rb = await a.record(), await b.record()
    assert ra.not_before is not None and ra.expires_at is not None
    assert close(ra.expires_at - timedelta(minutes=59), ra.not_before)
    assert close(rb.not_before, eta) and close(rb.expires_at, eta + timedelta(minutes=1))

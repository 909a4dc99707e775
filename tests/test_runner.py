"""Tasks and the worker, in one process, on every store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

import aioabort
from aioabort import TaskAborted, TaskFailed, TaskState
from aioabort._state import RUNNING_STATES

from .conftest import has_state, wait_until


class Lab:
    """An App with tasks registered and a worker running; ``ran`` records every body run."""

    def __init__(self, url: str) -> None:
        self.app = aioabort.App(url)
        self.ran: list[str] = []
        self.release = asyncio.Event()
        app, ran = self.app, self.ran

        @app.task
        async def add(a: int, b: int) -> int:
            ran.append("add")
            return a + b

        @app.task
        async def wait_forever(label: str = "") -> None:
            ran.append(f"wait:{label}")
            await asyncio.sleep(3600)

        @app.task
        async def swallow() -> str:
            ran.append("swallow")
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass
            return "kept going"

        @app.task(time_limit=0.2)
        async def too_slow() -> None:
            await asyncio.sleep(3600)

        @app.task
        async def bad_result() -> Any:
            return {1, 2}

        @app.task
        async def boom() -> None:
            raise ValueError("boom")

        @app.task
        async def gated(label: str) -> str:
            ran.append(f"gated:{label}")
            await self.release.wait()
            return label

        @app.task(retryable=True)
        async def retry_me() -> str:
            ran.append("retry_me")
            await asyncio.sleep(3600)
            return "never"

        @app.task
        async def family(detached_too: bool = False) -> None:
            await wait_forever.delay("child")
            if detached_too:
                await wait_forever.apply(["detached"], detached=True)
            await asyncio.sleep(3600)

        self.add, self.wait_forever, self.swallow, self.too_slow = (
            add,
            wait_forever,
            swallow,
            too_slow,
        )
        self.bad_result, self.boom, self.gated, self.retry_me = bad_result, boom, gated, retry_me
        self.family = family
        self.worker: aioabort.Worker | None = None
        self._worker_task: asyncio.Task[None] | None = None

    def start_worker(self, **options: Any) -> aioabort.Worker:
        self.worker = aioabort.Worker(self.app, **options)
        self._worker_task = asyncio.create_task(self.worker.run())
        return self.worker

    async def stop_worker(self) -> None:
        if self.worker is not None and self._worker_task is not None:
            self.worker.stop()
            await asyncio.wait_for(self._worker_task, 30)
            self.worker = None


@pytest.fixture
async def lab(store_url: str) -> AsyncIterator[Lab]:
    lab = Lab(store_url)
    async with lab.app:
        try:
            yield lab
        finally:
            await lab.stop_worker()


async def test_delay_runs_on_the_worker_and_stores_the_result(lab: Lab) -> None:
    lab.start_worker()
    handle = await lab.add.delay(2, 3)
    assert await handle.result(timeout=10) == 5
    record = await handle.record()
    assert record.name == lab.add.name and record.args == {"args": [2, 3], "kwargs": {}}
    assert record.attempts == 1 and record.queue == "default"


async def test_calling_the_task_runs_the_function_here(lab: Lab) -> None:
    assert await lab.add(1, 1) == 2
    assert await lab.app.tasks() == []


async def test_abort_while_pending_never_runs(lab: Lab) -> None:
    handle = await lab.wait_forever.delay("never")
    assert await handle.abort("not needed") is True
    lab.start_worker()
    with pytest.raises(TaskAborted):
        await handle.result(timeout=5)
    other = await lab.add.delay(1, 1)  # the worker is alive and claiming
    assert await other.result(timeout=10) == 2
    assert "wait:never" not in lab.ran
    record = await handle.record()
    assert record.state is TaskState.ABORTED and record.started_at is None


async def test_abort_while_running_ends_aborted_with_reason(lab: Lab) -> None:
    lab.start_worker()
    handle = await lab.wait_forever.delay("x")
    await wait_until(lambda: has_state(lab.app, handle.id, *RUNNING_STATES))
    assert await handle.abort("stop it", by="operator") is True
    with pytest.raises(TaskAborted) as info:
        await handle.result(timeout=10)
    assert info.value.reason is not None
    assert (info.value.reason.message, info.value.reason.by) == ("stop it", "operator")
    assert (await handle.record()).state is TaskState.ABORTED


async def test_task_that_swallows_the_abort_ends_success_with_request_kept(lab: Lab) -> None:
    lab.start_worker()
    handle = await lab.swallow.delay()
    await wait_until(lambda: "swallow" in lab.ran)
    await handle.abort("please")
    assert await handle.result(timeout=10) == "kept going"
    record = await handle.record()
    assert record.state is TaskState.SUCCESS
    assert record.reason is not None and record.reason.message == "please"


async def test_time_limit_aborts_with_code_timeout(lab: Lab) -> None:
    lab.start_worker()
    handle = await lab.too_slow.delay()
    with pytest.raises(TaskAborted) as info:
        await handle.result(timeout=10)
    assert info.value.reason is not None and info.value.reason.code == "timeout"


async def test_failures_are_recorded(lab: Lab) -> None:
    lab.start_worker()
    boom = await lab.boom.delay()
    with pytest.raises(TaskFailed) as info:
        await boom.result(timeout=10)
    assert info.value.error is not None
    assert (info.value.error.type, info.value.error.message) == ("ValueError", "boom")
    bad = await lab.bad_result.delay()
    with pytest.raises(TaskFailed) as info:
        await bad.result(timeout=10)
    assert info.value.error is not None and info.value.error.type == "NotJSONSerializable"


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((object(),), {}), (({1: "int key"},), {}), ((float("nan"),), {}), (("x" * 2_000_000,), {})],
    ids=["object", "int-key", "nan", "huge"],
)
async def test_non_json_arguments_are_refused_before_anything_is_written(
    lab: Lab, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(aioabort.NotJSONSerializable):
        await lab.wait_forever.delay(*args, **kwargs)
    assert await lab.app.tasks() == []


async def test_arguments_that_do_not_fit_are_refused(lab: Lab) -> None:
    with pytest.raises(aioabort.InvalidArguments, match="wrong arguments"):
        await lab.add.delay(1)  # type: ignore[call-arg]
    with pytest.raises(aioabort.InvalidArguments):
        await lab.add.delay(1, 2, c=3)  # type: ignore[call-arg]
    assert await lab.app.tasks() == []


async def test_a_worker_claims_only_the_tasks_it_registered(lab: Lab, store_url: str) -> None:
    """DESIGN rule 14: a task of a name this worker does not know (another version's, another
    app's) stays queued for a worker that knows it; it is not claimed and failed."""
    async with aioabort.App(store_url) as producer:

        @producer.task(name="only.in.the.producer")
        async def elsewhere() -> None:
            pass

        handle = await elsewhere.delay()
        lab.start_worker()
        # Queued after it and run by this worker: its claims went past the older one.
        later = await lab.add.delay(1, 2)
        assert await later.result(timeout=10) == 3
        record = await producer.handle(handle.id).record()
    assert record.state is TaskState.PENDING and record.attempts == 0


async def test_unclaimed_names_the_tasks_no_live_worker_can_run(lab: Lab, store_url: str) -> None:
    """``app.unclaimed()`` (what ``aioabort tasks`` warns about): queued tasks of a name no
    live worker registered, or on a queue no worker serves, by queue and name; a task a
    worker could claim is not listed, and a stopped worker no longer counts."""
    now = timedelta(0)
    async with aioabort.App(store_url) as producer:

        @producer.task(name="only.in.the.producer")
        async def elsewhere() -> None:
            pass

        first = await elsewhere.delay()
        await elsewhere.delay()
        await lab.add.apply([1, 2], queue="nobody-serves-this")
        worker = lab.start_worker(concurrency=1)
        await asyncio.wait_for(worker.started.wait(), 10)
        claimable = await lab.add.delay(1, 2)  # run at once, never listed
        assert await claimable.result(timeout=10) == 3

        async def listed() -> list[tuple[str, str, int]]:
            groups = await lab.app.unclaimed(queued_for=now)
            return sorted((u.queue, u.name, u.count) for u in groups)

        async def both_groups() -> bool:
            return await listed() == [
                ("default", "only.in.the.producer", 2),
                ("nobody-serves-this", lab.add.name, 1),
            ]

        await wait_until(both_groups, timeout=10)
        groups = await producer.unclaimed(queued_for=now)
        assert groups[0].oldest == (await first.record()).created_at
        # Queued for less than an hour: not yet "nobody can run it".
        assert await lab.app.unclaimed(queued_for=timedelta(hours=1)) == []
        with pytest.raises(aioabort.UsageError, match="queued_for"):
            await lab.app.unclaimed(queued_for=-now - timedelta(seconds=1))

        # A worker that is busy still counts: what it serves is not listed ...
        await lab.gated.delay("hold")
        await wait_until(lambda: "gated:hold" in lab.ran, timeout=10)
        queued = await lab.add.delay(3, 4)
        assert ("default", lab.add.name, 1) not in await listed()
        # ... but one not heard from within the judge's stale_after may be dead: it does not.
        async with aioabort.App(store_url, heartbeat_interval=0.05, stale_after=0.1) as judge:

            async def judged_dead() -> bool:
                groups = await judge.unclaimed(queued_for=now)
                return ("default", lab.add.name, 1) in [(u.queue, u.name, u.count) for u in groups]

            await wait_until(judged_dead, timeout=15)
        # With no worker, a queued add on the served queue waits for nobody either.
        lab.release.set()
        await lab.stop_worker()

        async def three_groups() -> bool:
            return ("default", lab.add.name, 1) in await listed()

        await wait_until(three_groups, timeout=10)
        assert (await queued.record()).state is TaskState.PENDING


async def test_a_queue_stays_served_while_another_worker_claims_from_it(lab: Lab) -> None:
    """Two workers of one App share a queue: when one stops, the queue they shared is still
    served (its queued tasks are not "unclaimed"); the queue only it served is not."""
    now = timedelta(0)
    busy = lab.start_worker(concurrency=1)
    await asyncio.wait_for(busy.started.wait(), 10)
    await lab.gated.delay("hold")  # the first worker is busy from now on
    await wait_until(lambda: "gated:hold" in lab.ran, timeout=10)
    other = aioabort.Worker(lab.app, queues=["default", "side"], concurrency=1)
    running = asyncio.create_task(other.run())
    await asyncio.wait_for(other.started.wait(), 10)
    other.stop()
    await asyncio.wait_for(running, 10)
    await lab.add.delay(1, 2)  # on default, which the busy worker still serves
    await lab.add.apply([3, 4], queue="side")  # on side, which nobody serves now

    async def side_only() -> bool:
        groups = await lab.app.unclaimed(queued_for=now)
        return [(u.queue, u.count) for u in groups] == [("side", 1)]

    await wait_until(side_only, timeout=10)
    lab.release.set()


async def test_send_task_by_name(lab: Lab) -> None:
    lab.start_worker()
    handle = await lab.app.send_task(lab.add.name, [4, 5])
    assert await handle.result(timeout=10) == 9
    queued = await lab.app.send_task("no.such.task")  # waits for a worker that knows it
    assert await queued.state() is TaskState.PENDING


async def test_registration_errors(lab: Lab) -> None:
    def not_async() -> None:
        pass

    with pytest.raises(aioabort.UsageError, match="async def"):
        lab.app.task(not_async)  # type: ignore[arg-type]
    with pytest.raises(aioabort.UsageError, match="already registered"):
        lab.app.task(name=lab.add.name)(lab.add.fn)
    for bad in (0, -1, True, "5"):
        with pytest.raises(aioabort.UsageError):

            @lab.app.task(name=f"bad-limit-{bad!r}", time_limit=bad)  # type: ignore[arg-type]
            async def limited() -> None:
                pass

    with pytest.raises(aioabort.UsageError):

        @lab.app.task(name="bad-queue", queue="")
        async def queued() -> None:
            pass


async def test_worker_settings_are_checked(lab: Lab) -> None:
    with pytest.raises(aioabort.UsageError):
        aioabort.Worker(lab.app, concurrency=0)
    with pytest.raises(aioabort.UsageError):
        aioabort.Worker(lab.app, queues=[])
    with pytest.raises(aioabort.UsageError):
        aioabort.Worker(lab.app, grace=-1)


async def test_concurrency_is_respected(lab: Lab) -> None:
    lab.start_worker(concurrency=2)
    handles = [await lab.gated.delay(str(i)) for i in range(5)]
    await wait_until(lambda: len(lab.ran) == 2)
    # Two slots, both busy: the worker claimed two and left three queued.
    assert lab.worker is not None
    assert (lab.worker.statistics().claimed, lab.worker.statistics().running) == (2, 2)
    assert (await lab.app.counts())[TaskState.PENDING] == 3
    lab.release.set()
    assert [await h.result(timeout=10) for h in handles] == [str(i) for i in range(5)]


async def test_two_workers_never_run_a_task_twice(lab: Lab, store_url: str) -> None:
    lab.start_worker(concurrency=8)
    second = Lab(store_url)
    async with second.app:
        second.start_worker(concurrency=8)
        try:
            handles = [await lab.add.delay(i, i) for i in range(150)]
            results = [await h.result(timeout=30) for h in handles]
        finally:
            await second.stop_worker()
    assert results == [2 * i for i in range(150)]
    assert len(lab.ran) + len(second.ran) == 150
    records = await lab.app.tasks(limit=1000)
    assert all(r.attempts == 1 for r in records)


async def test_parent_abort_reaches_children_but_not_the_reverse(lab: Lab) -> None:
    lab.start_worker(concurrency=10)
    parent = await lab.family.delay(detached_too=True)
    await wait_until(lambda: "wait:child" in lab.ran and "wait:detached" in lab.ran)
    children = [r for r in await lab.app.tasks() if r.parent_id == parent.id]
    assert len(children) == 1
    child = lab.app.handle(children[0].id)
    detached = next(
        r for r in await lab.app.tasks() if r.args == {"args": ["detached"], "kwargs": {}}
    )
    assert detached.parent_id is None

    # A child's abort never reaches its parent...
    assert await parent.state() is TaskState.STARTED
    # ...and the parent's reaches every unfinished child, on any worker.
    assert await parent.abort("cancel the whole job") is True
    with pytest.raises(TaskAborted):
        await parent.result(timeout=10)
    with pytest.raises(TaskAborted) as info:
        await child.result(timeout=10)
    assert info.value.reason is not None and info.value.reason.code == "parent"
    assert parent.id in info.value.reason.message
    assert await lab.app.handle(detached.id).state() is TaskState.STARTED
    await lab.app.handle(detached.id).abort()


async def test_child_abort_does_not_reach_the_parent(lab: Lab) -> None:
    lab.start_worker(concurrency=10)
    parent = await lab.family.delay()
    await wait_until(lambda: "wait:child" in lab.ran)
    child = next(r for r in await lab.app.tasks() if r.parent_id == parent.id)
    await lab.app.handle(child.id).abort("just the child")
    with pytest.raises(TaskAborted):
        await lab.app.handle(child.id).result(timeout=10)
    assert await parent.state() is TaskState.STARTED
    await parent.abort()


async def test_child_queued_under_an_aborted_parent_is_born_aborted(lab: Lab) -> None:
    async with aioabort.abortable("root", suppress=True) as root:
        await lab.app.handle("root").abort("stop all")
        with pytest.raises(asyncio.CancelledError):
            await asyncio.sleep(1)
        with anyio_shield():
            late = await lab.wait_forever.delay("late child")
        await asyncio.sleep(1)  # level-triggered: cancelled again here
    assert root.aborted
    record = await late.record()
    assert record.state is TaskState.ABORTED and record.parent_id == "root"
    assert record.reason is not None and record.reason.code == "parent"


def anyio_shield() -> Any:
    import anyio

    return anyio.CancelScope(shield=True)


async def test_spawn_runs_here_and_is_abortable_from_another_app(lab: Lab, store_url: str) -> None:
    handle = await lab.wait_forever.spawn("spawned")
    await wait_until(lambda: "wait:spawned" in lab.ran)
    async with aioabort.App(store_url) as other:
        assert await other.handle(handle.id).abort("from elsewhere") is True
        record = await other.handle(handle.id).wait(timeout=10)
    assert record.state is TaskState.ABORTED
    assert record.queue is None  # never visible to workers


async def test_graceful_stop_lets_running_tasks_finish(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="aioabort.worker")
    worker = lab.start_worker(grace=10)
    handle = await lab.gated.delay("drain")
    await wait_until(lambda: "gated:drain" in lab.ran)
    worker.stop()
    await wait_until(
        lambda: any(getattr(r, "action", "") == "worker_draining" for r in caplog.records),
        what="the worker to start draining",
    )
    assert await handle.state() is TaskState.STARTED  # draining: still running in the grace
    lab.release.set()
    assert await handle.result(timeout=10) == "drain"
    await lab.stop_worker()


async def test_stop_after_grace_aborts_with_shutdown_and_requeues_retryable(lab: Lab) -> None:
    worker = lab.start_worker(grace=0.1)
    plain = await lab.wait_forever.delay("plain")
    retry = await lab.retry_me.delay()
    await wait_until(lambda: "wait:plain" in lab.ran and "retry_me" in lab.ran)
    await lab.stop_worker()
    with pytest.raises(TaskAborted) as info:
        await plain.result(timeout=5)
    assert info.value.reason is not None and info.value.reason.code == "shutdown"
    record = await retry.record()
    assert record.state is TaskState.PENDING and record.reason is None and record.owner is None
    assert worker.statistics().requeued == 1 and worker.statistics().aborted == 1
    # A new worker picks the retryable task up again.
    lab.start_worker()
    await wait_until(lambda: lab.ran.count("retry_me") == 2)
    assert (await retry.record()).attempts == 2
    await retry.abort()


async def test_second_stop_aborts_at_once(lab: Lab) -> None:
    worker = lab.start_worker(grace=3600)
    handle = await lab.wait_forever.delay("hurry")
    await wait_until(lambda: "wait:hurry" in lab.ran)
    worker.stop()
    worker.stop()  # a second signal
    with pytest.raises(TaskAborted):
        await handle.result(timeout=10)


async def test_a_shutdown_does_not_travel_to_queued_children(lab: Lab) -> None:
    """DESIGN rule 15: a web server that restarts aborts its requests with code ``shutdown``;
    the jobs those requests queued keep their place (and jobs queued after it are not born
    aborted). An abort by a user still reaches them."""
    shutdown = aioabort.AbortReason(aioabort.AbortReason.SHUTDOWN, "the server restarts")
    async with aioabort.abortable("request-a", suppress=True):
        queued = await lab.wait_forever.apply(["a"], queue="elsewhere")
        await lab.app.handle("request-a").abort(shutdown)
        with anyio_shield():
            later = await lab.wait_forever.apply(["later"], queue="elsewhere")
        await asyncio.sleep(1)  # level-triggered: cancelled here
    for handle in (queued, later):
        record = await handle.record()
        assert record.parent_id == "request-a"
        assert record.state is TaskState.PENDING and record.reason is None
    async with aioabort.abortable("request-b", suppress=True):
        child = await lab.wait_forever.apply(["b"], queue="elsewhere")
        await lab.app.handle("request-b").abort("the user cancelled")
        await asyncio.sleep(1)
    record = await child.record()
    assert record.state is TaskState.ABORTED
    assert record.reason is not None and record.reason.code == "parent"


async def test_a_spawned_task_aborted_before_it_began_never_runs(app: aioabort.App) -> None:
    """spawn() runs the task in this process once its record is created; an abort that comes
    in between (here: before the run begins, deterministically) stops it before the function
    runs at all — not even its code before the first await."""
    from aioabort._runner import execute, make_scope

    ran: list[str] = []

    @app.task(name="effect")
    async def effect() -> None:
        ran.append("effect")  # a side effect before any await
        await asyncio.sleep(60)

    handle = await effect.apply(task_id="spawned-early")
    assert await handle.abort("not now") is True
    record = await handle.record()
    scope = await execute(make_scope(app, effect, record, claimed=False), effect, record)
    assert ran == []
    assert scope is not None and scope.aborted
    record = await handle.record()
    assert record.state is TaskState.ABORTED and record.started_at is None

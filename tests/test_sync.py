"""``aioabort.sync``: the App's producer side for code that does not await, on SQLite and
PostgreSQL (its loop thread is another event loop: the stores other loops reach)."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

import aioabort
import aioabort.sync
from aioabort import TaskState

from ._processes import child_scope, python, run

pytestmark = pytest.mark.real_stores


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "aioabort-sync-loop"]


def test_the_producer_calls_without_await(store_url: str) -> None:
    with aioabort.sync.App(store_url) as app:
        queued = app.send_task("reports.build", args=[1], labels={"user": "alice"})
        assert queued.state() is TaskState.PENDING
        assert not queued.is_aborted()
        assert queued.abort(reason="not needed") is True
        assert queued.abort(reason="again") is False
        assert queued.is_aborted()
        record = queued.wait(timeout=10)
        assert (record.state, record.reason and record.reason.message) == (
            TaskState.ABORTED,
            "not needed",
        )
        with pytest.raises(aioabort.TaskAborted):
            queued.result(timeout=10)
        assert queued.record().labels == {"user": "alice"}
        other = app.send_task("reports.build", args=[2], labels={"user": "bob"})
        assert [r.id for r in app.tasks(labels={"user": "bob"})] == [other.id]
        assert app.abort_many(labels={"user": "bob"}, reason="bulk") == [other.id]
        assert app.purge(older_than=timedelta(0)) == 2
        with pytest.raises(aioabort.TaskNotFound):
            app.handle("no-such-task").state()
        assert app.handle("no-such-task").abort() is False
        with pytest.raises(TimeoutError):
            app.send_task("reports.build").wait(timeout=0.05)
        assert app.handle(queued.id) == queued
        keyed = app.send_task("reports.build", key="report:carol", countdown=60)
        assert [r.id for r in app.tasks(key="report:carol")] == [keyed.id]


def test_bad_input_is_refused_at_the_call(store_url: str) -> None:
    with aioabort.sync.App(store_url) as app:
        with pytest.raises(aioabort.InvalidTaskId):
            app.handle("")
        with pytest.raises(aioabort.NotJSONSerializable):
            app.send_task("x", args=[object()])
        with pytest.raises(aioabort.InvalidReason):
            app.handle("t").abort(reason=aioabort.AbortReason(code=""))
        assert app.tasks() == []
    with pytest.raises(aioabort.InvalidURL):
        aioabort.sync.App("nosuch://x")


async def test_a_sync_call_on_a_running_loop_is_refused(store_url: str) -> None:
    app = aioabort.sync.App(store_url)
    with pytest.raises(aioabort.BlockingCallInEventLoop, match="running event loop"):
        app.handle("t").state()
    with pytest.raises(aioabort.BlockingCallInEventLoop):
        app.open()
    # from a thread it works: what asgiref's sync_to_async and asyncio.to_thread do
    assert await asyncio.to_thread(app.handle("t").is_aborted) is False
    await asyncio.to_thread(app.close)


def test_a_closed_app_says_so(store_url: str) -> None:
    app = aioabort.sync.App(store_url)
    app.handle("t").is_aborted()
    app.close()
    app.close()  # twice is fine
    assert app.closed
    with pytest.raises(aioabort.AppClosed, match="after close"):
        app.handle("t").abort()
    never_opened = aioabort.sync.App(store_url)
    never_opened.close()
    with pytest.raises(aioabort.AppClosed):
        never_opened.tasks()


async def test_aborts_a_scope_running_in_another_process(store_url: str) -> None:
    app = aioabort.sync.App(store_url)
    try:
        async with child_scope(store_url, "sync-victim") as child:
            assert await child.line() == "READY"
            handle = app.handle("sync-victim")
            assert await asyncio.to_thread(handle.abort, "from sync code", by="ops")
            assert await child.line() == "ABORTED user from sync code"
            record = await asyncio.to_thread(handle.wait, 10)
            assert record.state is TaskState.ABORTED
            assert record.reason is not None and record.reason.by == "ops"
    finally:
        await asyncio.to_thread(app.close)


def test_threads_share_one_loop_and_one_app(store_url: str) -> None:
    with aioabort.sync.App(store_url) as app, aioabort.sync.App(store_url) as second:
        before = len(loop_threads())

        def work(i: int) -> bool:
            handle = app.send_task("jobs.x", task_id=f"thread-{i}")
            return handle.abort(reason=f"by thread {i}") and second.handle(handle.id).is_aborted()

        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(work, range(40)))
        assert len(loop_threads()) == before == 1
        assert len(app.tasks(states=["ABORTED"], limit=100)) == 40


#: A process of its own (forking pytest's many threads could hang the child on their locks):
#: it opens a sync App, forks, and the child uses the App with its own loop and connections.
FORKED = """
import os, sys, threading
import aioabort.sync

def loops():
    return [t for t in threading.enumerate() if t.name == "aioabort-sync-loop"]

with aioabort.sync.App(sys.argv[1]) as app:
    app.send_task("jobs.x", task_id="before-fork")
    parent_loop = loops()[0]
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ok = app.handle("before-fork").abort(reason="from the child")
            ours = loops()
            code = 0 if ok and len(ours) == 1 and ours[0] is not parent_loop else 2
            app.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    record = app.handle("before-fork").record()
    assert record.reason is not None and record.reason.message == "from the child"
    assert app.send_task("jobs.x").state().value == "PENDING"
print("OK")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_opens_its_own_loop_and_connections(store_url: str) -> None:
    done = run(python("-c", FORKED, store_url), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK"

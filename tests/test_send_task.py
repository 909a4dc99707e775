"""Queueing by name: ``App.send_task()`` from a producer that never imports the task."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest

import aioabort
from aioabort import TaskState

from ._processes import cli, run


def worker_app(url: str, ran: list[str]) -> aioabort.App:
    """The worker's side: the only App that knows ``reports.build``."""
    app = aioabort.App(url)

    @app.task(name="reports.build")
    async def build(n: int, *, title: str = "") -> str:
        ran.append(title)
        return f"{title}:{n}"

    return app


async def test_a_producer_queues_a_task_it_never_imported(store_url: str) -> None:
    ran: list[str] = []
    producer, workers = aioabort.App(store_url), worker_app(store_url, ran)
    async with producer, workers:
        assert producer.registry == {}
        handle = await producer.send_task("reports.build", args=[3], kwargs={"title": "q"})
        record = await handle.record()
        assert (record.state, record.name, record.args) == (
            TaskState.PENDING,
            "reports.build",
            {"args": [3], "kwargs": {"title": "q"}},
        )
        worker = aioabort.Worker(workers, concurrency=1)
        running = asyncio.create_task(worker.run())
        try:
            assert await producer.handle(handle.id).result(timeout=10) == "q:3"
        finally:
            worker.stop()
            await asyncio.wait_for(running, 10)
        assert ran == ["q"]


async def test_a_name_no_worker_knows_waits_and_is_listed_as_unclaimed(app: aioabort.App) -> None:
    handle = await app.send_task("v2.export", kwargs={"user": "alice"}, queue="bulk")
    assert await handle.state() is TaskState.PENDING
    groups = await app.unclaimed(queued_for=timedelta(0))
    assert [(g.queue, g.name, g.count) for g in groups] == [("bulk", "v2.export", 1)]
    assert await handle.abort(reason="never mind")
    assert await handle.state() is TaskState.ABORTED  # queued, so it never runs


async def test_unclaimed_of_zero_lists_what_was_queued_this_instant(app: aioabort.App) -> None:
    """``queued_for=0`` lists a task queued in the same clock tick (a store's clock reads whole
    milliseconds): "queued at or before the cutoff"."""
    for n in range(40):
        handle = await app.send_task("nobody.knows", queue=f"q{n}")
        groups = await app.unclaimed(queued_for=timedelta(0))
        assert (f"q{n}", "nobody.knows", 1) in [(g.queue, g.name, g.count) for g in groups], n
        await handle.abort("listed")


async def test_send_task_takes_the_options_of_apply(app: aioabort.App) -> None:
    async with aioabort.abortable("parent-1"):
        child = await app.send_task("any.name", task_id="by-name-1", labels={"user": "bob"})
        loose = await app.send_task("any.name", detached=True)
    record = await child.record()
    assert (child.id, record.labels, record.parent_id) == ("by-name-1", {"user": "bob"}, "parent-1")
    assert (await loose.record()).parent_id is None
    with pytest.raises(aioabort.TaskAlreadyExists):
        await app.send_task("any.name", task_id="by-name-1")
    with pytest.raises(TypeError):
        await app.send_task("any.name", no_such_option=1)


@pytest.mark.parametrize(
    ("args", "kwargs", "options", "error"),
    [
        ([{1, 2}], None, {}, aioabort.NotJSONSerializable),
        ([], {"when": object()}, {}, aioabort.NotJSONSerializable),
        ([float("nan")], None, {}, aioabort.NotJSONSerializable),
        ("abc", None, {}, aioabort.UsageError),
        ([], [1], {}, aioabort.UsageError),
        ([], None, {"queue": ""}, aioabort.UsageError),
        ([], None, {"labels": {"": "x"}}, aioabort.UsageError),
        ([], None, {"task_id": ""}, aioabort.InvalidTaskId),
        ([], None, {"spawn": True}, aioabort.UsageError),
    ],
)
async def test_bad_input_is_refused_at_the_call_and_writes_nothing(
    app: aioabort.App, args: object, kwargs: object, options: dict[str, object], error: type
) -> None:
    with pytest.raises(error):
        await app.send_task("any.name", args, kwargs, **options)  # type: ignore[arg-type]
    with pytest.raises(aioabort.InvalidText):
        await app.send_task("bad\x00name")
    assert await app.tasks() == []


async def test_a_registered_name_is_checked_against_its_signature(app: aioabort.App) -> None:
    @app.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(aioabort.InvalidArguments):
        await app.send_task("add", [1])
    handle = await app.send_task("add", [1, 2], spawn=True)  # registered: runs here
    assert await handle.result(timeout=10) == 3


def test_cli_lists_what_was_queued_by_name(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'byname.db'}"

    async def queue() -> None:
        async with aioabort.App(url) as app:
            await app.send_task("billing.invoice", args=[7])

    asyncio.run(queue())
    done = run(cli("--db", url, "tasks", "--unclaimed", "--unclaimed-after", "0s", "--json"))
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert [(g["queue"], g["name"], g["count"]) for g in found] == [
        ("default", "billing.invoice", 1)
    ]

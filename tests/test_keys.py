"""One key, one live task: ``apply(key=..., supersede=True)`` aborts the key's unfinished
earlier tasks (code ``superseded``, the reason naming the new id) in the transaction that
queues the new one, on every store; producers racing on a key leave exactly one live task."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import aioabort
from aioabort import AbortReason, InvalidOption, TaskAlreadyExists, TaskState

from .conftest import has_state, wait_until


def keyed_app(url: str) -> tuple[aioabort.App, aioabort.Task[[str], str]]:
    app = aioabort.App(url)

    @app.task(name="report")
    async def report(user: str) -> str:
        await asyncio.sleep(3600)
        return user

    return app, report


@pytest.fixture
async def keyed(store_url: str) -> AsyncIterator[tuple[aioabort.App, aioabort.Task[[str], str]]]:
    app, report = keyed_app(store_url)
    async with app:
        yield app, report


def live(records: list[aioabort.TaskRecord]) -> list[str]:
    """The ids of the records that are unfinished and have no abort request."""
    return [r.id for r in records if not r.is_finished and r.reason is None]


async def test_a_new_task_supersedes_the_queued_one_of_its_key(
    keyed: tuple[aioabort.App, aioabort.Task[[str], str]],
) -> None:
    app, report = keyed
    first = await report.apply(["alice"], key="report:alice")
    other = await report.apply(["bob"], key="report:bob")
    second = await report.apply(["alice"], key="report:alice", supersede=True)
    old = await first.record()
    assert old.state is TaskState.ABORTED and old.key == "report:alice"
    assert old.reason is not None and old.reason.code == AbortReason.SUPERSEDED
    assert second.id in old.reason.message and old.started_at is None
    new = await second.record()
    assert new.state is TaskState.PENDING and new.reason is None and new.key == "report:alice"
    assert (await other.record()).reason is None  # another key is left alone
    assert {r.id for r in await app.tasks(key="report:alice")} == {first.id, second.id}
    assert [r.id for r in await app.tasks(key="report:bob")] == [other.id]
    assert await app.tasks(key="report:carol") == []
    assert (await second.record()).to_dict()["key"] == "report:alice"


async def test_a_running_task_of_the_key_is_stopped(
    keyed: tuple[aioabort.App, aioabort.Task[[str], str]],
) -> None:
    app, report = keyed
    worker = aioabort.Worker(app)
    running = asyncio.create_task(worker.run())
    try:
        first = await report.apply(["alice"], key="k")
        await _until(app, first.id, TaskState.STARTED)
        second = await report.apply(["alice"], key="k", supersede=True)
        record = await first.wait(timeout=10)
        assert record.state is TaskState.ABORTED and record.started_at is not None
        assert record.reason is not None and record.reason.code == "superseded"
        await _until(app, second.id, TaskState.STARTED)
    finally:
        worker.stop_now()
        await asyncio.wait_for(running, 30)


async def _until(app: aioabort.App, task_id: str, state: TaskState) -> None:
    await wait_until(lambda: has_state(app, task_id, state), what=f"{task_id} {state}")


async def test_without_supersede_a_key_is_only_a_name(
    keyed: tuple[aioabort.App, aioabort.Task[[str], str]],
) -> None:
    app, report = keyed
    await report.apply(["a"], key="k")
    await report.apply(["a"], key="k")
    assert len(live(await app.tasks(key="k"))) == 2


async def test_a_taken_id_supersedes_nothing(
    keyed: tuple[aioabort.App, aioabort.Task[[str], str]],
) -> None:
    _, report = keyed
    first = await report.apply(["a"], key="k", task_id="taken")
    with pytest.raises(TaskAlreadyExists):
        await report.apply(["a"], key="k", task_id="taken", supersede=True)
    assert (await first.record()).reason is None


async def test_racing_producers_on_one_key_leave_exactly_one_live_task(store_url: str) -> None:
    # Four Apps (four connections, four transactions) queue on one key at once, 50 times.
    apps = [keyed_app(store_url) for _ in range(4)]
    for app, _ in apps:
        await app.open()
    try:
        for round_ in range(50):
            key = f"race:{round_}"
            handles = await asyncio.gather(
                *(report.apply(["x"], key=key, supersede=True) for _, report in apps)
            )
            records = await apps[0][0].tasks(key=key)
            assert len(records) == 4 and {r.id for r in records} == {h.id for h in handles}
            assert len(live(records)) == 1, [(r.id, r.state, r.reason) for r in records]
            for record in records:
                if record.reason is not None:
                    assert record.reason.code == "superseded"
                    assert record.reason.message.split()[-1] in {h.id for h in handles}
    finally:
        for app, _ in apps:
            await app.aclose()


BAD_KEYS: list[dict[str, Any]] = [
    {"key": ""},
    {"key": 42},
    {"key": "x" * 201},
    {"key": "two\nlines"},
    {"key": "nul\x00"},
    {"supersede": True},
    {"key": "k", "supersede": "yes"},
]


@pytest.mark.parametrize("options", BAD_KEYS, ids=repr)
async def test_bad_keys_are_refused_at_the_call_and_nothing_is_written(
    keyed: tuple[aioabort.App, aioabort.Task[[str], str]], options: dict[str, Any]
) -> None:
    app, report = keyed
    earlier = await report.apply(["a"], key="k")
    with pytest.raises(InvalidOption):
        await report.apply(["a"], **options)
    assert [r.id for r in await app.tasks()] == [earlier.id]
    assert (await earlier.record()).reason is None


@pytest.mark.parametrize("key", ["", 42, "x" * 201, "a\nb"], ids=repr)
async def test_a_bad_key_filter_is_refused(
    keyed: tuple[aioabort.App, aioabort.Task[[str], str]], key: Any
) -> None:
    with pytest.raises(InvalidOption):
        await keyed[0].tasks(key=key)

"""Celery's own ``celery.contrib.abortable`` examples (docs/examples/celery_abortable: the 5.x
page's decorated task, the 3.1 page's class-based task), with only the import changed, run by
a real worker and aborted by their own producer code (its ``myview``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import aioabort
from aioabort import TaskState
from aioabort.celery import _bridge

from ._brokers import Broker
from ._processes import ROOT, environment, module, python, run, started
from .conftest import wait_until

pytestmark = [pytest.mark.real_stores, pytest.mark.slow]

EXAMPLES = ROOT / "docs" / "examples" / "celery_abortable"

#: The producer's ``myview(request)`` as it is, its ``time.sleep(10)`` made 2 s.
PRODUCER = """
import time, types
from {project} import views
views.time = types.SimpleNamespace(sleep=lambda seconds: time.sleep(seconds / 5))
views.myview(None)
"""


@pytest.mark.parametrize(
    ("project", "name"),
    [
        ("proj", "proj.tasks.long_running_task"),
        ("myproject", "myproject.tasks.MyLongRunningTask"),
    ],
)
async def test_celerys_example_runs_and_is_aborted(
    store_url: str, redis_server: Broker, tmp_path: Path, project: str, name: str
) -> None:
    env = environment(
        store_url,
        CELERY_BROKER=f"{redis_server.url}/0",
        EXPENSIVE_SECONDS="0.2",
        PYTHONPATH=f"{EXAMPLES}:{ROOT}",
    )
    command = module("celery", "-A", f"{project}.celery", "worker", "-P", "prefork", "-c", "1")
    command += ["--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "INFO"]
    try:
        async with (
            started(command, env=env, cwd=tmp_path, name=f"celery worker ({project})") as worker,
            aioabort.App(store_url) as app,
        ):
            await worker.said(" ready.")
            done = await asyncio.to_thread(
                run, python("-c", PRODUCER.format(project=project)), env=env, cwd=tmp_path
            )
            assert done.returncode == 0, done.stderr
            await worker.said("Task aborted")  # the task saw the abort and returned
            records = await app.tasks(name=name)
            assert len(records) == 1
            record = await app.handle(records[0].id).wait(timeout=30)
            # It returned: SUCCESS, with the abort request kept (never ABORTED when it did
            # not stop by raising).
            assert record.state is TaskState.SUCCESS
            assert record.reason is not None and record.reason.code == "user"
            await wait_until(lambda: "succeeded" in worker.stderr, timeout=30)
            await worker.stop()
    finally:
        _bridge.close_all()

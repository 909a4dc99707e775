"""A real Django project (tests/django_project) served by uvicorn: its sync and async views
queue a task by name and abort it while an aioabort worker runs it, through aioabort.sync."""

from __future__ import annotations

from functools import partial

import httpx
import pytest

import aioabort
from aioabort import TaskState

from ._processes import worker
from ._servers import uvicorn
from .conftest import has_state, wait_until

pytestmark = pytest.mark.real_stores


async def test_django_views_abort_a_running_task(store_url: str) -> None:
    async with (
        aioabort.App(store_url) as app,
        worker(store_url),
        uvicorn(
            "tests.django_project.asgi:application", store_url, ready="/health", ready_status=200
        ) as server,
        httpx.AsyncClient(base_url=server.base, timeout=30) as client,
    ):
        ids = []
        for _ in range(2):
            queued = await client.post("/tasks/tests.worker_app.count/queue", json={"n": 100_000})
            assert queued.status_code == 202, queued.text
            ids.append(queued.json()["id"])
        for task_id in ids:
            await wait_until(partial(has_state, app, task_id, TaskState.STARTED), timeout=30)

        sync_view = await client.post(f"/tasks/{ids[0]}/abort", data={"reason": "user left"})
        assert sync_view.status_code == 200, sync_view.text
        assert sync_view.json()["aborted"] is True
        record = await app.handle(ids[0]).wait(timeout=30)
        assert record.state is TaskState.ABORTED
        assert record.reason is not None
        assert (record.reason.message, record.reason.by) == ("user left", "django")

        async_view = await client.post(f"/tasks/{ids[1]}/abort-async")
        assert async_view.status_code == 200, async_view.text
        assert async_view.json() == {"aborted": True}
        record = await app.handle(ids[1]).wait(timeout=30)
        assert record.state is TaskState.ABORTED
        assert record.reason is not None and record.reason.by == "django-async"

        again = await client.post(f"/tasks/{ids[0]}/abort")
        assert again.json() == {"aborted": False, "state": "ABORTED"}
        misuse = await client.get(f"/tasks/{ids[0]}/state-async")
        assert misuse.status_code == 500
        assert "running event loop" in misuse.json()["error"]

"""An abort recorded while its App closes returns normally: the pattern "a request's jobs die
with it, shutdown included" (docs/web.md) holds, in process and on a real server."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import anyio
import httpx
import pytest

import aioabort
from aioabort import TaskState

from ._servers import uvicorn
from .conftest import wait_until


async def test_an_abort_committed_while_the_app_closes_returns_normally(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shielded ``abort()`` in flight when the App starts closing: its request commits, the
    call returns True (no AppClosed after the fact), and the record says so."""
    app = aioabort.App(store_url)
    await app.open()
    await app.create("job")
    store = app.store
    committed = asyncio.Event()
    request_abort = store.request_abort

    async def held_after_the_commit(task_id: str, reason: aioabort.AbortReason) -> Any:
        outcome = await request_abort(task_id, reason)
        committed.set()
        await wait_until(lambda: not app.is_open, what="the App closing")
        return outcome

    monkeypatch.setattr(store, "request_abort", held_after_the_commit)

    async def handler() -> bool:
        with anyio.CancelScope(shield=True):
            recorded = await app.handle("job").abort("the request that queued it stopped")
        return recorded

    aborting = asyncio.create_task(handler())
    await committed.wait()
    closing = asyncio.create_task(app.aclose())
    assert await asyncio.wait_for(aborting, 10) is True
    await asyncio.wait_for(closing, 10)
    async with aioabort.App(store_url) as reader:
        record = await reader.handle("job").record()
    assert record.state is TaskState.ABORTED
    assert record.reason is not None
    assert record.reason.message == "the request that queued it stopped"


@pytest.mark.real_stores  # another process: the stores it can reach
async def test_a_requests_job_dies_with_it_when_the_server_shuts_down(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/web.md's pattern on a real uvicorn: the server is stopped (SIGTERM; its graceful
    timeout cancels the request, then its lifespan closes the App) while a request waits for
    the job it queued. The handler's shielded abort is recorded and returns: the job ends
    ABORTED with the handler's reason, and no AppClosed reaches the server's log or the
    request's record."""
    monkeypatch.setenv("UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN", "1")
    async with aioabort.App(store_url) as reader:

        async def the_job() -> aioabort.TaskRecord | None:
            found = await reader.tasks(name="build_report")
            return found[0] if found else None

        async with (
            uvicorn(
                "tests.shutdown_app:api", store_url, ready="/ready", ready_status=200
            ) as server,
            httpx.AsyncClient(base_url=server.base, timeout=60) as client,
        ):
            request = asyncio.create_task(
                client.post("/exports/inline", headers={"x-request-id": "inline-1"})
            )
            await wait_until(lambda: _exists(the_job()), timeout=30, what="the job queued")
            server.process.send_signal(signal.SIGTERM)
            # uvicorn answers the request it cancelled itself (a 500, or a cut connection)
            await asyncio.wait_for(asyncio.gather(request, return_exceptions=True), 30)
            # (uvicorn re-raises the signal once its shutdown is done)
            assert await server.process.exit_code(30) == -signal.SIGTERM
        job = await the_job()
        asked = await reader.handle("inline-1").record()
    assert job is not None and job.state is TaskState.ABORTED
    assert job.reason is not None and job.reason.message == "the request that queued it stopped"
    assert asked.state.is_terminal
    assert asked.error is None or asked.error.type != "AppClosed", asked.error
    assert "AppClosed" not in server.process.stderr


async def _exists(found: Any) -> bool:
    return await found is not None

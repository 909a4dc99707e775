"""The App: closing aborts what is open, a scope that outlives the grace, an App never closed.
Runs against every store. (Closing while the store errors: test_reliability.py.)"""

from __future__ import annotations

import asyncio

import pytest

import aioabort
from aioabort import TaskState

from .conftest import wait_until


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


async def test_an_idle_app_costs_two_statements_per_heartbeat(store_url: str) -> None:
    """A heartbeat that reads the owners' counters (one statement on PostgreSQL, two on
    SQLite) per interval; the reaping transaction only when an owner died (and as a sweep
    every SWEEP_EVERY rounds)."""
    from aioabort._liveness import SWEEP_EVERY

    async with (
        aioabort.App(store_url, heartbeat_interval=0.02, stale_after=10) as app,
        aioabort.App(store_url, heartbeat_interval=10, stale_after=20),  # alive: not reaped
    ):
        liveness = app._liveness
        assert liveness is not None
        await wait_until(lambda: liveness.rounds >= 1)
        rounds, statements = liveness.rounds, app.store.statistics().statements
        await wait_until(lambda: liveness.rounds >= rounds + 2 * SWEEP_EVERY)
        done = liveness.rounds - rounds
        spent = app.store.statistics().statements - statements
    sweeps = done // SWEEP_EVERY + 1
    per_beat = 2 if store_url.startswith("sqlite") else 1  # SQLite reads the counters apart
    assert per_beat * done - 2 <= spent <= per_beat * done + 6 * sweeps, (done, spent)

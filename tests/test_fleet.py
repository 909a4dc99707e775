"""A fleet on one store (DESIGN rule 13): one process reaps at a time, and another takes over
when it closes or is killed."""

from __future__ import annotations

import signal

import pytest

import aioabort
from aioabort import TaskState
from aioabort._liveness import Liveness

from ._processes import child_scope
from .conftest import wait_until


def liveness(app: aioabort.App) -> Liveness:
    assert app._liveness is not None
    return app._liveness


async def test_one_app_of_the_fleet_reaps(store_url: str) -> None:
    """Of three Apps beating every 0.1 s, one holds the reaper lease: together they reap in
    about as many rounds as one of them beats, not three times as many."""
    async with (
        aioabort.App(store_url, heartbeat_interval=0.1, stale_after=5) as a,
        aioabort.App(store_url, heartbeat_interval=0.1, stale_after=5) as b,
        aioabort.App(store_url, heartbeat_interval=0.1, stale_after=5) as c,
    ):
        lives = [liveness(app) for app in (a, b, c)]
        await wait_until(lambda: min(live.rounds for live in lives) >= 10)
        rounds = max(live.rounds for live in lives)
        reaped = sum(live.reaper_rounds for live in lives)
    assert 1 <= reaped <= rounds + 2, (reaped, rounds)
    assert sum(1 for live in lives if live.reaper_rounds) <= 2  # a hand-over at most


async def test_the_lease_passes_on_when_its_holder_closes(store_url: str) -> None:
    """A clean close frees the lease at once (not after it expires)."""
    holder = aioabort.App(store_url, heartbeat_interval=0.05, stale_after=5)
    async with holder:
        await wait_until(lambda: liveness(holder).reaping)
        async with aioabort.App(store_url, heartbeat_interval=0.05, stale_after=5) as waiting:
            await wait_until(lambda: liveness(waiting).rounds >= 3)
            assert not liveness(waiting).reaping
            await holder.aclose()
            await wait_until(lambda: liveness(waiting).reaping, what="the lease to pass on")


@pytest.mark.real_stores
async def test_the_lease_passes_on_when_its_holder_is_killed(store_url: str) -> None:
    """The elected process is killed -9 while it runs a task: another App takes the lease
    once it expires and ends that task as lost."""
    async with child_scope(store_url, "reaper-kill", "--reaper") as proc:
        assert await proc.line() == "REAPER"
        assert await proc.line() == "READY"
        async with aioabort.App(store_url, heartbeat_interval=0.1, stale_after=1.0) as app:
            await wait_until(lambda: liveness(app).rounds >= 3)
            assert not liveness(app).reaping  # the child holds the lease and renews it
            proc.send_signal(signal.SIGKILL)
            await proc.exit_code()
            record = await app.handle("reaper-kill").wait(timeout=20)
            assert liveness(app).reaping
    assert record.state is TaskState.FAILURE
    assert record.error is not None and record.error.cause == "lost"


async def test_a_stuck_reaper_loses_the_lease_and_another_reaps(store_url: str) -> None:
    """A holder that stops beating (its loop is stuck, or it is partitioned) without dying
    keeps nothing: the lease expires and another App reaps; the holder gets it back only
    once the lease is free again."""
    async with (
        aioabort.App(store_url, heartbeat_interval=0.05, stale_after=5) as first,
        aioabort.App(store_url, heartbeat_interval=0.05, stale_after=5) as second,
    ):
        lives = {first: liveness(first), second: liveness(second)}
        await wait_until(lambda: any(live.reaping for live in lives.values()))
        holder = first if lives[first].reaping else second
        other = second if holder is first else first
        await lives[holder].stop()  # it stops beating, as a stuck process would
        await wait_until(lambda: lives[other].reaping, what="the other App to take the lease")

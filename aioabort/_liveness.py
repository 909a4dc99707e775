"""Heartbeats and reaping (guarantee G9): a dead process cannot keep a task STARTED forever.

Each open App heartbeats once per interval (one write for all its scopes). One process of the
fleet reaps (guarantee G13): the holder of the store's reaper lease, taken with the beat and
renewed by it, which another process takes over when it expires (``LEASE_BEATS`` intervals
after its holder's last beat). The holder reads the owners that have been quiet for
``QUIET_BEATS`` intervals by the store's clock, so the reaping costs what the dead cost, and
ends as FAILURE (cause ``lost``) the running tasks of those whose heartbeat counter has not
moved for ``stale_after`` seconds of *its* monotonic clock (retryable ones go back to
PENDING), by compare-and-set. The clock only picks whom to look at; judging by counters means
a wall-clock jump cannot kill a live owner.

The holder also ends the queued tasks past their ``expires_at`` at each round (one indexed
statement), so they expire even where no worker runs.

A holder that dies mid-count would make its heir start the count again: the heir instead
carries it on, at its first round, from how long each owner has been quiet by the store's
clock (what the dead holder had counted), but still watches the counter stand still itself
for ``QUIET_BEATS`` intervals before it reaps. So an owner's tasks are reaped about
``stale_after`` plus two intervals after its last beat whoever holds the lease, and a jump of
the store's clock at a hand-over alone cannot kill a live owner either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from . import _ending
from ._backend import OwnerInfo, QuietOwner, Store
from ._shield import shielded

logger = logging.getLogger("aioabort")

#: Every this many heartbeats the reaper sweeps even when every known owner is alive.
SWEEP_EVERY = 12
#: The reaper lease lasts this many heartbeat intervals (renewed at every beat).
LEASE_BEATS = 2.0
#: Owners quiet for this many intervals of the reaper's are the ones it looks at.
QUIET_BEATS = 2.0
#: Records a purge deletes per transaction, and batches per sweep (retention).
PURGE_BATCH = 1000
PURGE_BATCHES_PER_SWEEP = 20


class OwnerClock:
    """Which owners stopped heartbeating, judged by their counters and a monotonic clock."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, float]] = {}

    def dead(
        self,
        beats: Mapping[str, int],
        now: float,
        stale_after: float,
        *,
        counted: Mapping[str, float] | None = None,
        least: float = 0.0,
    ) -> set[str]:
        """The owners whose counter has not moved for ``stale_after`` seconds.

        :param counted: for owners seen for the first time, seconds of the count already done
            (by another reaper); the rest, and at least ``least`` seconds, is counted here.
        """
        for owner, count in beats.items():
            last = self._seen.get(owner)
            if last is None or last[0] != count:
                done = (counted or {}).get(owner, 0.0) if last is None else 0.0
                done = max(0.0, min(done, stale_after - least))
                self._seen[owner] = (count, now - done)
        for owner in set(self._seen) - set(beats):
            del self._seen[owner]
        return {owner for owner, (_, since) in self._seen.items() if now - since >= stale_after}


class Liveness:
    """This process's heartbeat and reaper, for one open store. Created by the App."""

    def __init__(
        self,
        store: Store,
        owner: OwnerInfo,
        *,
        interval: float,
        stale_after: float,
        retention: float | None = None,
    ) -> None:
        self._store = store
        self._owner = owner
        self._interval = interval
        self._stale_after = stale_after
        self._retention = retention
        self._clock = OwnerClock()
        self._task: asyncio.Task[None] | None = None
        #: Heartbeat rounds so far (for tests and statistics).
        self.rounds = 0
        #: Whether this process held the reaper lease at its last beat.
        self.reaping = False
        #: Rounds this process reaped in (as the lease's holder).
        self.reaper_rounds = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._beat_forever(), name="aioabort-heartbeat"
        )

    def is_running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def reap(self, *, sweep: bool = True) -> list[str]:
        """End the running tasks of owners that stopped heartbeating; returns their ids.

        :param sweep: reap even when no known owner died (which also ends running tasks whose
            owner nobody knows, and prunes the abort log). Without it, a round where every
            owner is alive costs one read.
        """
        return await self._reap(await self._store.owner_beats(), sweep=sweep)

    async def _reap(
        self, beats: Mapping[str, int], *, sweep: bool, counted: Mapping[str, float] | None = None
    ) -> list[str]:
        least = QUIET_BEATS * self._interval
        dead = self._clock.dead(
            beats, time.monotonic(), self._stale_after, counted=counted, least=least
        )
        dead.discard(self._owner.id)
        if not dead and not sweep:
            return []
        return await shielded(self._store.reap(sorted(dead)))

    async def purge(self, older_than: float, *, batches: int | None = None) -> int:
        """Delete finished records older than ``older_than`` seconds, :data:`PURGE_BATCH` at a
        time (never one giant transaction), for at most ``batches`` batches."""
        total, done = 0, 0
        while batches is None or done < batches:
            gone = await shielded(self._store.purge(older_than, limit=PURGE_BATCH))
            total, done = total + len(gone), done + 1
            if len(gone) < PURGE_BATCH:
                break
        return total

    async def _purge(self, older_than: float) -> None:
        removed = await self.purge(older_than, batches=PURGE_BATCHES_PER_SWEEP)
        if removed:
            logger.info(
                "finished records past the retention were purged",
                extra={"action": "records_purged", "count": removed},
            )

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.rounds += 1
            try:
                quiet = await shielded(
                    self._store.heartbeat(
                        self._owner,
                        lease=LEASE_BEATS * self._interval,
                        quiet=QUIET_BEATS * self._interval,
                    )
                )
                heir, self.reaping = not self.reaping, quiet is not None
                if quiet is None:
                    continue
                self.reaper_rounds += 1
                sweep = self.reaper_rounds % SWEEP_EVERY == 0
                lost = await self._reap(
                    {owner: q.beats for owner, q in quiet.items()},
                    sweep=sweep,
                    counted=_counted(quiet, QUIET_BEATS * self._interval) if heir else None,
                )
                # Queued tasks past their expiry end even where no worker runs.
                await _ending.expire(self._store, self._owner.id)
                if sweep and self._retention is not None:
                    await self._purge(self._retention)
            except Exception:
                logger.exception("heartbeat failed", extra={"action": "heartbeat_failed"})
                continue
            if lost:
                logger.warning(
                    "tasks whose owner stopped heartbeating were ended as lost",
                    extra={"action": "tasks_reaped", "task_ids": lost},
                )


def _counted(quiet: Mapping[str, QuietOwner], window: float) -> dict[str, float]:
    """What a reaper before this one had counted of each quiet owner's silence: all of it but
    the ``window`` it takes to be seen as quiet."""
    return {owner: q.quiet_for - window for owner, q in quiet.items()}

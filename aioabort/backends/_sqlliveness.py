"""The SQL store's flows of liveness and retention: heartbeats and the reaper lease, reaping
the tasks of dead owners, the workers table, and purging old records."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

from .._backend import OwnerInfo, QuietOwner, Unclaimed
from ._sqlbase import Connection, SQLBase, nothing_changed

#: How many abort-log entries are kept (watchers read only entries newer than their start);
#: pruned by sequence number, so no clock is involved.
ABORT_LOG_KEEP = 100_000


class LivenessFlows(SQLBase):
    """Heartbeat, reap, release, serve and purge, each written once."""

    async def heartbeat(
        self, owner: OwnerInfo, *, lease: float | None = None, quiet: float = 0.0
    ) -> dict[str, QuietOwner] | None:
        beat = (owner.id, owner.host, owner.pid)
        if lease is None:
            await self._one("heartbeat", *beat, write=True, retry=True, changed=nothing_changed)
            return None

        async def body(conn: Connection) -> dict[str, QuietOwner] | None:
            await self._rows(conn, "heartbeat", *beat)
            if not await self._rows(conn, "take_lease", owner.id, lease):
                return None
            return quiet_owners(await self._rows(conn, "quiet_owners", quiet))

        return await self._write(body, retry=True, changed=nothing_changed)

    async def owner_beats(self) -> dict[str, int]:
        return {owner: int(beats) for owner, beats in await self._one("owner_beats")}

    async def reap(self, dead: Collection[str]) -> list[str]:
        gone = list(dead)

        async def body(conn: Connection) -> list[str]:
            requeued = await self._rows(conn, "reap_requeue", gone)
            failed = await self._rows(conn, "reap_fail", gone)
            if gone:
                await self._rows(conn, "forget_owners", gone)
                await self._rows(conn, "forget_workers", gone)
            await self._rows(conn, "prune_abort_log", ABORT_LOG_KEEP)
            return [row[0] for row in (*requeued, *failed)]

        return await self._write(body, retry=True, changed=lambda ids: ids)

    async def release_owner(self, owner: str) -> list[str]:
        async def body(conn: Connection) -> list[str]:
            rows = await self._rows(conn, "release_owner", owner)
            await self._rows(conn, "forget_owners", [owner])
            await self._rows(conn, "forget_workers", [owner])
            await self._rows(conn, "release_lease", owner)
            return [row[0] for row in rows]

        return await self._write(body, retry=True, changed=lambda ids: ids)

    async def serve(self, owner: str, *, queues: Collection[str], names: Collection[str]) -> None:
        await self._one(
            "serve",
            owner,
            list(queues),
            list(names),
            write=True,
            retry=True,
            changed=nothing_changed,
        )

    async def unserve(self, owner: str, *, queues: Collection[str]) -> None:
        await self._one(
            "unserve", owner, list(queues), write=True, retry=True, changed=nothing_changed
        )

    async def unclaimed(self, *, queued_for: float, quiet: float) -> list[Unclaimed]:
        found = []
        for queue, name, count, oldest in await self._one("unclaimed", queued_for, quiet):
            when = self._timestamp(oldest)
            assert when is not None  # a group has a first task
            found.append(Unclaimed(queue, name, int(count), when))
        return found

    async def purge(self, older_than: float, *, limit: int) -> list[str]:
        """The records, with their abort-log rows and labels, in one statement (``purge``)."""
        rows = await self._one("purge", older_than, limit, write=True, retry=True)
        return [row[0] for row in rows]


def quiet_owners(rows: Iterable[Sequence[Any]]) -> dict[str, QuietOwner]:
    """Rows of (id, beats, seconds since the last beat) as the reaper's input."""
    return {row[0]: QuietOwner(int(row[1]), max(0.0, float(row[2]))) for row in rows}

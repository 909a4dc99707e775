"""Faults: a full disk under SQLite. (Locks held past busy_timeout: test_sqlite.py; the
listener's connection killed: test_postgres.py; wall-clock jumps: test_cross_process.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

import aioabort
from aioabort import TaskState

from .conftest import fill


async def test_full_disk_is_a_clear_error_and_nothing_is_half_written(small_disk: Path) -> None:
    url = f"sqlite:///{small_disk / 'aioabort.db'}"
    async with aioabort.App(url) as app:
        keep = await app.create("kept", name="before the disk filled")
        filler = fill(small_disk)
        errors = []
        for i in range(200):  # until the WAL's spare room runs out
            try:
                await app.create(f"more-{i}", name="x" * 150)
            except aioabort.StoreError as exc:
                errors.append(exc)
                break
        assert errors, "the disk never filled up"
        assert "full" in str(errors[0]).lower()
        before = await keep.record()
        with pytest.raises(aioabort.StoreError, match=r"(?i)full"):
            await keep.abort("no room to record this")
        assert await keep.record() == before  # not half written
        filler.unlink()
        assert await keep.abort("now there is room") is True
        record = await keep.record()
        assert record.state is TaskState.ABORTED and record.reason is not None
        assert record.reason.message == "now there is room"
